//! The state of one running call, shared by the interpreter that runs it, the watchdog that
//! times it and the native-work guards that poll it: its deadline having passed, its memory
//! budget, and the interrupts that make the interpreter raise.

// In a browser nothing sends interrupts (the call checks itself, see `watchdog_web.rs`): the
// signalling half of this file is native-only in use.
#![cfg_attr(target_arch = "wasm32", allow(dead_code))]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rustpython_vm::VirtualMachine;
use rustpython_vm::signal::{UserSignal, UserSignalSender};

use crate::memory::Budget;

/// The state of one call that the watchdog and the interrupt closures share.
pub(crate) struct CallGuard {
    /// The call is still running; interrupts aimed at it are live.
    pub(crate) active: AtomicBool,
    /// The deadline passed and an interrupt was sent.
    pub(crate) fired: AtomicBool,
    /// What the call's thread may allocate (counted by [`crate::memory::BudgetAllocator`]).
    pub(crate) budget: Budget,
    /// The budget tripped and the `MemoryError` interrupt was sent.
    pub(crate) memory_sent: AtomicBool,
    pub(crate) sender: UserSignalSender,
    /// When the call must stop. In a browser no watchdog thread watches the clock: the call's
    /// own checks ([`CallGuard::must_stop`]) read it.
    #[cfg(target_arch = "wasm32")]
    pub(crate) deadline: web_time::Instant,
}

/// What an interrupt raises.
#[derive(Clone, Copy)]
enum Interrupt {
    Timeout,
    Memory,
}

impl CallGuard {
    /// Asks the interpreter to raise at its next instruction; called by the watchdog.
    pub(crate) fn interrupt(self: &Arc<Self>) {
        if self.active.load(Ordering::Acquire) {
            self.fired.store(true, Ordering::Release);
            let _ = self.sender.send(interrupt_signal(self.clone(), Interrupt::Timeout));
        }
    }

    /// Sends the call a `MemoryError` (once; it re-arms itself) if its budget tripped.
    pub(crate) fn interrupt_if_over_budget(self: &Arc<Self>) {
        if self.budget.tripped() && self.active.load(Ordering::Acquire) && !self.memory_sent.swap(true, Ordering::AcqRel) {
            let _ = self.sender.send(interrupt_signal(self.clone(), Interrupt::Memory));
        }
    }

    pub(crate) fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// The call's thread parked for good, and why (see [`crate::memory`]).
    pub(crate) fn parked(&self) -> Option<crate::memory::Parked> {
        self.budget.parked()
    }

    /// The exception to raise if the call must stop (its deadline passed or its memory budget
    /// tripped): for native loops that no instruction-level interrupt reaches.
    pub(crate) fn must_stop(&self, vm: &VirtualMachine) -> Option<rustpython_vm::builtins::PyBaseExceptionRef> {
        if !self.active.load(Ordering::Acquire) {
            return None;
        }
        if self.budget.tripped() {
            return Some(interrupt_exception(vm, self, Interrupt::Memory));
        }
        #[cfg(target_arch = "wasm32")]
        if web_time::Instant::now() >= self.deadline {
            self.fired.store(true, Ordering::Release);
        }
        self.fired.load(Ordering::Acquire).then(|| interrupt_exception(vm, self, Interrupt::Timeout))
    }
}

thread_local! {
    /// The guard of the call running on this thread.
    static CURRENT_CALL: std::cell::Cell<*const CallGuard> = const { std::cell::Cell::new(std::ptr::null()) };
}

/// Makes `guard` the call running on this thread (`None`: no call); the caller keeps it alive
/// until it clears it.
pub(crate) fn set_current_call(guard: Option<&Arc<CallGuard>>) {
    CURRENT_CALL.with(|c| c.set(guard.map_or(std::ptr::null(), Arc::as_ptr)));
}

/// The exception the call running on this thread must stop with, if any (see
/// [`CallGuard::must_stop`]); used by [`crate::guards`].
pub(crate) fn current_call_must_stop(vm: &VirtualMachine) -> Option<rustpython_vm::builtins::PyBaseExceptionRef> {
    let p = CURRENT_CALL.with(|c| c.get());
    // SAFETY: set by `set_current_call` to a guard its caller keeps alive until it clears it.
    if p.is_null() { None } else { unsafe { &*p }.must_stop(vm) }
}

/// A signal that raises `KeyboardInterrupt` (timeout) or `MemoryError` in the running call and
/// re-arms itself, so a loop that swallows `BaseException` is hit again at its next instruction.
fn interrupt_signal(guard: Arc<CallGuard>, what: Interrupt) -> UserSignal {
    Box::new(move |vm: &VirtualMachine| {
        if !guard.active.load(Ordering::Acquire) {
            return Ok(());
        }
        let _ = guard.sender.send(interrupt_signal(guard.clone(), what));
        Err(interrupt_exception(vm, &guard, what))
    })
}

fn interrupt_exception(vm: &VirtualMachine, guard: &CallGuard, what: Interrupt) -> rustpython_vm::builtins::PyBaseExceptionRef {
    match what {
        Interrupt::Timeout => vm.new_exception_msg(vm.ctx.exceptions.keyboard_interrupt.to_owned(), "execution timed out".into()),
        Interrupt::Memory => vm.new_exception_msg(vm.ctx.exceptions.memory_error.to_owned(), memory_message(guard.budget.limit()).into()),
    }
}

pub(crate) fn memory_message(limit: usize) -> String {
    format!("the call used more than its memory limit of {} MiB", limit >> 20)
}
