//! A code-judge queue worker without the rest of rstar2 (no model, no GPU code), for the CPU
//! machines that run tools: `rstar2-queue-worker REDIS_URI [INTERPRETERS]` pulls submissions from
//! code-judge's Redis work queue (keys `js:0.0.5:`) with that many worker-process interpreters
//! (default: one per core) and 10 s per call, code-judge's limit, until killed. `cargo xtask
//! sandbox worker --redis URI` is the same with every option.

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use rstar2::sandbox::queue::{QueueConfig, serve_queue};
use rstar2::sandbox::{Sandbox, SandboxConfig, WorkerCommand};

fn main() {
    rstar2::sandbox::worker::dispatch_worker();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (uri, interpreters) = match args.as_slice() {
        [uri] => (uri.clone(), None),
        [uri, n] => match n.parse::<usize>() {
            Ok(n) if n > 0 => (uri.clone(), Some(n)),
            _ => fail(&format!("INTERPRETERS must be a positive number, not {n:?}")),
        },
        _ => fail("expected REDIS_URI [INTERPRETERS]"),
    };
    let exe = WorkerCommand::current_exe().unwrap_or_else(|e| fail(&format!("locating this executable: {e}")));
    let mut config = SandboxConfig::process(exe);
    if let Some(n) = interpreters {
        config.workers = n;
    }
    config.interpreter.limits.timeout = Duration::from_secs(10);
    let sandbox = Sandbox::new(config).unwrap_or_else(|e| fail(&format!("starting the sandbox: {e}")));
    let queue = QueueConfig::new(uri);
    eprintln!("serving {} at {} with {} interpreters", queue.work_queue(), queue.uri, sandbox.workers());
    if let Err(e) = serve_queue(&queue, &sandbox, sandbox.workers(), &AtomicBool::new(false)) {
        fail(&e.to_string());
    }
}

fn fail(why: &str) -> ! {
    eprintln!("rstar2-queue-worker: {why}\nusage: rstar2-queue-worker REDIS_URI [INTERPRETERS]");
    std::process::exit(2);
}
