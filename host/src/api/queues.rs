//! `/compute/queues`: local (integer id, loopback only) and remote (token) queues.

use axum::Extension;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use rand::RngCore;
use serde::Deserialize;
use serde_json::json;

use crate::api::AppState;
use crate::api::auth::{Peer, Tenant};
use crate::api::body::path_hash;
use crate::api::error::{ApiError, ApiResult};
use crate::api::jobs::{SubmitQuery, WaitQuery, job_response_waiting, path_lsn, submit_into};
use crate::api::json::{self, Json, JsonBody};
use crate::engine::QueuePolicy;
use crate::model::{Deadlines, JobState, QueueState};
use crate::store::{QueueRow, QueueSpec, TenantStore};

/// Length of a remote queue token: 12 random bytes (96 bits) in hex.
const TOKEN_HEX: usize = 24;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct QueueBody {
    name: Option<String>,
    max_retries: Option<u32>,
    priority: Option<i64>,
    retry_guest_failures: Option<bool>,
    deadlines: Option<Deadlines>,
    target_wait_ms: Option<u64>,
}

impl JsonBody for QueueBody {
    /// No body is a queue with the defaults.
    fn empty() -> Option<Self> {
        Some(Self::default())
    }

    fn shape_error(e: serde_json::Error) -> ApiError {
        ApiError::json(e)
    }
}

fn create(
    state: &AppState,
    tenant: &str,
    body: &QueueBody,
    token_digest: Option<&str>,
) -> ApiResult<u64> {
    let deadlines = body.deadlines.unwrap_or_default();
    deadlines
        .check()
        .map_err(|e| ApiError::BadRequest("invalid_request", e))?;
    let max_retries = body.max_retries.unwrap_or(3);
    if max_retries > crate::engine::MAX_RETRIES {
        return Err(ApiError::BadRequest(
            "invalid_request",
            format!(
                "max_retries is {max_retries}; at most {} (every attempt is billed)",
                crate::engine::MAX_RETRIES
            ),
        ));
    }
    let spec = QueueSpec {
        name: body.name.as_deref(),
        max_retries,
        retry_guest_failures: body.retry_guest_failures.unwrap_or(false),
        priority: crate::engine::scheduler::clamp_priority(body.priority.unwrap_or(0)),
        deadlines,
        target_wait_ms: body.target_wait_ms,
    };
    let queue = state
        .engine
        .store()
        .tenant(tenant)
        .create_queue(token_digest, &spec)?;
    let active = QueueState::Active.as_str();
    state.engine.queue_changed(tenant, queue, active);
    Ok(queue)
}

fn remote_forbidden() -> ApiError {
    ApiError::Forbidden(
        "remote_forbidden",
        "local queues and integer queue ids are for loopback callers; use a remote queue token"
            .into(),
    )
}

/// `POST /compute/queues`: a local queue, for loopback callers only.
pub async fn create_local(
    State(state): State<AppState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    peer: Peer,
    request: Request,
) -> ApiResult<Response> {
    if !peer.is_loopback() {
        return Err(remote_forbidden());
    }
    // Read after the loopback check: a remote caller learns nothing from its body.
    let limit = state.engine.config().max_json_bytes;
    let body: QueueBody = json::read(request.into_body(), limit).await?;
    let id = create(&state, &tenant, &body, None)?;
    Ok((StatusCode::CREATED, axum::Json(json!({"queue_id": id}))).into_response())
}

/// `POST /compute/queues/remote`: a queue addressed by an unguessable token. Only the
/// token's BLAKE3 digest is stored.
pub async fn create_remote(
    State(state): State<AppState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Json(body): Json<QueueBody>,
) -> ApiResult<Response> {
    let mut bytes = [0u8; TOKEN_HEX / 2];
    rand::rng().fill_bytes(&mut bytes);
    let token = hex::encode(bytes);
    let digest = blake3::hash(token.as_bytes()).to_hex().to_string();
    let id = create(&state, &tenant, &body, Some(&digest))?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"queue_token": token, "queue_id": id})),
    )
        .into_response())
}

/// Resolves `{q}`: a 24-hex token for anyone, an integer id for loopback callers.
/// Another tenant's queue is not found (404, not 403: no existence leak).
fn resolve(state: &AppState, tenant: &str, q: &str, peer: Peer) -> ApiResult<QueueRow> {
    let not_found = || ApiError::NotFound(format!("queue {q} not found"));
    let store = state.engine.store().tenant(tenant);
    let row = if q.len() == TOKEN_HEX && q.bytes().all(|b| b.is_ascii_hexdigit()) {
        let digest = blake3::hash(q.to_ascii_lowercase().as_bytes());
        store.queue_by_token(digest.to_hex().as_str())?
    } else {
        let id: u64 = q.parse().map_err(|_| not_found())?;
        if !peer.is_loopback() {
            return Err(remote_forbidden());
        }
        store.queue(id)?
    };
    row.ok_or_else(not_found)
}

/// A queue's status as `GET /compute/queues/{q}` answers it.
/// A queue's jobs counted by state (every state named, 0 when none), and how many of
/// them are pending.
pub(super) fn counted(store: TenantStore<'_>, queue: u64) -> ApiResult<(serde_json::Value, u64)> {
    let mut counts = serde_json::Map::new();
    for job_state in JobState::ALL {
        counts.insert(job_state.as_str().into(), json!(0));
    }
    let mut counts = serde_json::Value::Object(counts);
    let mut pending = 0;
    for (job_state, n) in store.queue_counts(queue)? {
        counts[job_state.as_str()] = json!(n);
        if !job_state.is_finished() {
            pending += n;
        }
    }
    Ok((counts, pending))
}

fn status(state: &AppState, queue: &QueueRow) -> ApiResult<serde_json::Value> {
    // The queue's own state may have changed (drain, cancel, expiry) since it was read.
    let store = state.engine.store().tenant(&queue.tenant);
    let queue_state = store.queue(queue.id)?.map_or(queue.state, |row| row.state);
    let (counts, pending) = counted(store, queue.id)?;
    Ok(json!({
        "queue_id": queue.id,
        "state": queue_state,
        "counts": counts,
        "is_complete": pending == 0,
    }))
}

/// `GET /compute/queues/{q}`; `?wait_ms=N` long-polls (up to a minute) until the
/// queue has nothing pending.
pub async fn get(
    State(state): State<AppState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Path(q): Path<String>,
    Query(wait): Query<WaitQuery>,
    peer: Peer,
) -> ApiResult<Response> {
    let queue = resolve(&state, &tenant, &q, peer)?;
    let deadline = tokio::time::Instant::now() + wait.duration();
    // Each result wakes the wait: it looks with the index-only check, and counts the
    // queue's jobs (a scan of them) once, for the answer.
    let store = state.engine.store().tenant(&queue.tenant);
    state
        .engine
        .when_finished(
            || store.queue_is_pending(queue.id),
            |pending| !pending,
            Some(deadline),
            Some(RECHECK),
        )
        .await?;
    Ok(axum::Json(status(&state, &queue)?).into_response())
}

/// Submissions change a queue's counts without a result being written: a waiting
/// look at a queue looks again at least this often.
const RECHECK: std::time::Duration = std::time::Duration::from_millis(250);

/// `GET /compute/queues/{q}/events`: server-sent events. A `progress` event with the
/// queue's status now and at every change, and a last `complete` event when nothing
/// is pending; then the stream ends. A comment every 15 s keeps proxies from closing
/// a quiet stream.
pub async fn events(
    State(state): State<AppState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Path(q): Path<String>,
    peer: Peer,
) -> ApiResult<Response> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let queue = resolve(&state, &tenant, &q, peer)?;
    // One of the tenant's streams while it is open.
    let permit = state.engine.admit_stream(&tenant)?;
    // (state, queue, last status sent, done, the stream's place)
    let stream = futures_util::stream::unfold(
        (state, queue, serde_json::Value::Null, false, permit),
        |(state, queue, last, done, permit)| async move {
            if done {
                return None;
            }
            // Every stream of the queue shares one count a change (off the async
            // workers), however many watch it.
            let changed = state
                .engine
                .when_finished(
                    || {
                        state
                            .engine
                            .queue_status(queue.id, || status(&state, &queue))
                    },
                    |s| *s != last,
                    None,
                    Some(RECHECK),
                )
                .await;
            let event = match changed {
                Ok(status) if status["is_complete"] == json!(true) => {
                    let event = Event::default().event("complete").data(status.to_string());
                    (event, status, true)
                }
                Ok(status) => {
                    let event = Event::default().event("progress").data(status.to_string());
                    (event, status, false)
                }
                Err(e) => {
                    let event = Event::default().event("error").data(format!("{e:?}"));
                    (event, last, true)
                }
            };
            let (event, sent, done) = event;
            Some((
                Ok::<_, std::convert::Infallible>(event),
                (state, queue, sent, done, permit),
            ))
        },
    );
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(15)))
        .into_response())
}

/// `DELETE /compute/queues/{q}`: cancels every queued and running job.
pub async fn cancel(
    State(state): State<AppState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Path(q): Path<String>,
    peer: Peer,
) -> ApiResult<Response> {
    let queue = resolve(&state, &tenant, &q, peer)?;
    let node = state.engine.clone();
    let id = queue.id;
    tokio::task::spawn_blocking(move || node.cancel_queue(&tenant, id))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    Ok(axum::Json(json!({"queue_id": id, "state": QueueState::Cancelled})).into_response())
}

/// `POST /compute/queues/{q}/drain`: no new jobs; the rest finish.
pub async fn drain(
    State(state): State<AppState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Path(q): Path<String>,
    peer: Peer,
) -> ApiResult<Response> {
    let queue = resolve(&state, &tenant, &q, peer)?;
    if queue.state == QueueState::Active {
        state
            .engine
            .store()
            .tenant(&tenant)
            .set_queue_state(queue.id, QueueState::Draining)?;
        let draining = QueueState::Draining.as_str();
        state.engine.queue_changed(&tenant, queue.id, draining);
    }
    let now = if queue.state == QueueState::Active {
        QueueState::Draining
    } else {
        queue.state
    };
    Ok(axum::Json(json!({"queue_id": queue.id, "state": now})).into_response())
}

/// `GET /compute/queues/{q}/completed`.
pub async fn completed(
    State(state): State<AppState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Path(q): Path<String>,
    peer: Peer,
) -> ApiResult<Response> {
    let queue = resolve(&state, &tenant, &q, peer)?;
    Ok(axum::Json(
        json!({"completed": state.engine.store().tenant(&tenant).completed(Some(queue.id))?}),
    )
    .into_response())
}

fn policy(queue: &QueueRow) -> QueuePolicy {
    QueuePolicy {
        id: queue.id,
        max_retries: queue.max_retries,
        retry_guest_failures: queue.retry_guest_failures,
        priority: queue.priority,
        deadlines: queue.deadlines,
    }
}

/// `POST /compute/queues/{q}/jobs`.
pub async fn submit(
    State(state): State<AppState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Path(q): Path<String>,
    Query(query): Query<SubmitQuery>,
    peer: Peer,
    request: Request,
) -> ApiResult<Response> {
    let queue = resolve(&state, &tenant, &q, peer)?;
    submit_into(&state, tenant, None, &query, Some(policy(&queue)), request).await
}

/// `POST /compute/queues/{q}/jobs/{worker}`.
pub async fn submit_for_worker(
    State(state): State<AppState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Path((q, worker)): Path<(String, String)>,
    Query(query): Query<SubmitQuery>,
    peer: Peer,
    request: Request,
) -> ApiResult<Response> {
    let queue = resolve(&state, &tenant, &q, peer)?;
    let worker = path_hash(&worker)?;
    submit_into(
        &state,
        tenant,
        Some(worker),
        &query,
        Some(policy(&queue)),
        request,
    )
    .await
}

/// `GET /compute/queues/{q}/jobs/{lsn}`.
pub async fn job(
    State(state): State<AppState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Path((q, lsn)): Path<(String, String)>,
    Query(wait): Query<WaitQuery>,
    peer: Peer,
) -> ApiResult<Response> {
    let queue = resolve(&state, &tenant, &q, peer)?;
    job_response_waiting(&state, &tenant, path_lsn(&lsn)?, Some(queue.id), wait).await
}
