//! The client-facing fleet routes: the node list, details, drain and deregister (the
//! operator only), and the topology (the operator sees everything, a tenant its own
//! groups).

use axum::Json;
use axum::extract::{Path, State};
use serde_json::{Value, json};

use super::CoordinatorState;
use crate::api::auth::{Operator, Role, Tenant};
use crate::api::error::{ApiError, ApiResult};
use crate::cluster::groups;

pub(super) async fn list(
    State(state): State<CoordinatorState>,
    _: Operator,
) -> ApiResult<Json<Value>> {
    Ok(Json(json!({"nodes": state.fleet.list()})))
}

/// `GET /api/v1/cluster/autoscaler`: the signal, desired and current nodes, and the
/// decisions with their reasons (the operator only).
pub(super) async fn autoscaler(
    State(state): State<CoordinatorState>,
    _: Operator,
) -> ApiResult<Json<Value>> {
    Ok(Json(state.autoscaling.status()))
}

pub(super) async fn details(
    State(state): State<CoordinatorState>,
    _: Operator,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    state
        .fleet
        .details(&id)
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("node {id} not found")))
}

pub(super) async fn deregister(
    State(state): State<CoordinatorState>,
    _: Operator,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    if !state.fleet.deregister(&id) {
        return Err(ApiError::NotFound(format!("node {id} not found")));
    }
    state.engine.node_changed(&id, "gone");
    tracing::info!(node = %id, "node deregistered");
    Ok(Json(json!({"id": id, "deregistered": true})))
}

pub(super) async fn drain(
    State(state): State<CoordinatorState>,
    _: Operator,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let described = state
        .fleet
        .set_draining(&id, true)
        .ok_or_else(|| ApiError::NotFound(format!("node {id} not found")))?;
    state.engine.node_changed(&id, "draining");
    tracing::info!(node = %id, "node draining");
    Ok(Json(described))
}

/// `GET /api/v1/cluster/topology`: the operator sees the nodes and every tenant's
/// groups; a tenant sees its own groups only.
pub(super) async fn topology(
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
            "groups": groups::topology(&state.engine, None),
        }));
    }
    Json(json!({
        "coordinator": coordinator,
        "groups": groups::topology(&state.engine, Some(&tenant)),
    }))
}
