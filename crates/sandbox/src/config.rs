//! Limits and pool settings.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Per-call limits. Defaults follow the original rStar2 tool service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    /// Wall-clock budget of one call (default 4 s, as the original tool).
    #[serde(with = "millis")]
    pub timeout: Duration,
    /// Characters of stdout and of stderr returned per call, head + tail (default 1000).
    pub max_output_chars: usize,
    /// A call that prints more than this many characters to one stream is stopped with
    /// `output_limit` (a print flood); default 1 MiB.
    pub max_stream_chars: usize,
    /// What one call may allocate, in bytes (default 2 GiB): past it the call ends with
    /// `memory_limit`. Counted per call where the binary installs
    /// [`crate::BudgetAllocator`] (in-process and in worker processes alike); a worker process
    /// also gets an address-space limit (this plus 1 GiB where calls are counted, else this).
    pub memory_bytes: u64,
    /// Python recursion limit (default 1000, as CPython; at most 50,000, which is also the most
    /// `sys.setrecursionlimit` grants a call).
    pub recursion_limit: u32,
    /// Largest accepted source or stdin, in bytes (default 1 MiB); larger calls are `invalid_input`.
    pub max_input_bytes: usize,
    /// Source (the call's, or given to `exec`, `eval`, `compile`, `ast.parse`) whose nesting may
    /// pass this depth ([`crate::depth::nesting_bound`]) is refused with the `RecursionError`
    /// RustPython gives past about 1,000 levels, before the parser's native recursion could
    /// overflow the thread's stack (default [`crate::depth::DEFAULT_MAX_NESTING`]).
    #[serde(default = "default_max_nesting")]
    pub max_nesting: usize,
}

fn default_max_nesting() -> usize {
    crate::depth::DEFAULT_MAX_NESTING
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_secs(4),
            max_output_chars: 1000,
            max_stream_chars: 1 << 20,
            memory_bytes: 2 << 30,
            recursion_limit: 1000,
            max_input_bytes: 1 << 20,
            max_nesting: crate::depth::DEFAULT_MAX_NESTING,
        }
    }
}

mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

/// Everything an interpreter needs to be built; sent to worker processes as JSON.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InterpreterConfig {
    /// Limits of every call.
    pub limits: Limits,
    /// Folder of pure-Python packages (e.g. unpacked sympy and mpmath wheels), importable read-only.
    pub pylib: Option<PathBuf>,
    /// Modules imported when an interpreter is created, outside any call's time budget
    /// (e.g. `["sympy"]`, whose first import takes about 2 s).
    pub preload: Vec<String>,
}

/// Where interpreters live.
#[derive(Debug, Clone, PartialEq)]
pub enum Isolation {
    /// Each interpreter runs in a worker process of our own binary with an address-space limit;
    /// a call stuck in native code past its deadline, a crash or a memory blow-up kills only that
    /// process, which is respawned. The safe default.
    Process(WorkerCommand),
    /// Interpreters on threads of this process: the lowest latency, memory counted per call
    /// (with [`crate::BudgetAllocator`]), native work guarded (see the crate docs). A call stuck
    /// in native code the guards miss can only be abandoned, its thread burning a core (and
    /// possibly holding interpreter-wide locks) until the native call ends, at most
    /// [`SandboxConfig::max_abandoned`] at once; and a VM panic from crafted bytecode, although
    /// caught, may have corrupted the host's heap. For code from the network prefer `Process`.
    InProcess,
}

/// Where interpreters live, as a setting: `in-process` (the default for code from this
/// program's own rollouts, evaluations and commands) or `process` (worker processes: the
/// default for `sandbox serve`, which runs code from the network). See [`Isolation`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IsolationKind {
    /// [`Isolation::InProcess`].
    #[default]
    InProcess,
    /// [`Isolation::Process`] with this executable as the worker.
    Process,
}

impl IsolationKind {
    /// "in-process" or "process".
    pub fn name(self) -> &'static str {
        match self {
            IsolationKind::InProcess => "in-process",
            IsolationKind::Process => "process",
        }
    }
}

impl std::fmt::Display for IsolationKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for IsolationKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "in-process" => Ok(IsolationKind::InProcess),
            "process" => Ok(IsolationKind::Process),
            other => Err(format!("unknown isolation {other:?}: expected in-process or process")),
        }
    }
}

/// How to start a worker process: a program that calls [`crate::worker::serve_stdio`] when given
/// the argument [`crate::worker::WORKER_ARG`].
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerCommand {
    /// The program, usually a binary of this workspace.
    pub program: PathBuf,
    /// Arguments that come before [`crate::worker::WORKER_ARG`].
    pub args: Vec<String>,
}

impl WorkerCommand {
    /// The current executable, which must dispatch [`crate::worker::WORKER_ARG`] first thing in
    /// `main` (as `cargo xtask` and `rstar2-sandbox-worker` do).
    pub fn current_exe() -> std::io::Result<Self> {
        Ok(WorkerCommand { program: std::env::current_exe()?, args: Vec::new() })
    }

    /// A given program.
    pub fn program(program: impl Into<PathBuf>) -> Self {
        WorkerCommand { program: program.into(), args: Vec::new() }
    }
}

/// Settings of a [`crate::Sandbox`].
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxConfig {
    /// Interpreters kept warm (default: one per core).
    pub workers: usize,
    /// Where they live.
    pub isolation: Isolation,
    /// How each one is built.
    pub interpreter: InterpreterConfig,
    /// In-process only: how many threads abandoned to native work (their call answered
    /// `timeout`, a new interpreter thread started in their place) may be alive at once. Past it
    /// a stuck thread gets no replacement: it rebuilds its interpreter and serves again when its
    /// native call returns, so the pool runs with fewer interpreters meanwhile instead of
    /// growing without bound ([`crate::Sandbox::abandoned_threads`] counts both). Default 4.
    pub max_abandoned: usize,
}

impl SandboxConfig {
    /// In-process interpreters, one per core.
    pub fn in_process() -> Self {
        SandboxConfig { workers: default_workers(), isolation: Isolation::InProcess, interpreter: Default::default(), max_abandoned: 4 }
    }

    /// Worker processes started with `command`, one per core.
    pub fn process(command: WorkerCommand) -> Self {
        SandboxConfig { workers: default_workers(), isolation: Isolation::Process(command), interpreter: Default::default(), max_abandoned: 4 }
    }

    /// One interpreter per core, where `kind` says (worker processes of this executable, which
    /// must call [`crate::worker::dispatch_worker`] first thing in `main`).
    pub fn of_kind(kind: IsolationKind) -> std::io::Result<Self> {
        Ok(match kind {
            IsolationKind::InProcess => SandboxConfig::in_process(),
            IsolationKind::Process => SandboxConfig::process(WorkerCommand::current_exe()?),
        })
    }
}

fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
