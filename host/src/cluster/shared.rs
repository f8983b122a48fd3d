//! A coordinator sharing its journal with others (`wasmesh coordinator --shared`):
//! what its fleet adds to the engine's side (engine/shared.rs).
//!
//! - Every second it notes in the journal which nodes it hears (`wasmesh_nodes`); the
//!   leader requeues (as `node_lost`, under each lease's fence, so once) the jobs of
//!   nodes no coordinator heard for a lease period.
//! - When its nodes have room and its schedule has nothing runnable, it takes queued
//!   jobs from the journal into its schedule (those of other coordinators, requeued
//!   ones, a stopped coordinator's). While it has nodes but no room, it takes those
//!   that waited `STARVING` and are older than any waiting here (a coordinator with no
//!   node, or one falling behind, does not leave its clients' jobs waiting for good).
//! - A node that moved here from another coordinator keeps its leases: a lease it
//!   renews or reports that the journal says is its current one is adopted (`adopt`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::fleet::{Fleet, Lease};
use super::protocol::Token;
use crate::engine::{Engine, Take};
use crate::model::JobState;
use crate::store::JobRow;

/// How often it looks for queued jobs when its nodes are idle.
const TAKE_EVERY: Duration = Duration::from_millis(250);

/// Queued jobs taken into the schedule at once.
const TAKE_BATCH: usize = 256;

/// How long a job queued through another coordinator waits before a coordinator whose
/// nodes are busy takes it anyway (when it is older than any job waiting there).
const STARVING: Duration = Duration::from_secs(1);

/// Silent nodes' leases requeued at once.
const EXPIRE_BATCH: usize = 256;

/// The loop of a coordinator sharing its journal: node beats, taking queued jobs,
/// and (while it leads) expiring silent nodes' leases.
pub async fn shared_loop(engine: Arc<Engine>, fleet: Arc<Fleet>) {
    let name = format!("coordinator pid {}", std::process::id());
    let mut beaten = Instant::now() - Duration::from_secs(60);
    loop {
        tokio::select! {
            () = tokio::time::sleep(TAKE_EVERY) => {}
            () = engine.stopping().cancelled() => return,
        }
        let now = Instant::now();
        let beat = now.duration_since(beaten)
            >= fleet.config.heartbeat_interval.min(Duration::from_secs(1));
        if beat {
            beaten = now;
        }
        let take = if fleet.has_capacity(now) && !engine.has_runnable() {
            Some(Take::Any)
        } else {
            (fleet.slots() > 0).then_some(Take::Waiting(STARVING))
        };
        let (e, f, name) = (engine.clone(), fleet.clone(), name.clone());
        let _ = tokio::task::spawn_blocking(move || {
            if beat {
                let heard: Vec<String> = f
                    .members()
                    .into_iter()
                    .filter(|m| m.state != "unhealthy")
                    .map(|m| m.id)
                    .collect();
                if let Err(e) = e.store().beat_nodes(&name, &heard) {
                    tracing::warn!(error = %e, "noting the nodes this coordinator hears");
                }
                if e.store().leads() {
                    expire_silent(&e, f.config.lease);
                }
            }
            if let Some(take) = take
                && let Err(e) = e.take_queued(take, TAKE_BATCH)
            {
                tracing::warn!(error = %e, "taking queued jobs from the shared journal");
            }
        })
        .await;
    }
}

/// The leader's part: jobs leased to nodes no coordinator heard for `lease` are
/// retried (or fail) as `node_lost`, each under its lease's fence.
fn expire_silent(engine: &Engine, lease: Duration) {
    let silent = match engine
        .store()
        .silent_leases(lease.as_millis() as i64, EXPIRE_BATCH)
    {
        Ok(silent) => silent,
        Err(e) => {
            tracing::warn!(error = %e, "reading the leases of silent nodes");
            return;
        }
    };
    for job in silent {
        super::driver::expire_journal_lease(
            engine,
            &job,
            "no coordinator hears the node; its lease expired",
        );
    }
}

/// Adopts the leases among `tokens` that node `id` holds according to the journal
/// but this coordinator's fleet does not know (the node moved here from another
/// coordinator, or this one restarted): they are renewed here from now on. Reads the
/// journal only for unknown tokens.
pub fn adopt(engine: &Engine, fleet: &Fleet, id: &str, tokens: &[Token]) {
    for token in tokens {
        if fleet.holds(id, *token) {
            continue;
        }
        let job = match engine.job_any(token.lsn) {
            Ok(Some(job)) => job,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(lsn = token.lsn, error = %e, "reading a lease to adopt");
                continue;
            }
        };
        if !is_current(&job, id, *token) {
            continue;
        }
        let cancel_requested = engine.store().cancel_requested(job.lsn).unwrap_or(false);
        tracing::info!(
            lsn = token.lsn,
            attempt = token.attempt,
            node = id,
            "adopted a lease"
        );
        fleet.put_back(Lease {
            token: *token,
            node: id.to_string(),
            expires: Instant::now() + fleet.config.lease,
            delivered: true,
            cancel_requested,
            placement: serde_json::json!({"node": id, "adopted": true}),
            uploaded: Vec::new(),
            fetches: None,
        });
        engine.adopt_running(&job);
    }
}

/// Whether `token` is the job's current lease, held by node `id`.
fn is_current(job: &JobRow, id: &str, token: Token) -> bool {
    job.state == JobState::Running
        && job.attempts == token.attempt
        && job.lease_node.as_deref() == Some(id)
}

/// Whether some of `tokens` are unknown to the fleet as node `id`'s (so `adopt` has
/// something to look up).
pub fn has_unknown(fleet: &Fleet, id: &str, tokens: &[Token]) -> bool {
    tokens.iter().any(|t| !fleet.holds(id, *t))
}
