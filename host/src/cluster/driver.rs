//! The placement driver: a coordinator's engine runs its jobs by leasing them to the
//! fleet's nodes. `place_loop` takes runnable jobs from the engine, reserves a node
//! for each (`Fleet::reserve`, scored by `placement`), writes a batch's leases in one
//! transaction and fills the nodes' mailboxes; `expiry_loop` turns leases nobody
//! renewed into `node_lost` retries and node health changes into webhooks; `accept`
//! turns a node's report into a fenced result.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::json;

use super::fleet::{Fleet, Lease, LeaseCancel, Reservation};
use super::placement::Demand;
use super::protocol::{Assignment, CheckpointNote, Report, Token};
use crate::engine::{Driver, Ended, Engine, Fence, Runnable};
use crate::model::{HashHex, JobResult, JobState, outcome};
use crate::store::JobRow;

/// Leases written to the journal in one transaction.
const LEASE_BATCH: usize = 256;

/// An input or file up to this size may travel inside its assignment.
const INLINE_INPUT: u64 = 64 << 10;

/// Bytes of inputs and files one lease may carry inline.
const INLINE_BUDGET: u64 = 1 << 20;

/// Stores a blob node `id` sent inline (base64) and checks it is the one it named.
pub fn store_inline(engine: &Engine, id: &str, hash: &HashHex, data: &str) -> Result<(), String> {
    let actual = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|e| e.to_string())
        .and_then(|bytes| engine.cas().put_own(&bytes).map_err(|e| e.to_string()))
        .map_err(|e| format!("storing blob {hash} from node {id}: {e}"))?;
    if actual != *hash {
        return Err(format!(
            "node {id} sent blob {hash} whose bytes hash to {actual}"
        ));
    }
    Ok(())
}

/// Records a leased run's checkpoint with its job, fenced by the lease's attempt, once
/// its bytes are verified in the store: sent inline with the note, or uploaded by this
/// node for this very lease. A checkpoint is an internal blob (no tenant holds it);
/// the one it replaces is deleted.
pub fn keep_checkpoint(engine: &Engine, fleet: &Fleet, id: &str, note: CheckpointNote) {
    let lsn = note.lease.lsn;
    if let Some(data) = &note.data {
        if let Err(e) = store_inline(engine, id, &note.hash, data) {
            tracing::warn!(lsn, error = %e, "a checkpoint was not kept");
            return;
        }
    } else if !fleet.uploaded(id, note.lease, &note.hash) {
        tracing::warn!(lsn, node = id, hash = %note.hash, "a checkpoint was announced but never sent for its lease");
        return;
    }
    let recorded = engine.save_checkpoint(lsn, &note.hash, Fence::Lease(note.lease.attempt));
    match recorded {
        Ok(true) => tracing::debug!(lsn, node = id, "checkpoint recorded"),
        Ok(false) => tracing::debug!(lsn, node = id, "a stale checkpoint was ignored"),
        Err(e) => tracing::warn!(lsn, error = %e, "recording a checkpoint"),
    }
}

/// Records node `id`'s reports, each only if its lease is current, all in one journal
/// transaction; answers, in order, whether each was taken. When the journal fails,
/// nothing was taken: the leases are put back and the error returned, so the node's
/// retried report is taken once the journal answers again.
pub fn accept(
    engine: &Engine,
    fleet: &Fleet,
    id: &str,
    reports: Vec<Report>,
) -> Result<Vec<bool>, String> {
    let mut taken = vec![false; reports.len()];
    // The jobs live here while the results (moved, not copied) borrow them.
    let mut indexes = Vec::with_capacity(reports.len());
    let mut jobs = Vec::with_capacity(reports.len());
    let mut results = Vec::with_capacity(reports.len());
    let mut leases = Vec::with_capacity(reports.len());
    let put_back = |leases: Vec<Lease>, error: String| {
        tracing::warn!(
            node = id,
            error,
            "the journal failed; the node will report again"
        );
        for lease in leases {
            fleet.put_back(lease);
        }
        Err(error)
    };
    for (index, report) in reports.into_iter().enumerate() {
        match check(engine, fleet, id, report) {
            Checked::Taken(taken) => {
                let (job, result, host_failure, lease) = *taken;
                indexes.push(index);
                jobs.push(job);
                results.push((result, host_failure));
                leases.push(lease);
            }
            Checked::Stale => {}
            Checked::JournalFailed(lease, error) => {
                leases.push(lease);
                return put_back(leases, error);
            }
        }
    }
    let ended: Vec<Ended<'_>> = jobs
        .iter()
        .zip(results)
        .map(|(job, (result, host_failure))| Ended {
            job,
            fence: Fence::Lease(result.attempts),
            result,
            host_failure,
        })
        .collect();
    match engine.record_many(ended) {
        Ok(written) => {
            for (index, written) in indexes.into_iter().zip(written) {
                taken[index] = written;
            }
            Ok(taken)
        }
        Err(e) => put_back(leases, e.to_string()),
    }
}

/// What a report is.
enum Checked {
    /// Its lease is current: the job as the journal has it, its result, whether it
    /// failed on the host, and the lease it ended.
    Taken(Box<(JobRow, JobResult, bool, Lease)>),
    /// Its lease is not current (fencing).
    Stale,
    /// The journal failed reading the job: the lease it ended, and why.
    JournalFailed(Lease, String),
}

/// A report turned into the job's result, if its lease is current.
fn check(engine: &Engine, fleet: &Fleet, id: &str, report: Report) -> Checked {
    let token = report.lease;
    // How long it ran (whole milliseconds: a sub-millisecond run reads 0).
    // A run cut short by a cancel says nothing of how long the job takes.
    let run = (report.result.timing.is_some()
        && !report.host_failure
        && report.result.state != JobState::Cancelled)
        .then(|| Duration::from_millis(report.result.usage.wall_ms));
    let Some(lease) = fleet.finish(id, token, report.host_failure, run, Instant::now()) else {
        tracing::debug!(
            lsn = token.lsn,
            attempt = token.attempt,
            node = id,
            "no such lease"
        );
        return Checked::Stale;
    };
    let job = match engine.job_any(token.lsn) {
        Ok(Some(job)) => job,
        Ok(None) => return Checked::Stale,
        Err(e) => return Checked::JournalFailed(lease, e.to_string()),
    };
    let tenant = engine.store().tenant(&job.tenant);
    let Report {
        mut result,
        blobs,
        mut host_failure,
        ..
    } = report;
    for (hash, data) in &blobs {
        if let Err(e) = store_inline(engine, id, hash, data) {
            host_failure = true;
            result.message = Some(e);
        }
    }
    for (hash, size) in [
        (result.output, Some(result.output_size)),
        (result.stderr, None),
    ] {
        if host_failure {
            break;
        }
        // A report hands the job's tenant only bytes this node delivered for this
        // lease (inline above, or uploaded under it), or ones the tenant already
        // holds: naming any other hash in the store would give away another
        // tenant's data.
        let delivered = hash == HashHex::empty()
            || blobs.contains_key(&hash)
            || lease.uploaded.contains(&hash)
            || engine.holds(&job.tenant, &hash).unwrap_or(false);
        match engine.cas().size(&hash).filter(|_| delivered) {
            Some(actual) => {
                if let Err(e) = tenant.own_blob(&hash, size.unwrap_or(actual)) {
                    host_failure = true;
                    result.message = Some(format!("recording output: {e}"));
                }
            }
            None => {
                host_failure = true;
                result.message = Some(format!(
                    "node {id} reported blob {hash} but never delivered it for lease {}/{}",
                    token.lsn, token.attempt
                ));
            }
        }
    }
    if host_failure {
        // Nothing of a failed attempt reaches the tenant.
        result.state = JobState::Failed;
        if result.outcome != outcome::NODE_LOST {
            result.outcome = outcome::TRAPPED.into();
        }
        result.exit_code = None;
        result.output = HashHex::empty();
        result.output_size = 0;
        result.stderr = HashHex::empty();
    }
    // Who and what the result is about comes from the lease, never from the node.
    let result = JobResult {
        lsn: job.lsn,
        action: job.action,
        worker: job.worker,
        node: id.to_string(),
        attempts: token.attempt,
        cached: false,
        placement: Some(lease.placement.clone()),
        ..result
    };
    Checked::Taken(Box::new((job, result, host_failure, lease)))
}

/// Hands runnable jobs to nodes whenever jobs become runnable or capacity appears.
pub async fn place_loop(engine: Arc<Engine>, fleet: Arc<Fleet>) {
    loop {
        let runnable = engine.runnable().notified();
        let capacity = fleet.capacity.notified();
        tokio::pin!(runnable, capacity);
        runnable.as_mut().enable();
        capacity.as_mut().enable();
        let (e, f) = (engine.clone(), fleet.clone());
        if let Err(e) = tokio::task::spawn_blocking(move || place_batch(&e, &f)).await {
            tracing::error!(error = %e, "placement failed");
        }
        tokio::select! {
            () = runnable => {}
            () = capacity => {}
            () = engine.stopping().cancelled() => return,
        }
    }
}

struct Placed {
    runnable: Runnable,
    reservation: Reservation,
}

/// Places as many runnable jobs as the fleet has room for.
pub fn place_batch(engine: &Engine, fleet: &Fleet) {
    let mut deferred = Vec::new();
    let mut batch = Vec::new();
    let now = Instant::now();
    if !fleet.has_capacity(now) {
        return;
    }
    while let Some(runnable) = engine.next_runnable() {
        let demand = Demand {
            requires: runnable.worker.requires.clone(),
            limits: runnable.worker.limits.narrow(&runnable.action.limits),
            module: runnable.worker.module,
            inputs: runnable.action.chunks(),
        };
        match fleet.reserve(&runnable.job.action, &demand, now) {
            Some(reservation) => batch.push(Placed {
                runnable,
                reservation,
            }),
            None => {
                deferred.push(runnable.job.lsn);
                // Only when a job finds no node: is there room anywhere at all? (A
                // scan of the fleet, so not once per job.)
                if !fleet.has_capacity(now) {
                    break;
                }
            }
        }
        if batch.len() >= LEASE_BATCH {
            lease(engine, fleet, std::mem::take(&mut batch));
        }
    }
    lease(engine, fleet, batch);
    engine.requeue(&deferred);
}

/// Writes the attempts of a batch of placed jobs and hands them to their nodes.
fn lease(engine: &Engine, fleet: &Fleet, batch: Vec<Placed>) {
    if batch.is_empty() {
        return;
    }
    let pairs: Vec<(u64, &str)> = batch
        .iter()
        .map(|p| (p.runnable.job.lsn, p.reservation.node.as_str()))
        .collect();
    let attempts = match engine.lease(&pairs) {
        Ok(attempts) => attempts,
        Err(e) => {
            tracing::error!(error = %e, "writing leases; the jobs stay queued");
            let lsns: Vec<u64> = batch.iter().map(|p| p.runnable.job.lsn).collect();
            for placed in &batch {
                fleet.release(&placed.reservation);
            }
            engine.requeue(&lsns);
            return;
        }
    };
    for (placed, attempt) in batch.into_iter().zip(attempts) {
        let Placed {
            runnable,
            reservation,
        } = placed;
        let Some(attempt) = attempt else {
            // Another coordinator sharing the journal took it first.
            fleet.release(&reservation);
            continue;
        };
        engine.job_started(&runnable.job, &reservation.node, attempt);
        if dropped_handout() {
            // As if this coordinator died here: the journal holds the lease, no fleet
            // does, and the node never hears of it (cluster/orphans.rs requeues it).
            fleet.release(&reservation);
            continue;
        }
        let token = Token {
            lsn: runnable.job.lsn,
            attempt,
        };
        // Small inputs and files go inline (up to a budget per lease): a node would
        // otherwise fetch and fsync each one before the run.
        let mut blobs = BTreeMap::new();
        let mut budget = INLINE_BUDGET;
        for hash in runnable
            .action
            .input
            .iter()
            .chain(runnable.action.files.values())
        {
            if let Some(size) = engine.cas().size(hash)
                && size <= INLINE_INPUT
                && size <= budget
                && !blobs.contains_key(hash)
                && let Ok(bytes) = engine.cas().read(hash)
            {
                budget -= size;
                blobs.insert(
                    *hash,
                    base64::engine::general_purpose::STANDARD.encode(bytes),
                );
            }
        }
        fleet.assign(
            reservation,
            Assignment {
                lease: token,
                worker: (*runnable.worker).clone(),
                action: runnable.action,
                blobs,
                checkpoint: runnable.job.checkpoint,
            },
            Instant::now(),
        );
        // Cancelled while being placed: withdraw it now.
        if runnable.cancel.is_cancelled()
            && let Err(e) = engine.cancel(&runnable.job.tenant, runnable.job.lsn)
        {
            tracing::error!(lsn = runnable.job.lsn, error = %e, "cancelling a job being placed");
        }
    }
}

/// A test hook, off unless `WASMESH_TEST_DROP_HANDOUTS=N` is set: the first N leases
/// are written to the journal and then forgotten before their node receives them, as
/// by a coordinator killed between the two (issue 25, item 21).
fn dropped_handout() -> bool {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LEFT: std::sync::OnceLock<AtomicU64> = std::sync::OnceLock::new();
    let left = LEFT.get_or_init(|| {
        let n = std::env::var("WASMESH_TEST_DROP_HANDOUTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        AtomicU64::new(n)
    });
    left.load(Ordering::Relaxed) > 0
        && left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
}

/// Expires leases that were not renewed: the job is requeued (`node_lost`, counting an
/// attempt) or, with no retries left, fails as `node_lost`.
pub async fn expiry_loop(engine: Arc<Engine>, fleet: Arc<Fleet>) {
    let tick =
        (fleet.config.lease / 10).clamp(Duration::from_millis(10), Duration::from_millis(250));
    loop {
        tokio::select! {
            () = tokio::time::sleep(tick) => {}
            () = engine.stopping().cancelled() => return,
        }
        let now = Instant::now();
        for (id, healthy) in fleet.health_changes(now) {
            let event = if healthy {
                "node.ready"
            } else {
                "node.unhealthy"
            };
            tracing::info!(node = %id, event, "node health changed");
            engine.node_changed(&id, if healthy { "ready" } else { "unhealthy" });
            if engine.webhooks().wants(None, event) {
                let data =
                    json!({"node": id, "state": if healthy { "ready" } else { "unhealthy" }});
                engine.webhooks().emit(None, event, data);
            }
        }
        let lost = fleet.expire(now);
        if lost.is_empty() {
            continue;
        }
        engine.metrics().leases_expired.add(lost.len() as u64);
        // On a shared journal a node this coordinator stopped hearing may have moved
        // to another, keeping its leases: the leader requeues the jobs of nodes no
        // coordinator hears (cluster/shared.rs); this one only lets them go.
        let silent: Vec<String> = if engine.store().is_shared() {
            (fleet.members().into_iter())
                .filter(|m| m.state == "unhealthy")
                .map(|m| m.id)
                .collect()
        } else {
            Vec::new()
        };
        let e = engine.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for lease in lost {
                if silent.contains(&lease.node) {
                    e.lost_claim(lease.token.lsn);
                } else {
                    lease_lost(&e, lease);
                }
            }
        })
        .await;
    }
}

fn lease_lost(engine: &Engine, lease: Lease) {
    let token = lease.token;
    let job = match engine.job_any(token.lsn) {
        Ok(Some(job)) => job,
        _ => return,
    };
    tracing::warn!(lsn = token.lsn, attempt = token.attempt, node = %lease.node, "lease expired");
    record_lost(
        engine,
        &job,
        lease.node,
        token.attempt,
        lease.cancel_requested,
        Some(lease.placement),
    );
}

/// Ends the journal's lease of a running `job` that no fleet here holds (its node went
/// silent for every coordinator, or never renewed it): counted as an expired lease,
/// logged with `why`, retried or ended (cancelled, when a cancel is pending) as
/// [`record_lost`] does, under the lease's fence.
pub(super) fn expire_journal_lease(engine: &Engine, job: &JobRow, why: &str) {
    let node = job.lease_node.clone().unwrap_or_default();
    tracing::warn!(lsn = job.lsn, attempt = job.attempts, node, "{why}");
    engine.metrics().leases_expired.add(1);
    let cancel = engine.store().cancel_requested(job.lsn).unwrap_or(false);
    record_lost(engine, job, node, job.attempts, cancel, None);
}

/// Records that attempt `attempt` of `job` on `node` was lost (its node stopped
/// renewing the lease), under that attempt's fence: retried as `node_lost` while
/// attempts are left, or ended as cancelled when a cancel was asked for meanwhile.
pub(super) fn record_lost(
    engine: &Engine,
    job: &JobRow,
    node: String,
    attempt: u32,
    cancel_requested: bool,
    placement: Option<serde_json::Value>,
) {
    let (mut result, host_failure) = if cancel_requested {
        let message = format!("cancelled; node {node} stopped answering");
        (
            engine.failure(job, JobState::Cancelled, outcome::CANCELLED, &message),
            false,
        )
    } else {
        let message = format!("node {node} stopped renewing its lease (attempt {attempt})");
        (
            engine.failure(job, JobState::Failed, outcome::NODE_LOST, &message),
            true,
        )
    };
    result.node = node;
    result.attempts = attempt;
    result.placement = placement;
    if let Err(e) = engine.record(job, result, host_failure, Fence::Lease(attempt)) {
        tracing::error!(lsn = job.lsn, error = %e, "requeueing a lost job");
    }
}

/// Whether node `id` holds a lease now that needs blob `hash` (the only blobs a
/// coordinator serves a node). A restored or adopted lease learns its blobs from the
/// journal the first time its node asks.
pub fn may_fetch(engine: &Engine, fleet: &Fleet, id: &str, hash: &HashHex) -> bool {
    match fleet.may_fetch(id, hash) {
        Ok(may) => may,
        Err(unknown) => {
            for lsn in unknown {
                fleet.learn_fetches(lsn, engine.running_blobs(lsn));
            }
            fleet.may_fetch(id, hash) == Ok(true)
        }
    }
}

/// The fleet is a coordinator engine's driver: a running job's lease is restored at
/// start-up (its node gets two lease periods to renew it), and a cancelled job whose
/// lease never reached its node ends at once.
impl Driver for Fleet {
    fn restore(&self, job: &JobRow) -> bool {
        let Some(node) = &job.lease_node else {
            return false;
        };
        let token = Token {
            lsn: job.lsn,
            attempt: job.attempts,
        };
        // The node gets two lease periods to register again and renew it.
        self.put_back(Lease {
            token,
            node: node.clone(),
            expires: Instant::now() + self.config.lease * 2,
            delivered: true,
            cancel_requested: false,
            placement: serde_json::json!({"node": node, "restored": true}),
            uploaded: Vec::new(),
            fetches: None,
        });
        true
    }

    fn cancel(&self, lsn: u64) -> Option<Fence> {
        match Fleet::cancel(self, lsn) {
            LeaseCancel::Withdrawn(token) => Some(Fence::Lease(token.attempt)),
            LeaseCancel::Sent | LeaseCancel::None => None,
        }
    }

    fn nodes_by_state(&self) -> Vec<(&'static str, usize)> {
        let members = self.members();
        ["ready", "busy", "draining", "unhealthy"]
            .into_iter()
            .map(|state| (state, members.iter().filter(|m| m.state == state).count()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::fleet::CoordinatorConfig;
    use crate::cluster::protocol::Registration;
    use crate::engine::testing::{engine_with, submit};

    fn report(token: Token) -> Report {
        let mut result = JobResult::without_run(JobState::Succeeded, "exited", "");
        result.exit_code = Some(0);
        result.message = None;
        // What a hostile node might claim: another job, node and attempt.
        result.lsn = 999;
        result.node = "elsewhere".into();
        result.attempts = 7;
        Report {
            lease: token,
            result,
            blobs: BTreeMap::new(),
            host_failure: false,
        }
    }

    #[test]
    fn placement_leases_what_fits_and_puts_the_rest_back() {
        let fleet = Arc::new(Fleet::new(CoordinatorConfig::default()));
        let (_dir, engine, worker) = engine_with(fleet.clone());
        let registration = Registration {
            id: "n1".into(),
            address: "http://n1.invalid".into(),
            slots: 1,
            ..Registration::default()
        };
        fleet.register(registration, Instant::now());
        let first = submit(&engine, worker, &["noop"], None);
        let second = submit(&engine, worker, &["args", "two"], None);

        place_batch(&engine, &fleet);
        assert_eq!(fleet.leases(), 1, "one slot, one lease");
        let job = engine.job_any(first).unwrap().unwrap();
        assert_eq!(
            (job.state, job.attempts, job.lease_node.as_deref()),
            (JobState::Running, 1, Some("n1"))
        );
        assert_eq!(
            engine.job_any(second).unwrap().unwrap().state,
            JobState::Queued
        );
        assert!(
            engine.has_runnable(),
            "the job that did not fit is back in the queue"
        );
        let (leases, _, _) = fleet.take("n1", Instant::now()).unwrap();
        let token = leases[0].lease;
        assert_eq!(
            token,
            Token {
                lsn: first,
                attempt: 1
            }
        );

        // Only the current lease's holder settles the job.
        let stale = Token {
            lsn: first,
            attempt: 2,
        };
        assert_eq!(
            accept(&engine, &fleet, "n1", vec![report(stale)]).unwrap(),
            [false]
        );
        assert_eq!(
            accept(&engine, &fleet, "n2", vec![report(token)]).unwrap(),
            [false]
        );
        assert_eq!(
            accept(&engine, &fleet, "n1", vec![report(stale), report(token)]).unwrap(),
            [false, true],
            "a batch takes what is current"
        );
        let result = engine.job_any(first).unwrap().unwrap().result.unwrap();
        assert_eq!(
            (result.state, result.node.as_str()),
            (JobState::Succeeded, "n1")
        );
        assert!(
            result.placement.is_some(),
            "the result says why it ran there"
        );

        // The freed slot takes the other job.
        place_batch(&engine, &fleet);
        assert_eq!(
            engine.job_any(second).unwrap().unwrap().state,
            JobState::Running
        );
        assert!(!engine.has_runnable());
    }
}
