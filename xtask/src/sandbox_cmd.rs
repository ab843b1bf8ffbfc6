//! `cargo xtask sandbox exec | batch | serve | worker`.

use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use rstar2_sandbox::queue::{QueueClient, QueueConfig, serve_queue};
use rstar2_sandbox::{IsolationKind, Sandbox, SandboxConfig, Status, ToolCall, ToolResult};
use serde_json::Value;

#[derive(clap::Subcommand)]
pub enum SandboxCommand {
    /// Runs the Python code read from standard input; prints one JSON object
    /// {"status", "stdout", "stderr", "elapsed_us"}.
    Exec {
        /// Text served to the code's standard input.
        #[arg(long)]
        stdin: Option<String>,
        #[command(flatten)]
        opts: PoolOptions,
    },
    /// Runs every line {"id", "code", "stdin"?} of a JSONL file concurrently and writes one result
    /// line (the exec object plus "id") per input line, in input order.
    ///
    /// Each result is appended to the output (flushed) the moment it is ready, so a killed batch
    /// loses only the calls in flight; once every call is answered the file is rewritten in
    /// input order. `--resume` keeps the results already in the output and runs only the rest.
    Batch {
        /// Input JSONL file.
        #[arg(long)]
        input: PathBuf,
        /// Output JSONL file.
        #[arg(long)]
        output: PathBuf,
        /// Keep the results already in the output file (matched by "id", which must then be
        /// unique in the input) and run only the calls that have none.
        #[arg(long)]
        resume: bool,
        #[command(flatten)]
        opts: PoolOptions,
    },
    /// Serves the code-judge HTTP API (POST /run and /judge, each also /batch and /long-batch;
    /// GET /ping, /status), so Python RL stacks can use this sandbox unchanged.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8088")]
        addr: SocketAddr,
        /// Be code-judge's front end instead: submissions go to the Redis work queue at this URI
        /// (redis://HOST:PORT, redis+unix:///PATH) for `sandbox worker --redis` or code-judge's
        /// own workers, and no interpreters run here.
        #[arg(long, value_name = "URI")]
        redis: Option<String>,
        /// The key prefix of the queue (code-judge's REDIS_KEY_PREFIX).
        #[arg(long, default_value = "js")]
        key_prefix: String,
        #[command(flatten)]
        opts: PoolOptions,
    },
    /// Serves code-judge's Redis work queue as its workers do: --workers interpreters here take
    /// submissions from the queue until stopped, for code-judge's front end, `sandbox serve
    /// --redis`, or training runs whose [sandbox] redis points at the same server.
    Worker {
        /// The Redis server (redis://HOST:PORT[/DB], redis+unix:///PATH).
        #[arg(long, value_name = "URI")]
        redis: String,
        /// The key prefix of the queue (code-judge's REDIS_KEY_PREFIX).
        #[arg(long, default_value = "js")]
        key_prefix: String,
        #[command(flatten)]
        opts: PoolOptions,
    },
}

#[derive(clap::Args, Clone)]
pub struct PoolOptions {
    /// Wall-clock limit of one call in milliseconds.
    #[arg(long, default_value_t = 4000)]
    pub timeout_ms: u64,
    /// Interpreters kept warm (default: one per core).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Characters of stdout and stderr returned per call (head + tail).
    #[arg(long, default_value_t = 1000)]
    pub max_output_chars: usize,
    /// Where interpreters live: in-process (threads of this process, the lowest latency; the
    /// default of exec and batch) or process (worker processes, which can be killed; the
    /// default of serve and worker, which run code from the network).
    #[arg(long)]
    pub isolation: Option<IsolationKind>,
    /// Folder of pure-Python packages (unpacked sympy, mpmath) importable read-only.
    #[arg(long)]
    pub pylib: Option<PathBuf>,
    /// Modules imported when each interpreter starts (comma-separated, e.g. sympy).
    #[arg(long, value_delimiter = ',')]
    pub preload: Vec<String>,
}

impl PoolOptions {
    /// The pool, its interpreters where --isolation says, else where `default` does.
    pub fn build(&self, default: IsolationKind) -> anyhow::Result<Sandbox> {
        let mut config = SandboxConfig::of_kind(self.isolation.unwrap_or(default)).context("locating this executable")?;
        if let Some(workers) = self.workers {
            config.workers = workers;
        }
        config.interpreter.limits.timeout = Duration::from_millis(self.timeout_ms);
        config.interpreter.limits.max_output_chars = self.max_output_chars;
        config.interpreter.pylib = self.pylib.clone();
        config.interpreter.preload = self.preload.clone();
        Sandbox::new(config).context("starting the sandbox")
    }
}

pub fn run(cmd: SandboxCommand) -> anyhow::Result<()> {
    match cmd {
        SandboxCommand::Exec { stdin, mut opts } => {
            let mut code = String::new();
            std::io::stdin().read_to_string(&mut code).context("reading code from standard input")?;
            opts.workers = Some(1);
            let sandbox = opts.build(IsolationKind::InProcess)?;
            let result = sandbox.run_blocking(ToolCall { code, stdin });
            println!("{}", serde_json::to_string(&result)?);
            Ok(())
        }
        SandboxCommand::Batch { input, output, resume, opts } => batch(&input, &output, resume, &opts),
        SandboxCommand::Serve { addr, redis, key_prefix, opts } => serve(addr, redis.map(|uri| queue_config(uri, key_prefix)), &opts),
        SandboxCommand::Worker { redis, key_prefix, opts } => {
            let config = queue_config(redis, key_prefix);
            let sandbox = opts.build(IsolationKind::Process)?;
            eprintln!("serving code-judge's queue {} at {} with {} interpreters", config.work_queue(), config.uri, sandbox.workers());
            serve_queue(&config, &sandbox, sandbox.workers(), &AtomicBool::new(false)).context("serving the queue")
        }
    }
}

fn queue_config(uri: String, key_prefix: String) -> QueueConfig {
    QueueConfig { key_prefix, ..QueueConfig::new(uri) }
}

/// One parsed input line of `sandbox batch`: the call, or why the line is unusable.
fn parse_batch_line(line: &str) -> (Value, Result<ToolCall, String>) {
    let value: Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(e) => return (Value::Null, Err(format!("invalid JSON: {e}"))),
    };
    let id = value.get("id").cloned().unwrap_or(Value::Null);
    let Some(code) = value.get("code").and_then(Value::as_str) else {
        return (id, Err("missing string field \"code\"".into()));
    };
    let stdin = match value.get("stdin") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return (id, Err("field \"stdin\" must be a string".into())),
    };
    (id, Ok(ToolCall { code: code.to_owned(), stdin }))
}

fn with_id(id: Value, result: &ToolResult) -> Value {
    let mut obj = serde_json::to_value(result).expect("results serialize");
    obj.as_object_mut().expect("a result is an object").insert("id".into(), id);
    obj
}

fn batch(input: &PathBuf, output: &PathBuf, resume: bool, opts: &PoolOptions) -> anyhow::Result<()> {
    let file = std::fs::File::open(input).with_context(|| format!("opening {}", input.display()))?;
    let mut lines = Vec::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        lines.push(line.with_context(|| format!("reading line {} of {}", n + 1, input.display()))?);
    }
    let parsed: Vec<(Value, Result<ToolCall, String>)> = lines.iter().map(|l| parse_batch_line(l)).collect();
    // Results kept from an earlier, interrupted run: input index -> output line.
    let mut done: BTreeMap<usize, String> = BTreeMap::new();
    if resume && output.exists() {
        let mut index_of: BTreeMap<String, usize> = BTreeMap::new();
        for (i, (id, _)) in parsed.iter().enumerate() {
            anyhow::ensure!(!id.is_null(), "--resume matches results by \"id\": line {} of {} has none", i + 1, input.display());
            anyhow::ensure!(index_of.insert(id.to_string(), i).is_none(), "--resume matches results by \"id\": {id} appears twice in {}", input.display());
        }
        let text = std::fs::read_to_string(output).with_context(|| format!("reading {}", output.display()))?;
        for line in text.lines() {
            // A line cut short by the kill is not a result: its call runs again.
            let Ok(value) = serde_json::from_str::<Value>(line) else { continue };
            if let Some(&i) = value.get("id").and_then(|id| index_of.get(&id.to_string())) {
                done.insert(i, line.to_owned());
            }
        }
        eprintln!("--resume: {} of {} calls already answered in {}", done.len(), lines.len(), output.display());
    }
    let sandbox = opts.build(IsolationKind::InProcess)?;
    let runtime = tokio::runtime::Runtime::new()?;
    // Start the output with the kept results only (dropping a cut line), then append.
    write_lines(output, done.values())?;
    let mut out = std::fs::OpenOptions::new().append(true).open(output).with_context(|| format!("opening {}", output.display()))?;
    let bar = ProgressBar::new(lines.len() as u64);
    bar.set_style(ProgressStyle::with_template("{bar:40} {pos}/{len} calls  {per_sec}  eta {eta}").expect("valid template"));
    bar.set_position(done.len() as u64);
    let start = Instant::now();
    let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut results: BTreeMap<usize, String> = done.clone();
    runtime.block_on(async {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for (index, (id, call)) in parsed.into_iter().enumerate() {
            if done.contains_key(&index) {
                continue;
            }
            let tx = tx.clone();
            let sandbox = sandbox.clone();
            tokio::spawn(async move {
                let result = match call {
                    Ok(call) => sandbox.run(call).await,
                    Err(why) => ToolResult { status: Status::InvalidInput, stdout: String::new(), stderr: why, elapsed_us: 0 },
                };
                let _ = tx.send((index, id, result));
            });
        }
        drop(tx);
        while let Some((index, id, result)) = rx.recv().await {
            *counts.entry(result.status.as_str()).or_default() += 1;
            let line = with_id(id, &result).to_string();
            // One write per line, unbuffered: a kill leaves whole lines (and at most one cut).
            out.write_all(format!("{line}\n").as_bytes())?;
            results.insert(index, line);
            bar.inc(1);
        }
        anyhow::ensure!(results.len() == lines.len(), "only {} of {} results were produced", results.len(), lines.len());
        anyhow::Ok(())
    })?;
    drop(out);
    // Every call answered: the file in input order, swapped in whole.
    write_lines(output, results.values())?;
    bar.finish_and_clear();
    let summary: Vec<String> = counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let pool = sandbox.isolation().map_or_else(String::new, |kind| format!(" ({} {kind} interpreters)", sandbox.workers()));
    let kept = if done.is_empty() { String::new() } else { format!(" ({} kept from the earlier run)", done.len()) };
    eprintln!("{} calls in {:.2} s{pool}{kept}: {}", lines.len() - done.len(), start.elapsed().as_secs_f64(), summary.join(", "));
    Ok(())
}

/// Writes `lines` to `path` whole ([`rstar2_model::write_atomic`]), so a kill leaves the old
/// file or the new one.
fn write_lines<'a>(path: &std::path::Path, lines: impl Iterator<Item = &'a String>) -> anyhow::Result<()> {
    Ok(rstar2_model::write_atomic(path, lines.map(|l| format!("{l}\n")).collect::<String>().as_bytes())?)
}

fn serve(addr: SocketAddr, queue: Option<QueueConfig>, opts: &PoolOptions) -> anyhow::Result<()> {
    let (sandbox, behind) = match queue {
        Some(config) => {
            let behind = format!("workers of the queue {} at {}", config.work_queue(), config.uri);
            (Sandbox::queue(QueueClient::connect(config).context("connecting to the queue")?), behind)
        }
        None => {
            let sandbox = opts.build(IsolationKind::Process)?;
            let behind = format!("{} local interpreters", sandbox.workers());
            (sandbox, behind)
        }
    };
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
        eprintln!("rstar2 sandbox serving the code-judge API on http://{addr} (POST /run, /judge and their /batch, /long-batch) with {behind}");
        axum::serve(listener, rstar2_sandbox::http::router(sandbox)).await.context("serving HTTP")
    })
}
