//! Tool-call latency with criterion: warm calls (in-process and in worker processes), a fresh
//! interpreter per call, and the CPython baselines (subprocess per call, persistent worker).
//! `cargo xtask bench sandbox` prints the same comparison as one table with ratios.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use criterion::{Criterion, criterion_group, criterion_main};
use rstar2::sandbox::{InterpreterConfig, Runner, Sandbox, SandboxConfig, Status, ToolCall, Watchdog, WorkerCommand};

const TINY: &str = "print(1+1)";
const TYPICAL: &str =
    "from fractions import Fraction\nimport math\ns = sum(Fraction(1, k * (k + 1)) for k in range(1, 60))\nprint(s, math.comb(40, 20) % 1000003)\nprint(sum(i * i for i in range(300)))\n";

fn sandbox(in_process: bool) -> Sandbox {
    let mut config = if in_process { SandboxConfig::in_process() } else { SandboxConfig::process(WorkerCommand::program(env!("CARGO_BIN_EXE_rstar2-sandbox-worker"))) };
    config.workers = 1;
    Sandbox::new(config).expect("sandbox starts")
}

fn tool_latency(c: &mut Criterion) {
    let mut group = c.benchmark_group("tool_latency");
    for (mode, in_process) in [("in_process", true), ("worker_process", false)] {
        let sb = sandbox(in_process);
        for (name, code) in [("print", TINY), ("typical", TYPICAL)] {
            assert_eq!(sb.run_blocking(ToolCall::new(code)).status, Status::Ok);
            group.bench_function(format!("warm_{mode}_{name}"), |b| b.iter(|| sb.run_blocking(ToolCall::new(code))));
        }
    }
    let watchdog = Watchdog::new();
    let config = InterpreterConfig::default();
    group.sample_size(20);
    group.bench_function("fresh_interpreter_print", |b| b.iter(|| Runner::new(&config).expect("interpreter").run(&ToolCall::new(TINY), &watchdog)));
    group.bench_function("cpython_subprocess_print", |b| b.iter(|| Command::new("python3").args(["-c", TINY]).output().expect("python3")));
    group.sample_size(100);
    let mut child = Command::new("python3")
        .args(["-c", "import sys, io, json, contextlib\nfor line in sys.stdin:\n    buf = io.StringIO()\n    with contextlib.redirect_stdout(buf):\n        exec(json.loads(line), {'__name__': '__main__'})\n    print(json.dumps(buf.getvalue()), flush=True)\n"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    for (name, code) in [("print", TINY), ("typical", TYPICAL)] {
        let request = serde_json::to_string(code).unwrap();
        group.bench_function(format!("cpython_persistent_worker_{name}"), |b| {
            b.iter(|| {
                writeln!(stdin, "{request}").unwrap();
                let mut line = String::new();
                stdout.read_line(&mut line).unwrap();
                line
            })
        });
    }
    group.finish();
    // End of input ends the worker's loop; reap it.
    drop(stdin);
    child.wait().expect("python3 worker exits");
}

criterion_group!(benches, tool_latency);
criterion_main!(benches);
