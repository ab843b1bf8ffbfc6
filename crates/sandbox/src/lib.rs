//! A fast, capability-free Python tool environment for agentic RL rollouts, on RustPython.
//!
//! Each call runs Python source in a fresh `__main__` namespace on a warm interpreter and returns
//! its status, captured stdout and stderr (with CPython-style tracebacks) and elapsed time; a
//! trailing bare expression is echoed like IPython. Interpreters are built without RustPython's
//! `host_env`: there is no file, socket, process, signal or ctypes code in the binary, so nothing
//! on the host is reachable from Python. Limits: wall-clock timeout, output caps, memory per call
//! (where the binary installs [`BudgetAllocator`]), recursion.
//!
//! Interpreters run on threads of this process ([`Isolation::InProcess`]: the lowest latency) or
//! in worker processes of your own binary ([`Isolation::Process`]: call
//! [`worker::dispatch_worker`] first thing in `main`), which can be killed and have an
//! address-space limit as well. Either way native work that no interrupt reaches is guarded
//! (huge powers and shifts refused, native loops over iterators stopped at the deadline,
//! exponential regexes refused); what still gets stuck (an exponential regex the guard does not
//! recognize) is abandoned in-process, killed in a worker process. Past one machine, [`queue`]
//! speaks code-judge's Redis queue: these pools serve it as workers, and [`Sandbox::queue`] sends
//! calls to workers elsewhere.
//!
//! ```no_run
//! use rstar2_sandbox::{Sandbox, SandboxConfig, Status, ToolCall, WorkerCommand};
//!
//! fn main() {
//!     rstar2_sandbox::worker::dispatch_worker();
//!     let sandbox = Sandbox::new(SandboxConfig::process(WorkerCommand::current_exe().unwrap())).unwrap();
//!     let result = sandbox.run_blocking(ToolCall::new("x = 6 * 7\nx"));
//!     assert_eq!((result.status, result.stdout.as_str()), (Status::Ok, "42\n"));
//! }
//! ```
#![deny(missing_docs)]

mod analysis;
mod call;
mod config;
pub mod depth;
mod guards;
#[cfg(not(target_arch = "wasm32"))]
pub mod http;
mod interp;
#[cfg(not(target_arch = "wasm32"))]
mod judge;
mod memory;
mod outcome;
#[cfg(not(target_arch = "wasm32"))]
mod pool;
#[cfg(not(target_arch = "wasm32"))]
pub mod queue;
#[cfg(not(target_arch = "wasm32"))]
pub mod remote;
mod shims;
#[cfg(not(target_arch = "wasm32"))]
mod watchdog;
#[cfg(target_arch = "wasm32")]
#[path = "watchdog_web.rs"]
mod watchdog;
#[cfg(not(target_arch = "wasm32"))]
pub mod worker;

pub use analysis::{Analysis, analyze};
pub use config::{InterpreterConfig, Isolation, IsolationKind, Limits, SandboxConfig, WorkerCommand};
pub use interp::{InterpreterError, Runner};
#[cfg(not(target_arch = "wasm32"))]
pub use judge::SubmissionResult;
pub use memory::{BudgetAllocator, budgets_enforced};
pub use outcome::{Status, ToolCall, ToolResult, truncate_middle};
#[cfg(not(target_arch = "wasm32"))]
pub use pool::{Sandbox, SandboxError, Session};
pub use watchdog::Watchdog;
