//! The in-memory view of pending jobs: runnable jobs in one priority queue per
//! tenant (highest priority first, FIFO by LSN within a priority), jobs waiting on
//! `after` dependencies, and cancellation tokens of running jobs. The database is the
//! truth; this is rebuilt from it at start-up.
//!
//! Slots are shared between tenants by weighted fair share, decided at each free slot
//! (never in rounds, never by preempting a running job). Each tenant has a *charge*:
//! the slot-seconds its jobs held, decayed with a half-life (Slurm's decayed usage),
//! where a job is charged its tenant's estimated run time when it starts and the
//! difference when it ends, and a job running past its estimate adds the excess as it
//! runs. The next slot goes to the tenant with work whose charge / weight is least
//! (ties: fewest running per weight, then served least recently, then oldest job), so
//! over time each active tenant's share of slots converges to its weight's fraction
//! and an idle tenant's share goes to the others. A tenant below its `min_running`
//! goes first; one at its `max_running` waits. A priority orders its own tenant's jobs
//! only: no tenant can take another's share by asking for a high priority. Within a
//! priority, a job with a deadline goes before one without, the nearest deadline
//! first, then FIFO by LSN.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::time::{Duration, Instant};

use wasmesh_runtime::CancellationToken;

use super::quota::Quotas;
use crate::model::HashHex;

/// The lowest priority a job can have; lower ones are raised to it.
pub const PRIORITY_MIN: i64 = -1000;
/// The highest priority a job can have; higher ones are lowered to it.
pub const PRIORITY_MAX: i64 = 1000;

/// The default half-life of a tenant's usage in the fair share.
pub const DEFAULT_HALF_LIFE: Duration = Duration::from_secs(15 * 60);

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
    /// Its nearest deadline (Unix ms), `i64::MAX` for none: it orders a tenant's jobs
    /// of one priority.
    due: i64,
    /// Its worker and queue (what the autoscaler's backlog counts by).
    origin: Origin,
    /// While queued: since when (seconds since the scheduler's epoch).
    queued_at: f64,
    phase: Phase,
    deps_left: HashSet<u64>,
    cancel: CancellationToken,
    /// While running: when it started (seconds since the scheduler's epoch) and the
    /// slot-seconds charged for it then.
    started: f64,
    charged: f64,
}

/// Where a job comes from: its worker and queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Origin {
    /// Its worker.
    pub worker: HashHex,
    /// Its queue, if any.
    pub queue: Option<u64>,
}

impl Default for Origin {
    fn default() -> Self {
        Self {
            worker: HashHex::empty(),
            queue: None,
        }
    }
}

/// The runnable jobs at one moment, for the autoscaler, by origin (worker and queue).
#[derive(Debug, Default)]
pub struct Backlog(pub HashMap<Origin, Waiting>);

/// The runnable jobs of one origin.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Waiting {
    /// How many.
    pub jobs: usize,
    /// How long the oldest has waited since it became runnable, in seconds.
    pub waited: f64,
    /// Their nearest deadline (Unix ms), `i64::MAX` for none.
    pub due: i64,
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

/// A tenant's claim on the slots.
#[derive(Debug, Default)]
struct Share {
    /// Slot-seconds charged, decayed to `at` (seconds since the epoch).
    usage: f64,
    at: f64,
    /// Jobs not yet finished (waiting, queued or running).
    pending: usize,
    /// Jobs running, the sum of their start times and of what they were charged.
    running: usize,
    started_sum: f64,
    charged_sum: f64,
    /// Slot-seconds a job of this tenant holds, on average (none until one ended).
    estimate: Option<f64>,
    /// The turn this tenant was last served at.
    served: u64,
}

impl Share {
    /// The usage decayed to `t` (not before `at`).
    fn decayed(&self, t: f64, half_life: f64) -> f64 {
        self.usage * 0.5f64.powf((t - self.at).max(0.0) / half_life)
    }

    /// Decays the usage to `t`.
    fn decay_to(&mut self, t: f64, half_life: f64) {
        if t > self.at {
            self.usage = self.decayed(t, half_life);
            self.at = t;
        }
    }

    /// The charge at `t`: decayed usage plus what running jobs used past their
    /// estimates.
    fn charge(&self, t: f64, half_life: f64) -> f64 {
        let ran = self.running as f64 * t - self.started_sum;
        self.decayed(t, half_life) + (ran - self.charged_sum).max(0.0)
    }
}

/// How a tenant's claim to the next slot sorts, least first.
#[derive(Debug, Clone, Copy)]
struct TurnKey {
    /// At or above its `min_running` (false goes first).
    reserved_met: bool,
    /// Charge / weight.
    charge: f64,
    /// Running / weight.
    running: f64,
    served: u64,
    head: u64,
}

impl TurnKey {
    fn cmp(&self, other: &Self) -> Ordering {
        self.reserved_met
            .cmp(&other.reserved_met)
            .then(self.charge.total_cmp(&other.charge))
            .then(self.running.total_cmp(&other.running))
            .then(self.served.cmp(&other.served))
            .then(self.head.cmp(&other.head))
    }
}

/// A runnable job in its tenant's heap: (priority, Reverse(deadline), Reverse(LSN)), so
/// the greatest is the highest priority, then the nearest deadline, then the oldest.
type ReadyEntry = (i64, Reverse<i64>, Reverse<u64>);

/// A moving average's weight of the newest sample.
const ESTIMATE_GAIN: f64 = 0.2;

/// Pending jobs.
#[derive(Debug)]
pub struct Scheduler {
    /// Runnable jobs by tenant, highest priority, then nearest deadline, then oldest
    /// first; entries of jobs no longer queued (or queued at another priority) are
    /// stale and skipped.
    ready: HashMap<String, BinaryHeap<ReadyEntry>>,
    /// Jobs handed out so far.
    turns: u64,
    /// Every tenant's share (one entry per tenant ever seen: the tenants are the
    /// server's configured ones).
    shares: HashMap<String, Share>,
    /// Jobs running, all tenants.
    running: usize,
    pending: HashMap<u64, Pending>,
    dependents: HashMap<u64, Vec<u64>>,
    /// Per-tenant weights, `min_running` and `max_running`.
    quotas: Quotas,
    /// Usage's half-life, in seconds.
    half_life: f64,
    /// Slot-seconds a job holds on average, all tenants (for a tenant's first jobs).
    estimate: Option<f64>,
    epoch: Instant,
}

impl Default for Scheduler {
    fn default() -> Self {
        Self::new(Quotas::default(), DEFAULT_HALF_LIFE)
    }
}

impl Scheduler {
    /// A scheduler honouring these tenants' weights, `min_running` and `max_running`,
    /// with usage decaying by half every `half_life`.
    pub fn new(quotas: Quotas, half_life: Duration) -> Self {
        Self {
            ready: HashMap::new(),
            turns: 0,
            shares: HashMap::new(),
            running: 0,
            pending: HashMap::new(),
            dependents: HashMap::new(),
            quotas,
            half_life: half_life.as_secs_f64().max(1e-3),
            estimate: None,
            epoch: Instant::now(),
        }
    }

    fn secs(&self, now: Instant) -> f64 {
        now.saturating_duration_since(self.epoch).as_secs_f64()
    }

    fn share(&mut self, tenant: &str) -> &mut Share {
        if !self.shares.contains_key(tenant) {
            self.shares.insert(tenant.to_string(), Share::default());
        }
        self.shares.get_mut(tenant).expect("inserted above")
    }

    /// Charges `tenant` slot-seconds it used before this scheduler existed (decayed to
    /// `now` by the caller): the journal's usage ledger at start-up, so a restart does
    /// not forget who used what.
    pub fn charge_history(&mut self, tenant: &str, slot_seconds: f64, now: Instant) {
        let (t, half_life) = (self.secs(now), self.half_life);
        let share = self.share(tenant);
        share.decay_to(t, half_life);
        share.usage += slot_seconds.max(0.0);
    }

    /// Adds a pending job (one already pending is replaced: it leaves as `remove`
    /// says, so the counts stay exact).
    fn insert(&mut self, lsn: u64, pending: Pending) {
        self.remove(lsn, Instant::now(), false);
        self.share(&pending.tenant).pending += 1;
        self.pending.insert(lsn, pending);
    }

    /// Takes a job out of the schedule at `now`; one running stops running (`ended`:
    /// it finished, so its run time teaches the estimates).
    fn remove(&mut self, lsn: u64, now: Instant, ended: bool) -> Option<Pending> {
        let p = self.pending.remove(&lsn)?;
        self.share(&p.tenant).pending -= 1;
        if p.phase == Phase::Running {
            self.stopped_running(&p.tenant, p.started, p.charged, now, ended);
        }
        Some(p)
    }

    /// Adds a job of `tenant` with no deadline that waits for `deps` (the still-pending
    /// subset of its `after`).
    pub fn add(
        &mut self,
        lsn: u64,
        tenant: &str,
        priority: i64,
        deps: impl IntoIterator<Item = u64>,
    ) {
        self.add_due(lsn, tenant, priority, None, Origin::default(), deps);
    }

    /// [`Scheduler::add`] for a job of `origin` whose nearest deadline is `due` (Unix
    /// ms).
    pub fn add_due(
        &mut self,
        lsn: u64,
        tenant: &str,
        priority: i64,
        due: Option<i64>,
        origin: Origin,
        deps: impl IntoIterator<Item = u64>,
    ) {
        let queued_at = self.secs(Instant::now());
        let due = due.unwrap_or(i64::MAX);
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
            self.push_ready(tenant, priority, due, lsn);
        }
        self.insert(
            lsn,
            Pending {
                tenant: tenant.to_string(),
                priority,
                due,
                origin,
                queued_at,
                phase,
                deps_left,
                cancel: CancellationToken::new(),
                started: 0.0,
                charged: 0.0,
            },
        );
    }

    /// Adds a job that is already running elsewhere (a coordinator's restored lease),
    /// as started `now`.
    pub fn add_running(&mut self, lsn: u64, tenant: &str, priority: i64, now: Instant) {
        let t = self.secs(now);
        self.insert(
            lsn,
            Pending {
                tenant: tenant.to_string(),
                priority,
                due: i64::MAX,
                origin: Origin::default(),
                queued_at: t,
                phase: Phase::Running,
                deps_left: HashSet::new(),
                cancel: CancellationToken::new(),
                started: t,
                charged: 0.0,
            },
        );
        self.started_running(tenant, t, 0.0);
    }

    fn push_ready(&mut self, tenant: &str, priority: i64, due: i64, lsn: u64) {
        let entry = (priority, Reverse(due), Reverse(lsn));
        match self.ready.get_mut(tenant) {
            Some(heap) => heap.push(entry),
            None => {
                self.ready
                    .insert(tenant.to_string(), BinaryHeap::from([entry]));
            }
        }
    }

    /// A job of `tenant` started at `t`, charged `charged` slot-seconds.
    fn started_running(&mut self, tenant: &str, t: f64, charged: f64) {
        let half_life = self.half_life;
        let share = self.share(tenant);
        share.decay_to(t, half_life);
        share.usage += charged;
        share.running += 1;
        share.started_sum += t;
        share.charged_sum += charged;
        self.running += 1;
    }

    /// A running job stopped at `now`: its tenant is charged what it held beyond what
    /// it was charged at its start; `ended` when it finished (its run time then
    /// teaches the estimates).
    fn stopped_running(
        &mut self,
        tenant: &str,
        started: f64,
        charged: f64,
        now: Instant,
        ended: bool,
    ) {
        let (t, half_life) = (self.secs(now), self.half_life);
        let held = (t - started).max(0.0);
        if ended {
            let average =
                |old: Option<f64>| Some(old.map_or(held, |e| e + ESTIMATE_GAIN * (held - e)));
            self.estimate = average(self.estimate);
            let share = self.share(tenant);
            share.estimate = average(share.estimate);
        }
        let share = self.share(tenant);
        share.decay_to(t, half_life);
        share.usage = (share.usage + held - charged).max(0.0);
        share.running -= 1;
        share.started_sum -= started;
        share.charged_sum -= charged;
        if share.running == 0 {
            // No drift from adding and taking away floats.
            share.started_sum = 0.0;
            share.charged_sum = 0.0;
        }
        self.running -= 1;
    }

    /// Whether the job is pending (waiting, queued or running).
    pub fn is_pending(&self, lsn: u64) -> bool {
        self.pending.contains_key(&lsn)
    }

    /// Whether the job is pending here or a job here waits for it.
    pub fn awaits(&self, lsn: u64) -> bool {
        self.pending.contains_key(&lsn) || self.dependents.contains_key(&lsn)
    }

    /// Whether the job is running.
    pub fn is_running(&self, lsn: u64) -> bool {
        self.pending
            .get(&lsn)
            .is_some_and(|p| p.phase == Phase::Running)
    }

    /// The tenant whose turn it is at `t` (see the module's comment), after dropping
    /// stale heap entries; tenants with nothing runnable are forgotten.
    fn next_tenant(&mut self, t: f64) -> Option<String> {
        let Self {
            ready,
            pending,
            shares,
            quotas,
            half_life,
            ..
        } = self;
        let mut best: Option<(TurnKey, &String)> = None;
        ready.retain(|_, heap| {
            while let Some(&(priority, _, Reverse(lsn))) = heap.peek() {
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
        let idle = Share::default();
        for (tenant, heap) in ready.iter() {
            let Some(&(_, _, Reverse(head))) = heap.peek() else {
                continue;
            };
            let share = shares.get(tenant).unwrap_or(&idle);
            let (min, max, weight) = quotas.share_terms(tenant);
            if max.is_some_and(|max| share.running as u64 >= max) {
                continue;
            }
            let key = TurnKey {
                reserved_met: min.is_none_or(|min| share.running as u64 >= min),
                charge: share.charge(t, *half_life) / weight,
                running: share.running as f64 / weight,
                served: share.served,
                head,
            };
            if best.is_none_or(|(best_key, _)| key.cmp(&best_key) == Ordering::Less) {
                best = Some((key, tenant));
            }
        }
        best.map(|(_, tenant)| tenant.clone())
    }

    /// The next runnable job at `now`, now marked running, with its cancellation token.
    pub fn pop(&mut self, now: Instant) -> Option<(u64, CancellationToken)> {
        let t = self.secs(now);
        let tenant = self.next_tenant(t)?;
        self.turns += 1;
        let heap = self.ready.get_mut(&tenant)?;
        // `next_tenant` left a live entry at the head.
        let (_, _, Reverse(lsn)) = heap.pop()?;
        let turns = self.turns;
        let share = self.share(&tenant);
        share.served = turns;
        let charged = share.estimate.or(self.estimate).unwrap_or(0.0);
        let p = self.pending.get_mut(&lsn)?;
        p.phase = Phase::Running;
        p.started = t;
        p.charged = charged;
        let cancel = p.cancel.clone();
        self.started_running(&tenant, t, charged);
        Some((lsn, cancel))
    }

    /// Whether a job is ready to run (stale heap entries are dropped on the way).
    pub fn has_runnable(&mut self) -> bool {
        let t = self.secs(Instant::now());
        self.next_tenant(t).is_some()
    }

    /// Puts a running job back in the queue at `now` (a retry, or no node could take
    /// it). Returns false, leaving it as it is, when the job was cancelled meanwhile:
    /// the caller then ends it as cancelled (a cancelled job never runs).
    pub fn requeue(&mut self, lsn: u64, now: Instant) -> bool {
        let Some(p) = self.pending.get_mut(&lsn) else {
            return true;
        };
        if p.cancel.is_cancelled() {
            return false;
        }
        let was_running = p.phase == Phase::Running;
        p.phase = Phase::Queued;
        p.queued_at = now.saturating_duration_since(self.epoch).as_secs_f64();
        let (tenant, priority, due, started, charged) =
            (p.tenant.clone(), p.priority, p.due, p.started, p.charged);
        if was_running {
            self.stopped_running(&tenant, started, charged, now, false);
        }
        self.push_ready(&tenant, priority, due, lsn);
        true
    }

    /// Lets go of a job another coordinator sharing the journal took or ended: it
    /// leaves the schedule without ending here (its dependents stay, for the end
    /// another coordinator announces).
    pub fn forget(&mut self, lsn: u64, now: Instant) {
        self.remove(lsn, now, false);
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
                    let (tenant, due) = (p.tenant.clone(), p.due);
                    self.push_ready(&tenant, priority, due, lsn);
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
                self.remove(lsn, Instant::now(), false);
                Cancelled::NotStarted
            }
        }
    }

    /// A job finished for good at `now`. Returns the dependents that became runnable,
    /// and those that can now never run because this job did not succeed.
    pub fn finish(&mut self, lsn: u64, succeeded: bool, now: Instant) -> (Vec<u64>, Vec<u64>) {
        self.remove(lsn, now, true);
        let mut runnable = Vec::new();
        let mut doomed = Vec::new();
        for dependent in self.dependents.remove(&lsn).unwrap_or_default() {
            if !self.pending.contains_key(&dependent) {
                continue;
            }
            if !succeeded {
                self.remove(dependent, now, false);
                doomed.push(dependent);
                continue;
            }
            let Some(p) = self.pending.get_mut(&dependent) else {
                continue;
            };
            p.deps_left.remove(&lsn);
            if p.deps_left.is_empty() && p.phase == Phase::Waiting {
                p.phase = Phase::Queued;
                p.queued_at = now.saturating_duration_since(self.epoch).as_secs_f64();
                let (tenant, priority, due) = (p.tenant.clone(), p.priority, p.due);
                self.push_ready(&tenant, priority, due, dependent);
                runnable.push(dependent);
            }
        }
        (runnable, doomed)
    }

    /// Jobs of `tenant` not yet finished (waiting, queued or running).
    pub fn pending_of(&self, tenant: &str) -> usize {
        self.shares.get(tenant).map_or(0, |s| s.pending)
    }

    /// The runnable jobs at `now` that more slots would run sooner: how many of each
    /// worker, and how long the oldest of each queue has waited. (One pass over the
    /// pending jobs, in memory.)
    pub fn backlog(&self, now: Instant) -> Backlog {
        let t = self.secs(now);
        // A tenant with `max_running` counts only the queued jobs it could still
        // start (its cap less what it runs, oldest first): more nodes would not run
        // the rest any sooner.
        let mut counted: Vec<&Pending> = Vec::new();
        let mut capped: HashMap<&str, (u64, Vec<&Pending>)> = HashMap::new();
        for p in self.pending.values().filter(|p| p.phase == Phase::Queued) {
            match self.quotas.share_terms(&p.tenant).1 {
                Some(max) => capped
                    .entry(&p.tenant)
                    .or_insert((max, Vec::new()))
                    .1
                    .push(p),
                None => counted.push(p),
            }
        }
        for (tenant, (max, mut jobs)) in capped {
            let running = self.shares.get(tenant).map_or(0, |s| s.running) as u64;
            let room = max.saturating_sub(running) as usize;
            if jobs.len() > room {
                jobs.sort_by(|a, b| a.queued_at.total_cmp(&b.queued_at));
                jobs.truncate(room);
            }
            counted.extend(jobs);
        }
        let mut groups: HashMap<Origin, Waiting> = HashMap::new();
        for p in counted {
            let waited = (t - p.queued_at).max(0.0);
            let group = groups.entry(p.origin).or_insert(Waiting {
                jobs: 0,
                waited,
                due: p.due,
            });
            group.jobs += 1;
            group.waited = group.waited.max(waited);
            group.due = group.due.min(p.due);
        }
        Backlog(groups)
    }

    /// The oldest (lowest LSN) job queued to run, if any.
    pub fn oldest_queued(&self) -> Option<u64> {
        self.pending
            .iter()
            .filter(|(_, p)| p.phase == Phase::Queued)
            .map(|(lsn, _)| *lsn)
            .min()
    }

    /// Jobs waiting or queued.
    pub fn queued(&self) -> usize {
        self.pending.len() - self.running
    }

    /// Jobs running.
    pub fn running(&self) -> usize {
        self.running
    }

    /// Every tenant's fair-share standing at `now`, by tenant: (jobs running, charge
    /// in slot-seconds).
    pub fn shares(&self, now: Instant) -> Vec<(String, usize, f64)> {
        let t = self.secs(now);
        let mut shares: Vec<_> = self
            .shares
            .iter()
            .map(|(tenant, s)| (tenant.clone(), s.running, s.charge(t, self.half_life)))
            .collect();
        shares.sort_by(|a, b| a.0.cmp(&b.0));
        shares
    }
}

#[cfg(test)]
#[path = "scheduler_tests.rs"]
mod tests;
