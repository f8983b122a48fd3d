//! What one inject into a handler group may cost: the configured limits
//! ([`InjectBudget`]) and what is left of them while the inject runs ([`Budget`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The most one inject (one event or one batch) may make a group do.
#[derive(Clone, Copy, Debug)]
pub struct InjectBudget {
    /// Handler runs (the first ones included).
    pub runs: u64,
    /// Bytes of events (as JSON) routed to handlers after the injected ones.
    pub bytes: u64,
    /// Bytes the handler runs produce (their events and outputs, stored whether or
    /// not they are routed): once passed, nothing more is routed.
    pub produced: u64,
}

impl Default for InjectBudget {
    /// 1,000 runs (a full batch of injected events still gets its first hop), 16 MiB
    /// of routed events and 48 MiB produced: with one run's own bounds (1 MiB of
    /// events, its output limit) one inject stores about 64 MiB at most.
    fn default() -> Self {
        Self {
            runs: 1000,
            bytes: 16 << 20,
            produced: 48 << 20,
        }
    }
}

/// What is left of one inject's budget (shared by the events of a batch).
#[derive(Debug)]
pub struct Budget {
    runs: AtomicU64,
    bytes: AtomicU64,
    produced: AtomicU64,
}

impl Budget {
    /// A fresh budget.
    pub fn new(budget: InjectBudget) -> Arc<Self> {
        Arc::new(Self {
            runs: AtomicU64::new(budget.runs),
            bytes: AtomicU64::new(budget.bytes),
            produced: AtomicU64::new(budget.produced),
        })
    }

    /// Takes `n` from `left` if that much is left.
    fn take(left: &AtomicU64, n: u64) -> bool {
        left.fetch_update(Ordering::AcqRel, Ordering::Acquire, |have| {
            have.checked_sub(n)
        })
        .is_ok()
    }

    /// Takes one handler run; false when none is left.
    pub fn take_run(&self) -> bool {
        Self::take(&self.runs, 1)
    }

    /// Takes `n` bytes of routed events; false when fewer are left.
    pub fn take_bytes(&self, n: u64) -> bool {
        Self::take(&self.bytes, n)
    }

    /// Counts `n` bytes a run produced (they are stored already); false once the
    /// inject has produced more than its budget, from then on.
    pub fn take_produced(&self, n: u64) -> bool {
        self.produced
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |have| {
                Some(have.saturating_sub(n))
            })
            .is_ok_and(|had| had >= n && had > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_runs_out_and_stays_out() {
        let budget = Budget::new(InjectBudget {
            runs: 2,
            bytes: 10,
            produced: 100,
        });
        assert!(budget.take_run() && budget.take_run());
        assert!(!budget.take_run());
        assert!(budget.take_bytes(6));
        assert!(!budget.take_bytes(5), "only 4 bytes are left");
        assert!(budget.take_bytes(4));
        assert!(!budget.take_bytes(1));
        assert!(budget.take_produced(60) && budget.take_produced(40));
        assert!(!budget.take_produced(1), "100 produced: no more routing");
        assert!(!budget.take_produced(0), "and it stays out");
    }
}
