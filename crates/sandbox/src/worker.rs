//! Process isolation: interpreters inside worker processes of our own binary.
//!
//! The parent writes one JSON request per line to the worker's stdin and reads one JSON reply
//! per line from its stdout. The worker limits its own address space before it creates its
//! interpreter; the parent kills it when a call overruns its deadline by a grace period (native
//! code that no interrupt reaches), and respawns it after a kill, a crash or an exit.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::{InterpreterConfig, WorkerCommand};
use crate::interp::Runner;
use crate::outcome::{Status, ToolCall, ToolResult};
use crate::watchdog::Watchdog;

/// The argument that turns a binary into a sandbox worker (see [`serve_stdio`]).
pub const WORKER_ARG: &str = "__rstar2-sandbox-worker";

/// Interpreter replacements after which a worker process exits to return leaked memory
/// (RustPython leaks about 2 MiB per dropped interpreter).
const MAX_RECYCLES: u32 = 200;

/// How long past its deadline a call may run before its worker is killed.
pub(crate) fn kill_grace(timeout: Duration) -> Duration {
    Duration::from_millis(500).max(timeout / 4)
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Request {
    /// Run a call; `independent` calls must not see state left by earlier ones.
    Run { call: ToolCall, independent: bool },
    /// Forget all state (end of a session).
    Reset,
}

#[derive(Serialize, Deserialize)]
struct Reply {
    result: Option<ToolResult>,
    /// The worker is about to exit (to return leaked memory); start a new one.
    exiting: bool,
    /// The worker builds a fresh interpreter next and says [`READY`] when it has.
    #[serde(default)]
    rebuilding: bool,
}

/// The line a worker writes once its interpreter (and its preloaded modules) is built, so that
/// building it never counts against a call's time limit.
const READY: &str = "{\"ready\":true}";

/// How long a worker may take to build an interpreter (RustPython and preloads such as sympy,
/// a few seconds; much more on a loaded machine).
const STARTUP: Duration = Duration::from_secs(300);

/// If the process was started as a sandbox worker (`args[1] == WORKER_ARG`), serves requests on
/// stdin/stdout until stdin closes and then exits the process; otherwise returns. Call it first
/// thing in `main` of any binary used as a [`WorkerCommand`].
pub fn dispatch_worker() {
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() != Some(WORKER_ARG) {
        return;
    }
    let config = args.next().and_then(|json| serde_json::from_str::<InterpreterConfig>(&json).ok());
    let Some(config) = config else {
        eprintln!("{WORKER_ARG}: expected an interpreter configuration in JSON as the next argument");
        std::process::exit(2);
    };
    // The interpreter runs on a thread with the stack an in-process one has, so both answer a
    // deep program the same way.
    let served = std::thread::Builder::new().name("rstar2-sandbox-worker".into()).stack_size(crate::interp::INTERPRETER_STACK).spawn(move || serve_stdio(&config));
    match served.map(|t| t.join()) {
        Ok(Ok(())) => std::process::exit(0),
        _ => std::process::exit(1),
    }
}

/// The worker loop: limits memory, builds an interpreter, and answers requests until stdin closes.
pub fn serve_stdio(config: &InterpreterConfig) {
    // Where the binary counts each call's allocations (`BudgetAllocator`), the call's budget is
    // what stops it, as in-process, and the address-space limit is only the backstop.
    let backstop = if crate::memory::budgets_enforced() { 1 << 30 } else { 0 };
    limit_address_space(config.limits.memory_bytes.saturating_add(backstop));
    let watchdog = Watchdog::new();
    let mut runner = match Runner::new(config) {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(3);
        }
    };
    let mut recycles = 0u32;
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout().lock();
    if writeln!(stdout, "{READY}").and_then(|()| stdout.flush()).is_err() {
        return;
    }
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let mut crashed = false;
        let (result, replace) = match serde_json::from_str::<Request>(&line) {
            Ok(Request::Run { call, independent }) => {
                let runner = runner.get_or_insert_with(|| Runner::new(config).expect("an interpreter was created before"));
                let (result, taints) = runner.run_with(&call, &watchdog, !independent, None);
                crashed = result.status == Status::Crashed;
                (Some(result), independent && taints)
            }
            Ok(Request::Reset) => (None, true),
            Err(e) => (Some(ToolResult::failure(Status::InvalidInput, format!("bad worker request: {e}"), 0)), false),
        };
        if replace {
            recycles += 1;
        }
        // A VM panic (crafted bytecode) can leave the heap corrupted: never reuse this process.
        let exiting = crashed || recycles > MAX_RECYCLES;
        let reply = serde_json::to_string(&Reply { result, exiting, rebuilding: replace && !exiting }).expect("replies serialize");
        if writeln!(stdout, "{reply}").and_then(|()| stdout.flush()).is_err() || exiting {
            break;
        }
        if replace {
            // Replaced after replying, and READY said when done: the parent waits for it
            // outside any call's time limit.
            drop(runner.take());
            runner = Some(Runner::new(config).expect("an interpreter was created before"));
            if writeln!(stdout, "{READY}").and_then(|()| stdout.flush()).is_err() {
                break;
            }
        }
    }
}

fn limit_address_space(bytes: u64) {
    let limit = libc::rlimit { rlim_cur: bytes as libc::rlim_t, rlim_max: bytes as libc::rlim_t };
    // SAFETY: setrlimit only reads the struct we pass.
    unsafe {
        libc::setrlimit(libc::RLIMIT_AS, &limit);
        let no_core = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        libc::setrlimit(libc::RLIMIT_CORE, &no_core);
    }
}

/// Why a worker process could not be started.
#[derive(Debug, thiserror::Error)]
#[error("starting sandbox worker {program}: {cause}")]
pub struct SpawnError {
    program: String,
    /// In the message, not `source()`, so anyhow's `{:#}` prints it once.
    cause: std::io::Error,
}

/// The parent's handle on one worker process.
pub(crate) struct ProcessWorker {
    command: WorkerCommand,
    config: InterpreterConfig,
    child: Child,
    stdin: ChildStdin,
    /// Read on this thread with poll(2), no reader thread: one hand-off less per call.
    stdout: ChildStdout,
    pending: Vec<u8>,
    stderr: Arc<Mutex<String>>,
}

impl ProcessWorker {
    pub(crate) fn spawn(command: &WorkerCommand, config: &InterpreterConfig) -> Result<Self, SpawnError> {
        let config_json = serde_json::to_string(config).expect("configs serialize");
        let mut child = Command::new(&command.program)
            .args(&command.args)
            .arg(WORKER_ARG)
            .arg(config_json)
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|cause| SpawnError { program: command.program.display().to_string(), cause })?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let stderr_pipe = child.stderr.take().expect("piped");
        // Keep the last few KiB of the worker's stderr: it says why a worker died.
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr_pipe).lines() {
                let Ok(line) = line else { break };
                let mut s = sink.lock().unwrap_or_else(|p| p.into_inner());
                s.push_str(&line);
                s.push('\n');
                if s.len() > 8192 {
                    let cut = s.len() - 4096;
                    let cut = (cut..s.len()).find(|&i| s.is_char_boundary(i)).unwrap_or(s.len());
                    s.drain(..cut);
                }
            }
        });
        let mut worker = ProcessWorker { command: command.clone(), config: config.clone(), child, stdin, stdout, pending: Vec::new(), stderr };
        if worker.await_ready().is_err() {
            let log = worker.stderr.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let why = format!("the worker did not finish building its interpreter within {} s: {}", STARTUP.as_secs(), log.lines().last().unwrap_or("no message"));
            return Err(SpawnError { program: command.program.display().to_string(), cause: std::io::Error::other(why) });
        }
        Ok(worker)
    }

    /// Waits for the worker to say its interpreter is built.
    fn await_ready(&mut self) -> Result<(), Failure> {
        let line = self.read_line(Instant::now() + STARTUP)?;
        if line == READY.as_bytes() { Ok(()) } else { Err(Failure::Died) }
    }

    /// Runs one call, killing and respawning the process when it overruns, dies or asks to exit.
    pub(crate) fn run(&mut self, call: &ToolCall, independent: bool) -> ToolResult {
        let start = Instant::now();
        let request = Request::Run { call: call.clone(), independent };
        let wait = self.config.limits.timeout + kill_grace(self.config.limits.timeout);
        match self.exchange(&request, wait) {
            Ok(Reply { result: Some(result), exiting, rebuilding }) => {
                if exiting || (rebuilding && self.await_ready().is_err()) {
                    self.respawn();
                }
                result
            }
            Ok(Reply { result: None, .. }) => {
                self.respawn();
                ToolResult::failure(Status::Crashed, "the worker sent no result", start.elapsed().as_micros() as u64)
            }
            Err(failure) => {
                let elapsed_us = start.elapsed().as_micros() as u64;
                let result = match failure {
                    Failure::Overran => {
                        let secs = self.config.limits.timeout.as_secs_f64();
                        ToolResult::failure(Status::Timeout, format!("TimeoutError: execution exceeded the time limit of {secs:.1} s (stopped in native code; worker restarted)\n"), elapsed_us)
                    }
                    Failure::Died => {
                        let log = self.stderr.lock().unwrap_or_else(|p| p.into_inner()).clone();
                        if log.contains("memory allocation of") || log.contains("MemoryError") {
                            ToolResult::failure(Status::MemoryLimit, "MemoryError: the worker ran out of its memory budget\n", elapsed_us)
                        } else {
                            let tail: String = log.lines().rev().take(3).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
                            ToolResult::failure(Status::Crashed, format!("the worker process died: {tail}\n"), elapsed_us)
                        }
                    }
                };
                self.respawn();
                result
            }
        }
    }

    /// Drops all interpreter state (end of a session).
    pub(crate) fn reset(&mut self) {
        let wait = Duration::from_secs(60);
        match self.exchange(&Request::Reset, wait) {
            Ok(Reply { rebuilding: true, .. }) if self.await_ready().is_ok() => {}
            _ => self.respawn(),
        }
    }

    fn exchange(&mut self, request: &Request, wait: Duration) -> Result<Reply, Failure> {
        let line = serde_json::to_string(request).expect("requests serialize");
        if writeln!(self.stdin, "{line}").and_then(|()| self.stdin.flush()).is_err() {
            return Err(Failure::Died);
        }
        let line = self.read_line(Instant::now() + wait)?;
        serde_json::from_slice(&line).map_err(|_| Failure::Died)
    }

    /// The next line of the worker's stdout, waiting at most until `deadline`.
    fn read_line(&mut self, deadline: Instant) -> Result<Vec<u8>, Failure> {
        let mut chunk = [0u8; 64 * 1024];
        loop {
            if let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let line = self.pending[..end].to_vec();
                self.pending.drain(..=end);
                return Ok(line);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Failure::Overran);
            }
            let mut fds = libc::pollfd { fd: self.stdout.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
            // SAFETY: one valid pollfd for the duration of the call.
            let ready = unsafe { libc::poll(&mut fds, 1, ms) };
            if ready < 0 {
                if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(Failure::Died);
            }
            if ready == 0 {
                continue;
            }
            match self.stdout.read(&mut chunk) {
                Ok(0) | Err(_) => {
                    let _ = self.child.wait();
                    return Err(Failure::Died);
                }
                Ok(n) => self.pending.extend_from_slice(&chunk[..n]),
            }
        }
    }

    fn respawn(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Retried until it works: a pool with a dead worker would lose every call routed to it.
        loop {
            match ProcessWorker::spawn(&self.command, &self.config) {
                Ok(fresh) => {
                    *self = fresh;
                    return;
                }
                Err(e) => {
                    eprintln!("rstar2-sandbox: {e}; retrying");
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }
}

impl Drop for ProcessWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

enum Failure {
    Overran,
    Died,
}
