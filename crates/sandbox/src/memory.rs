//! Memory budgets for in-process calls: a global allocator that counts what each call's thread
//! allocates while the call runs.
//!
//! A worker process gets an address-space limit; threads of one process cannot. Instead,
//! [`BudgetAllocator`] (install it with `#[global_allocator]` in the binary) keeps, for the thread
//! running a call, the bytes allocated minus the bytes freed since the call began. Past the
//! budget it trips the call, and the watchdog makes the interpreter raise `MemoryError` at its
//! next instruction (`memory_limit`), as a worker process would have died. A request that would
//! take the call past twice its budget is refused outright (see [`REFUSE_AT`]): RustPython makes
//! its largest allocations (sequence repetition, list growth from sized iterators, big-integer
//! results, `bytearray(n)`) with fallible reservations, so `'a' * 10**10` raises `MemoryError`
//! at once instead of touching gigabytes the host cannot spare. Between the budget and twice it,
//! requests are granted (and the call trips): some native operations allocate infallibly
//! (`str.join`, `str.upper`, `str.expandtabs`), and a refusal there would abort the process.
//!
//! Some still ask for more than twice the budget: `''.join` of five gigabytes asks at once, and
//! `str.expandtabs` keeps doubling its buffer. A refusal there is an allocation failure that Rust
//! answers by aborting the process. On the threads of an in-process pool, [`park_instead_of_aborting`]
//! turns that abort into parking the thread for good: no CPU, its memory (at most twice the
//! budget) kept, the budget marked parked, so the watchdog answers the call `memory_limit` at
//! once and the pool replaces the interpreter. Any other abort still ends the process.
//!
//! The same holds for a native stack overflow on such a thread during a call (a shape of deep
//! nesting that [`crate::depth`] and the guards did not bound): the SIGSEGV on the thread's
//! stack guard, which Rust answers by aborting, parks the thread instead, and the call is
//! answered `crashed`. Any other fault goes to the handler that was there before (Rust's). A
//! recursion that allocates or frees as it goes (most do) parks a little earlier, on entering
//! the allocator with less than [`STACK_RESERVE`] of stack left, so it never parks inside
//! `malloc` holding a lock another thread needs.
//!
//! ```no_run
//! #[global_allocator]
//! static ALLOC: rstar2_sandbox::BudgetAllocator = rstar2_sandbox::BudgetAllocator;
//! ```

// In a browser there is no thread to park (a trap ends the page's module either way): the
// parking half of this file is native-only in use.
#![cfg_attr(target_arch = "wasm32", allow(dead_code))]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;
#[cfg(not(target_arch = "wasm32"))]
use std::sync::atomic::AtomicPtr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};

/// A request that would take a call past this multiple of its budget is refused rather than
/// granted and tripped.
pub const REFUSE_AT: usize = 2;

/// The system allocator plus per-call accounting on sandbox threads (see the module docs).
pub struct BudgetAllocator;

/// Set by the first allocation through [`BudgetAllocator`]: in-process budgets are enforced.
static INSTALLED: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// The budget of the call running on this thread, if any.
    static CURRENT: Cell<*const Budget> = const { Cell::new(std::ptr::null()) };
    /// A request of the call running on this thread was refused.
    static REFUSED: Cell<bool> = const { Cell::new(false) };
    /// This thread parks instead of aborting after a refusal (see [`park_instead_of_aborting`]).
    #[cfg(not(target_arch = "wasm32"))]
    static PARK_ON_ABORT: Cell<bool> = const { Cell::new(false) };
    /// The lowest address of this thread's stack and its guard's size (0, 0 where unknown).
    #[cfg(not(target_arch = "wasm32"))]
    static STACK_GUARD: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
}

/// Why a call's thread parked for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Parked {
    /// A native operation's allocation was refused (it would have aborted the process).
    Memory,
    /// The thread's native stack overflowed.
    StackOverflow,
}

impl Parked {
    fn code(self) -> u8 {
        match self {
            Parked::Memory => 1,
            Parked::StackOverflow => 2,
        }
    }
}

/// Whether this process's global allocator is [`BudgetAllocator`], so in-process calls are held
/// to their memory limit.
pub fn budgets_enforced() -> bool {
    // Allocating is what sets the flag; make sure one happened.
    drop(std::hint::black_box(Box::new(0u8)));
    INSTALLED.load(Ordering::Relaxed)
}

/// One call's memory budget. Written only by the call's thread (through the allocator); read by
/// the watchdog.
pub(crate) struct Budget {
    limit: usize,
    used: AtomicUsize,
    tripped: AtomicBool,
    /// The call's thread parked for good ([`Parked::code`], 0: not parked; see
    /// [`park_instead_of_aborting`]).
    parked: AtomicU8,
    /// Wakes the watchdog when the budget trips (a futex wake: allocation-free).
    wake: Arc<std::sync::Condvar>,
}

impl Budget {
    pub(crate) fn new(limit: usize, wake: Arc<std::sync::Condvar>) -> Self {
        Budget { limit, used: AtomicUsize::new(0), tripped: AtomicBool::new(false), parked: AtomicU8::new(0), wake }
    }

    /// The call allocated past its budget.
    pub(crate) fn tripped(&self) -> bool {
        self.tripped.load(Ordering::Acquire)
    }

    /// The call's thread parked, and why: it will never return.
    pub(crate) fn parked(&self) -> Option<Parked> {
        match self.parked.load(Ordering::Acquire) {
            1 => Some(Parked::Memory),
            2 => Some(Parked::StackOverflow),
            _ => None,
        }
    }

    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    fn trip(&self) {
        if !self.tripped.swap(true, Ordering::AcqRel) {
            self.wake.notify_all();
        }
    }

    /// Accounts for `size` more bytes; false when the request must be refused.
    fn grow(&self, size: usize) -> bool {
        let used = self.used.load(Ordering::Relaxed);
        let after = used.saturating_add(size);
        // Refused, not tripped: the refusal itself raises MemoryError, which code may catch.
        if after > self.limit.saturating_mul(REFUSE_AT) {
            return false;
        }
        self.used.store(after, Ordering::Relaxed);
        if after > self.limit {
            self.trip();
        }
        true
    }

    fn shrink(&self, size: usize) {
        // Memory allocated before the call (or on another thread) may be freed here.
        let used = self.used.load(Ordering::Relaxed);
        self.used.store(used.saturating_sub(size), Ordering::Relaxed);
    }
}

/// Charges this thread's allocations to `budget` until the returned guard is dropped.
pub(crate) fn charge_to(budget: &Budget) -> Charging {
    REFUSED.with(|r| r.set(false));
    CURRENT.with(|c| c.set(budget as *const Budget));
    Charging
}

/// While alive, this thread's allocations count against a budget.
pub(crate) struct Charging;

impl Drop for Charging {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(std::ptr::null()));
    }
}

fn with_budget(f: impl FnOnce(&Budget) -> bool) -> bool {
    // `try_with`: allocations during thread teardown find no budget.
    CURRENT
        .try_with(|c| {
            let p = c.get();
            if p.is_null() {
                return true;
            }
            // SAFETY: `Charging` clears the pointer before the budget it points at is dropped
            // (the budget outlives the call that set it), and only this thread reads it.
            let budget = unsafe { &*p };
            // A browser has no signals to catch an overflow with: it traps either way.
            #[cfg(not(target_arch = "wasm32"))]
            if stack_nearly_exhausted() && PARK_ON_ABORT.try_with(Cell::get).unwrap_or(false) {
                park(budget, Parked::StackOverflow);
            }
            let granted = f(budget);
            if !granted {
                REFUSED.with(|r| r.set(true));
            }
            granted
        })
        .unwrap_or(true)
}

#[cfg(not(target_arch = "wasm32"))]
/// From now until the returned guard is dropped, an abort on this thread during a call whose
/// allocation was refused, or a stack overflow during a call, parks the thread for good and
/// marks the call's budget parked, instead of ending the process (see the module docs).
/// Installs the process's SIGABRT, SIGSEGV and SIGBUS handlers on first use.
pub(crate) fn park_instead_of_aborting() -> ParkOnAbort {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value before the fields
        // are set; the handlers only read this thread's const-initialized thread locals and the
        // saved actions, store an atomic, call pause() or the previous handler, or reset the
        // action: all async-signal-safe.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_abort as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(libc::SIGABRT, &action, std::ptr::null_mut());
            for (signal, slot) in [(libc::SIGSEGV, &PREVIOUS_SEGV), (libc::SIGBUS, &PREVIOUS_BUS)] {
                let previous: &'static mut libc::sigaction = Box::leak(Box::new(std::mem::zeroed()));
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_fault as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) as libc::sighandler_t;
                // On the alternate stack Rust gives every thread it starts: the overflowed one is full.
                action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
                libc::sigemptyset(&mut action.sa_mask);
                if libc::sigaction(signal, &action, previous) == 0 {
                    slot.store(previous, Ordering::Release);
                }
            }
        }
    });
    STACK_GUARD.with(|g| g.set(stack_guard()));
    PARK_ON_ABORT.with(|p| p.set(true));
    ParkOnAbort
}

#[cfg(not(target_arch = "wasm32"))]
/// Stack a call must leave free when it enters the allocator: a recursion that gets this close
/// to the guard parks here rather than overflow inside `malloc` or `free`, where the thread would
/// park holding its arena's lock and every thread sharing that arena would wait forever.
const STACK_RESERVE: usize = 256 << 10;

#[cfg(not(target_arch = "wasm32"))]
/// Whether this pool thread's stack is within [`STACK_RESERVE`] of its guard.
#[inline]
fn stack_nearly_exhausted() -> bool {
    let (low, guard) = STACK_GUARD.try_with(Cell::get).unwrap_or((0, 0));
    let marker = 0u8;
    low != 0 && (std::ptr::addr_of!(marker) as usize) < low.saturating_add(guard).saturating_add(STACK_RESERVE)
}

#[cfg(not(target_arch = "wasm32"))]
/// The budget of the call running on this thread, where this thread parks instead of dying (a
/// pool thread inside [`park_instead_of_aborting`]); null elsewhere. Signal-safe: it only reads
/// const-initialized thread locals.
fn parkable_call() -> *const Budget {
    if PARK_ON_ABORT.try_with(Cell::get).unwrap_or(false) { CURRENT.try_with(Cell::get).unwrap_or(std::ptr::null()) } else { std::ptr::null() }
}

#[cfg(not(target_arch = "wasm32"))]
/// Marks the call's budget parked and stops this thread for good.
fn park(budget: &Budget, why: Parked) -> ! {
    budget.parked.store(why.code(), Ordering::Release);
    loop {
        // SAFETY: pause() has no preconditions.
        unsafe { libc::pause() };
    }
}

#[cfg(not(target_arch = "wasm32"))]
/// The handlers SIGSEGV and SIGBUS had before [`park_instead_of_aborting`] installed its own.
static PREVIOUS_SEGV: AtomicPtr<libc::sigaction> = AtomicPtr::new(std::ptr::null_mut());
#[cfg(not(target_arch = "wasm32"))]
static PREVIOUS_BUS: AtomicPtr<libc::sigaction> = AtomicPtr::new(std::ptr::null_mut());

/// This thread's lowest stack address and guard size. glibc before 2.27 counted the guard inside
/// the stack, later ones below it, so a fault within one guard size either side of the lowest
/// address is an overflow (as Rust's own handler decides).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn stack_guard() -> (usize, usize) {
    // SAFETY: pthread_getattr_np fills `attr` for the calling thread, which is then read and
    // destroyed; the out-pointers are valid locals.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
            return (0, 0);
        }
        let (mut addr, mut size, mut guard) = (std::ptr::null_mut(), 0usize, 0usize);
        let ok = libc::pthread_attr_getstack(&attr, &mut addr, &mut size) == 0 && libc::pthread_attr_getguardsize(&attr, &mut guard) == 0;
        libc::pthread_attr_destroy(&mut attr);
        let page = usize::try_from(libc::sysconf(libc::_SC_PAGESIZE)).unwrap_or(4096);
        if ok { (addr as usize, guard.max(page)) } else { (0, 0) }
    }
}

#[cfg(not(any(all(target_os = "linux", target_env = "gnu"), target_arch = "wasm32")))]
fn stack_guard() -> (usize, usize) {
    (0, 0)
}

#[cfg(not(target_arch = "wasm32"))]
/// SIGSEGV, SIGBUS: a stack overflow on a pool thread during a call parks the thread and marks
/// the call's budget; any other fault goes to the previous handler (Rust's prints "has
/// overflowed its stack" and aborts, or restores the default action), or, where there was none,
/// the default action is restored and the faulting instruction runs again and ends the process.
extern "C" fn on_fault(signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    let budget = parkable_call();
    let (low, guard) = STACK_GUARD.try_with(Cell::get).unwrap_or((0, 0));
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let addr = unsafe { (*info).si_addr() } as usize;
    if !budget.is_null() && low != 0 && addr >= low.saturating_sub(guard) && addr < low.saturating_add(guard) {
        // SAFETY: the budget outlives the call that set the pointer, and that call cannot end:
        // this frame never returns.
        park(unsafe { &*budget }, Parked::StackOverflow);
    }
    let previous = if signal == libc::SIGBUS { &PREVIOUS_BUS } else { &PREVIOUS_SEGV }.load(Ordering::Acquire);
    // SAFETY: a saved action is a leaked, never-written-again sigaction; calling its handler with
    // the arguments the kernel gave is what the kernel would have done.
    unsafe {
        if !previous.is_null() {
            let handler = (*previous).sa_sigaction;
            if (*previous).sa_flags & libc::SA_SIGINFO != 0 && handler != libc::SIG_DFL && handler != libc::SIG_IGN {
                let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) = std::mem::transmute(handler);
                f(signal, info, context);
                return;
            }
            if handler != libc::SIG_DFL && handler != libc::SIG_IGN {
                let f: extern "C" fn(libc::c_int) = std::mem::transmute(handler);
                f(signal);
                return;
            }
        }
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(signal, &action, std::ptr::null_mut());
    }
}

#[cfg(not(target_arch = "wasm32"))]
/// While alive, this thread parks instead of aborting after a refused allocation.
pub(crate) struct ParkOnAbort;

#[cfg(not(target_arch = "wasm32"))]
impl Drop for ParkOnAbort {
    fn drop(&mut self) {
        PARK_ON_ABORT.with(|p| p.set(false));
    }
}

#[cfg(not(target_arch = "wasm32"))]
/// SIGABRT: a thread of an in-process pool whose call had an allocation refused parks; for any
/// other abort the handler returns, and `abort` then ends the process as it would have.
extern "C" fn on_abort(_signal: libc::c_int) {
    let refused = REFUSED.try_with(Cell::get).unwrap_or(false);
    let budget = parkable_call();
    if refused && !budget.is_null() {
        // SAFETY: the budget outlives the call that set the pointer, and that call cannot end:
        // this frame never returns (SIGABRT stays blocked in this handler).
        park(unsafe { &*budget }, Parked::Memory);
    }
}

// SAFETY: every request is passed to `System` unchanged or refused with a null pointer, as
// `GlobalAlloc` allows; the accounting neither allocates nor unwinds.
unsafe impl GlobalAlloc for BudgetAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !INSTALLED.load(Ordering::Relaxed) {
            INSTALLED.store(true, Ordering::Relaxed);
        }
        if !with_budget(|b| b.grow(layout.size())) {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's layout, passed through.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !with_budget(|b| b.grow(layout.size())) {
            return std::ptr::null_mut();
        }
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        with_budget(|b| {
            b.shrink(layout.size());
            true
        });
        // SAFETY: `ptr` came from `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old = layout.size();
        if new_size > old && !with_budget(|b| b.grow(new_size - old)) {
            return std::ptr::null_mut();
        }
        // SAFETY: as above.
        let out = unsafe { System.realloc(ptr, layout, new_size) };
        if new_size < old && !out.is_null() {
            with_budget(|b| {
                b.shrink(old - new_size);
                true
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounting_trips_past_the_limit_and_refuses_far_past_it() {
        let budget = Budget::new(1000, Arc::new(std::sync::Condvar::new()));
        assert!(!budget.grow(2001), "one request past twice the budget is refused");
        assert!(!budget.tripped(), "a refusal alone does not trip: its MemoryError may be caught");
        assert!(budget.grow(600));
        assert!(!budget.tripped());
        budget.shrink(100);
        assert!(budget.grow(400));
        assert!(!budget.tripped(), "900 bytes of a 1000-byte budget");
        assert!(budget.grow(200));
        assert!(budget.tripped(), "1100 bytes of a 1000-byte budget");
        assert!(budget.grow(900), "2000 bytes: granted, still tripped");
        assert!(!budget.grow(1), "past twice the budget");
        assert_eq!(budget.used.load(Ordering::Relaxed), 2000, "a refused request is not counted");
        budget.shrink(1 << 40);
        assert_eq!(budget.used.load(Ordering::Relaxed), 0);
    }
}
