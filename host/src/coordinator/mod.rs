//! The coordinator: a [`Node`] without local slots whose jobs are leased to the
//! fleet's nodes. Clients see the same `/cas` and `/compute` surface as on a node
//! (the same handlers, the same journal); nodes use the cluster routes below.
//!
//! - `fleet`: registered nodes (soft state: a restarted coordinator learns them again
//!   from their next heartbeat) and leases with fencing tokens.
//! - `placement`: which node gets a job, and why.
//! - `protocol`: the node <-> coordinator messages.
//!
//! Jobs, queues, workers and results live in the journal (`node::db`), so a
//! coordinator killed at any point and restarted loses nothing accepted; running
//! jobs' leases are restored from it and renewed by their nodes' heartbeats.

pub mod budget;
pub mod fleet;
pub mod groups;
pub mod node_auth;
pub mod placement;
pub mod protocol;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::api::auth::{Auth, Role, Tenant};
use crate::api::error::{ApiError, ApiResult};
use crate::model::{ActionDescriptor, HashHex, JobResult, WorkerDescriptor};
use crate::node::Node;
use crate::node::db::JobRow;
pub use fleet::{CoordinatorConfig, Fleet};
use fleet::{Lease, Reservation};
use node_auth::NodeIdentity;
use placement::Demand;
use protocol::{
    Assignment, CheckpointNote, Heartbeat, Registration, Report, Results, ResultsAnswer, Token,
    WorkAnswer, WorkRequest,
};

/// The longest a work poll waits.
const MAX_POLL: Duration = Duration::from_secs(10);

/// Leases written to the journal in one transaction.
const LEASE_BATCH: usize = 256;

/// An input or file up to this size may travel inside its assignment.
const INLINE_INPUT: u64 = 64 << 10;

/// Bytes of inputs and files one lease may carry inline.
const INLINE_BUDGET: u64 = 1 << 20;

/// What the cluster handlers reach.
#[derive(Clone, Debug)]
pub struct CoordinatorState {
    /// The journal, store and scheduler (a node without local slots).
    pub node: Arc<Node>,
    /// The registered nodes and their leases.
    pub fleet: Arc<Fleet>,
    /// Client keys (the cluster's client routes).
    pub auth: Arc<Auth>,
    /// Node keys (the node-facing routes).
    pub node_auth: Arc<node_auth::NodeAuth>,
}

async fn body<T: DeserializeOwned + Default>(
    request: Request,
    limit: usize,
    allow_empty: bool,
) -> ApiResult<T> {
    let bytes = axum::body::to_bytes(request.into_body(), limit)
        .await
        .map_err(|_| ApiError::TooLarge(format!("cluster bodies are limited to {limit} bytes")))?;
    if allow_empty && bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&bytes).map_err(ApiError::json)
}

async fn register(
    State(state): State<CoordinatorState>,
    axum::Extension(identity): axum::Extension<NodeIdentity>,
    request: Request,
) -> ApiResult<Response> {
    let registration: Registration = body(request, 1 << 20, false).await?;
    identity.may_act_as(&registration.id)?;
    if registration.id.is_empty() || registration.id.len() > 128 {
        return Err(ApiError::BadRequest(
            "invalid_request",
            "a node id is 1 to 128 characters".into(),
        ));
    }
    if !registration.address.starts_with("http://") && !registration.address.starts_with("https://")
    {
        return Err(ApiError::BadRequest(
            "invalid_request",
            "a node address is an http(s) URL".into(),
        ));
    }
    tracing::info!(node = %registration.id, address = %registration.address, slots = registration.slots, "node registered");
    state.fleet.register(registration);
    let config = &state.fleet.config;
    Ok(Json(json!({
        "heartbeat_interval_ms": config.heartbeat_interval.as_millis() as u64,
        "lease_ms": config.lease.as_millis() as u64,
    }))
    .into_response())
}

async fn heartbeat(
    State(state): State<CoordinatorState>,
    Path(id): Path<String>,
    request: Request,
) -> ApiResult<Response> {
    let beat: Heartbeat = body(request, 64 << 20, true).await?;
    let answer = state.fleet.heartbeat(&id, &beat).ok_or_else(|| {
        ApiError::NotFound(format!("node {id} is not registered; register again"))
    })?;
    // Checkpoints of leases the heartbeat just renewed only: a note for any other
    // lease (expired, finished, another node's, cancelled) is dropped.
    let checkpoints: Vec<CheckpointNote> = beat
        .checkpoints
        .into_iter()
        .filter(|note| answer.renewed.contains(&note.lease))
        .collect();
    if !checkpoints.is_empty() {
        let (node, fleet) = (state.node.clone(), state.fleet.clone());
        tokio::task::spawn_blocking(move || {
            for note in checkpoints {
                keep_checkpoint(&node, &fleet, &id, note);
            }
            node.sweep_checkpoints();
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    }
    Ok(Json(answer).into_response())
}

/// Stores a blob node `id` sent inline (base64) and checks it is the one it named.
fn store_inline(node: &Node, id: &str, hash: &HashHex, data: &str) -> Result<(), String> {
    let actual = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|e| e.to_string())
        .and_then(|bytes| node.cas.put_own(&bytes).map_err(|e| e.to_string()))
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
fn keep_checkpoint(node: &Node, fleet: &Fleet, id: &str, note: CheckpointNote) {
    let lsn = note.lease.lsn;
    if let Some(data) = &note.data {
        if let Err(e) = store_inline(node, id, &note.hash, data) {
            tracing::warn!(lsn, error = %e, "a checkpoint was not kept");
            return;
        }
    } else if !fleet.uploaded(id, note.lease, &note.hash) {
        tracing::warn!(lsn, node = id, hash = %note.hash, "a checkpoint was announced but never sent for its lease");
        return;
    }
    let recorded = node
        .db
        .save_checkpoint(lsn, &note.hash, Some(note.lease.attempt));
    match recorded {
        Ok(true) => tracing::debug!(lsn, node = id, "checkpoint recorded"),
        Ok(false) => tracing::debug!(lsn, node = id, "a stale checkpoint was ignored"),
        Err(e) => tracing::warn!(lsn, error = %e, "recording a checkpoint"),
    }
}

/// `POST /api/v1/cluster/nodes/{id}/work`: waits up to `wait_ms` for leases or
/// cancellations for the node and hands out everything waiting, in one answer.
async fn work(
    State(state): State<CoordinatorState>,
    Path(id): Path<String>,
    request: Request,
) -> ApiResult<Response> {
    let poll: WorkRequest = body(request, 1 << 20, true).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(poll.wait_ms).min(MAX_POLL);
    loop {
        let (leases, cancel, wake) = state.fleet.take(&id).ok_or_else(|| {
            ApiError::NotFound(format!("node {id} is not registered; register again"))
        })?;
        let Some(wake) = wake.filter(|_| leases.is_empty() && cancel.is_empty()) else {
            return Ok(Json(WorkAnswer { leases, cancel }).into_response());
        };
        // `notify_one` keeps a permit when nobody waits, so an assignment made since
        // `take` wakes this at once.
        let notified = wake.notified();
        tokio::select! {
            () = notified => {}
            () = tokio::time::sleep_until(deadline) => {
                return Ok(Json(WorkAnswer::default()).into_response());
            }
            () = state.node.stopping().cancelled() => {
                return Ok(Json(WorkAnswer::default()).into_response());
            }
        }
    }
}

/// `POST /api/v1/cluster/nodes/{id}/leave`: a node shutting down. `{"final": false}`
/// first: no new work, leases it has not received go back to the queue (their attempt
/// uncounted); `{"final": true}` once its last results are in: it is deregistered.
async fn leave(
    State(state): State<CoordinatorState>,
    Path(id): Path<String>,
    request: Request,
) -> ApiResult<Response> {
    let leaving: Leave = body(request, 1 << 20, true).await?;
    if leaving.r#final {
        state.fleet.deregister(&id);
        tracing::info!(node = %id, "node left");
        return Ok(Json(json!({"id": id, "left": true})).into_response());
    }
    let withdrawn = state
        .fleet
        .leave(&id)
        .ok_or_else(|| ApiError::NotFound(format!("node {id} is not registered")))?;
    let count = withdrawn.len();
    let node = state.node.clone();
    tokio::task::spawn_blocking(move || {
        for token in withdrawn {
            if let Err(e) = node.withdraw(token) {
                tracing::error!(lsn = token.lsn, error = %e, "requeueing a withdrawn lease");
            }
        }
    })
    .await
    .map_err(|e| ApiError::Internal(format!("withdrawing leases: {e}")))?;
    tracing::info!(node = %id, withdrawn = count, "node leaving");
    Ok(Json(json!({"id": id, "withdrawn": count})).into_response())
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Leave {
    #[serde(default)]
    r#final: bool,
}

/// `POST /api/v1/cluster/nodes/{id}/results`: finished attempts, accepted only for
/// the current lease (fencing).
async fn results(
    State(state): State<CoordinatorState>,
    Path(id): Path<String>,
    request: Request,
) -> ApiResult<Response> {
    let limit = usize::try_from(state.node.config.max_request_bytes).unwrap_or(usize::MAX);
    let reports: Results = body(request, limit, false).await?;
    let (node, fleet) = (state.node.clone(), state.fleet.clone());
    let answer = tokio::task::spawn_blocking(move || {
        let mut answer = ResultsAnswer::default();
        for report in reports.results {
            let token = report.lease;
            if accept(&node, &fleet, &id, report) {
                answer.accepted.push(token);
            } else {
                node.metrics.results_rejected.add(1);
                answer.rejected.push(token);
            }
        }
        answer
    })
    .await
    .map_err(|e| ApiError::Internal(format!("recording results: {e}")))?;
    if !answer.rejected.is_empty() {
        tracing::info!(rejected = ?answer.rejected, "refused stale results (fencing)");
    }
    Ok(Json(answer).into_response())
}

/// Records one report if its lease is current; false when refused.
fn accept(node: &Node, fleet: &Fleet, id: &str, report: Report) -> bool {
    let token = report.lease;
    let Some(lease) = fleet.finish(id, token, report.host_failure) else {
        tracing::debug!(
            lsn = token.lsn,
            attempt = token.attempt,
            node = id,
            "no such lease"
        );
        return false;
    };
    let job = match node.job_any(token.lsn) {
        Ok(Some(job)) => job,
        Ok(None) => return false,
        Err(e) => {
            tracing::error!(lsn = token.lsn, error = %e, "reading a reported job");
            return false;
        }
    };
    let mut host_failure = report.host_failure;
    let mut message = report.message;
    for (hash, data) in &report.blobs {
        if let Err(e) = store_inline(node, id, hash, data) {
            host_failure = true;
            message = Some(e);
        }
    }
    let mut state = report.state;
    let mut outcome = report.outcome;
    for (hash, size) in [
        (report.output, Some(report.output_size)),
        (report.stderr, None),
    ] {
        if host_failure {
            break;
        }
        // A report hands the job's tenant only bytes this node delivered for this
        // lease (inline above, or uploaded under it), or ones the tenant already
        // holds: naming any other hash in the store would give away another
        // tenant's data.
        let delivered = hash == HashHex::empty()
            || report.blobs.contains_key(&hash)
            || lease.uploaded.contains(&hash)
            || node.db.owns_blob(&job.tenant, &hash).unwrap_or(false);
        match node.cas.size(&hash).filter(|_| delivered) {
            Some(actual) => {
                if let Err(e) = node.db.own_blob(&job.tenant, &hash, size.unwrap_or(actual)) {
                    host_failure = true;
                    message = Some(format!("recording output: {e}"));
                }
            }
            None => {
                host_failure = true;
                message = Some(format!(
                    "node {id} reported blob {hash} but never delivered it for lease {}/{}",
                    token.lsn, token.attempt
                ));
            }
        }
    }
    if host_failure {
        state = "failed".into();
        if outcome != "node_lost" {
            outcome = "trapped".into();
        }
    }
    let result = JobResult {
        lsn: job.lsn,
        action: job.action,
        worker: job.worker,
        state,
        outcome,
        exit_code: if host_failure { None } else { report.exit_code },
        message,
        output: if host_failure {
            HashHex::empty()
        } else {
            report.output
        },
        output_size: if host_failure { 0 } else { report.output_size },
        stderr: if host_failure {
            HashHex::empty()
        } else {
            report.stderr
        },
        events: report.events,
        usage: report.usage,
        node: id.to_string(),
        attempts: token.attempt,
        cached: false,
        timing: report.timing,
        placement: Some(lease.placement),
    };
    match node.complete(&job, result, host_failure, Some(token.attempt)) {
        Ok(accepted) => accepted,
        Err(e) => {
            tracing::error!(lsn = job.lsn, error = %e, "recording a result");
            false
        }
    }
}

/// `GET /api/v1/cluster/blobs/{hash}`: a blob for a node (modules and inputs of its
/// leases), whichever tenant uploaded it.
async fn get_blob(
    State(state): State<CoordinatorState>,
    Path(hash): Path<String>,
) -> ApiResult<Response> {
    let hash = crate::api::body::path_hash(&hash)?;
    let size = state
        .node
        .cas
        .size(&hash)
        .ok_or_else(|| ApiError::NotFound(format!("blob {hash} not found")))?;
    let file = tokio::fs::File::open(state.node.cas.path(&hash)).await?;
    let headers = [
        (header::CONTENT_TYPE, "application/octet-stream".to_string()),
        (header::CONTENT_LENGTH, size.to_string()),
    ];
    Ok((
        headers,
        Body::from_stream(tokio_util::io::ReaderStream::new(file)),
    )
        .into_response())
}

/// `PUT /api/v1/cluster/blobs/{hash}?node=ID&lsn=N&attempt=A`: a node's large output
/// or checkpoint for one of its current leases, verified and stored (its bytes are
/// read and checked even when the store has them, since the upload is the node's proof
/// that it has them); it becomes visible to a tenant only when a result of that lease
/// naming it is accepted.
async fn put_blob(
    State(state): State<CoordinatorState>,
    axum::Extension(identity): axum::Extension<NodeIdentity>,
    Path(hash): Path<String>,
    axum::extract::Query(upload): axum::extract::Query<protocol::UploadFor>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let hash = crate::api::body::path_hash(&hash)?;
    identity.may_act_as(&upload.node)?;
    let token = Token {
        lsn: upload.lsn,
        attempt: upload.attempt,
    };
    if !state.fleet.holds(&upload.node, token) {
        return Err(ApiError::Conflict(
            "stale_lease",
            format!(
                "lease {}/{} is not a current lease of node {}",
                token.lsn, token.attempt, upload.node
            ),
        ));
    }
    let max = state.node.cas.max_blob_bytes();
    if headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|len| len > max)
    {
        return Err(ApiError::TooLarge(format!("blob larger than {max} bytes")));
    }
    let present = state.node.cas.contains(&hash);
    let staged = state
        .node
        .cas
        .stage_stream(hash, body.into_data_stream())
        .await
        .map_err(crate::api::body::cas_error)?;
    if !present {
        state.node.cas.commit(staged)?;
    }
    if !state.fleet.note_upload(&upload.node, token, hash) {
        return Err(ApiError::Conflict(
            "stale_lease",
            format!(
                "lease {}/{} of node {} ended or uploaded too many blobs",
                token.lsn, token.attempt, upload.node
            ),
        ));
    }
    Ok(if present {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    }
    .into_response())
}

async fn list(
    State(state): State<CoordinatorState>,
    axum::Extension(role): axum::Extension<Role>,
) -> ApiResult<Json<Value>> {
    role.require_operator()?;
    Ok(Json(json!({"nodes": state.fleet.list()})))
}

async fn details(
    State(state): State<CoordinatorState>,
    axum::Extension(role): axum::Extension<Role>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    role.require_operator()?;
    state
        .fleet
        .details(&id)
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("node {id} not found")))
}

async fn deregister(
    State(state): State<CoordinatorState>,
    axum::Extension(role): axum::Extension<Role>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    role.require_operator()?;
    if !state.fleet.deregister(&id) {
        return Err(ApiError::NotFound(format!("node {id} not found")));
    }
    tracing::info!(node = %id, "node deregistered");
    Ok(Json(json!({"id": id, "deregistered": true})))
}

async fn drain(
    State(state): State<CoordinatorState>,
    axum::Extension(role): axum::Extension<Role>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    role.require_operator()?;
    let described = state
        .fleet
        .drain(&id)
        .ok_or_else(|| ApiError::NotFound(format!("node {id} not found")))?;
    tracing::info!(node = %id, "node draining");
    Ok(Json(described))
}

/// `GET /api/v1/cluster/topology`: the operator sees the nodes and every tenant's
/// groups; a tenant sees its own groups only.
async fn topology(
    State(state): State<CoordinatorState>,
    axum::Extension(role): axum::Extension<Role>,
    axum::Extension(Tenant(tenant)): axum::Extension<Tenant>,
) -> Json<Value> {
    let config = &state.fleet.config;
    let mut coordinator = json!({
        "placement": config.placement.name(),
        "heartbeat_interval_ms": config.heartbeat_interval.as_millis() as u64,
        "lease_ms": config.lease.as_millis() as u64,
    });
    if role == Role::Operator {
        coordinator["leases"] = json!(state.fleet.leases());
        return Json(json!({
            "coordinator": coordinator,
            "nodes": state.fleet.list(),
            "groups": groups::topology(&state.node, None),
        }));
    }
    Json(json!({
        "coordinator": coordinator,
        "groups": groups::topology(&state.node, Some(&tenant)),
    }))
}

/// The cluster routes (merged by [`crate::api::app_with`] into the node's router).
pub fn routes(state: CoordinatorState) -> Router {
    let node_routes = Router::new()
        .route("/api/v1/cluster/nodes/register", post(register))
        .route("/api/v1/cluster/nodes/{id}/heartbeat", post(heartbeat))
        .route("/api/v1/cluster/nodes/{id}/work", post(work))
        .route("/api/v1/cluster/nodes/{id}/results", post(results))
        .route("/api/v1/cluster/nodes/{id}/leave", post(leave))
        .route("/api/v1/cluster/blobs/{hash}", get(get_blob).put(put_blob))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            node_auth::require_node_key,
        ));
    let app_state = crate::api::AppState {
        node: state.node.clone(),
        auth: state.auth.clone(),
    };
    let client_routes = Router::new()
        .route("/api/v1/cluster/nodes", get(list))
        .route(
            "/api/v1/cluster/nodes/{id}",
            get(details).delete(deregister),
        )
        .route("/api/v1/cluster/nodes/{id}/drain", post(drain))
        .route("/api/v1/cluster/topology", get(topology))
        .route_layer(axum::middleware::from_fn_with_state(
            app_state.clone(),
            crate::api::idempotency::idempotency,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            app_state.clone(),
            crate::api::auth::require_tenant,
        ));
    let group_routes = groups::routes()
        .route_layer(axum::middleware::from_fn_with_state(
            app_state.clone(),
            crate::api::idempotency::idempotency,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            app_state,
            crate::api::auth::require_tenant,
        ));
    Router::new()
        .merge(node_routes)
        .merge(client_routes)
        .merge(group_routes)
        .with_state(state)
}

/// Hands runnable jobs to nodes whenever jobs become runnable or capacity appears.
pub async fn place_loop(node: Arc<Node>, fleet: Arc<Fleet>) {
    loop {
        let runnable = node.runnable().notified();
        let capacity = fleet.capacity.notified();
        tokio::pin!(runnable, capacity);
        runnable.as_mut().enable();
        capacity.as_mut().enable();
        let (n, f) = (node.clone(), fleet.clone());
        if let Err(e) = tokio::task::spawn_blocking(move || place_batch(&n, &f)).await {
            tracing::error!(error = %e, "placement failed");
        }
        tokio::select! {
            () = runnable => {}
            () = capacity => {}
            () = node.stopping().cancelled() => return,
        }
    }
}

struct Placed {
    job: JobRow,
    cancel: wasmesh_runtime::CancellationToken,
    reservation: Reservation,
    worker: Arc<WorkerDescriptor>,
    action: ActionDescriptor,
}

/// Places as many runnable jobs as the fleet has room for.
pub fn place_batch(node: &Node, fleet: &Fleet) {
    let mut deferred = Vec::new();
    let mut batch = Vec::new();
    if !fleet.has_capacity() {
        return;
    }
    loop {
        let Some((lsn, cancel)) = node.pop_runnable() else {
            break;
        };
        let (job, worker, action) = match prepare(node, lsn) {
            Ok(Some(found)) => found,
            Ok(None) => continue,
            Err(message) => {
                fail_unrunnable(node, lsn, &message);
                continue;
            }
        };
        let demand = Demand {
            requires: worker.requires.clone(),
            limits: worker.limits.narrow(&action.limits),
            module: worker.module,
            inputs: action.chunks(),
        };
        match fleet.reserve(&job.action, &demand) {
            Some(reservation) => batch.push(Placed {
                job,
                cancel,
                reservation,
                worker,
                action,
            }),
            None => {
                deferred.push(lsn);
                // Only when a job finds no node: is there room anywhere at all? (A
                // scan of the fleet, so not once per job.)
                if !fleet.has_capacity() {
                    break;
                }
            }
        }
        if batch.len() >= LEASE_BATCH {
            lease(node, fleet, std::mem::take(&mut batch));
        }
    }
    lease(node, fleet, batch);
    node.unpop(&deferred);
}

type Prepared = (JobRow, Arc<WorkerDescriptor>, ActionDescriptor);

/// The job with its worker and concrete action; `None` when there is nothing to place
/// (the job is gone, or the result cache answered it once its references resolved).
fn prepare(node: &Node, lsn: u64) -> Result<Option<Prepared>, String> {
    let Some(mut job) = node.job_any(lsn).map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    if node.resolve_refs(&mut job).map_err(|e| e.to_string())? {
        return Ok(None);
    }
    let action: ActionDescriptor = serde_json::from_str(&job.descriptor)
        .map_err(|e| format!("stored action does not parse: {e}"))?;
    let worker = node
        .worker(&job.tenant, &job.worker)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("worker {} is not registered", job.worker))?;
    Ok(Some((job, worker, action)))
}

fn fail_unrunnable(node: &Node, lsn: u64, message: &str) {
    tracing::error!(lsn, message, "a job cannot be placed");
    if let Ok(Some(job)) = node.job_any(lsn) {
        let result = node.failure(&job, "failed", "trapped", message);
        if let Err(e) = node.complete(&job, result, false, None) {
            tracing::error!(lsn, error = %e, "failing an unplaceable job");
        }
    }
}

/// Writes the attempts of a batch of placed jobs and hands them to their nodes.
fn lease(node: &Node, fleet: &Fleet, batch: Vec<Placed>) {
    if batch.is_empty() {
        return;
    }
    let pairs: Vec<(u64, &str)> = batch
        .iter()
        .map(|p| (p.job.lsn, p.reservation.node.as_str()))
        .collect();
    let attempts = match node.db.lease_jobs(&pairs) {
        Ok(attempts) => attempts,
        Err(e) => {
            tracing::error!(error = %e, "writing leases; the jobs stay queued");
            let lsns: Vec<u64> = batch.iter().map(|p| p.job.lsn).collect();
            for placed in &batch {
                fleet.release(&placed.reservation);
            }
            node.unpop(&lsns);
            return;
        }
    };
    node.metrics.leases_granted.add(attempts.len() as u64);
    for (placed, attempt) in batch.into_iter().zip(attempts) {
        let token = Token {
            lsn: placed.job.lsn,
            attempt,
        };
        // Small inputs and files go inline (up to a budget per lease): a node would
        // otherwise fetch and fsync each one before the run.
        let mut blobs = BTreeMap::new();
        let mut budget = INLINE_BUDGET;
        for hash in placed
            .action
            .input
            .iter()
            .chain(placed.action.files.values())
        {
            if let Some(size) = node.cas.size(hash)
                && size <= INLINE_INPUT
                && size <= budget
                && !blobs.contains_key(hash)
                && let Ok(bytes) = node.cas.read(hash)
            {
                budget -= size;
                blobs.insert(
                    *hash,
                    base64::engine::general_purpose::STANDARD.encode(bytes),
                );
            }
        }
        fleet.assign(
            placed.reservation,
            Assignment {
                lease: token,
                worker: (*placed.worker).clone(),
                action: placed.action,
                blobs,
                checkpoint: placed.job.checkpoint,
            },
        );
        // Cancelled while being placed: withdraw it now.
        if placed.cancel.is_cancelled()
            && let Err(e) = node.cancel(&placed.job.tenant, placed.job.lsn)
        {
            tracing::error!(lsn = placed.job.lsn, error = %e, "cancelling a job being placed");
        }
    }
}

/// Expires leases that were not renewed: the job is requeued (`node_lost`, counting an
/// attempt) or, with no retries left, fails as `node_lost`.
pub async fn expiry_loop(node: Arc<Node>, fleet: Arc<Fleet>) {
    let tick =
        (fleet.config.lease / 10).clamp(Duration::from_millis(10), Duration::from_millis(250));
    loop {
        tokio::select! {
            () = tokio::time::sleep(tick) => {}
            () = node.stopping().cancelled() => return,
        }
        let now = Instant::now();
        for (id, healthy) in fleet.health_changes(now) {
            let event = if healthy {
                "node.ready"
            } else {
                "node.unhealthy"
            };
            tracing::info!(node = %id, event, "node health changed");
            if node.webhooks.wants(None, event) {
                let data =
                    json!({"node": id, "state": if healthy { "ready" } else { "unhealthy" }});
                node.webhooks.emit(&node.db, None, event, data);
            }
        }
        let lost = fleet.expire(now);
        if lost.is_empty() {
            continue;
        }
        node.metrics.leases_expired.add(lost.len() as u64);
        let n = node.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for lease in lost {
                lease_lost(&n, lease);
            }
        })
        .await;
    }
}

fn lease_lost(node: &Node, lease: Lease) {
    let token = lease.token;
    let job = match node.job_any(token.lsn) {
        Ok(Some(job)) => job,
        _ => return,
    };
    tracing::warn!(lsn = token.lsn, attempt = token.attempt, node = %lease.node, "lease expired");
    let (mut result, host_failure) = if lease.cancel_requested {
        let message = format!("cancelled; node {} stopped answering", lease.node);
        (
            node.failure(&job, "cancelled", "cancelled", &message),
            false,
        )
    } else {
        let message = format!(
            "node {} stopped renewing its lease (attempt {})",
            lease.node, token.attempt
        );
        (node.failure(&job, "failed", "node_lost", &message), true)
    };
    result.node = lease.node;
    result.attempts = token.attempt;
    result.placement = Some(lease.placement);
    if let Err(e) = node.complete(&job, result, host_failure, Some(token.attempt)) {
        tracing::error!(lsn = token.lsn, error = %e, "requeueing a lost job");
    }
}
