//! The in-memory view of pending jobs: runnable jobs in one priority queue per
//! tenant (highest priority first, FIFO by LSN within a priority), jobs waiting on
//! `after` dependencies, and cancellation tokens of running jobs. The database is the
//! truth; this is rebuilt from it at start-up.
//!
//! A priority orders its own tenant's jobs only: the next job comes from the tenant
//! with the fewest jobs running, ties going to the one served least recently (so
//! tenants take turns when slots free one at a time), so no tenant can jump ahead of
//! everyone else by asking for a high priority.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};

use wasmesh_runtime::CancellationToken;

use super::quota::Quotas;

/// The lowest priority a job can have; lower ones are raised to it.
pub const PRIORITY_MIN: i64 = -1000;
/// The highest priority a job can have; higher ones are lowered to it.
pub const PRIORITY_MAX: i64 = 1000;

/// A priority as asked for, clamped to `PRIORITY_MIN..=PRIORITY_MAX`.
pub fn clamp_priority(priority: i64) -> i64 {
    priority.clamp(PRIORITY_MIN, PRIORITY_MAX)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Waiting,
    Queued,
    Running,
}

#[derive(Debug)]
struct Pending {
    tenant: String,
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

/// How a tenant's claim to the next slot sorts, least first: not below its
/// `min_running`, jobs running, the turn it was last served, its next job's LSN.
type TurnKey = (bool, usize, u64, u64);

/// Pending jobs.
#[derive(Debug, Default)]
pub struct Scheduler {
    /// Runnable jobs by tenant; entries of jobs no longer queued (or queued at another
    /// priority) are stale and skipped.
    ready: HashMap<String, BinaryHeap<(i64, Reverse<u64>)>>,
    /// Jobs handed out so far.
    turns: u64,
    /// The turn each tenant was last served at (one entry per tenant ever seen: the
    /// tenants are the server's configured ones).
    served: HashMap<String, u64>,
    /// Jobs running, by tenant.
    running: HashMap<String, usize>,
    pending: HashMap<u64, Pending>,
    dependents: HashMap<u64, Vec<u64>>,
    /// Per-tenant `min_running`/`max_running`.
    quotas: Quotas,
}

impl Scheduler {
    /// A scheduler honouring these tenants' `min_running` and `max_running`.
    pub fn new(quotas: Quotas) -> Self {
        Self {
            quotas,
            ..Self::default()
        }
    }

    /// Adds a job of `tenant` that waits for `deps` (the still-pending subset of its
    /// `after`).
    pub fn add(
        &mut self,
        lsn: u64,
        tenant: &str,
        priority: i64,
        deps: impl IntoIterator<Item = u64>,
    ) {
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
            self.push_ready(tenant, priority, lsn);
        }
        self.pending.insert(
            lsn,
            Pending {
                tenant: tenant.to_string(),
                priority,
                phase,
                deps_left,
                cancel: CancellationToken::new(),
            },
        );
    }

    /// Adds a job that is already running elsewhere (a coordinator's restored lease).
    pub fn add_running(&mut self, lsn: u64, tenant: &str, priority: i64) {
        *self.running.entry(tenant.to_string()).or_default() += 1;
        self.pending.insert(
            lsn,
            Pending {
                tenant: tenant.to_string(),
                priority,
                phase: Phase::Running,
                deps_left: HashSet::new(),
                cancel: CancellationToken::new(),
            },
        );
    }

    fn push_ready(&mut self, tenant: &str, priority: i64, lsn: u64) {
        match self.ready.get_mut(tenant) {
            Some(heap) => heap.push((priority, Reverse(lsn))),
            None => {
                self.ready.insert(
                    tenant.to_string(),
                    BinaryHeap::from([(priority, Reverse(lsn))]),
                );
            }
        }
    }

    fn stopped_running(&mut self, tenant: &str) {
        if let Some(n) = self.running.get_mut(tenant) {
            *n -= 1;
            if *n == 0 {
                self.running.remove(tenant);
            }
        }
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

    /// The tenant whose turn it is (below its `min_running` first, then fewest
    /// running, then served least recently, then oldest next job; a tenant at its
    /// `max_running` waits), after dropping stale heap entries; tenants with nothing
    /// runnable are forgotten.
    fn next_tenant(&mut self) -> Option<String> {
        let Self {
            ready,
            pending,
            running,
            served,
            quotas,
            ..
        } = self;
        let mut best: Option<(TurnKey, &String)> = None;
        ready.retain(|_, heap| {
            while let Some(&(priority, Reverse(lsn))) = heap.peek() {
                if pending
                    .get(&lsn)
                    .is_some_and(|p| p.phase == Phase::Queued && p.priority == priority)
                {
                    return true;
                }
                heap.pop();
            }
            false
        });
        for (tenant, heap) in ready.iter() {
            let Some(&(_, Reverse(head))) = heap.peek() else {
                continue;
            };
            let now_running = running.get(tenant).copied().unwrap_or(0);
            let (min, max) = quotas.running_bounds(tenant);
            if max.is_some_and(|max| now_running as u64 >= max) {
                continue;
            }
            let key = (
                min.is_none_or(|min| now_running as u64 >= min),
                now_running,
                served.get(tenant).copied().unwrap_or(0),
                head,
            );
            if best.is_none_or(|(best_key, _)| key < best_key) {
                best = Some((key, tenant));
            }
        }
        best.map(|(_, tenant)| tenant.clone())
    }

    /// The next runnable job, now marked running, with its cancellation token.
    pub fn pop(&mut self) -> Option<(u64, CancellationToken)> {
        let tenant = self.next_tenant()?;
        self.turns += 1;
        let heap = self.ready.get_mut(&tenant)?;
        // `next_tenant` left a live entry at the head.
        let (_, Reverse(lsn)) = heap.pop()?;
        match self.served.get_mut(&tenant) {
            Some(turn) => *turn = self.turns,
            None => {
                self.served.insert(tenant.clone(), self.turns);
            }
        }
        let p = self.pending.get_mut(&lsn)?;
        p.phase = Phase::Running;
        let cancel = p.cancel.clone();
        *self.running.entry(tenant).or_default() += 1;
        Some((lsn, cancel))
    }

    /// Whether a job is ready to run (stale heap entries are dropped on the way).
    pub fn has_runnable(&mut self) -> bool {
        self.next_tenant().is_some()
    }

    /// Puts a running job back in the queue (a retry, or no node could take it).
    /// Returns false, leaving it as it is, when the job was cancelled meanwhile: the
    /// caller then ends it as cancelled (a cancelled job never runs).
    pub fn requeue(&mut self, lsn: u64) -> bool {
        let Some(p) = self.pending.get_mut(&lsn) else {
            return true;
        };
        if p.cancel.is_cancelled() {
            return false;
        }
        let was_running = p.phase == Phase::Running;
        p.phase = Phase::Queued;
        let (tenant, priority) = (p.tenant.clone(), p.priority);
        if was_running {
            self.stopped_running(&tenant);
        }
        self.push_ready(&tenant, priority, lsn);
        true
    }

    /// Whether a cancel was asked for while the job runs (its token is cancelled).
    pub fn cancel_requested(&self, lsn: u64) -> bool {
        self.pending
            .get(&lsn)
            .is_some_and(|p| p.cancel.is_cancelled())
    }

    /// Changes the priority of a job that has not started; false otherwise.
    pub fn set_priority(&mut self, lsn: u64, priority: i64) -> bool {
        match self.pending.get_mut(&lsn) {
            Some(p) if p.phase != Phase::Running => {
                p.priority = priority;
                if p.phase == Phase::Queued {
                    let tenant = p.tenant.clone();
                    self.push_ready(&tenant, priority, lsn);
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
        if let Some(p) = self.pending.remove(&lsn)
            && p.phase == Phase::Running
        {
            self.stopped_running(&p.tenant);
        }
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
                let (tenant, priority) = (p.tenant.clone(), p.priority);
                self.push_ready(&tenant, priority, dependent);
                runnable.push(dependent);
            }
        }
        (runnable, doomed)
    }

    /// Jobs of `tenant` not yet finished (waiting, queued or running).
    pub fn pending_of(&self, tenant: &str) -> usize {
        self.pending.values().filter(|p| p.tenant == tenant).count()
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
    fn max_running_makes_a_tenant_wait_and_min_running_puts_it_first() {
        use crate::engine::quota::{Quota, Quotas};
        let quotas = Quotas::new(
            Quota::default(),
            HashMap::from([
                (
                    "capped".to_string(),
                    Quota {
                        max_running: Some(1),
                        ..Quota::default()
                    },
                ),
                (
                    "reserved".to_string(),
                    Quota {
                        min_running: Some(2),
                        ..Quota::default()
                    },
                ),
            ]),
        );
        let mut s = Scheduler::new(quotas);
        for lsn in 1..=3 {
            s.add(lsn, "capped", 0, []);
        }
        assert_eq!(s.pop().map(|(lsn, _)| lsn), Some(1));
        assert!(!s.has_runnable(), "capped is at its max_running");
        assert!(s.pop().is_none());
        // Its running job ends: the next one may go.
        s.finish(1, true);
        assert_eq!(s.pop().map(|(lsn, _)| lsn), Some(2));
        // Below its min_running a tenant goes first, even with more running.
        s.add(10, "other", 0, []);
        s.add(11, "other", 0, []);
        s.add(20, "reserved", 0, []);
        s.add(21, "reserved", 0, []);
        s.add(22, "reserved", 0, []);
        let order = drain(&mut s);
        assert_eq!(&order[..2], [20, 21], "the reserved two first: {order:?}");
        assert!(
            !order.contains(&3),
            "capped still has one running: {order:?}"
        );
    }

    #[test]
    fn highest_priority_first_then_fifo() {
        let mut s = Scheduler::default();
        for (lsn, priority) in [(1, 0), (2, 5), (3, 0), (4, 5), (5, -1)] {
            s.add(lsn, "a", priority, []);
        }
        assert_eq!(drain(&mut s), vec![2, 4, 1, 3, 5]);
    }

    #[test]
    fn priority_changes_and_cancels_leave_no_stale_entries() {
        let mut s = Scheduler::default();
        s.add(1, "a", 0, []);
        s.add(2, "a", 0, []);
        s.add(3, "a", 0, []);
        assert!(s.set_priority(3, 9));
        assert!(matches!(s.cancel(1), Cancelled::NotStarted));
        assert_eq!(drain(&mut s), vec![3, 2]);
        assert!(!s.set_priority(3, 1), "running jobs keep their priority");
        assert!(matches!(s.cancel(3), Cancelled::Running));
    }

    #[test]
    fn dependents_wait_then_run_or_are_doomed() {
        let mut s = Scheduler::default();
        s.add(1, "a", 0, []);
        s.add(2, "a", 0, []);
        s.add(3, "a", 0, [1, 2]);
        s.add(4, "a", 0, [2]);
        assert_eq!(drain(&mut s), vec![1, 2]);
        assert_eq!(s.finish(1, true), (vec![], vec![]));
        assert_eq!(s.finish(2, false), (vec![], vec![3, 4]));
        assert!(!s.is_pending(3) && !s.is_pending(4));
        s.add(5, "a", 0, [6]);
        s.add(6, "a", 0, []);
        assert_eq!(drain(&mut s), vec![6]);
        assert_eq!(s.finish(6, true), (vec![5], vec![]));
        assert_eq!(drain(&mut s), vec![5]);
    }

    /// Regression (issue 10, item 9): `?priority=` took any i64 into one global heap,
    /// so one tenant at a high priority starved everyone else.
    #[test]
    fn a_priority_orders_its_own_tenant_only() {
        let mut s = Scheduler::default();
        for lsn in 1..=4 {
            s.add(lsn, "greedy", clamp_priority(i64::MAX), []);
        }
        s.add(5, "modest", 0, []);
        s.add(6, "modest", 0, []);
        // Turns go to the tenant with fewer jobs running (ties: the oldest next job).
        assert_eq!(drain(&mut s), vec![1, 5, 2, 6, 3, 4]);
        // One slot: every job ends before the next starts, and tenants take turns.
        let mut s = Scheduler::default();
        for lsn in 1..=3 {
            s.add(lsn, "greedy", PRIORITY_MAX, []);
        }
        s.add(4, "modest", 0, []);
        s.add(5, "modest", 0, []);
        let mut order = Vec::new();
        while let Some((lsn, _)) = s.pop() {
            s.finish(lsn, true);
            order.push(lsn);
        }
        assert_eq!(order, vec![1, 4, 2, 5, 3]);
        assert_eq!(clamp_priority(i64::MAX), PRIORITY_MAX);
        assert_eq!(clamp_priority(i64::MIN), PRIORITY_MIN);
        assert_eq!(clamp_priority(7), 7);
    }

    #[test]
    fn the_tenant_with_fewer_running_goes_next() {
        let mut s = Scheduler::default();
        s.add(1, "a", 0, []);
        s.add(2, "a", 0, []);
        s.add(3, "a", 0, []);
        assert_eq!(s.pop().map(|(l, _)| l), Some(1));
        assert_eq!(s.pop().map(|(l, _)| l), Some(2));
        s.add(4, "b", -5, []);
        // b runs nothing and a runs two: b's job goes first despite its priority.
        assert_eq!(s.pop().map(|(l, _)| l), Some(4));
        s.finish(1, true);
        s.finish(2, true);
        assert_eq!(s.running(), 1);
        assert_eq!(drain(&mut s), vec![3]);
    }

    /// Regression (issue 10, item 10): a job popped for placement and put back because
    /// no node could take it ran anyway after a cancel that arrived in between.
    #[test]
    fn a_job_cancelled_while_popped_is_not_requeued() {
        let mut s = Scheduler::default();
        s.add(1, "a", 0, []);
        let (lsn, token) = s.pop().unwrap();
        assert!(matches!(s.cancel(lsn), Cancelled::Running));
        assert!(token.is_cancelled());
        assert!(
            !s.requeue(lsn),
            "a cancelled job must not go back in the queue"
        );
        assert!(!s.has_runnable());
        s.add(2, "a", 0, []);
        let (lsn, _) = s.pop().unwrap();
        assert!(s.requeue(lsn));
        assert_eq!(drain(&mut s), vec![2]);
    }
}
