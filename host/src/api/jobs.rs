//! `/compute/jobs`: submission (single, batch, package), results, the completed list,
//! cancel, priority and reschedule.

use axum::Extension;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::AppState;
use crate::api::auth::{Role, Tenant};
use crate::api::body::{descriptor, path_hash};
use crate::api::error::{ApiError, ApiResult};
use crate::api::json::{Json, JsonBody};
use crate::engine::{ActionSubmission, QueuePolicy, Submitted};
use crate::model::HashHex;

/// `?priority=N&wait_ms=N` of a submission.
#[derive(Debug, Default, Deserialize)]
pub struct SubmitQuery {
    priority: Option<i64>,
    /// Wait up to this long for the jobs to finish and answer their results in the
    /// same response (submit and wait in one round trip).
    wait_ms: Option<u64>,
}

impl SubmitQuery {
    /// The priority asked for, if any.
    pub fn priority(&self) -> Option<i64> {
        self.priority
    }

    /// How long to wait for results, capped at the longest long-poll.
    pub fn wait(&self) -> std::time::Duration {
        long_poll(self.wait_ms)
    }
}

fn parse_action(mut value: Value, worker: Option<HashHex>) -> ApiResult<ActionSubmission> {
    if let Some(worker) = worker {
        let object = value.as_object_mut().ok_or_else(|| {
            ApiError::BadRequest("invalid_descriptor", "an action is a JSON object".into())
        })?;
        match object.get("worker") {
            None => {
                object.insert("worker".into(), Value::String(worker.to_string()));
            }
            Some(given) if given.as_str() == Some(&worker.to_string()) => {}
            Some(given) => {
                return Err(ApiError::BadRequest(
                    "id_mismatch",
                    format!("the action names worker {given}, the path {worker}"),
                ));
            }
        }
    }
    ActionSubmission::parse(value).map_err(|e| ApiError::BadRequest("invalid_descriptor", e))
}

/// Splits a submission body into its actions; tells whether it was a batch.
fn actions(value: Value, worker: Option<HashHex>) -> ApiResult<(Vec<ActionSubmission>, bool)> {
    if let Some(Value::Array(items)) = value.get("actions") {
        if value.as_object().is_some_and(|o| o.len() > 1) {
            return Err(ApiError::BadRequest(
                "invalid_descriptor",
                "a batch has only the `actions` field".into(),
            ));
        }
        let parsed = items
            .iter()
            .cloned()
            .map(|item| parse_action(item, worker))
            .collect::<ApiResult<Vec<_>>>()?;
        return Ok((parsed, true));
    }
    Ok((vec![parse_action(value, worker)?], false))
}

/// Submits and answers per the contract: 202 needs, or 201 with the job(s).
pub async fn submit_into(
    state: &AppState,
    tenant: String,
    worker: Option<HashHex>,
    query: &SubmitQuery,
    queue: Option<QueuePolicy>,
    request: Request,
) -> ApiResult<Response> {
    let body = descriptor(state, &tenant, request).await?;
    let (submissions, batch) = actions(body.value, worker)?;
    let node = state.engine.clone();
    let priority = query.priority();
    let owner = tenant.clone();
    let submitted =
        tokio::task::spawn_blocking(move || node.submit(&owner, submissions, priority, queue))
            .await
            .map_err(|e| ApiError::Internal(format!("submission task: {e}")))??;
    Ok(match submitted {
        Submitted::Needs(needs) => {
            (StatusCode::ACCEPTED, axum::Json(json!({"needs": needs}))).into_response()
        }
        Submitted::Jobs(jobs) => {
            let wait = query.wait();
            let lsns: Vec<u64> = jobs.iter().map(|(lsn, _)| *lsn).collect();
            let mut results = if wait.is_zero() {
                vec![None; lsns.len()]
            } else {
                results_within(state, &tenant, &lsns, wait).await?
            };
            let jobs: Vec<Value> = jobs
                .into_iter()
                .zip(results.iter_mut())
                .map(|((lsn, action), result)| {
                    let mut job = json!({"lsn": lsn, "action": action});
                    if let Some(result) = result.take() {
                        job["result"] = result;
                    }
                    job
                })
                .collect();
            let body = if batch {
                json!({"jobs": jobs})
            } else {
                jobs.into_iter().next().expect("one job")
            };
            (StatusCode::CREATED, axum::Json(body)).into_response()
        }
    })
}

/// The results of `lsns` that are finished within `wait` (waiting until all are, or
/// the time is up), in order.
async fn results_within(
    state: &AppState,
    tenant: &str,
    lsns: &[u64],
    wait: std::time::Duration,
) -> ApiResult<Vec<Option<Value>>> {
    let deadline = tokio::time::Instant::now() + wait;
    let look = || -> ApiResult<Vec<Option<Value>>> {
        let store = state.engine.store().tenant(tenant);
        lsns.iter()
            .map(|lsn| {
                Ok(store
                    .job(*lsn)?
                    .filter(|job| job.state.is_finished())
                    .and_then(|job| job.result)
                    .map(|result| json!(result)))
            })
            .collect()
    };
    state
        .engine
        .when_finished(
            look,
            |results| results.iter().all(Option::is_some),
            Some(deadline),
            None,
        )
        .await
}

/// `POST /compute/jobs`.
pub async fn submit(
    State(state): State<AppState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Query(query): Query<SubmitQuery>,
    request: Request,
) -> ApiResult<Response> {
    submit_into(&state, tenant, None, &query, None, request).await
}

/// `POST /compute/jobs/{worker}`.
pub async fn submit_for_worker(
    State(state): State<AppState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Path(worker): Path<String>,
    Query(query): Query<SubmitQuery>,
    request: Request,
) -> ApiResult<Response> {
    let worker = path_hash(&worker)?;
    submit_into(&state, tenant, Some(worker), &query, None, request).await
}

/// Parses a path LSN.
pub fn path_lsn(text: &str) -> ApiResult<u64> {
    text.parse()
        .map_err(|_| ApiError::BadRequest("invalid_lsn", format!("{text:?} is not a job LSN")))
}

/// The job's status or result, as `GET /compute/jobs/{lsn}` answers; `queue` scopes it.
/// `?wait_ms=N`: long-poll a pending job for up to N ms (at most a minute).
#[derive(Debug, Default, Deserialize)]
pub struct WaitQuery {
    wait_ms: Option<u64>,
}

impl WaitQuery {
    /// How long to wait, capped at the longest long-poll.
    pub fn duration(&self) -> std::time::Duration {
        long_poll(self.wait_ms)
    }
}

/// A `wait_ms` asked for, capped at the longest long-poll.
fn long_poll(wait_ms: Option<u64>) -> std::time::Duration {
    std::time::Duration::from_millis(wait_ms.unwrap_or(0)).min(MAX_WAIT)
}

/// Longest long-poll: a minute, well under common proxy idle timeouts' multiples and
/// long enough that a waiting client makes one request per slow job.
const MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// [`job_response`], but while the job is pending and `wait` allows, waits for results
/// to be written and looks again.
pub async fn job_response_waiting(
    state: &AppState,
    tenant: &str,
    lsn: u64,
    queue: Option<u64>,
    wait: WaitQuery,
) -> ApiResult<Response> {
    let deadline = tokio::time::Instant::now() + wait.duration();
    state
        .engine
        .when_finished(
            || job_response(state, tenant, lsn, queue),
            |response| response.status() != StatusCode::ACCEPTED,
            Some(deadline),
            None,
        )
        .await
}

/// The job's status or result; `queue` scopes it.
pub fn job_response(
    state: &AppState,
    tenant: &str,
    lsn: u64,
    queue: Option<u64>,
) -> ApiResult<Response> {
    let job = state
        .engine
        .store()
        .tenant(tenant)
        .job(lsn)?
        .filter(|job| queue.is_none() || job.queue_id == queue)
        .ok_or_else(|| ApiError::NotFound(format!("job {lsn} not found")))?;
    Ok(match job.result {
        Some(result) if job.state.is_finished() => axum::Json(result).into_response(),
        _ => (StatusCode::ACCEPTED, axum::Json(pending_status(&job))).into_response(),
    })
}

/// A pending job's status: its state, the node holding its lease (on a coordinator)
/// and its latest checkpoint, when there are such.
fn pending_status(job: &crate::store::JobRow) -> Value {
    let mut status = json!({"lsn": job.lsn, "state": job.state});
    if let Some(node) = &job.lease_node {
        status["node"] = json!(node);
    }
    if let Some(checkpoint) = job.checkpoint {
        status["checkpoint"] = json!(checkpoint);
    }
    status
}

/// `GET /compute/jobs/{lsn}`.
///
/// The operator reads every tenant's jobs (as it lists them); their outputs' bytes
/// stay their tenants' (`/cas` checks ownership).
pub async fn get(
    State(state): State<AppState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Extension(role): Extension<Role>,
    Path(lsn): Path<String>,
    Query(wait): Query<WaitQuery>,
) -> ApiResult<Response> {
    let lsn = path_lsn(&lsn)?;
    let tenant = reader(&state, tenant, role, lsn)?;
    job_response_waiting(&state, &tenant, lsn, None, wait).await
}

/// Whose job `lsn` the caller reads it as: its own tenant's, or for the operator the
/// job's owner (the operator reads every tenant's jobs, as it lists them).
fn reader(state: &AppState, tenant: String, role: Role, lsn: u64) -> ApiResult<String> {
    Ok(match role {
        Role::Operator => state
            .engine
            .store()
            .unscoped()
            .job(lsn)?
            .map_or(tenant, |job| job.tenant),
        Role::Tenant => tenant,
    })
}

/// Dependents a job's details list at most.
const MAX_DEPENDENTS: usize = 100;

/// `GET /compute/jobs/{lsn}/details`: everything the journal knows of a job, pending
/// or finished: its descriptor, its neighbours both ways, its checkpoint and every
/// attempt (node, fencing token, when, how it ended).
pub async fn details(
    State(state): State<AppState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Extension(role): Extension<Role>,
    Path(lsn): Path<String>,
) -> ApiResult<Response> {
    let lsn = path_lsn(&lsn)?;
    let tenant = reader(&state, tenant, role, lsn)?;
    let store = state.engine.store().tenant(&tenant);
    let job = store
        .job(lsn)?
        .ok_or_else(|| ApiError::NotFound(format!("job {lsn} not found")))?;
    let descriptor: Value = serde_json::from_str(&job.descriptor)
        .map_err(|e| ApiError::Internal(format!("stored action does not parse: {e}")))?;
    let history = store.attempts(lsn)?;
    // Where it is: its lease's node, the node of its open attempt (a lone node's own
    // run), or the node that ran it.
    let node = job
        .lease_node
        .or_else(|| {
            let open = history.last().filter(|a| a.ended_ms.is_none());
            open.map(|a| a.node.clone())
        })
        .or_else(|| job.result.as_ref().map(|r| r.node.clone()));
    Ok(axum::Json(json!({
        "lsn": job.lsn,
        "tenant": job.tenant,
        "queue_id": job.queue_id,
        "state": job.state,
        "priority": job.priority,
        "worker": job.worker,
        "action": job.action,
        "descriptor": descriptor,
        "after": job.after,
        "dependents": store.dependents(lsn, MAX_DEPENDENTS)?,
        "checkpoint": job.checkpoint,
        "node": node,
        "attempts": job.attempts,
        "max_retries": job.max_retries,
        "retry_guest_failures": job.retry_guest_failures,
        "created_ms": job.created_ms,
        "finished_ms": job.finished_ms,
        "start_by_ms": job.start_by_ms,
        "finish_by_ms": job.finish_by_ms,
        "history": history,
    }))
    .into_response())
}

/// `GET /compute/jobs/{worker}/{action}`: the cached result of an action.
pub async fn cached(
    State(state): State<AppState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Path((worker, action)): Path<(String, String)>,
) -> ApiResult<Response> {
    let (worker, action) = (path_hash(&worker)?, path_hash(&action)?);
    let result = state
        .engine
        .store()
        .tenant(&tenant)
        .cached_result(&action)?
        .filter(|result| result.worker == worker)
        .ok_or_else(|| {
            ApiError::NotFound(format!("no result for action {action} of worker {worker}"))
        })?;
    Ok(axum::Json(result).into_response())
}

/// `GET /compute/jobs/completed`.
pub async fn completed(
    State(state): State<AppState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
) -> ApiResult<Response> {
    Ok(
        axum::Json(json!({"completed": state.engine.store().tenant(&tenant).completed(None)?}))
            .into_response(),
    )
}

/// `DELETE /compute/jobs/{lsn}`: retire a finished result from the completed list.
pub async fn retire(
    State(state): State<AppState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Path(lsn): Path<String>,
) -> ApiResult<Response> {
    let lsn = path_lsn(&lsn)?;
    let job = state
        .engine
        .store()
        .tenant(&tenant)
        .job(lsn)?
        .ok_or_else(|| ApiError::NotFound(format!("job {lsn} not found")))?;
    if !state.engine.store().tenant(&tenant).retire(lsn)? {
        return Err(ApiError::Conflict(
            "not_finished",
            format!("job {lsn} is {}; only finished jobs retire", job.state),
        ));
    }
    Ok(axum::Json(json!({"lsn": lsn, "retired": true})).into_response())
}

/// `POST /compute/jobs/{lsn}/cancel`.
pub async fn cancel(
    State(state): State<AppState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Path(lsn): Path<String>,
) -> ApiResult<Response> {
    let lsn = path_lsn(&lsn)?;
    state.engine.cancel(&tenant, lsn)?;
    Ok(axum::Json(json!({"lsn": lsn, "cancelled": true})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PriorityBody {
    priority: i64,
}

impl JsonBody for PriorityBody {}

/// `POST /compute/jobs/{lsn}/priority`.
pub async fn priority(
    State(state): State<AppState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Path(lsn): Path<String>,
    Json(body): Json<PriorityBody>,
) -> ApiResult<Response> {
    let lsn = path_lsn(&lsn)?;
    let priority = state.engine.set_priority(&tenant, lsn, body.priority)?;
    Ok(axum::Json(json!({"lsn": lsn, "priority": priority})).into_response())
}

/// `POST /compute/jobs/{lsn}/reschedule`.
pub async fn reschedule(
    State(state): State<AppState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Path(lsn): Path<String>,
) -> ApiResult<Response> {
    let lsn = path_lsn(&lsn)?;
    let attempts = state.engine.reschedule(&tenant, lsn)?;
    Ok(axum::Json(json!({"lsn": lsn, "attempts": attempts})).into_response())
}
