//! The in-memory view of pending jobs: a priority queue of runnable jobs (highest
//! priority first, FIFO by LSN within a priority), jobs waiting on `after`
//! dependencies, and cancellation tokens of running jobs. The database is the truth;
//! this is rebuilt from it at start-up.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};

use wasmesh_runtime::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Waiting,
    Queued,
    Running,
}

#[derive(Debug)]
struct Pending {
    priority: i64,
    phase: Phase,
    deps_left: HashSet<u64>,
    cancel: CancellationToken,
}

/// What cancelling a job did.
#[derive(Debug)]
pub enum Cancelled {
    /// It had not started; it never will.
    NotStarted,
    /// It is running; its token was cancelled and the run stops within a tick.
    Running,
    /// It is not pending (finished, or unknown).
    NotPending,
}

/// Pending jobs.
#[derive(Debug, Default)]
pub struct Scheduler {
    ready: BinaryHeap<(i64, Reverse<u64>)>,
    pending: HashMap<u64, Pending>,
    dependents: HashMap<u64, Vec<u64>>,
}

impl Scheduler {
    /// Adds a job that waits for `deps` (the still-pending subset of its `after`).
    pub fn add(&mut self, lsn: u64, priority: i64, deps: impl IntoIterator<Item = u64>) {
        let deps_left: HashSet<u64> = deps.into_iter().collect();
        for dep in &deps_left {
            self.dependents.entry(*dep).or_default().push(lsn);
        }
        let phase = if deps_left.is_empty() {
            Phase::Queued
        } else {
            Phase::Waiting
        };
        if phase == Phase::Queued {
            self.ready.push((priority, Reverse(lsn)));
        }
        self.pending.insert(
            lsn,
            Pending {
                priority,
                phase,
                deps_left,
                cancel: CancellationToken::new(),
            },
        );
    }

    /// Adds a job that is already running elsewhere (a coordinator's restored lease).
    pub fn add_running(&mut self, lsn: u64, priority: i64) {
        self.pending.insert(
            lsn,
            Pending {
                priority,
                phase: Phase::Running,
                deps_left: HashSet::new(),
                cancel: CancellationToken::new(),
            },
        );
    }

    /// Whether the job is pending (waiting, queued or running).
    pub fn is_pending(&self, lsn: u64) -> bool {
        self.pending.contains_key(&lsn)
    }

    /// Whether the job is running.
    pub fn is_running(&self, lsn: u64) -> bool {
        self.pending
            .get(&lsn)
            .is_some_and(|p| p.phase == Phase::Running)
    }

    /// The next runnable job, now marked running, with its cancellation token.
    pub fn pop(&mut self) -> Option<(u64, CancellationToken)> {
        while let Some((priority, Reverse(lsn))) = self.ready.pop() {
            // Entries of cancelled jobs or of an old priority are stale; skip them.
            if let Some(p) = self.pending.get_mut(&lsn)
                && p.phase == Phase::Queued
                && p.priority == priority
            {
                p.phase = Phase::Running;
                return Some((lsn, p.cancel.clone()));
            }
        }
        None
    }

    /// Whether a job is ready to run (stale heap entries are dropped on the way).
    pub fn has_runnable(&mut self) -> bool {
        while let Some(&(priority, Reverse(lsn))) = self.ready.peek() {
            if self
                .pending
                .get(&lsn)
                .is_some_and(|p| p.phase == Phase::Queued && p.priority == priority)
            {
                return true;
            }
            self.ready.pop();
        }
        false
    }

    /// Puts a running job back in the queue (a retry).
    pub fn requeue(&mut self, lsn: u64) {
        if let Some(p) = self.pending.get_mut(&lsn) {
            p.phase = Phase::Queued;
            p.cancel = CancellationToken::new();
            self.ready.push((p.priority, Reverse(lsn)));
        }
    }

    /// Changes the priority of a job that has not started; false otherwise.
    pub fn set_priority(&mut self, lsn: u64, priority: i64) -> bool {
        match self.pending.get_mut(&lsn) {
            Some(p) if p.phase != Phase::Running => {
                p.priority = priority;
                if p.phase == Phase::Queued {
                    self.ready.push((priority, Reverse(lsn)));
                }
                true
            }
            _ => false,
        }
    }

    /// Cancels a job.
    pub fn cancel(&mut self, lsn: u64) -> Cancelled {
        match self.pending.get(&lsn).map(|p| p.phase) {
            None => Cancelled::NotPending,
            Some(Phase::Running) => {
                self.pending[&lsn].cancel.cancel();
                Cancelled::Running
            }
            Some(_) => {
                self.pending.remove(&lsn);
                Cancelled::NotStarted
            }
        }
    }

    /// A job finished for good. Returns the dependents that became runnable, and
    /// those that can now never run because this job did not succeed.
    pub fn finish(&mut self, lsn: u64, succeeded: bool) -> (Vec<u64>, Vec<u64>) {
        self.pending.remove(&lsn);
        let mut runnable = Vec::new();
        let mut doomed = Vec::new();
        for dependent in self.dependents.remove(&lsn).unwrap_or_default() {
            let Some(p) = self.pending.get_mut(&dependent) else {
                continue;
            };
            if !succeeded {
                self.pending.remove(&dependent);
                doomed.push(dependent);
                continue;
            }
            p.deps_left.remove(&lsn);
            if p.deps_left.is_empty() && p.phase == Phase::Waiting {
                p.phase = Phase::Queued;
                self.ready.push((p.priority, Reverse(dependent)));
                runnable.push(dependent);
            }
        }
        (runnable, doomed)
    }

    /// Jobs waiting or queued.
    pub fn queued(&self) -> usize {
        self.pending
            .values()
            .filter(|p| p.phase != Phase::Running)
            .count()
    }

    /// Jobs running.
    pub fn running(&self) -> usize {
        self.pending
            .values()
            .filter(|p| p.phase == Phase::Running)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(s: &mut Scheduler) -> Vec<u64> {
        std::iter::from_fn(|| s.pop().map(|(lsn, _)| lsn)).collect()
    }

    #[test]
    fn highest_priority_first_then_fifo() {
        let mut s = Scheduler::default();
        for (lsn, priority) in [(1, 0), (2, 5), (3, 0), (4, 5), (5, -1)] {
            s.add(lsn, priority, []);
        }
        assert_eq!(drain(&mut s), vec![2, 4, 1, 3, 5]);
    }

    #[test]
    fn priority_changes_and_cancels_leave_no_stale_entries() {
        let mut s = Scheduler::default();
        s.add(1, 0, []);
        s.add(2, 0, []);
        s.add(3, 0, []);
        assert!(s.set_priority(3, 9));
        assert!(matches!(s.cancel(1), Cancelled::NotStarted));
        assert_eq!(drain(&mut s), vec![3, 2]);
        assert!(!s.set_priority(3, 1), "running jobs keep their priority");
        assert!(matches!(s.cancel(3), Cancelled::Running));
    }

    #[test]
    fn dependents_wait_then_run_or_are_doomed() {
        let mut s = Scheduler::default();
        s.add(1, 0, []);
        s.add(2, 0, []);
        s.add(3, 0, [1, 2]);
        s.add(4, 0, [2]);
        assert_eq!(drain(&mut s), vec![1, 2]);
        assert_eq!(s.finish(1, true), (vec![], vec![]));
        assert_eq!(s.finish(2, false), (vec![], vec![3, 4]));
        assert!(!s.is_pending(3) && !s.is_pending(4));
        s.add(5, 0, [6]);
        s.add(6, 0, []);
        assert_eq!(drain(&mut s), vec![6]);
        assert_eq!(s.finish(6, true), (vec![5], vec![]));
        assert_eq!(drain(&mut s), vec![5]);
    }
}
