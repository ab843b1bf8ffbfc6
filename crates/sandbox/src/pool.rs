//! The pool: warm interpreters on their own threads (or in worker processes), a shared FIFO of
//! calls, and sessions that keep one interpreter for a trajectory.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use tokio::sync::oneshot;

use crate::config::{Isolation, IsolationKind, SandboxConfig};
use crate::interp::{InterpreterError, Runner};
use crate::memory;
use crate::outcome::{Status, ToolCall, ToolResult};
use crate::queue::QueueClient;
use crate::remote::HttpClient;
use crate::watchdog::Watchdog;
use crate::worker::{ProcessWorker, SpawnError, kill_grace};

type Reply = oneshot::Sender<ToolResult>;

enum Job {
    Call { call: ToolCall, reply: Reply },
    Session { calls: mpsc::Receiver<(ToolCall, Reply)> },
}

/// Why a sandbox could not start.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// An in-process interpreter could not be created.
    #[error(transparent)]
    Interpreter(#[from] InterpreterError),
    /// A worker process could not be started.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// The configuration asks for no workers.
    #[error("a sandbox needs at least one worker")]
    NoWorkers,
}

struct Shared {
    config: SandboxConfig,
    jobs: crossbeam_channel::Receiver<Job>,
    watchdog: Watchdog,
    abandoned: Arc<Abandoned>,
}

/// In-process threads left to native work.
#[derive(Default)]
struct Abandoned {
    /// Alive now, replaced by a new interpreter thread.
    alive: AtomicUsize,
    /// Times the cap kept a stuck thread without a replacement.
    held_back: AtomicU64,
    /// Workers held back now (stuck, no replacement): when all are, nothing takes calls.
    held_now: AtomicUsize,
    /// Interpreter threads parked for good (a native allocation refused past twice the budget,
    /// or a native stack overflow), each replaced; they keep the memory they held.
    parked: AtomicU64,
}

impl Abandoned {
    /// When every worker is stuck in native code, answers the calls waiting in `jobs` with an
    /// error rather than leaving them (and whoever waits on them) queued until one returns.
    fn refuse_waiting_if_all_stuck(&self, workers: usize, jobs: &crossbeam_channel::Receiver<Job>) {
        while self.held_now.load(Ordering::Acquire) >= workers {
            let Ok(job) = jobs.try_recv() else { return };
            if let Job::Call { reply, .. } = job {
                let msg = "every interpreter of the sandbox is stuck in native code (SandboxConfig::max_abandoned reached): the call was not run\n";
                let _ = reply.send(ToolResult::failure(Status::Crashed, msg, 0));
            }
            // A session's job is dropped with its channel: its calls are answered as lost.
        }
    }
}

/// A pool of warm Python interpreters, or ([`Sandbox::queue`]) code-judge workers on other
/// machines reached through Redis. Cheap to clone; all clones share the pool, which shuts down
/// when the last clone is dropped.
///
/// ```no_run
/// # async fn demo() -> Result<(), rstar2_sandbox::SandboxError> {
/// use rstar2_sandbox::{Sandbox, SandboxConfig, ToolCall, WorkerCommand};
/// let sandbox = Sandbox::new(SandboxConfig::process(WorkerCommand::current_exe().unwrap()))?;
/// let result = sandbox.run(ToolCall::new("import math\nmath.comb(10, 3)")).await;
/// assert_eq!(result.stdout, "120\n");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Sandbox {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Local { jobs: crossbeam_channel::Sender<Job>, waiting: crossbeam_channel::Receiver<Job>, workers: usize, abandoned: Arc<Abandoned>, kind: IsolationKind },
    Queue(QueueClient),
    Http(HttpClient),
}

/// How many times a call sent through the queue is submitted before it is given up as lost
/// (code-judge's client: 4).
const QUEUE_TRIES: usize = 4;

impl Sandbox {
    /// Starts the pool. Every worker has its interpreter ready when this returns, so the first
    /// calls do not pay for start-up (and a broken configuration fails here, not later).
    pub fn new(config: SandboxConfig) -> Result<Self, SandboxError> {
        if config.workers == 0 {
            return Err(SandboxError::NoWorkers);
        }
        let kind = match config.isolation {
            Isolation::InProcess => IsolationKind::InProcess,
            Isolation::Process(_) => IsolationKind::Process,
        };
        let (tx, rx) = crossbeam_channel::unbounded();
        let abandoned = Arc::new(Abandoned::default());
        let shared = Arc::new(Shared { config, jobs: rx.clone(), watchdog: Watchdog::new(), abandoned: abandoned.clone() });
        let (ready_tx, ready_rx) = mpsc::channel();
        for _ in 0..shared.config.workers {
            spawn_worker(shared.clone(), Some(ready_tx.clone()));
        }
        drop(ready_tx);
        for ready in ready_rx {
            ready?;
        }
        Ok(Sandbox { backend: Backend::Local { jobs: tx, waiting: rx, workers: shared.config.workers, abandoned, kind } })
    }

    /// Tool calls run by code-judge workers (ours, `sandbox worker --redis`, or code-judge's own)
    /// that pull from the Redis queue `client` submits to: independent calls only (code-judge
    /// keeps no state between submissions), each submitted as part of a long batch (no age
    /// limit) and submitted again if no worker answered, up to 4 times.
    pub fn queue(client: QueueClient) -> Self {
        Sandbox { backend: Backend::Queue(client) }
    }

    /// Tool calls run by a remote code-judge HTTP server (`sandbox serve` on another machine,
    /// or code-judge's front end): independent calls only, each batch sent as a long batch and
    /// sent again while the server cannot be reached (up to 4 times).
    pub fn http(client: HttpClient) -> Self {
        Sandbox { backend: Backend::Http(client) }
    }

    /// The queue this sandbox submits to, if it is one.
    pub fn queue_client(&self) -> Option<&QueueClient> {
        match &self.backend {
            Backend::Queue(client) => Some(client),
            Backend::Local { .. } | Backend::Http(_) => None,
        }
    }

    /// Where this pool's interpreters live (`None` for a queue or a remote server).
    pub fn isolation(&self) -> Option<IsolationKind> {
        match &self.backend {
            Backend::Local { kind, .. } => Some(*kind),
            Backend::Queue(_) | Backend::Http(_) => None,
        }
    }

    /// Interpreters in the pool (for a queue: the workers registered now, 0 if Redis fails).
    pub fn workers(&self) -> usize {
        match &self.backend {
            Backend::Local { workers, .. } => *workers,
            Backend::Queue(client) => client.status().map_or(0, |(_, workers)| workers),
            Backend::Http(client) => client.status().map_or(0, |(_, workers)| workers),
        }
    }

    /// In-process threads still stuck in native work after their call was answered `timeout`
    /// and replaced, and how many times [`SandboxConfig::max_abandoned`] kept a stuck thread
    /// without a replacement (it then serves again once its native call returns). Zero for
    /// worker processes (a stuck one is killed) and queues.
    pub fn abandoned_threads(&self) -> (usize, u64) {
        match &self.backend {
            Backend::Local { abandoned, .. } => (abandoned.alive.load(Ordering::Relaxed), abandoned.held_back.load(Ordering::Relaxed)),
            Backend::Queue(_) | Backend::Http(_) => (0, 0),
        }
    }

    /// In-process interpreter threads lost for good so far (parked after a native allocation
    /// the budget refused, or after a native stack overflow), each replaced by a new one; their
    /// calls were answered `memory_limit` or `crashed`. Zero for worker processes and queues.
    pub fn lost_interpreters(&self) -> u64 {
        match &self.backend {
            Backend::Local { abandoned, .. } => abandoned.parked.load(Ordering::Relaxed),
            Backend::Queue(_) | Backend::Http(_) => 0,
        }
    }

    /// Calls and sessions waiting for a free interpreter (for a queue: work items waiting).
    pub fn queued(&self) -> usize {
        match &self.backend {
            Backend::Local { jobs, .. } => jobs.len(),
            Backend::Queue(client) => client.status().map_or(0, |(queued, _)| queued),
            Backend::Http(client) => client.status().map_or(0, |(queued, _)| queued),
        }
    }

    /// Runs one independent call; it queues while every interpreter is busy.
    pub async fn run(&self, call: ToolCall) -> ToolResult {
        if self.is_remote() {
            return self.run_batch(vec![call]).await.pop().unwrap_or_else(lost);
        }
        let (reply, result) = oneshot::channel();
        self.submit(Job::Call { call, reply });
        result.await.unwrap_or_else(|_| lost())
    }

    /// Runs one independent call from synchronous code.
    pub fn run_blocking(&self, call: ToolCall) -> ToolResult {
        if self.is_remote() {
            return self.remote(vec![call]).pop().unwrap_or_else(lost);
        }
        let (reply, result) = oneshot::channel();
        self.submit(Job::Call { call, reply });
        result.blocking_recv().unwrap_or_else(|_| lost())
    }

    /// Submits all calls at once and returns their results in order.
    pub async fn run_batch(&self, calls: Vec<ToolCall>) -> Vec<ToolResult> {
        if self.is_remote() {
            let sandbox = self.clone();
            let n = calls.len();
            return tokio::task::spawn_blocking(move || sandbox.remote(calls)).await.unwrap_or_else(|_| (0..n).map(|_| lost()).collect());
        }
        let pending: Vec<_> = calls
            .into_iter()
            .map(|call| {
                let (reply, result) = oneshot::channel();
                self.submit(Job::Call { call, reply });
                result
            })
            .collect();
        let mut results = Vec::with_capacity(pending.len());
        for result in pending {
            results.push(result.await.unwrap_or_else(|_| lost()));
        }
        results
    }

    /// Opens a session: its calls run one after another on one interpreter and share its state
    /// (like Jupyter cells); the interpreter is replaced when the session is dropped. A session
    /// holds a worker while it lives, so keep fewer open sessions than workers busy waiting.
    /// A remote sandbox (queue or HTTP) has no sessions: their calls are answered
    /// `invalid_input`.
    pub fn session(&self) -> Session {
        if self.is_remote() {
            return Session { calls: None };
        }
        let (tx, calls) = mpsc::channel();
        self.submit(Job::Session { calls });
        Session { calls: Some(tx) }
    }

    fn submit(&self, job: Job) {
        // The receiving side lives as long as any worker; a send can only fail during shutdown,
        // and then the reply channel is dropped and the caller gets `lost()`.
        if let Backend::Local { jobs, waiting, workers, abandoned, .. } = &self.backend {
            let _ = jobs.send(job);
            abandoned.refuse_waiting_if_all_stuck(*workers, waiting);
        }
    }
}

impl Sandbox {
    fn is_remote(&self) -> bool {
        !matches!(self.backend, Backend::Local { .. })
    }

    /// Calls through code-judge's queue (as a long batch, retried while no worker answers) or
    /// its HTTP API; blocking.
    fn remote(&self, calls: Vec<ToolCall>) -> Vec<ToolResult> {
        let submissions = calls.iter().map(crate::judge::submission_of).collect();
        let results = match &self.backend {
            Backend::Queue(client) => client.judge_retrying(submissions, true, QUEUE_TRIES),
            Backend::Http(client) => client.run(submissions),
            Backend::Local { .. } => unreachable!("remote() on a local pool"),
        };
        results.iter().map(|r| r.to_tool_result()).collect()
    }
}

/// A trajectory's own interpreter; see [`Sandbox::session`].
pub struct Session {
    /// None for a queue sandbox.
    calls: Option<mpsc::Sender<(ToolCall, Reply)>>,
}

impl Session {
    /// Runs a call that sees the globals, imports and definitions of this session's earlier calls.
    pub async fn run(&self, call: ToolCall) -> ToolResult {
        let Some(calls) = &self.calls else {
            return ToolResult::failure(Status::InvalidInput, "sessions need a local sandbox: code-judge (its queue or its HTTP API) runs every call on its own", 0);
        };
        let (reply, result) = oneshot::channel();
        if calls.send((call, reply)).is_err() {
            return lost();
        }
        result.await.unwrap_or_else(|_| lost())
    }
}

fn lost() -> ToolResult {
    ToolResult::failure(Status::Crashed, "the sandbox worker went away before answering", 0)
}

type Ready = Option<mpsc::Sender<Result<(), SandboxError>>>;

fn spawn_worker(shared: Arc<Shared>, ready: Ready) {
    std::thread::Builder::new()
        .name("rstar2-sandbox-worker".into())
        .stack_size(crate::interp::INTERPRETER_STACK)
        .spawn(move || match &shared.config.isolation {
            Isolation::InProcess => in_process_worker(shared.clone(), ready),
            Isolation::Process(command) => match ProcessWorker::spawn(command, &shared.config.interpreter) {
                Ok(worker) => {
                    if let Some(ready) = ready {
                        let _ = ready.send(Ok(()));
                    }
                    process_worker(&shared, worker);
                }
                Err(e) => {
                    if let Some(ready) = ready {
                        let _ = ready.send(Err(e.into()));
                    }
                }
            },
        })
        .expect("spawning a sandbox worker thread");
}

fn process_worker(shared: &Shared, mut worker: ProcessWorker) {
    while let Ok(job) = shared.jobs.recv() {
        match job {
            Job::Call { call, reply } => {
                let _ = reply.send(worker.run(&call, true));
            }
            Job::Session { calls } => {
                for (call, reply) in calls {
                    let _ = reply.send(worker.run(&call, false));
                }
                worker.reset();
            }
        }
    }
}

/// Sends `result` unless the call was answered already (by the watchdog, or by the call's end).
fn answer_once(reply: &Mutex<Option<Reply>>, result: ToolResult) {
    if let Some(reply) = reply.lock().unwrap_or_else(|p| p.into_inner()).take() {
        let _ = reply.send(result);
    }
}

/// An interpreter thread. A call that is stuck in native code past its deadline plus a grace
/// period is answered with `timeout` by the watchdog, which starts a replacement thread; this
/// thread then exits as soon as the native call returns.
fn in_process_worker(shared: Arc<Shared>, ready: Ready) {
    let config = &shared.config.interpreter;
    let mut runner = match Runner::new(config) {
        Ok(r) => {
            if let Some(ready) = ready {
                let _ = ready.send(Ok(()));
            }
            r
        }
        Err(e) => {
            match ready {
                Some(ready) => {
                    let _ = ready.send(Err(e.into()));
                }
                None => eprintln!("rstar2-sandbox: {e}"),
            }
            return;
        }
    };
    // Set by the watchdog when the current call is stuck in native work past its grace period;
    // `replaced` when a new thread took this one's place (this one then exits when the call
    // returns), else it was held back by the cap and serves on.
    let (stuck, replaced) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    // A native operation whose allocation is refused parks this thread instead of aborting the
    // process (see `memory`).
    let _park_on_abort = memory::park_instead_of_aborting();
    // Runs one call; returns whether the interpreter must be replaced.
    let run = |runner: &Runner, call: &ToolCall, reply: Reply, in_session: bool| -> bool {
        let reply = Arc::new(Mutex::new(Some(reply)));
        let timeout = config.limits.timeout;
        let started = std::time::Instant::now();
        let on_stuck = {
            let (reply, stuck, replaced, shared) = (reply.clone(), stuck.clone(), replaced.clone(), shared.clone());
            Box::new(move |parked: Option<memory::Parked>| {
                stuck.store(true, Ordering::Release);
                if let Some(why) = parked {
                    // Parked for good, burning no CPU: always replaced, and not counted among the
                    // abandoned threads the cap is for.
                    let answer = match why {
                        memory::Parked::Memory => {
                            let mib = shared.config.interpreter.limits.memory_bytes >> 20;
                            ToolResult::failure(
                                Status::MemoryLimit,
                                format!("MemoryError: a native operation asked for more memory than the call's limit of {mib} MiB allows (interpreter abandoned)\n"),
                                started.elapsed().as_micros() as u64,
                            )
                        }
                        memory::Parked::StackOverflow => ToolResult::failure(
                            Status::Crashed,
                            "RecursionError: the interpreter's native stack overflowed (code nested too deeply; interpreter abandoned)\n",
                            started.elapsed().as_micros() as u64,
                        ),
                    };
                    shared.abandoned.parked.fetch_add(1, Ordering::Relaxed);
                    answer_once(&reply, answer);
                    spawn_worker(shared, None);
                    return;
                }
                let fresh = shared.abandoned.alive.fetch_add(1, Ordering::AcqRel) < shared.config.max_abandoned;
                let fate = if fresh {
                    "interpreter abandoned"
                } else {
                    shared.abandoned.alive.fetch_sub(1, Ordering::AcqRel);
                    shared.abandoned.held_back.fetch_add(1, Ordering::Relaxed);
                    shared.abandoned.held_now.fetch_add(1, Ordering::AcqRel);
                    "too many interpreters abandoned already: this one serves again when the native call returns"
                };
                let secs = timeout.as_secs_f64();
                let msg = format!("TimeoutError: execution exceeded the time limit of {secs:.1} s (stuck in native code; {fate})\n");
                answer_once(&reply, ToolResult::failure(Status::Timeout, msg, (timeout + kill_grace(timeout)).as_micros() as u64));
                if fresh {
                    replaced.store(true, Ordering::Release);
                    spawn_worker(shared, None);
                } else {
                    shared.abandoned.refuse_waiting_if_all_stuck(shared.config.workers, &shared.jobs);
                }
            })
        };
        let (result, replace) = runner.run_with(call, &shared.watchdog, in_session, Some((kill_grace(timeout), on_stuck)));
        answer_once(&reply, result);
        replace
    };
    while let Ok(job) = shared.jobs.recv() {
        let mut replace = match job {
            Job::Call { call, reply } => run(&runner, &call, reply, false),
            Job::Session { calls } => {
                for (call, reply) in calls {
                    run(&runner, &call, reply, true);
                    if stuck.load(Ordering::Acquire) {
                        break;
                    }
                }
                true
            }
        };
        if stuck.swap(false, Ordering::AcqRel) {
            if replaced.load(Ordering::Acquire) {
                shared.abandoned.alive.fetch_sub(1, Ordering::AcqRel);
                return;
            }
            shared.abandoned.held_now.fetch_sub(1, Ordering::AcqRel);
            replace = true;
        }
        if replace {
            match Runner::new(config) {
                Ok(fresh) => runner = fresh,
                Err(e) => {
                    eprintln!("rstar2-sandbox: {e}");
                    spawn_worker(shared.clone(), None);
                    return;
                }
            }
        }
    }
}
