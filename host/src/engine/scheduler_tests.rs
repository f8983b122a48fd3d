//! Unit tests of the scheduler: priorities, dependencies, cancels, quotas and the
//! weighted fair share, the latter in simulated time.

use super::*;

/// Pops everything runnable at one instant (no usage accrues between pops).
fn drain(s: &mut Scheduler) -> Vec<u64> {
    let now = s.epoch;
    std::iter::from_fn(|| s.pop(now).map(|(lsn, _)| lsn)).collect()
}

fn pop(s: &mut Scheduler) -> Option<u64> {
    s.pop(s.epoch).map(|(lsn, _)| lsn)
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
    let mut s = Scheduler::new(quotas, DEFAULT_HALF_LIFE);
    for lsn in 1..=3 {
        s.add(lsn, "capped", 0, []);
    }
    assert_eq!(pop(&mut s), Some(1));
    assert!(!s.has_runnable(), "capped is at its max_running");
    assert!(pop(&mut s).is_none());
    // Its running job ends: the next one may go.
    s.finish(1, true, s.epoch);
    assert_eq!(pop(&mut s), Some(2));
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

fn weights(pairs: &[(&str, f64)]) -> Quotas {
    use crate::engine::quota::Quota;
    let tenants = pairs
        .iter()
        .map(|(tenant, weight)| {
            let quota = Quota {
                weight: Some(*weight),
                ..Quota::default()
            };
            (tenant.to_string(), quota)
        })
        .collect();
    Quotas::new(Quota::default(), tenants)
}

fn at(s: &Scheduler, secs: f64) -> Instant {
    s.epoch + Duration::from_secs_f64(secs)
}

/// Runs `slots` slots in simulated time from `start` to `end`: a job of tenant `t`
/// holds its slot `job_secs[t]` seconds, every tenant there always has another
/// job queued (new LSNs from `next_lsn`), and a freed slot is refilled at once;
/// the jobs running at `end` stop then. Returns the slot-seconds each tenant held within `window`.
fn simulate(
    s: &mut Scheduler,
    slots: usize,
    job_secs: &HashMap<&str, f64>,
    (start, end): (f64, f64),
    window: (f64, f64),
    next_lsn: &mut u64,
) -> HashMap<String, f64> {
    let mut tenant_of: HashMap<u64, &str> = HashMap::new();
    for (tenant, _) in job_secs.iter() {
        *next_lsn += 1;
        s.add(*next_lsn, tenant, 0, []);
        tenant_of.insert(*next_lsn, tenant);
    }
    // (end, lsn, start) of running jobs.
    let mut running: Vec<(f64, u64, f64)> = Vec::new();
    let mut held: HashMap<String, f64> = HashMap::new();
    let mut t = start;
    loop {
        while running.len() < slots {
            let Some((lsn, _)) = s.pop(at(s, t)) else {
                break;
            };
            let tenant = tenant_of[&lsn];
            running.push((t + job_secs[tenant], lsn, t));
            *next_lsn += 1;
            s.add(*next_lsn, tenant, 0, []);
            tenant_of.insert(*next_lsn, tenant);
        }
        running.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (done, lsn, began) = running.remove(0);
        if done > end {
            // The jobs still running stop at the end.
            for (_, lsn, began) in std::iter::once((done, lsn, began)).chain(running) {
                s.finish(lsn, true, at(s, end));
                let overlap = end.min(window.1) - began.max(window.0);
                *held.entry(tenant_of[&lsn].to_string()).or_default() += overlap.max(0.0);
            }
            return held;
        }
        t = done;
        s.finish(lsn, true, at(s, t));
        let overlap = done.min(window.1) - began.max(window.0);
        *held.entry(tenant_of[&lsn].to_string()).or_default() += overlap.max(0.0);
    }
}

#[test]
fn saturating_tenants_share_slots_by_weight() {
    let mut s = Scheduler::new(weights(&[("a", 3.0), ("b", 1.0)]), DEFAULT_HALF_LIFE);
    let jobs = HashMap::from([("a", 1.0), ("b", 1.0)]);
    let held = simulate(&mut s, 8, &jobs, (0.0, 200.0), (20.0, 180.0), &mut 0);
    let ratio = held["a"] / held["b"];
    assert!((ratio - 3.0).abs() < 0.3, "a:b = {ratio} ({held:?})");
    // Unequal jobs: the share is of slot-time, not of job counts.
    let mut s = Scheduler::default();
    let jobs = HashMap::from([("long", 5.0), ("short", 0.5)]);
    let held = simulate(&mut s, 4, &jobs, (0.0, 400.0), (50.0, 350.0), &mut 0);
    let ratio = held["long"] / held["short"];
    assert!(
        (ratio - 1.0).abs() < 0.15,
        "long:short = {ratio} ({held:?})"
    );
}

#[test]
fn an_idle_tenant_s_share_goes_to_the_others() {
    let mut s = Scheduler::new(weights(&[("a", 1.0), ("b", 9.0)]), DEFAULT_HALF_LIFE);
    let jobs = HashMap::from([("a", 1.0)]);
    let held = simulate(&mut s, 4, &jobs, (0.0, 50.0), (0.0, 50.0), &mut 0);
    assert!(
        (held["a"] - 200.0).abs() < 4.5,
        "a alone holds every slot: {held:?}"
    );
}

/// A tenant that used the fleet for a while is behind one arriving now: every slot
/// that frees goes to the newcomer until their decayed usage per weight meets.
#[test]
fn a_newcomer_takes_the_slots_a_heavy_user_frees() {
    let mut s = Scheduler::default();
    let mut lsn = 0;
    simulate(
        &mut s,
        4,
        &HashMap::from([("heavy", 1.0)]),
        (0.0, 100.0),
        (0.0, 0.0),
        &mut lsn,
    );
    // The heavy tenant keeps a backlog; the newcomer brings 8 jobs at t = 100.
    let newcomer: Vec<u64> = (lsn + 1..=lsn + 8).collect();
    for l in &newcomer {
        s.add(*l, "new", 0, []);
    }
    s.add(lsn + 9, "heavy", 0, []);
    let mut order = Vec::new();
    for slot in 0..8 {
        let t = 100.0 + slot as f64 * 0.25;
        let (popped, _) = s.pop(at(&s, t)).unwrap();
        order.push(popped);
        s.finish(popped, true, at(&s, t + 0.2));
    }
    assert_eq!(order, newcomer, "every freed slot goes to the newcomer");
    // Usage decays: many half-lives later the past no longer counts, and the two
    // take turns.
    let later = 100.0 + 40.0 * DEFAULT_HALF_LIFE.as_secs_f64();
    let shares = s.shares(at(&s, later));
    assert!(
        shares.iter().all(|(_, _, charge)| *charge < 1e-6),
        "{shares:?}"
    );
}

/// Placement takes several jobs at one instant: a job is charged its tenant's
/// estimate when it starts, so one batch does not all go to the tenant that was
/// behind.
#[test]
fn a_batch_of_slots_at_one_instant_is_shared() {
    let mut s = Scheduler::default();
    let mut lsn = 0;
    let jobs = HashMap::from([("a", 1.0), ("b", 1.0)]);
    simulate(&mut s, 2, &jobs, (0.0, 10.0), (0.0, 0.0), &mut lsn);
    for _ in 0..20 {
        for tenant in ["a", "b"] {
            lsn += 1;
            s.add(lsn, tenant, 0, []);
        }
    }
    let mut by_tenant: HashMap<String, usize> = HashMap::new();
    let now = at(&s, 11.0);
    for _ in 0..10 {
        let (popped, _) = s.pop(now).unwrap();
        let tenant = s.pending[&popped].tenant.clone();
        *by_tenant.entry(tenant).or_default() += 1;
    }
    assert!(
        by_tenant.values().all(|n| (4..=6).contains(n)),
        "{by_tenant:?}"
    );
}

#[test]
fn counts_are_kept_per_tenant() {
    let mut s = Scheduler::default();
    s.add(1, "a", 0, []);
    s.add(2, "a", 0, [1]);
    s.add(3, "b", 0, []);
    assert_eq!(
        (s.pending_of("a"), s.pending_of("b"), s.pending_of("c")),
        (2, 1, 0)
    );
    assert_eq!(pop(&mut s), Some(1), "the oldest job of the tie");
    assert_eq!((s.running(), s.queued()), (1, 2));
    // A failed job dooms its dependent.
    assert_eq!(s.finish(1, false, s.epoch), (vec![], vec![2]));
    assert_eq!((s.pending_of("a"), s.pending_of("b")), (0, 1));
    assert!(matches!(s.cancel(3), Cancelled::NotStarted));
    assert_eq!((s.pending_of("b"), s.running(), s.queued()), (0, 0, 0));
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
    assert_eq!(s.finish(1, true, s.epoch), (vec![], vec![]));
    assert_eq!(s.finish(2, false, s.epoch), (vec![], vec![3, 4]));
    assert!(!s.is_pending(3) && !s.is_pending(4));
    s.add(5, "a", 0, [6]);
    s.add(6, "a", 0, []);
    assert_eq!(drain(&mut s), vec![6]);
    assert_eq!(s.finish(6, true, s.epoch), (vec![5], vec![]));
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
    while let Some(lsn) = pop(&mut s) {
        s.finish(lsn, true, s.epoch);
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
    assert_eq!(pop(&mut s), Some(1));
    assert_eq!(pop(&mut s), Some(2));
    s.add(4, "b", -5, []);
    // b runs nothing and a runs two: b's job goes first despite its priority.
    assert_eq!(pop(&mut s), Some(4));
    s.finish(1, true, s.epoch);
    s.finish(2, true, s.epoch);
    assert_eq!(s.running(), 1);
    assert_eq!(drain(&mut s), vec![3]);
}

/// Regression (issue 10, item 10): a job popped for placement and put back because
/// no node could take it ran anyway after a cancel that arrived in between.
#[test]
fn a_job_cancelled_while_popped_is_not_requeued() {
    let mut s = Scheduler::default();
    s.add(1, "a", 0, []);
    let (lsn, token) = s.pop(s.epoch).unwrap();
    assert!(matches!(s.cancel(lsn), Cancelled::Running));
    assert!(token.is_cancelled());
    assert!(
        !s.requeue(lsn, s.epoch),
        "a cancelled job must not go back in the queue"
    );
    assert!(!s.has_runnable());
    s.add(2, "a", 0, []);
    let lsn = pop(&mut s).unwrap();
    assert!(s.requeue(lsn, s.epoch));
    assert_eq!(drain(&mut s), vec![2]);
}

/// Within a tenant and a priority, the nearest deadline goes first, then jobs without
/// one, oldest first; a higher priority still goes before any deadline, and a
/// requeued job keeps its place by deadline.
#[test]
fn a_tenants_jobs_of_one_priority_run_nearest_deadline_first() {
    let mut s = Scheduler::default();
    s.add(1, "a", 0, []);
    s.add_due(2, "a", 0, Some(9_000), Origin::default(), []);
    s.add_due(3, "a", 0, Some(5_000), Origin::default(), []);
    s.add(4, "a", 0, []);
    s.add_due(5, "a", 0, Some(7_000), Origin::default(), []);
    s.add(6, "a", 1, []);
    assert_eq!(pop(&mut s), Some(6), "priority first");
    assert_eq!(pop(&mut s), Some(3));
    assert!(s.requeue(3, s.epoch));
    assert_eq!(drain(&mut s), [3, 5, 2, 1, 4]);
    // A dependent that becomes runnable keeps its deadline.
    let mut s = Scheduler::default();
    s.add(10, "a", 0, []);
    s.add_due(11, "a", 0, Some(1_000), Origin::default(), [10]);
    s.add(12, "a", 0, []);
    assert_eq!(pop(&mut s), Some(10));
    s.finish(10, true, s.epoch);
    assert_eq!(drain(&mut s), [11, 12]);
}

/// The backlog counts runnable jobs only (not waiting, not running), by worker, and
/// how long each queue's oldest has waited since it became runnable.
#[test]
fn the_backlog_counts_runnable_jobs_by_worker_and_queue() {
    let mut s = Scheduler::default();
    let (a, b) = (HashHex::of(b"a"), HashHex::of(b"b"));
    let origin = |worker, queue| Origin { worker, queue };
    s.add_due(1, "t", 0, None, origin(a, Some(7)), []);
    s.add_due(2, "t", 0, None, origin(a, Some(7)), []);
    s.add_due(3, "t", 0, None, origin(b, None), []);
    s.add_due(4, "t", 0, None, origin(b, None), [1]);
    assert_eq!(pop(&mut s), Some(1));
    let later = s.epoch + Duration::from_secs(5);
    let Backlog(groups) = s.backlog(later);
    let jobs = |groups: &HashMap<Origin, Waiting>| -> HashMap<Origin, usize> {
        groups.iter().map(|(o, w)| (*o, w.jobs)).collect()
    };
    assert_eq!(
        jobs(&groups),
        HashMap::from([(origin(a, Some(7)), 1), (origin(b, None), 1)])
    );
    assert!(groups[&origin(a, Some(7))].waited >= 4.9);
    // Runnable again after its dependency: it waits from then on.
    s.finish(1, true, later);
    let Backlog(groups) = s.backlog(later + Duration::from_secs(1));
    assert_eq!(groups[&origin(b, None)].jobs, 2);
    let waited = groups[&origin(b, None)].waited;
    assert!((5.9..7.0).contains(&waited), "{waited}");
    // The nearest deadline of each queue's runnable jobs, by queue and worker.
    s.add_due(5, "t", 0, Some(9_000), origin(a, Some(7)), []);
    s.add_due(6, "t", 0, Some(4_000), origin(b, Some(7)), []);
    let Backlog(groups) = s.backlog(later);
    let (of_a, of_b) = (groups[&origin(a, Some(7))], groups[&origin(b, Some(7))]);
    assert_eq!((of_a.jobs, of_a.due), (2, 9_000));
    assert_eq!((of_b.jobs, of_b.due), (1, 4_000));
    assert_eq!(groups[&origin(b, None)].due, i64::MAX, "no deadline");
}

/// The defect: a running job replaced in the schedule, or a running dependent doomed,
/// left the running count up, so `queued()` (pending minus running) underflowed and
/// a shared coordinator's sysinfo panicked.
#[test]
fn a_running_job_replaced_or_doomed_stops_counting_as_running() {
    let mut s = Scheduler::new(Quotas::default(), DEFAULT_HALF_LIFE);
    let now = s.epoch;
    s.add_running(1, "t", 0, now);
    assert_eq!((s.queued(), s.running(), s.pending_of("t")), (0, 1, 1));
    s.add(1, "t", 0, []);
    assert_eq!((s.queued(), s.running(), s.pending_of("t")), (1, 0, 1));
    assert_eq!(pop(&mut s), Some(1));
    // A dependent that runs (a lease brought from another coordinator) while its
    // dependency, pending elsewhere, fails.
    s.add(2, "t", 0, [9]);
    s.add_running(2, "t", 0, now);
    let (_, doomed) = s.finish(9, false, now);
    assert_eq!(doomed, vec![2]);
    assert_eq!((s.queued(), s.running(), s.pending_of("t")), (0, 1, 1));
    s.finish(1, true, now);
    assert_eq!((s.queued(), s.running(), s.pending_of("t")), (0, 0, 0));
}
