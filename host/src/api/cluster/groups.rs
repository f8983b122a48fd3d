//! `/api/v1/cluster/groups`: deploy, describe, delete, inject into and read the event
//! log of a tenant's event-handler groups (the hop engine is `crate::cluster::groups`).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Instant;

use super::CoordinatorState;
use crate::api::auth::Tenant;
use crate::api::error::{ApiError, ApiResult};
use crate::api::json::{Json, JsonBody, JsonLimits};
use crate::cluster::groups::{
    EventIn, GroupError, GroupSpec, LOG_ENTRIES, MAX_BATCH, Running, demand_for, describe, load,
    route, validate,
};

/// `POST /api/v1/cluster/groups`.
async fn deploy(
    State(state): State<CoordinatorState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Json(Deploy(spec)): Json<Deploy>,
) -> ApiResult<Response> {
    validate(&spec).map_err(|m| ApiError::BadRequest("invalid_request", m))?;
    let mut placements = BTreeMap::new();
    for handler in &spec.handlers {
        let demand = demand_for(&state.engine, &tenant, &handler.worker)?;
        let node = state
            .fleet
            .pick(&demand, handler.node_affinity.as_deref(), Instant::now())
            .ok_or_else(|| {
                ApiError::Unavailable(format!("no node can run handler {:?} now", handler.name))
            })?;
        placements.insert(handler.name.clone(), node);
    }
    let id = uuid::Uuid::new_v4().simple().to_string()[..16].to_string();
    let spec_json = serde_json::to_string(&spec).expect("specs serialize");
    let placements_json = serde_json::to_string(&placements).expect("placements serialize");
    state
        .engine
        .store()
        .tenant(&tenant)
        .put_group(&id, &spec_json, &placements_json)?;
    tracing::info!(group = %id, name = %spec.name, "group deployed");
    state.engine.group_changed(&tenant, &id, "deployed");
    let mut answer = describe(&id, &spec, &placements);
    answer["id"] = json!(id);
    Ok((StatusCode::CREATED, axum::Json(answer)).into_response())
}

/// `GET /api/v1/cluster/groups/{id}`.
async fn get(
    State(state): State<CoordinatorState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    let (spec, placements) = load(&state.engine, &tenant, &id)?;
    Ok(axum::Json(describe(&id, &spec, &placements)))
}

/// `DELETE /api/v1/cluster/groups/{id}`.
async fn delete(
    State(state): State<CoordinatorState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    if !state.engine.store().tenant(&tenant).delete_group(&id)? {
        return Err(ApiError::NotFound(format!("group {id} not found")));
    }
    state.engine.group_changed(&tenant, &id, "deleted");
    Ok(axum::Json(json!({"id": id, "deleted": true})))
}

/// `GET /api/v1/cluster/groups/{id}/events`: the latest routed events, oldest first.
async fn events(
    State(state): State<CoordinatorState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    let store = state.engine.store().tenant(&tenant);
    let mut entries = store
        .group_events(&id, LOG_ENTRIES)?
        .ok_or_else(|| ApiError::NotFound(format!("group {id} not found")))?;
    // Events are stored once, in the results of the runs that emitted them.
    let events_of = |lsn: &Value| -> Vec<Value> {
        lsn.as_u64()
            .and_then(|lsn| store.result(lsn).ok().flatten())
            .map(|result| state.engine.result_events(&result))
            .unwrap_or_default()
    };
    for entry in &mut entries {
        if entry.get("lsn").is_none() {
            continue;
        }
        if let Some(source) = entry.get("source").cloned() {
            let index = source["index"].as_u64().unwrap_or(0) as usize;
            entry["event"] = events_of(&source["lsn"])
                .get(index)
                .cloned()
                .unwrap_or(Value::Null);
        }
        entry["output_events"] = Value::Array(events_of(&entry["lsn"]));
    }
    Ok(axum::Json(json!({"id": id, "events": entries})))
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum Injection {
    Batch { events: Vec<EventIn> },
    One(EventIn),
}

impl JsonBody for Injection {
    fn limit(_: &JsonLimits) -> usize {
        16 << 20
    }

    fn shape_error(e: serde_json::Error) -> ApiError {
        ApiError::BadRequest(
            "invalid_request",
            format!("an event is {{\"event_type\",\"fields\"}}, a batch {{\"events\":[...]}}: {e}"),
        )
    }
}

/// A group spec as deployed (a malformed one is `invalid_json`).
#[derive(Deserialize)]
#[serde(transparent)]
pub(super) struct Deploy(GroupSpec);

impl JsonBody for Deploy {
    fn limit(_: &JsonLimits) -> usize {
        1 << 20
    }

    fn shape_error(e: serde_json::Error) -> ApiError {
        ApiError::json(e)
    }
}

/// `POST /api/v1/cluster/groups/{id}/inject`: one event, or `{"events": [...]}`.
async fn inject(
    State(state): State<CoordinatorState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Path(id): Path<String>,
    Json(injection): Json<Injection>,
) -> ApiResult<Response> {
    let mut group = Running::new(&state.engine, &state.fleet, &tenant, &id)?;
    match injection {
        Injection::One(event) => Ok(axum::Json(group.inject(event).await?).into_response()),
        Injection::Batch { events } => {
            if events.len() > MAX_BATCH {
                return Err(ApiError::TooLarge(format!(
                    "at most {MAX_BATCH} events per batch"
                )));
            }
            // Route everything first: a batch with an unroutable event runs nothing.
            for event in &events {
                if route(group.routes(), "_external", &event.event_type).is_none() {
                    return Err(GroupError::NoRoute(event.event_type.clone()).into());
                }
            }
            let runs = events.into_iter().map(|e| {
                let mut one = group.fork();
                async move { one.inject(e).await }
            });
            let answers = futures_util::future::try_join_all(runs).await?;
            Ok(axum::Json(json!({"results": answers})).into_response())
        }
    }
}

impl From<GroupError> for ApiError {
    fn from(e: GroupError) -> Self {
        match e {
            GroupError::NotFound(m) => ApiError::NotFound(m),
            GroupError::Unavailable(m) => ApiError::Unavailable(m),
            e @ GroupError::NoRoute(_) => ApiError::Unprocessable("no_route", e.to_string()),
            GroupError::Engine(e) => e.into(),
            GroupError::Internal(m) => ApiError::Internal(m),
        }
    }
}

/// The group routes (tenant-scoped; the caller adds the tenant middleware).
pub fn routes() -> Router<CoordinatorState> {
    use axum::routing::{get as get_route, post};
    Router::new()
        .route("/api/v1/cluster/groups", post(deploy))
        .route("/api/v1/cluster/groups/{id}", get_route(get).delete(delete))
        .route("/api/v1/cluster/groups/{id}/inject", post(inject))
        .route("/api/v1/cluster/groups/{id}/events", get_route(events))
}
