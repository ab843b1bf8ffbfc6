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
//! answers by aborting the process. On the threads of an in-process pool, [`park_refused_aborts`]
//! turns that abort into parking the thread for good: no CPU, its memory (at most twice the
//! budget) kept, the budget marked parked, so the watchdog answers the call `memory_limit` at
//! once and the pool replaces the interpreter. Any other abort still ends the process.
//!
//! ```no_run
//! #[global_allocator]
//! static ALLOC: rstar2_sandbox::BudgetAllocator = rstar2_sandbox::BudgetAllocator;
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

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
    /// This thread parks instead of aborting after a refusal (see [`park_refused_aborts`]).
    static PARK_ON_ABORT: Cell<bool> = const { Cell::new(false) };
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
    /// A refused allocation parked the call's thread for good (see [`park_refused_aborts`]).
    parked: AtomicBool,
    /// Wakes the watchdog when the budget trips (a futex wake: allocation-free).
    wake: Arc<std::sync::Condvar>,
}

impl Budget {
    pub(crate) fn new(limit: usize, wake: Arc<std::sync::Condvar>) -> Self {
        Budget { limit, used: AtomicUsize::new(0), tripped: AtomicBool::new(false), parked: AtomicBool::new(false), wake }
    }

    /// The call allocated past its budget.
    pub(crate) fn tripped(&self) -> bool {
        self.tripped.load(Ordering::Acquire)
    }

    /// The call's thread parked after a refused allocation: it will never return.
    pub(crate) fn parked(&self) -> bool {
        self.parked.load(Ordering::Acquire)
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
            let granted = f(unsafe { &*p });
            if !granted {
                REFUSED.with(|r| r.set(true));
            }
            granted
        })
        .unwrap_or(true)
}

/// From now until the returned guard is dropped, an abort on this thread during a call whose
/// allocation was refused parks the thread for good and marks the call's budget parked, instead
/// of ending the process (see the module docs). Installs the process's SIGABRT handler on first
/// use.
pub(crate) fn park_refused_aborts() -> ParkOnAbort {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value before the fields
        // are set; the handler only reads this thread's const-initialized thread locals, stores
        // an atomic and calls pause(), all async-signal-safe.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_abort as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(libc::SIGABRT, &action, std::ptr::null_mut());
        }
    });
    PARK_ON_ABORT.with(|p| p.set(true));
    ParkOnAbort
}

/// While alive, this thread parks instead of aborting after a refused allocation.
pub(crate) struct ParkOnAbort;

impl Drop for ParkOnAbort {
    fn drop(&mut self) {
        PARK_ON_ABORT.with(|p| p.set(false));
    }
}

/// SIGABRT: a thread of an in-process pool whose call had an allocation refused parks; for any
/// other abort the handler returns, and `abort` then ends the process as it would have.
extern "C" fn on_abort(_signal: libc::c_int) {
    let refused = REFUSED.try_with(Cell::get).unwrap_or(false);
    let park = PARK_ON_ABORT.try_with(Cell::get).unwrap_or(false);
    let budget = CURRENT.try_with(Cell::get).unwrap_or(std::ptr::null());
    if refused && park && !budget.is_null() {
        // SAFETY: the budget outlives the call that set the pointer, and that call cannot end:
        // this frame never returns.
        unsafe { &*budget }.parked.store(true, Ordering::Release);
        loop {
            // SAFETY: pause() has no preconditions; SIGABRT stays blocked in this handler.
            unsafe { libc::pause() };
        }
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
