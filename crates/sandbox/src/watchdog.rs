//! One thread that enforces every deadline of a pool. RustPython checks a process-global
//! eval-breaker flag once per instruction and whichever interpreter sees it first clears it, so an
//! interrupt can be lost to a busy neighbour: once a call is overdue the watchdog re-sends its
//! interrupt every millisecond until the call returns. A call whose memory budget trips wakes
//! it too, and is sent a `MemoryError` the same way.

use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::call::CallGuard;

const RESEND: Duration = Duration::from_millis(1);
const IDLE: Duration = Duration::from_millis(100);

/// Runs when a call is still going `grace` after its deadline (stuck in native code), or at once
/// when its thread parked for good (the argument: why it did, if it did).
pub(crate) type StuckHandler = Box<dyn FnOnce(Option<crate::memory::Parked>) + Send>;

struct Entry {
    deadline: Instant,
    guard: Arc<CallGuard>,
    stuck: Option<(Instant, StuckHandler)>,
}

struct State {
    entries: Vec<Entry>,
    next_wake: Instant,
}

struct Inner {
    state: Mutex<State>,
    /// Shared with the memory budgets of running calls, which notify it when they trip.
    wake: Arc<Condvar>,
}

/// Handle on the watchdog thread; the thread exits when the last handle is dropped.
#[derive(Clone)]
pub struct Watchdog {
    inner: Arc<Inner>,
}

impl Default for Watchdog {
    fn default() -> Self {
        Self::new()
    }
}

impl Watchdog {
    /// Starts the watchdog thread.
    pub fn new() -> Self {
        let inner = Arc::new(Inner { state: Mutex::new(State { entries: Vec::new(), next_wake: Instant::now() + IDLE }), wake: Arc::new(Condvar::new()) });
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new().name("rstar2-sandbox-watchdog".into()).spawn(move || run(weak)).expect("spawning the watchdog thread");
        Watchdog { inner }
    }

    /// What a call's memory budget notifies when it trips.
    pub(crate) fn waker(&self) -> Arc<Condvar> {
        self.inner.wake.clone()
    }

    /// Interrupts the call behind `guard` from `deadline` on, until it returns; runs the stuck
    /// handler once if the call is still active `grace` after the deadline.
    pub(crate) fn arm(&self, deadline: Instant, guard: Arc<CallGuard>, on_stuck: Option<(Duration, StuckHandler)>) {
        let stuck = on_stuck.map(|(grace, handler)| (deadline + grace, handler));
        let entry = Entry { deadline, guard, stuck };
        let mut state = self.inner.state.lock().unwrap_or_else(|p| p.into_inner());
        let earlier = entry.deadline < state.next_wake;
        state.entries.push(entry);
        if earlier {
            self.inner.wake.notify_one();
        }
    }
}

fn run(weak: Weak<Inner>) {
    while let Some(inner) = weak.upgrade() {
        let mut state = inner.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let mut stuck_handlers = Vec::new();
        state.entries.retain_mut(|entry| {
            if !entry.guard.is_active() {
                return false;
            }
            if entry.deadline <= now {
                entry.guard.interrupt();
            }
            entry.guard.interrupt_if_over_budget();
            // A stuck call stays registered: should its native work ever end, it is interrupted.
            let parked = entry.guard.parked();
            if let Some((at, _)) = &entry.stuck
                && (*at <= now || parked.is_some())
            {
                stuck_handlers.push((entry.stuck.take().expect("checked above").1, parked));
            }
            true
        });
        let mut next = now + IDLE;
        for entry in &state.entries {
            let due = if entry.deadline <= now { now + RESEND } else { entry.deadline };
            next = next.min(due);
            if let Some((at, _)) = &entry.stuck {
                next = next.min(*at);
            }
        }
        state.next_wake = next;
        drop(state);
        for (handler, parked) in stuck_handlers {
            handler(parked);
        }
        let state = inner.state.lock().unwrap_or_else(|p| p.into_inner());
        let timeout = state.next_wake.saturating_duration_since(Instant::now());
        let _ = inner.wake.wait_timeout(state, timeout);
    }
}
