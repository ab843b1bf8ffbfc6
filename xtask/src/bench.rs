//! `cargo xtask bench ...`: one table per benchmark, baselines measured in the same run.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use rstar2_sandbox::queue::{LocalRedis, QueueClient, QueueConfig};
use rstar2_sandbox::{InterpreterConfig, Runner, Sandbox, SandboxConfig, Status, ToolCall, Watchdog, WorkerCommand};

#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// Tool latency and throughput: warm calls (in-process and worker processes), a fresh
    /// interpreter, CPython subprocess and persistent-worker baselines, calls/s on all cores,
    /// 45,000 calls submitted at once, and calls/s and the burst through code-judge's Redis queue
    /// with 1 and 2 worker processes (needs `redis-server`).
    Sandbox {
        /// Warm calls timed per row.
        #[arg(long, default_value_t = 2000)]
        calls: usize,
        /// Size of the all-at-once batch (the original system's per-step peak).
        #[arg(long, default_value_t = 45_000)]
        burst: usize,
    },
    /// The CPU backend against this machine's own limits and PyTorch, all measured in this run:
    /// the FMA-loop peak of each vector width, memory copy bandwidth, matmul GFLOP/s as a share
    /// of the peak, training tokens/s (forward + backward + AdamW) on the tiny preset and
    /// SmolLM2-135M, and SmolLM2-135M decoding at batch 1, 8, 32 and 64 with f32 and f16 weights
    /// beside its memory-bandwidth bound (its imported weights when `cargo xtask fetch-model
    /// smollm2-135m` has run, else random weights of its shape).
    Model {
        /// Python with torch and transformers for the PyTorch baseline.
        #[arg(long, default_value = "python3")]
        python: String,
        /// Rounds: each measures the peaks, then every row on both sides one after the other;
        /// figures print as the median with the min-max over rounds.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Rollouts with tool calls: the asynchronous scheduler against synchronous per-turn tool
    /// execution on the same work (episodes/s, tokens/s, ratio).
    Rollout(crate::bench_rollout::RolloutBenchArgs),
    /// The WGSL kernels on one adapter beside the CPU backend on the same shapes: matmul
    /// (prefill and decode shapes) in GFLOP/s, memory-bound kernels in GB/s, attention, a whole
    /// training step and batched decoding in tokens/s.
    Kernels(crate::bench_kernels::KernelBenchArgs),
    /// Data-parallel training on this machine: tokens/s of a step with one replica and with
    /// several (--devices cpu,cpu or gpu:0,gpu:1,...), the host's gradient exchange per MiB,
    /// and MPI all-reduce per MiB over loopback (binary built with --features mpi), so a
    /// cluster's scaling can be predicted.
    TrainScaling(crate::bench_train::TrainScalingArgs),
    /// One rank of the MPI all-reduce probe that train-scaling starts with mpirun.
    #[command(hide = true)]
    AllreduceProbe,
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Sandbox { calls, burst } => bench_sandbox(calls, burst),
        BenchCommand::Model { python, rounds } => crate::bench_model::run(&python, rounds),
        BenchCommand::Rollout(args) => crate::bench_rollout::run(args),
        BenchCommand::Kernels(args) => crate::bench_kernels::run(args),
        BenchCommand::TrainScaling(args) => crate::bench_train::run(args),
        BenchCommand::AllreduceProbe => crate::bench_train::allreduce_probe(),
    }
}

/// A snippet typical of math tool calls: exact fractions, binomials, a loop.
pub const TYPICAL: &str =
    "from fractions import Fraction\nimport math\ns = sum(Fraction(1, k * (k + 1)) for k in range(1, 60))\nprint(s, math.comb(40, 20) % 1000003)\nprint(sum(i * i for i in range(300)))\n";
pub const TINY: &str = "print(1+1)";

/// A persistent CPython process serving JSON lines: exec with stdout captured. It reports its own
/// exec time, which is the in-process CPython lower bound.
const CPYTHON_WORKER: &str = r#"
import sys, io, json, time, contextlib
for line in sys.stdin:
    code = json.loads(line)
    buf = io.StringIO()
    t = time.perf_counter()
    with contextlib.redirect_stdout(buf):
        exec(compile(code, "<snippet>", "exec"), {"__name__": "__main__"})
    us = (time.perf_counter() - t) * 1e6
    sys.stdout.write(json.dumps({"stdout": buf.getvalue(), "exec_us": us}) + "\n")
    sys.stdout.flush()
"#;

struct Stats {
    p50: f64,
    p99: f64,
}

fn stats(mut us: Vec<f64>) -> Stats {
    us.sort_by(f64::total_cmp);
    let at = |q: f64| us[((us.len() - 1) as f64 * q).round() as usize];
    Stats { p50: at(0.5), p99: at(0.99) }
}

fn time_calls(n: usize, mut f: impl FnMut()) -> Stats {
    for _ in 0..n.min(50) {
        f();
    }
    let mut us = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f();
        us.push(t.elapsed().as_secs_f64() * 1e6);
    }
    stats(us)
}

/// Times every one of `sides` call by call, in turn, so drift of a shared machine (neighbours,
/// frequency) falls on every row alike rather than on whichever ran last. Each turn starts one
/// side further on, so every side follows every other equally often: what ran just before a
/// call (another process woken, caches taken) moved a row's p50 by up to 50 us in a fixed order.
fn time_calls_round_robin(n: usize, sides: &mut [&mut dyn FnMut()]) -> Vec<Stats> {
    for _ in 0..n.min(50) {
        sides.iter_mut().for_each(|f| f());
    }
    let k = sides.len();
    let mut us: Vec<Vec<f64>> = sides.iter().map(|_| Vec::with_capacity(n)).collect();
    for turn in 0..n {
        for i in (0..k).map(|j| (turn + j) % k) {
            let t = Instant::now();
            sides[i]();
            us[i].push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    us.into_iter().map(stats).collect()
}

fn expect_ok(sandbox: &Sandbox, code: &str) -> anyhow::Result<()> {
    let r = sandbox.run_blocking(ToolCall::new(code));
    anyhow::ensure!(r.status == Status::Ok, "benchmark snippet failed: {r:?}");
    Ok(())
}

fn sandbox_with(workers: usize, in_process: bool) -> anyhow::Result<Sandbox> {
    let mut config = if in_process { SandboxConfig::in_process() } else { SandboxConfig::process(WorkerCommand::current_exe()?) };
    config.workers = workers;
    Ok(Sandbox::new(config)?)
}

/// Resident memory of this process and all its descendants, in bytes.
fn tree_rss() -> u64 {
    let me = std::process::id();
    let mut parents = std::collections::HashMap::new();
    let mut rss = std::collections::HashMap::new();
    let page = 4096u64;
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
            let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else { continue };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            if let (Some(ppid), Some(pages)) = (fields.get(1).and_then(|s| s.parse::<u32>().ok()), fields.get(21).and_then(|s| s.parse::<u64>().ok())) {
                parents.insert(pid, ppid);
                rss.insert(pid, pages * page);
            }
        }
    }
    rss.iter()
        .filter(|(pid, _)| {
            let mut p = **pid;
            for _ in 0..16 {
                if p == me {
                    return true;
                }
                match parents.get(&p) {
                    Some(&pp) if pp != 0 => p = pp,
                    _ => return false,
                }
            }
            false
        })
        .map(|(_, bytes)| *bytes)
        .sum()
}

fn bench_sandbox(calls: usize, burst: usize) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    eprintln!("measuring on {cores} cores ({calls} warm calls per row)...");
    let mut rows: Vec<(String, Stats)> = Vec::new();

    let in_process = sandbox_with(1, true)?;
    let process = sandbox_with(1, false)?;
    let mut child = Command::new("python3").args(["-c", CPYTHON_WORKER]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().context("starting python3")?;
    let mut stdin = child.stdin.take().expect("piped");
    let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
    let cpython = std::cell::RefCell::new(move |code: &str| -> f64 {
        writeln!(stdin, "{}", serde_json::to_string(code).expect("str")).expect("write");
        stdin.flush().expect("flush");
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read");
        let v: serde_json::Value = serde_json::from_str(&line).expect("json");
        v["exec_us"].as_f64().expect("exec_us")
    });
    // Each snippet twice: the same source every call (an interpreter compiles it once and keeps
    // the code), and a new source every call (a constant changes), which compiles every time.
    for (label, code) in [("print(1+1)", TINY), ("typical math snippet", TYPICAL)] {
        expect_ok(&in_process, code)?;
        expect_ok(&process, code)?;
        let n = std::cell::Cell::new(1u64);
        let fresh = || {
            n.set(n.get() + 1);
            code.replacen('1', &n.get().to_string(), 1)
        };
        let (mut exec_us, mut exec_fresh_us) = (Vec::new(), Vec::new());
        let timed = time_calls_round_robin(
            calls,
            &mut [
                &mut || drop(in_process.run_blocking(ToolCall::new(code))),
                &mut || drop(in_process.run_blocking(ToolCall::new(fresh()))),
                &mut || drop(process.run_blocking(ToolCall::new(code))),
                &mut || exec_us.push(cpython.borrow_mut()(code)),
                &mut || exec_fresh_us.push(cpython.borrow_mut()(&fresh())),
            ],
        );
        let names =
            ["warm, in-process", "warm, in-process, new source each call", "warm, worker process", "CPython persistent worker (pipe)", "CPython persistent worker (pipe), new source each call"];
        for (name, s) in names.iter().zip(timed) {
            rows.push((format!("{name}: {label}"), s));
        }
        rows.push((format!("CPython in-process exec (lower bound): {label}"), stats(exec_us)));
        rows.push((format!("CPython in-process exec (lower bound), new source each call: {label}"), stats(exec_fresh_us)));
    }
    drop((in_process, process, cpython));
    let _ = child.wait();

    let watchdog = Watchdog::new();
    let config = InterpreterConfig::default();
    let s = time_calls(30, || {
        let runner = Runner::new(&config).expect("interpreter");
        drop(runner.run(&ToolCall::new(TINY), &watchdog));
    });
    rows.push(("fresh interpreter per call: print(1+1)".into(), s));

    let subprocess_n = 50.min(calls);
    let s = time_calls(subprocess_n, || {
        let out = Command::new("python3").args(["-c", TINY]).output().expect("python3 runs");
        assert!(out.status.success());
    });
    rows.push(("CPython `python3 -c` subprocess: print(1+1)".into(), s));

    println!("\nTool call latency (median of {calls} calls unless noted; microseconds)\n");
    println!("{:<84} {:>10} {:>10}", "", "p50 us", "p99 us");
    for (label, s) in &rows {
        println!("{label:<84} {:>10.1} {:>10.1}", s.p50, s.p99);
    }
    let p50 = |label: &str| rows.iter().find(|(l, _)| l == label).map(|(_, s)| s.p50).unwrap_or(f64::NAN);
    println!("\nRatios (p50):");
    for mode in ["in-process", "worker process"] {
        println!(
            "  {mode}: `python3 -c` subprocess / warm print(1+1) = {:.0}x   typical snippet vs in-process CPython = {:.2}x   vs persistent CPython worker = {:.2}x",
            p50("CPython `python3 -c` subprocess: print(1+1)") / p50(&format!("warm, {mode}: print(1+1)")),
            p50(&format!("warm, {mode}: typical math snippet")) / p50("CPython in-process exec (lower bound): typical math snippet"),
            p50(&format!("warm, {mode}: typical math snippet")) / p50("CPython persistent worker (pipe): typical math snippet"),
        );
    }
    for label in ["print(1+1)", "typical math snippet"] {
        println!(
            "  {label}: warm in-process / persistent CPython worker = {:.2}x with the same source, {:.2}x with a new source each call",
            p50(&format!("warm, in-process: {label}")) / p50(&format!("CPython persistent worker (pipe): {label}")),
            p50(&format!("warm, in-process, new source each call: {label}")) / p50(&format!("CPython persistent worker (pipe), new source each call: {label}")),
        );
    }

    println!("\nThroughput with 1 worker and on all {cores} cores ({cores} workers); median of 5 batches, the four pools alternating:");
    let sizes = [1, cores];
    let pools: Vec<(bool, usize, Sandbox)> = sizes.iter().flat_map(|&w| [true, false].map(|inp| (inp, w))).map(|(inp, w)| sandbox_with(w, inp).map(|s| (inp, w, s))).collect::<anyhow::Result<_>>()?;
    let runtime = tokio::runtime::Runtime::new()?;
    for (label, code, n) in [("print(1+1)", TINY, 10_000), ("typical math snippet", TYPICAL, 2_000)] {
        let mut rates = vec![Vec::new(); pools.len()];
        for _ in 0..5 {
            for ((_, _, pool), rates) in pools.iter().zip(&mut rates) {
                let t = Instant::now();
                let results = runtime.block_on(pool.run_batch(vec![ToolCall::new(code); n]));
                let secs = t.elapsed().as_secs_f64();
                anyhow::ensure!(results.iter().all(|r| r.status == Status::Ok), "a throughput call failed");
                rates.push(n as f64 / secs);
            }
        }
        let median: Vec<f64> = rates
            .into_iter()
            .map(|mut v| {
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            })
            .collect();
        let rate = |inp: bool, w: usize| pools.iter().zip(&median).find(|((i, k, _), _)| *i == inp && *k == w).map_or(f64::NAN, |(_, r)| *r);
        for inp in [true, false] {
            let mode = if inp { "in-process" } else { "worker processes" };
            let (one, all) = (rate(inp, 1), rate(inp, cores));
            println!("  {mode:<17} {label:<22} 1 worker {one:>8.0} calls/s   {cores} workers {all:>8.0} calls/s ({:.2}x one)", all / one);
        }
        println!("  {:<17} {label:<22} in-process / worker processes: {:.2}x with 1 worker, {:.2}x with {cores}", "", rate(true, 1) / rate(false, 1), rate(true, cores) / rate(false, cores));
    }
    drop(pools);

    for (in_process, pool) in [(true, "in-process, the default"), (false, "worker processes")] {
        println!("\n{burst} calls submitted at once ({pool}, {cores} workers; mixed snippets):");
        let sandbox = sandbox_with(cores, in_process)?;
        burst_run(&sandbox, burst)?;
    }
    bench_queue(burst)
}

/// Mixed snippets whose outputs [`burst_correct`] checks.
fn burst_calls(n: usize) -> Vec<ToolCall> {
    (0..n)
        .map(|i| match i % 3 {
            0 => ToolCall::new(TYPICAL),
            1 => ToolCall::new(format!("print({i} ** 3 % 97)")),
            _ => ToolCall::with_stdin("n = int(input())\nprint(n * 2)", i.to_string()),
        })
        .collect()
}

/// Submits [`burst_calls`] at once and prints how many came back, right, how fast, and the peak
/// memory of this process tree.
fn burst_run(sandbox: &Sandbox, burst: usize) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    let calls = burst_calls(burst);
    let peak = Arc::new(AtomicU64::new(tree_rss()));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(tree_rss(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let t = Instant::now();
    let results = runtime.block_on(sandbox.run_batch(calls));
    let wall = t.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    sampler.join().expect("sampler");
    let ok = results.iter().filter(|r| r.status == Status::Ok).count();
    let correct = results
        .iter()
        .enumerate()
        .filter(|(i, r)| match i % 3 {
            0 => r.stdout.starts_with("59/60 "),
            1 => r.stdout == format!("{}\n", (i * i * i) % 97),
            _ => r.stdout == format!("{}\n", i * 2),
        })
        .count();
    println!(
        "  completed {} of {burst} ({ok} ok, {correct} with the right output), wall {wall:.2} s, {:.0} calls/s, peak RSS of the process tree {:.0} MiB",
        results.len(),
        burst as f64 / wall,
        peak.load(Ordering::Relaxed) as f64 / (1 << 20) as f64
    );
    Ok(())
}

/// Children killed when the benchmark ends.
struct Children(Vec<std::process::Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Calls through code-judge's Redis queue on this machine: a `redis-server` on a unix socket,
/// 1 then 2 `sandbox worker --redis` processes of one interpreter each, the same client a training
/// run uses ([`Sandbox::queue`]), and the burst through 2 workers. Skipped, saying so, without
/// `redis-server`.
fn bench_queue(burst: usize) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("rstar2-bench-redis-{}", std::process::id()));
    let server = match LocalRedis::start(&dir) {
        Ok(server) => server,
        Err(e) => {
            println!("\nThrough code-judge's Redis queue: skipped ({e})");
            return Ok(());
        }
    };
    let uri = server.uri().to_string();
    let mut children = Children(Vec::new());
    let client = QueueClient::connect(QueueConfig::new(uri.clone()))?;
    let sandbox = Sandbox::queue(client.clone());
    let runtime = tokio::runtime::Runtime::new()?;
    println!("\nThrough code-judge's Redis queue (redis-server on a unix socket, `sandbox worker --redis` processes of 1 interpreter each):");
    for workers in [1, 2] {
        while children.0.len() < workers {
            let exe = std::env::current_exe()?;
            children.0.push(Command::new(exe).args(["sandbox", "worker", "--workers", "1", "--redis", &uri]).stderr(Stdio::null()).spawn()?);
        }
        let t = Instant::now();
        while client.status()?.1 < workers {
            anyhow::ensure!(t.elapsed() < Duration::from_secs(30), "queue workers did not register");
            std::thread::sleep(Duration::from_millis(20));
        }
        for (label, code, n) in [("print(1+1)", TINY, 5_000), ("typical math snippet", TYPICAL, 2_000)] {
            let t = Instant::now();
            let results = runtime.block_on(sandbox.run_batch(vec![ToolCall::new(code); n]));
            let secs = t.elapsed().as_secs_f64();
            anyhow::ensure!(results.iter().all(|r| r.status == Status::Ok), "a call through the queue failed");
            println!("  {workers} worker process{}  {label:<22} {:>9.0} calls/s", if workers == 1 { " " } else { "es" }, n as f64 / secs);
        }
    }
    println!("\n{burst} calls submitted at once through the queue (2 worker processes):");
    burst_run(&sandbox, burst)?;
    println!("  resubmitted after no answer: {}", client.resubmitted());
    drop(children);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
