//! The browser's watchdog. A page has no second thread to keep time, and RustPython on wasm32
//! never looks at its signal flag, so the interrupts the native watchdog sends could not land.
//! Instead the running call checks its own deadline and memory budget
//! ([`CallGuard::must_stop`] reads the clock there): at every line and every backward jump,
//! through a line tracer (`sys.settrace`) installed for each call, and in the native loops the
//! guards already poll. The call then raises `KeyboardInterrupt` (reported `timeout`) or
//! `MemoryError` (`memory_limit`) as it would natively.
//!
//! Weaker than the native watchdog, and said so: a tracer that raises is switched off (as in
//! CPython), so code that catches the first interrupt and loops on runs past its deadline, and
//! native work that no guard polls is not reached. There a page must end the Web Worker the
//! interpreter runs in.

use std::sync::{Arc, Condvar};
use std::time::Duration;

use rustpython_vm::{PyObjectRef, PyResult, VirtualMachine};
use web_time::Instant;

use crate::call::{CallGuard, current_call_must_stop};

/// What the native watchdog runs for a call stuck past its grace (never called here: no thread
/// could run it).
pub(crate) type StuckHandler = Box<dyn FnOnce(Option<crate::memory::Parked>) + Send>;

/// The browser's stand-in for the watchdog thread (see the module docs).
#[derive(Clone, Default)]
pub struct Watchdog {
    wake: Arc<Condvar>,
}

impl Watchdog {
    /// A watchdog; no thread is started.
    pub fn new() -> Self {
        Self::default()
    }

    /// What a call's memory budget notifies when it trips (nobody waits on it here).
    pub(crate) fn waker(&self) -> Arc<Condvar> {
        self.wake.clone()
    }

    /// Nothing to register: the call's guard carries its deadline and checks it itself.
    pub(crate) fn arm(&self, _deadline: Instant, _guard: Arc<CallGuard>, _on_stuck: Option<(Duration, StuckHandler)>) {}
}

thread_local! {
    static TRACER: std::cell::OnceCell<PyObjectRef> = const { std::cell::OnceCell::new() };
}

/// Installs the line tracer for the call about to run in `vm` (a tracer that raised, at the
/// previous call's deadline, was switched off).
pub(crate) fn trace_lines(vm: &VirtualMachine) {
    let tracer = TRACER.with(|t| t.get_or_init(|| vm.new_function("_rstar2_deadline", tracer).into()).clone());
    if let Ok(settrace) = vm.sys_module.get_attr("settrace", vm) {
        let _ = settrace.call((tracer,), vm);
    }
}

/// Raises what the call must stop with, if anything; otherwise traces the frame on (a 'call'
/// event's answer is the frame's own tracer).
fn tracer(_frame: PyObjectRef, _event: PyObjectRef, _arg: PyObjectRef, vm: &VirtualMachine) -> PyResult {
    if let Some(stop) = current_call_must_stop(vm) {
        return Err(stop);
    }
    Ok(TRACER.with(|t| t.get().cloned()).unwrap_or_else(|| vm.ctx.none()))
}
