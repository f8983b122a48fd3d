//! `GET /compute/jobs` and `GET /compute/queues`: a tenant's jobs and queues (the
//! operator's: every tenant's), newest first, a page at a time with a cursor (see
//! `store::listing`).

use axum::Extension;
use axum::extract::{Query, State};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::AppState;
use crate::api::auth::{Role, Tenant};
use crate::api::body::path_hash;
use crate::api::error::{ApiError, ApiResult};
use crate::api::queues::counted;
use crate::model::JobState;
use crate::store::{JobFilter, JobPage};

/// A page's size when none is asked for.
const DEFAULT_PAGE: usize = 50;

/// `?state=&queue=&worker=&outcome=&before=&limit=`, all optional.
#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    state: Option<String>,
    queue: Option<String>,
    worker: Option<String>,
    outcome: Option<String>,
    node: Option<String>,
    before: Option<String>,
    limit: Option<String>,
}

fn number(name: &str, text: Option<&str>) -> ApiResult<Option<u64>> {
    text.filter(|t| !t.is_empty())
        .map(|t| {
            t.parse().map_err(|_| {
                ApiError::BadRequest(
                    "invalid_request",
                    format!("{name} is a non-negative integer, not {t:?}"),
                )
            })
        })
        .transpose()
}

impl ListQuery {
    fn filter(&self) -> ApiResult<JobFilter> {
        let state = match self.state.as_deref().filter(|s| !s.is_empty()) {
            None => None,
            Some(text) => Some(text.parse::<JobState>().map_err(|_| {
                ApiError::BadRequest(
                    "invalid_request",
                    format!(
                        "state is one of queued, running, succeeded, failed, cancelled, not {text:?}"
                    ),
                )
            })?),
        };
        Ok(JobFilter {
            state,
            queue: number("queue", self.queue.as_deref())?,
            worker: match self.worker.as_deref().filter(|w| !w.is_empty()) {
                Some(text) => Some(path_hash(text)?),
                None => None,
            },
            outcome: self.outcome.clone().filter(|o| !o.is_empty()),
            node: self.node.clone().filter(|n| !n.is_empty()),
        })
    }
}

/// `GET /compute/jobs`.
pub async fn jobs(
    State(state): State<AppState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Extension(role): Extension<Role>,
    Query(query): Query<ListQuery>,
) -> ApiResult<axum::Json<JobPage>> {
    let filter = query.filter()?;
    let before = number("before", query.before.as_deref())?;
    let limit = number("limit", query.limit.as_deref())?.map_or(DEFAULT_PAGE, |l| l as usize);
    let engine = state.engine.clone();
    let page = tokio::task::spawn_blocking(move || {
        let store = engine.store();
        match role {
            Role::Operator => store.unscoped().jobs(&filter, before, limit),
            Role::Tenant => store.tenant(&tenant).jobs(&filter, before, limit),
        }
    })
    .await
    .map_err(|e| ApiError::Internal(format!("listing jobs: {e}")))??;
    Ok(axum::Json(page))
}

/// `?before=&limit=` of the queue list.
#[derive(Debug, Default, Deserialize)]
pub struct QueueListQuery {
    before: Option<String>,
    limit: Option<String>,
}

/// `GET /compute/queues`: the caller's queues (the operator's: every tenant's), newest
/// first, each with its jobs counted by state.
pub async fn queues(
    State(state): State<AppState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Extension(role): Extension<Role>,
    Query(query): Query<QueueListQuery>,
) -> ApiResult<axum::Json<Value>> {
    let before = number("before", query.before.as_deref())?;
    let limit = number("limit", query.limit.as_deref())?.map_or(DEFAULT_PAGE, |l| l as usize);
    let engine = state.engine.clone();
    let page = tokio::task::spawn_blocking(move || -> ApiResult<Value> {
        let store = engine.store();
        let (queues, next) = match role {
            Role::Operator => store.unscoped().queues(before, limit)?,
            Role::Tenant => store.tenant(&tenant).queues(before, limit)?,
        };
        let mut listed = Vec::with_capacity(queues.len());
        for queue in queues {
            let (counts, _) = counted(store.tenant(&queue.tenant), queue.queue_id)?;
            let mut entry = serde_json::to_value(&queue)
                .map_err(|e| ApiError::Internal(format!("listing queues: {e}")))?;
            entry["counts"] = counts;
            listed.push(entry);
        }
        Ok(json!({"queues": listed, "next": next}))
    })
    .await
    .map_err(|e| ApiError::Internal(format!("listing queues: {e}")))??;
    Ok(axum::Json(page))
}
