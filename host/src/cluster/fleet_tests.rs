//! Unit tests of the fleet: lease renewal and expiry, health transitions, capacity
//! accounting, each driven by an injected clock.

use super::*;
use crate::model::{ActionDescriptor, HashHex, WorkerDescriptor};

const LEASE: Duration = Duration::from_secs(5);

fn fleet() -> Fleet {
    Fleet::new(CoordinatorConfig {
        lease: LEASE,
        ..CoordinatorConfig::default()
    })
}

fn register(fleet: &Fleet, id: &str, slots: u64, now: Instant) {
    let registration = Registration {
        id: id.into(),
        address: format!("http://{id}.invalid"),
        slots,
        ..Registration::default()
    };
    fleet.register(registration, now);
}

fn demand() -> Demand {
    Demand {
        requires: Default::default(),
        limits: Default::default(),
        module: HashHex([7; 32]),
        inputs: Vec::new(),
    }
}

fn assignment(lsn: u64, attempt: u32) -> Assignment {
    let worker: WorkerDescriptor =
        serde_json::from_value(json!({"name": "w", "module": HashHex([7; 32])})).unwrap();
    let action: ActionDescriptor =
        serde_json::from_value(json!({"worker": HashHex([8; 32])})).unwrap();
    Assignment {
        lease: Token { lsn, attempt },
        worker,
        action,
        blobs: Default::default(),
        checkpoint: None,
    }
}

/// Reserves a slot for job `lsn` and leases it, at `now`.
fn lease(fleet: &Fleet, lsn: u64, now: Instant) -> Option<Token> {
    let reservation = fleet.reserve(&HashHex([lsn as u8; 32]), &demand(), now)?;
    fleet.assign(reservation, assignment(lsn, 1), now);
    Some(Token { lsn, attempt: 1 })
}

fn beat(tokens: &[Token]) -> Heartbeat {
    Heartbeat {
        leases: tokens.to_vec(),
        ..Heartbeat::default()
    }
}

#[test]
fn a_lease_renewed_by_heartbeats_expires_only_when_they_stop() {
    let fleet = fleet();
    let t0 = Instant::now();
    register(&fleet, "n1", 1, t0);
    let token = lease(&fleet, 1, t0).unwrap();
    assert!(fleet.expire(t0 + LEASE / 2).is_empty());
    // Delivered, then renewed half-way through.
    fleet.take("n1", t0 + LEASE / 4).unwrap();
    let renewed_at = t0 + LEASE / 2;
    let answer = fleet.heartbeat("n1", &beat(&[token]), renewed_at).unwrap();
    assert_eq!(answer.renewed, [token]);
    assert!(
        fleet.expire(t0 + LEASE + LEASE / 4).is_empty(),
        "renewed past its first expiry"
    );
    let lost = fleet.expire(renewed_at + LEASE);
    assert_eq!(lost.len(), 1);
    assert_eq!((lost[0].token, lost[0].node.as_str()), (token, "n1"));
    assert_eq!(fleet.leases(), 0);
    // A stale holder's heartbeat is told to stop the run.
    let stale = fleet
        .heartbeat("n1", &beat(&[token]), renewed_at + LEASE)
        .unwrap();
    assert_eq!((stale.cancel, stale.renewed), (vec![token], vec![]));
}

#[test]
fn health_is_announced_once_per_change() {
    let fleet = fleet();
    let t0 = Instant::now();
    register(&fleet, "n1", 1, t0);
    assert_eq!(fleet.health_changes(t0), [("n1".to_string(), true)]);
    assert!(fleet.health_changes(t0 + LEASE / 2).is_empty());
    let silent = t0 + LEASE + Duration::from_millis(1);
    assert_eq!(fleet.health_changes(silent), [("n1".to_string(), false)]);
    assert!(fleet.health_changes(silent).is_empty());
    assert!(!fleet.available("n1", silent));
    assert!(
        !fleet.has_capacity(silent),
        "an unhealthy node takes no work"
    );
    fleet.heartbeat("n1", &beat(&[]), silent).unwrap();
    assert_eq!(fleet.health_changes(silent), [("n1".to_string(), true)]);
    assert!(fleet.available("n1", silent));
}

#[test]
fn capacity_counts_reservations_leases_and_what_frees_them() {
    let fleet = fleet();
    let now = Instant::now();
    register(&fleet, "n1", 2, now);
    assert!(fleet.has_capacity(now));
    let first = lease(&fleet, 1, now).unwrap();
    let reservation = fleet.reserve(&HashHex([2; 32]), &demand(), now).unwrap();
    assert!(!fleet.has_capacity(now), "two slots, two taken");
    assert!(fleet.reserve(&HashHex([3; 32]), &demand(), now).is_none());
    // A reservation given back frees its slot.
    fleet.release(&reservation);
    assert!(fleet.has_capacity(now));
    // A cancel before the node received the lease withdraws it.
    let second = lease(&fleet, 2, now).unwrap();
    assert_eq!(fleet.cancel(2), LeaseCancel::Withdrawn(second));
    assert!(fleet.has_capacity(now));
    // A delivered lease is cancelled by telling the node; its slot frees when the
    // result comes back, and only for the holder of the current token.
    fleet.take("n1", now).unwrap();
    assert_eq!(fleet.cancel(1), LeaseCancel::Sent);
    assert!(
        fleet.finish("n2", first, false, None, now).is_none(),
        "not n2's lease"
    );
    let stale = Token { lsn: 1, attempt: 2 };
    assert!(
        fleet.finish("n1", stale, false, None, now).is_none(),
        "not this attempt"
    );
    assert!(fleet.finish("n1", first, false, None, now).is_some());
    assert_eq!(fleet.leases(), 0);
    // Leaving withdraws what the node has not received and takes no more work.
    let third = lease(&fleet, 3, now).unwrap();
    assert_eq!(fleet.leave("n1").unwrap(), [third]);
    assert!(!fleet.has_capacity(now));
    assert_eq!(fleet.leases(), 0);
}

/// Leases a node holds under `Prefetch::Auto`, counting them until none fits.
fn holdable(fleet: &Fleet, first_lsn: u64, now: Instant) -> Vec<Token> {
    (first_lsn..first_lsn + 100)
        .map_while(|lsn| lease(fleet, lsn, now))
        .collect()
}

#[test]
fn auto_prefetch_queues_short_jobs_on_a_node_and_never_long_ones() {
    assert_eq!(Prefetch::Auto.extra(2, None), 0, "nothing learned yet");
    assert_eq!(Prefetch::Auto.extra(2, Some(Duration::ZERO)), 16);
    assert_eq!(Prefetch::Auto.extra(2, Some(Duration::from_millis(5))), 8);
    assert_eq!(Prefetch::Auto.extra(2, Some(Duration::from_millis(50))), 0);
    assert_eq!(Prefetch::Fixed(3).extra(2, Some(Duration::ZERO)), 3);
    assert_eq!("auto".parse::<Prefetch>(), Ok(Prefetch::Auto));
    assert_eq!("4".parse::<Prefetch>(), Ok(Prefetch::Fixed(4)));
    assert!("many".parse::<Prefetch>().is_err());

    let fleet = fleet();
    let now = Instant::now();
    register(&fleet, "n1", 2, now);
    let held = holdable(&fleet, 1, now);
    assert_eq!(held.len(), 2, "its slots only, before any run is known");
    fleet.take("n1", now).unwrap();
    for token in held {
        fleet
            .finish("n1", token, false, Some(Duration::ZERO), now)
            .unwrap();
    }
    let held = holdable(&fleet, 200, now);
    assert_eq!(held.len(), 2 + 16, "sub-millisecond runs: 8 queued a slot");
    assert_eq!(
        fleet.inner().views[0].queue_room(now + Prefetch::STALL * 2),
        0,
        "a node that reports nothing for a while (long runs) gets nothing queued"
    );
    fleet.take("n1", now).unwrap();
    // Long runs: the recent run time climbs past the gap and the queue goes.
    for token in &held {
        fleet
            .finish("n1", *token, false, Some(Duration::from_secs(2)), now)
            .unwrap();
    }
    assert_eq!(holdable(&fleet, 400, now).len(), 2);
    // A run that failed on the host, or did not happen, teaches nothing.
    let view_run = |fleet: &Fleet| fleet.inner().views[0].run_time;
    let before = view_run(&fleet);
    fleet.take("n1", now).unwrap();
    fleet
        .finish(
            "n1",
            Token {
                lsn: 400,
                attempt: 1,
            },
            true,
            None,
            now,
        )
        .unwrap();
    assert_eq!(view_run(&fleet), before);
}

#[test]
fn a_node_with_an_idle_slot_wins_over_one_that_would_queue_the_job() {
    let fleet = fleet();
    let now = Instant::now();
    register(&fleet, "n1", 1, now);
    let first = lease(&fleet, 1, now).unwrap();
    fleet.take("n1", now).unwrap();
    fleet
        .finish("n1", first, false, Some(Duration::ZERO), now)
        .unwrap();
    // n1 now holds one running lease and has room to queue 8 more; its locality
    // (it has the module) would win the score. n2 joins idle.
    lease(&fleet, 2, now).unwrap();
    register(&fleet, "n2", 1, now);
    let reservation = fleet.reserve(&HashHex([3; 32]), &demand(), now).unwrap();
    assert_eq!(reservation.node, "n2");
    fleet.release(&reservation);
    // With n2 busy too, the job queues on a node rather than waiting.
    lease(&fleet, 4, now).unwrap();
    let queued = fleet.reserve(&HashHex([5; 32]), &demand(), now).unwrap();
    assert_eq!(queued.node, "n1", "only n1 is turning jobs over");
}
