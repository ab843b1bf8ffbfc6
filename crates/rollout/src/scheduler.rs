//! The KV-capacity ledger (reference §5): every engine has a capacity in tokens; a trajectory
//! reserves prompt + response budget on the engine with the most free capacity, and gives it
//! back when it finishes. Nothing is ever evicted, because nothing is admitted that might not fit.

/// Free and total capacity per engine.
#[derive(Debug, Clone)]
pub struct Ledger {
    capacity: Vec<usize>,
    free: Vec<usize>,
}

impl Ledger {
    /// A ledger over engines of these capacities.
    pub fn new(capacity: Vec<usize>) -> Self {
        Ledger { free: capacity.clone(), capacity }
    }

    /// Reserves `tokens` on the engine with the most free capacity (lowest index on ties);
    /// `None` when none has room.
    pub fn acquire(&mut self, tokens: usize) -> Option<usize> {
        let (engine, &free) = self.free.iter().enumerate().max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(&a.0)))?;
        if free < tokens {
            return None;
        }
        self.free[engine] -= tokens;
        Some(engine)
    }

    /// Reserves `tokens` on `engine` if it has room.
    pub fn acquire_on(&mut self, engine: usize, tokens: usize) -> bool {
        if self.free[engine] < tokens {
            return false;
        }
        self.free[engine] -= tokens;
        true
    }

    /// Gives back a reservation.
    pub fn release(&mut self, engine: usize, tokens: usize) {
        self.free[engine] += tokens;
        assert!(self.free[engine] <= self.capacity[engine], "ledger: engine {engine} released more than it reserved");
    }

    /// Reserved tokens on `engine`.
    pub fn reserved(&self, engine: usize) -> usize {
        self.capacity[engine] - self.free[engine]
    }

    /// Capacity of `engine`.
    pub fn capacity(&self, engine: usize) -> usize {
        self.capacity[engine]
    }

    /// The largest capacity.
    pub fn largest(&self) -> usize {
        self.capacity.iter().copied().max().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn most_free_first_and_waits_when_full() {
        let mut l = Ledger::new(vec![100, 300]);
        assert_eq!(l.acquire(150), Some(1));
        assert_eq!(l.acquire(120), Some(1), "150 free on 1 beats 100 on 0");
        assert_eq!(l.acquire(90), Some(0));
        assert_eq!(l.acquire(40), None, "10 and 30 free");
        l.release(1, 150);
        assert_eq!(l.acquire(40), Some(1));
        assert_eq!(l.reserved(1), 160);
    }
}
