//! How many leases a node may hold beyond its slots: work queued on the node so that a
//! slot that finishes a short job starts the next at once instead of waiting for a
//! report, a placement and a work answer. Measured: 1,200 -> 2,600 trivial jobs/s on a
//! coordinator + 2 nodes (BENCHMARKS.md).

use std::time::{Duration, Instant};

use super::placement::NodeView;

/// How many leases a node may hold beyond its slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prefetch {
    /// Enough to cover [`Prefetch::HIDE`] of the node's recent run times (none until
    /// it has finished something, none for jobs that run longer than that, at most
    /// [`Prefetch::PER_SLOT`] a slot): short jobs never wait for a hand-out, long
    /// ones are never queued behind each other on one node while another is free.
    Auto,
    /// This many, whatever the jobs.
    Fixed(u64),
}

impl Prefetch {
    /// The gap a node's queued leases should cover: a report, a placement and a work
    /// answer (a few ms on loopback; more across a network).
    pub const HIDE: Duration = Duration::from_millis(20);
    /// Under `Auto`, a node that reported no result for this long (its slots held by
    /// long runs) gets no more queued leases until it does.
    pub const STALL: Duration = Duration::from_millis(100);
    /// Queued leases a slot may have at most, under `Auto`.
    pub const PER_SLOT: u64 = 8;

    /// The extra leases of a node with `slots` whose runs took `run` on average.
    pub fn extra(self, slots: u64, run: Option<Duration>) -> u64 {
        match (self, run) {
            (Self::Fixed(n), _) => n,
            (Self::Auto, None) => 0,
            (Self::Auto, Some(run)) => {
                let per_slot = Self::HIDE.as_secs_f64() / run.as_secs_f64().max(1e-4);
                ((slots as f64 * per_slot).floor() as u64).min(slots * Self::PER_SLOT)
            }
        }
    }
}

impl std::str::FromStr for Prefetch {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "auto" => Ok(Self::Auto),
            n => n
                .parse()
                .map(Self::Fixed)
                .map_err(|_| format!("`{n}`: a number of leases, or `auto`")),
        }
    }
}

impl std::fmt::Display for Prefetch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Fixed(n) => write!(f, "{n}"),
        }
    }
}

/// A node's room for queued leases, from its policy, slots and recent runs.
impl NodeView {
    /// Leases it may hold queued beyond its slots at `now`. Under `Prefetch::Auto`
    /// only while it is turning jobs over (a result within `Prefetch::STALL`): a node
    /// whose slots are all held by long runs queues nothing more behind them.
    pub fn queue_room(&self, now: Instant) -> u64 {
        match self.policy {
            Prefetch::Fixed(n) => n,
            Prefetch::Auto => {
                let turning = self
                    .last_result
                    .is_some_and(|at| now.saturating_duration_since(at) <= Prefetch::STALL);
                if turning {
                    self.policy.extra(self.slots, self.run_time)
                } else {
                    0
                }
            }
        }
    }

    /// Slots (plus queue room) not taken at `now`.
    pub fn free_at(&self, now: Instant) -> u64 {
        (self.slots + self.queue_room(now)).saturating_sub(self.leased + self.local)
    }

    /// Whether one of its slots is idle (a job placed there starts at once).
    pub fn idle_slot(&self) -> bool {
        self.leased + self.local < self.slots
    }

    /// Folds one attempt's run time into the recent run time.
    pub fn observe_run(&mut self, run: Duration) {
        const ALPHA: f64 = 0.2;
        self.run_time = Some(match self.run_time {
            None => run,
            Some(recent) => recent.mul_f64(1.0 - ALPHA) + run.mul_f64(ALPHA),
        });
    }
}
