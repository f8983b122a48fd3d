//! The node-facing cluster routes (a node key): register, heartbeat, the work
//! long-poll, results, leave, and blobs for leases.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::CoordinatorState;
use super::node_auth::NodeIdentity;
use crate::api::error::{ApiError, ApiResult};
use crate::api::json::{Json, JsonBody, JsonLimits};
use crate::cluster::driver::{accept, keep_checkpoint, may_fetch};
use crate::cluster::protocol::{
    CheckpointNote, FetchFor, Heartbeat, Registration, Results, ResultsAnswer, Token, UploadFor,
    WorkAnswer, WorkRequest,
};

/// Node bodies: a malformed one is `invalid_json`, whatever is wrong with it.
macro_rules! node_body {
    ($($body:ty => limit $limit:expr, empty $empty:expr;)+) => {$(
        impl JsonBody for $body {
            fn limit(limits: &JsonLimits) -> usize {
                let limit: fn(&JsonLimits) -> usize = $limit;
                limit(limits)
            }

            fn empty() -> Option<Self> {
                $empty.then(Self::default)
            }

            fn shape_error(e: serde_json::Error) -> ApiError {
                ApiError::json(e)
            }
        }
    )+};
}

node_body! {
    Registration => limit |_| 1 << 20, empty false;
    // A heartbeat carries its leases' small checkpoints.
    Heartbeat => limit |_| 64 << 20, empty true;
    WorkRequest => limit |_| 1 << 20, empty true;
    Leave => limit |_| 1 << 20, empty true;
    // A batch of results carries small outputs inline.
    Results => limit |limits| limits.request, empty false;
}

/// The longest a work poll waits.
const MAX_POLL: Duration = Duration::from_secs(10);

pub(super) async fn register(
    State(state): State<CoordinatorState>,
    axum::Extension(identity): axum::Extension<NodeIdentity>,
    Json(registration): Json<Registration>,
) -> ApiResult<Response> {
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
    let id = registration.id.clone();
    state.fleet.register(registration, Instant::now());
    state.engine.node_changed(&id, "ready");
    let config = &state.fleet.config;
    Ok(axum::Json(json!({
        "heartbeat_interval_ms": config.heartbeat_interval.as_millis() as u64,
        "lease_ms": config.lease.as_millis() as u64,
    }))
    .into_response())
}

pub(super) async fn heartbeat(
    State(state): State<CoordinatorState>,
    Path(id): Path<String>,
    Json(beat): Json<Heartbeat>,
) -> ApiResult<Response> {
    adopting(&state, &id, beat.leases.clone()).await?;
    let answer = state
        .fleet
        .heartbeat(&id, &beat, Instant::now())
        .ok_or_else(|| {
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
        let (engine, fleet) = (state.engine.clone(), state.fleet.clone());
        tokio::task::spawn_blocking(move || {
            for note in checkpoints {
                keep_checkpoint(&engine, &fleet, &id, note);
            }
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    }
    Ok(axum::Json(answer).into_response())
}

/// `POST /api/v1/cluster/nodes/{id}/work`: waits up to `wait_ms` for leases or
/// cancellations for the node and hands out everything waiting, in one answer.
pub(super) async fn work(
    State(state): State<CoordinatorState>,
    Path(id): Path<String>,
    Json(poll): Json<WorkRequest>,
) -> ApiResult<Response> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(poll.wait_ms).min(MAX_POLL);
    loop {
        let (leases, cancel, wake) = state.fleet.take(&id, Instant::now()).ok_or_else(|| {
            ApiError::NotFound(format!("node {id} is not registered; register again"))
        })?;
        let Some(wake) = wake.filter(|_| leases.is_empty() && cancel.is_empty()) else {
            return Ok(axum::Json(WorkAnswer { leases, cancel }).into_response());
        };
        // `notify_one` keeps a permit when nobody waits, so an assignment made since
        // `take` wakes this at once.
        let notified = wake.notified();
        tokio::select! {
            () = notified => {}
            () = tokio::time::sleep_until(deadline) => {
                return Ok(axum::Json(WorkAnswer::default()).into_response());
            }
            () = state.engine.stopping().cancelled() => {
                return Ok(axum::Json(WorkAnswer::default()).into_response());
            }
        }
    }
}

/// `POST /api/v1/cluster/nodes/{id}/leave`: a node shutting down. `{"final": false}`
/// first: no new work, leases it has not received go back to the queue (their attempt
/// uncounted); `{"final": true}` once its last results are in: it is deregistered.
pub(super) async fn leave(
    State(state): State<CoordinatorState>,
    Path(id): Path<String>,
    Json(leaving): Json<Leave>,
) -> ApiResult<Response> {
    if leaving.r#final {
        if state.fleet.deregister(&id) {
            state.engine.node_changed(&id, "gone");
        }
        tracing::info!(node = %id, "node left");
        return Ok(axum::Json(json!({"id": id, "left": true})).into_response());
    }
    let withdrawn = state
        .fleet
        .leave(&id)
        .ok_or_else(|| ApiError::NotFound(format!("node {id} is not registered")))?;
    let count = withdrawn.len();
    let engine = state.engine.clone();
    tokio::task::spawn_blocking(move || {
        for token in withdrawn {
            if let Err(e) = engine.withdraw(token.lsn, token.attempt) {
                tracing::error!(lsn = token.lsn, error = %e, "requeueing a withdrawn lease");
            }
        }
    })
    .await
    .map_err(|e| ApiError::Internal(format!("withdrawing leases: {e}")))?;
    tracing::info!(node = %id, withdrawn = count, "node leaving");
    Ok(axum::Json(json!({"id": id, "withdrawn": count})).into_response())
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct Leave {
    #[serde(default)]
    r#final: bool,
}

/// Adopts the leases among `tokens` the journal says node `id` holds and this
/// coordinator does not know (the node moved here from another): see
/// `cluster::shared::adopt`. Costs nothing when every token is known.
async fn adopting(state: &CoordinatorState, id: &str, tokens: Vec<Token>) -> ApiResult<()> {
    if !crate::cluster::shared::has_unknown(&state.fleet, id, &tokens) {
        return Ok(());
    }
    let (engine, fleet, id) = (state.engine.clone(), state.fleet.clone(), id.to_string());
    tokio::task::spawn_blocking(move || {
        crate::cluster::shared::adopt(&engine, &fleet, &id, &tokens)
    })
    .await
    .map_err(|e| ApiError::Internal(format!("adopting leases: {e}")))
}

/// `POST /api/v1/cluster/nodes/{id}/results`: finished attempts, accepted only for
/// the current lease (fencing).
pub(super) async fn results(
    State(state): State<CoordinatorState>,
    Path(id): Path<String>,
    Json(reports): Json<Results>,
) -> ApiResult<Response> {
    adopting(
        &state,
        &id,
        reports.results.iter().map(|r| r.lease).collect(),
    )
    .await?;
    let (engine, fleet) = (state.engine.clone(), state.fleet.clone());
    let answer = tokio::task::spawn_blocking(move || {
        let mut answer = ResultsAnswer::default();
        let tokens: Vec<Token> = reports.results.iter().map(|r| r.lease).collect();
        let taken = accept(&engine, &fleet, &id, reports.results)
            .map_err(|e| ApiError::Internal(format!("recording results: {e}")))?;
        for (token, taken) in tokens.into_iter().zip(taken) {
            if taken {
                answer.accepted.push(token);
            } else {
                engine.metrics().results_rejected.add(1);
                answer.rejected.push(token);
            }
        }
        Ok::<_, ApiError>(answer)
    })
    .await
    .map_err(|e| ApiError::Internal(format!("recording results: {e}")))??;
    if !answer.rejected.is_empty() {
        tracing::info!(rejected = ?answer.rejected, "refused stale results (fencing)");
    }
    Ok(axum::Json(answer).into_response())
}

/// `GET /api/v1/cluster/blobs/{hash}?node=ID`: a blob one of the node's current
/// leases needs (its worker's module and files, its action's input and files, its
/// checkpoint), whichever tenant uploaded it; 404 for any other.
pub(super) async fn get_blob(
    State(state): State<CoordinatorState>,
    axum::Extension(identity): axum::Extension<NodeIdentity>,
    Path(hash): Path<String>,
    axum::extract::Query(fetch): axum::extract::Query<FetchFor>,
) -> ApiResult<Response> {
    let hash = crate::api::body::path_hash(&hash)?;
    identity.may_act_as(&fetch.node)?;
    // One answer for a blob no lease of the node needs and for one not in the store,
    // so a node key is no oracle for what the store holds.
    let missing = || {
        ApiError::NotFound(format!(
            "no lease of node {:?} needs blob {hash}",
            fetch.node
        ))
    };
    let (engine, fleet) = (state.engine.clone(), state.fleet.clone());
    let node = fetch.node.clone();
    let may = tokio::task::spawn_blocking(move || may_fetch(&engine, &fleet, &node, &hash))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    if !may {
        return Err(missing());
    }
    let size = state.engine.cas().size(&hash).ok_or_else(missing)?;
    let file = tokio::fs::File::open(state.engine.cas().path(&hash)).await?;
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
pub(super) async fn put_blob(
    State(state): State<CoordinatorState>,
    axum::Extension(identity): axum::Extension<NodeIdentity>,
    Path(hash): Path<String>,
    axum::extract::Query(upload): axum::extract::Query<UploadFor>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let hash = crate::api::body::path_hash(&hash)?;
    identity.may_act_as(&upload.node)?;
    let token = Token {
        lsn: upload.lsn,
        attempt: upload.attempt,
    };
    adopting(&state, &upload.node, vec![token]).await?;
    if !state.fleet.holds(&upload.node, token) {
        return Err(ApiError::Conflict(
            "stale_lease",
            format!(
                "lease {}/{} is not a current lease of node {}",
                token.lsn, token.attempt, upload.node
            ),
        ));
    }
    let max = state.engine.cas().max_blob_bytes();
    if headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|len| len > max)
    {
        return Err(ApiError::TooLarge(format!("blob larger than {max} bytes")));
    }
    let present = state.engine.cas().contains(&hash);
    let staged = state
        .engine
        .cas()
        .stage_stream(hash, body.into_data_stream())
        .await
        .map_err(crate::api::body::cas_error)?;
    if !present {
        state.engine.cas().commit(staged)?;
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
