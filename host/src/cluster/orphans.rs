//! The rule that a lease the journal holds for a node is renewed by that node within
//! the lease time, or requeued under its fence. A coordinator's fleet expires the
//! leases it handed out; this covers the ones no fleet here holds: a lease committed
//! to the journal by a coordinator that died before the node received it (the node
//! never mentions a lease it never got, so no heartbeat adopts it), or any other
//! lease the journal names for a node this coordinator hears that the node does not
//! renew. Such a lease is retried (or fails) as `node_lost` once it has been missing
//! from the fleet for a whole lease period, under the attempt's fence, so a lease
//! renewed meanwhile, or ended by another coordinator, is left alone.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::fleet::Fleet;
use super::protocol::Token;
use crate::engine::Engine;

/// Leases read at once.
const BATCH: usize = 10_000;

/// Looks every heartbeat interval (at least every second) until the engine stops.
pub async fn orphan_loop(engine: Arc<Engine>, fleet: Arc<Fleet>) {
    let every = fleet
        .config
        .heartbeat_interval
        .clamp(Duration::from_millis(50), Duration::from_secs(1));
    let missing = Arc::new(std::sync::Mutex::new(HashMap::<Token, Instant>::new()));
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = engine.stopping().cancelled() => return,
        }
        let (engine, fleet, missing) = (engine.clone(), fleet.clone(), missing.clone());
        let _ = tokio::task::spawn_blocking(move || {
            let mut missing = missing.lock().unwrap_or_else(|e| e.into_inner());
            requeue_orphans(&engine, &fleet, &mut missing, Instant::now());
        })
        .await;
    }
}

/// One look: notes the leases of heard nodes that the fleet does not hold, and
/// requeues those missing for a lease period.
fn requeue_orphans(
    engine: &Engine,
    fleet: &Fleet,
    missing: &mut HashMap<Token, Instant>,
    now: Instant,
) {
    let heard: Vec<String> = fleet
        .members()
        .into_iter()
        .filter(|m| m.state != "unhealthy")
        .map(|m| m.id)
        .collect();
    if heard.is_empty() {
        missing.clear();
        return;
    }
    let leases = match engine.store().leases_of(&heard, BATCH) {
        Ok(leases) => leases,
        Err(e) => {
            tracing::warn!(error = %e, "reading the leases of this coordinator's nodes");
            return;
        }
    };
    let mut seen = HashSet::new();
    for job in leases {
        let node = job.lease_node.clone().unwrap_or_default();
        let token = Token {
            lsn: job.lsn,
            attempt: job.attempts,
        };
        if fleet.holds(&node, token) {
            continue;
        }
        seen.insert(token);
        let since = *missing.entry(token).or_insert(now);
        if now.duration_since(since) < fleet.config.lease {
            continue;
        }
        super::driver::expire_journal_lease(
            engine,
            &job,
            "the journal leases this job to a node that never renewed it",
        );
        missing.remove(&token);
    }
    missing.retain(|token, _| seen.contains(token));
}
