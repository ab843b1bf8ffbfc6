//! One RustPython interpreter set up as a tool: capability-free modules, prelude, and the
//! semantics of a single call (capture, echo, traceback, timeout, limits).

use std::cell::RefCell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use web_time::Instant;

use rustpython::InterpreterBuilderExt;
use rustpython_vm::builtins::{PyStrRef, PyTuple};
use rustpython_vm::compiler::Mode;
use rustpython_vm::scope::Scope;
use rustpython_vm::signal::{UserSignalSender, user_signal_channel};
use rustpython_vm::{AsObject, Interpreter, InterpreterBuilder, PyObjectRef, PyResult, Settings, VirtualMachine};

use crate::analysis::analyze;
use crate::call::{CallGuard, memory_message, set_current_call};
use crate::config::InterpreterConfig;
use crate::memory::{self, Budget};
use crate::outcome::{Status, ToolCall, ToolResult, truncate_middle};
use crate::shims;
use crate::watchdog::{StuckHandler, Watchdog};

const PRELUDE: &str = include_str!("py/prelude.py");
const SCRATCH_FS: &str = include_str!("py/scratch_fs.py");
const IMPORTER: &str = include_str!("py/importer.py");

/// Why an interpreter could not be built.
#[derive(Debug, thiserror::Error)]
#[error("creating a Python interpreter failed while {stage}: {message}")]
pub struct InterpreterError {
    stage: &'static str,
    message: String,
}

/// The native stack of every interpreter thread (in-process, and in worker processes): deep
/// enough that source the nesting check lets through compiles, and RustPython's Python-level
/// recursion limits fire before it runs out.
#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
pub(crate) const INTERPRETER_STACK: usize = 16 << 20;

/// One warm interpreter. Lives on the thread that created it (RustPython computes its native
/// stack limit from the creating thread).
pub struct Runner {
    interp: Interpreter,
    begin: PyObjectRef,
    finish: PyObjectRef,
    sender: UserSignalSender,
    config: InterpreterConfig,
    /// Globals shared by the calls of a session (see [`Runner::run_session`]).
    session_globals: RefCell<Option<Scope>>,
    /// Snippets this interpreter ran before, by source: their analysis and compiled code.
    compiled: RefCell<CompileCache>,
}

/// Code objects are immutable, and each call runs them in fresh globals, so a snippet seen
/// before (the same program in several rollouts of a group, say) skips the static scan and
/// RustPython's compiler, which is most of a small call's time. Bounded: snippets up to
/// [`CompileCache::MAX_SOURCE`] bytes, the [`CompileCache::CAPACITY`] most recently used.
#[derive(Default)]
struct CompileCache {
    entries: std::collections::HashMap<String, Compiled>,
    clock: u64,
}

struct Compiled {
    analysis: crate::analysis::Analysis,
    /// Absent until the snippet compiled without a syntax error.
    code: Option<rustpython_vm::PyRef<rustpython_vm::builtins::PyCode>>,
    last_use: u64,
}

impl CompileCache {
    const CAPACITY: usize = 256;
    const MAX_SOURCE: usize = 16 << 10;

    /// The snippet's analysis, from the cache or scanned now (and kept).
    fn analysis(&mut self, source: &str) -> crate::analysis::Analysis {
        self.clock += 1;
        if let Some(entry) = self.entries.get_mut(source) {
            entry.last_use = self.clock;
            return entry.analysis;
        }
        let analysis = analyze(source);
        if source.len() <= Self::MAX_SOURCE {
            if self.entries.len() >= Self::CAPACITY
                && let Some(oldest) = self.entries.iter().min_by_key(|(_, e)| e.last_use).map(|(k, _)| k.clone())
            {
                self.entries.remove(&oldest);
            }
            self.entries.insert(source.to_owned(), Compiled { analysis, code: None, last_use: self.clock });
        }
        analysis
    }

    fn code(&self, source: &str) -> Option<rustpython_vm::PyRef<rustpython_vm::builtins::PyCode>> {
        self.entries.get(source).and_then(|e| e.code.clone())
    }

    fn keep_code(&mut self, source: &str, code: &rustpython_vm::PyRef<rustpython_vm::builtins::PyCode>) {
        if let Some(entry) = self.entries.get_mut(source) {
            entry.code = Some(code.clone());
        }
    }
}

impl Runner {
    /// Builds an interpreter: stdlib without any host access, the `posix` shim, sub-interpreters
    /// removed (and thread starts refused by the prelude), the prelude, the optional package
    /// folder and preloads.
    pub fn new(config: &InterpreterConfig) -> Result<Self, InterpreterError> {
        let (sender, receiver) = user_signal_channel();
        let mut settings = Settings::default();
        settings.install_signal_handlers = false;
        settings.isolated = true;
        settings.import_site = false;
        settings.write_bytecode = false;
        settings.user_site_directory = false;
        let builder = InterpreterBuilder::new().settings(settings).init_stdlib();
        let posix = shims::posix::module_def(&builder.ctx);
        let fs = shims::_sandbox_fs::module_def(&builder.ctx);
        let interp = builder
            .add_native_module(posix)
            .add_native_module(fs)
            .init_hook(move |vm: &mut VirtualMachine| {
                vm.set_user_signal_channel(receiver);
                let state = rustpython_vm::common::rc::PyRc::get_mut(&mut vm.state).expect("the VM state is not shared before initialization");
                for name in ["_interpreters", "_interpchannels", "_interpqueues"] {
                    state.module_defs.remove(name);
                }
            })
            .interpreter();

        let (begin, finish) = interp.enter(|vm| -> Result<_, InterpreterError> {
            let fail = |stage: &'static str| move |exc| InterpreterError { stage, message: format_exception(vm, exc) };
            crate::guards::install(vm, config.limits.max_nesting).map_err(fail("installing the native-work guards"))?;
            let scope = vm.new_scope_with_builtins();
            vm.run_string(scope.clone(), PRELUDE, "<rstar2-prelude>").map_err(fail("running the prelude"))?;
            vm.run_string(scope.clone(), SCRATCH_FS, "<rstar2-scratch-fs>").map_err(fail("setting up the working directory"))?;
            let setup = format!("import sys\nsys.setrecursionlimit({})\n", config.limits.recursion_limit);
            vm.run_string(scope.clone(), &setup, "<rstar2-setup>").map_err(fail("setting limits"))?;
            if let Some(root) = &config.pylib {
                let root = shims::allow_pylib_root(root).map_err(|message| InterpreterError { stage: "opening the package folder", message })?;
                let importer = vm.new_scope_with_builtins();
                vm.run_string(importer.clone(), IMPORTER, "<rstar2-importer>").map_err(fail("installing the importer"))?;
                let install = importer.globals.get_item("install", vm).map_err(fail("installing the importer"))?;
                install.call((vm.ctx.new_str(root),), vm).map_err(fail("installing the importer"))?;
            }
            for module in &config.preload {
                vm.import(&vm.ctx.new_str(module.as_str()), 0).map_err(fail("preloading a module"))?;
            }
            let begin = scope.globals.get_item("begin", vm).map_err(fail("reading the prelude"))?;
            let finish = scope.globals.get_item("finish", vm).map_err(fail("reading the prelude"))?;
            Ok((begin, finish))
        })?;
        Ok(Runner { interp, begin, finish, sender, config: config.clone(), session_globals: RefCell::new(None), compiled: RefCell::default() })
    }

    /// Runs one call. Returns the result and whether this interpreter must be replaced before an
    /// independent call may use it (shared state possibly changed, or the VM panicked).
    pub fn run(&self, call: &ToolCall, watchdog: &Watchdog) -> (ToolResult, bool) {
        self.run_with(call, watchdog, false, None)
    }

    /// Runs a call in this runner's session namespace: globals persist from one such call to
    /// the next, like notebook cells.
    pub fn run_session(&self, call: &ToolCall, watchdog: &Watchdog) -> ToolResult {
        self.run_with(call, watchdog, true, None).0
    }

    /// Runs a call in fresh globals or the session's (`in_session`), also calling `on_stuck`
    /// from the watchdog thread if the call has not returned `grace` after its deadline (native
    /// code that no interrupt reaches).
    pub(crate) fn run_with(&self, call: &ToolCall, watchdog: &Watchdog, in_session: bool, on_stuck: Option<(Duration, StuckHandler)>) -> (ToolResult, bool) {
        let limits = &self.config.limits;
        let stdin = call.stdin.as_deref().unwrap_or("");
        if call.code.len() > limits.max_input_bytes || stdin.len() > limits.max_input_bytes {
            let msg = format!("input too large: code and stdin are limited to {} bytes each", limits.max_input_bytes);
            return (ToolResult::failure(Status::InvalidInput, msg, 0), false);
        }
        if call.code.contains('\0') {
            return (ToolResult::failure(Status::InvalidInput, "source code cannot contain null bytes", 0), false);
        }
        // Before anything parses it: the parser's recursion could overflow this thread's stack.
        if crate::depth::nesting_bound(&call.code) > limits.max_nesting {
            return (ToolResult::failure(Status::Error, format!("RecursionError: {}\n", crate::depth::TOO_DEEP), 0), false);
        }
        let analysis = self.compiled.borrow_mut().analysis(&call.code);
        let start = Instant::now();
        let budget = Budget::new(usize::try_from(limits.memory_bytes).unwrap_or(usize::MAX), watchdog.waker());
        let deadline = start + limits.timeout;
        let guard = Arc::new(CallGuard {
            active: AtomicBool::new(true),
            fired: AtomicBool::new(false),
            budget,
            memory_sent: AtomicBool::new(false),
            sender: self.sender.clone(),
            #[cfg(target_arch = "wasm32")]
            deadline,
        });
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            self.interp.enter(|vm| {
                watchdog.arm(deadline, guard.clone(), on_stuck);
                #[cfg(target_arch = "wasm32")]
                crate::watchdog::trace_lines(vm);
                set_current_call(Some(&guard));
                let _charging = memory::charge_to(&guard.budget);
                let out = self.run_in_vm(vm, call, stdin, analysis.ends_with_expression, in_session, &guard);
                set_current_call(None);
                out
            })
        }));
        set_current_call(None);
        guard.active.store(false, Ordering::Release);
        let over_budget = guard.budget.tripped();
        let elapsed_us = start.elapsed().as_micros() as u64;
        match outcome {
            Ok(Ok((kind, stdout, stderr))) => {
                // A flood that also outran the clock is reported as the flood.
                let status = match Status::from_kind(&kind) {
                    Status::OutputLimit => Status::OutputLimit,
                    _ if over_budget => Status::MemoryLimit,
                    _ if guard.fired.load(Ordering::Acquire) => Status::Timeout,
                    status => status,
                };
                let mut stderr = stderr;
                if status == Status::Timeout {
                    stderr.push_str(&timeout_message(limits.timeout));
                }
                if over_budget && !stderr.contains("MemoryError") {
                    stderr.push_str(&format!("MemoryError: {}\n", memory_message(guard.budget.limit())));
                }
                let max = limits.max_output_chars;
                let result = ToolResult { status, stdout: truncate_middle(&stdout, max), stderr: truncate_middle(&stderr, max), elapsed_us };
                // An interrupt raises at whatever instruction it meets, importlib's included, so
                // an interrupted call may leave a half-imported module: start afresh.
                let interrupted = over_budget || guard.fired.load(Ordering::Acquire);
                (result, analysis.taints || interrupted)
            }
            Ok(Err(message)) => {
                let status = if over_budget {
                    Status::MemoryLimit
                } else if guard.fired.load(Ordering::Acquire) {
                    Status::Timeout
                } else {
                    Status::Crashed
                };
                (ToolResult::failure(status, message, elapsed_us), true)
            }
            Err(panic) => {
                let what = panic.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| panic.downcast_ref::<String>().cloned()).unwrap_or_else(|| "unknown panic".into());
                (ToolResult::failure(Status::Crashed, format!("the interpreter crashed: {what}"), elapsed_us), true)
            }
        }
    }

    fn run_in_vm(&self, vm: &VirtualMachine, call: &ToolCall, stdin: &str, echo: bool, in_session: bool, guard: &Arc<CallGuard>) -> Result<(String, String, String), String> {
        let internal = |exc| format!("sandbox internal error: {}", format_exception(vm, exc));
        let limit = vm.ctx.new_int(self.config.limits.max_stream_chars);
        // Files live for one independent call, or for a whole session from its first call on.
        let fresh_files = !in_session || self.session_globals.borrow().is_none();
        let streams = self.begin.call((vm.ctx.new_str(stdin), limit, vm.ctx.new_bool(fresh_files), vm.ctx.new_bool(in_session)), vm).map_err(internal)?;
        let mode = if echo { Mode::BlockExpr } else { Mode::Exec };
        let cached = self.compiled.borrow().code(&call.code);
        let compiled = cached.map_or_else(
            || {
                let code = vm.compile(&call.code, mode, "<snippet>".to_owned());
                if let Ok(code) = &code {
                    self.compiled.borrow_mut().keep_code(&call.code, code);
                }
                code
            },
            Ok,
        );
        let (value, exc) = match compiled {
            Err(err) => (vm.ctx.none(), Some(err.into_pyexception(vm, Some(&call.code)))),
            Ok(code) => {
                let scope = if in_session { self.session_globals.borrow_mut().get_or_insert_with(|| vm.new_scope_with_builtins()).clone() } else { vm.new_scope_with_builtins() };
                let run = scope.globals.set_item("__name__", vm.ctx.new_str("__main__").into(), vm).and_then(|()| vm.run_code_obj(code.clone(), scope));
                match run {
                    Ok(value) => (if echo { value } else { vm.ctx.none() }, None),
                    Err(exc) => {
                        let _ = vm.register_code_in_linecache(&code, &call.code);
                        (vm.ctx.none(), Some(exc))
                    }
                }
            }
        };
        let exc_obj: PyObjectRef = exc.map_or_else(|| vm.ctx.none(), |e| e.into());
        let finished = self.finish.call((streams.clone(), value, exc_obj), vm);
        guard.active.store(false, Ordering::Release);
        if let Some(done) = finished.as_ref().ok().and_then(|t| t.downcast_ref::<PyTuple>())
            && let [kind, stdout, stderr] = done.as_slice()
        {
            return Ok((str_of(vm, kind.clone()), str_of(vm, stdout.clone()), str_of(vm, stderr.clone())));
        }
        // `finish` itself was interrupted (a re-armed timeout): read what the streams hold.
        let flooded = (0..2usize).any(|i| streams.get_item(&i, vm).and_then(|s| s.get_attr("over", vm)).is_ok_and(|over| over.is_true(vm).unwrap_or(false)));
        let kind = if flooded { "output_limit" } else { "error" }.to_owned();
        let read = |index: usize| -> PyResult<String> {
            let stream = streams.get_item(&index, vm)?;
            Ok(str_of(vm, vm.call_method(&stream, "getvalue", ())?))
        };
        let stdout = read(0).map_err(internal)?;
        let stderr = read(1).map_err(internal)?;
        Ok((kind, stdout, stderr))
    }
}

fn timeout_message(timeout: Duration) -> String {
    format!("TimeoutError: execution exceeded the time limit of {:.1} s\n", timeout.as_secs_f64())
}

fn str_of(vm: &VirtualMachine, obj: PyObjectRef) -> String {
    match obj.str(vm) {
        Ok(s) => PyStrRef::from(s).to_string_lossy().into_owned(),
        Err(_) => String::new(),
    }
}

fn format_exception(vm: &VirtualMachine, exc: rustpython_vm::builtins::PyBaseExceptionRef) -> String {
    let mut text = String::new();
    if vm.write_exception(&mut text, &exc).is_err() {
        text = exc.as_object().class().name().to_string();
    }
    text
}
