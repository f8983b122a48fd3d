//! `/compute/workers`: registration with the needs dance, listing and lookup.

use axum::Extension;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::api::AppState;
use crate::api::auth::Tenant;
use crate::api::body::{descriptor, path_hash};
use crate::api::error::{ApiError, ApiResult};
use crate::engine::Registered;
use crate::model::{HashHex, WorkerDescriptor, canonical_json};

/// Parses a worker descriptor and computes its id.
fn parse(value: serde_json::Value) -> ApiResult<(HashHex, WorkerDescriptor, String)> {
    let canonical =
        canonical_json(&value).map_err(|e| ApiError::BadRequest("invalid_descriptor", e.0))?;
    let parsed: WorkerDescriptor = serde_json::from_value(value).map_err(|e| {
        ApiError::BadRequest("invalid_descriptor", format!("worker descriptor: {e}"))
    })?;
    let canonical = String::from_utf8(canonical).expect("canonical JSON is UTF-8");
    Ok((HashHex::of(canonical.as_bytes()), parsed, canonical))
}

async fn register_inner(
    state: AppState,
    tenant: String,
    expected: Option<HashHex>,
    request: Request,
) -> ApiResult<Response> {
    let body = descriptor(&state, &tenant, request).await?;
    let (id, parsed, canonical) = parse(body.value)?;
    if let Some(expected) = expected
        && expected != id
    {
        return Err(ApiError::BadRequest(
            "id_mismatch",
            format!("the descriptor's id is {id}, not {expected}"),
        ));
    }
    let node = state.engine.clone();
    let registered =
        tokio::task::spawn_blocking(move || node.register_worker(&tenant, id, &parsed, &canonical))
            .await
            .map_err(|e| ApiError::Internal(format!("registration task: {e}")))??;
    Ok(match registered {
        Registered::Needs(needs) => (
            StatusCode::ACCEPTED,
            axum::Json(json!({"worker": id, "needs": needs})),
        )
            .into_response(),
        Registered::Created => {
            (StatusCode::CREATED, axum::Json(json!({"worker": id}))).into_response()
        }
        Registered::Known => (StatusCode::OK, axum::Json(json!({"worker": id}))).into_response(),
    })
}

/// `POST /compute/workers`.
pub async fn register(
    State(state): State<AppState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    request: Request,
) -> ApiResult<Response> {
    register_inner(state, tenant, None, request).await
}

/// `POST /compute/workers/{id}`.
pub async fn register_id(
    State(state): State<AppState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Path(id): Path<String>,
    request: Request,
) -> ApiResult<Response> {
    let id = path_hash(&id)?;
    register_inner(state, tenant, Some(id), request).await
}

/// `GET /compute/workers`.
pub async fn list(
    State(state): State<AppState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
) -> ApiResult<Response> {
    let workers: Vec<_> = state
        .engine
        .store()
        .tenant(&tenant)
        .workers()?
        .into_iter()
        .map(|(id, name, version)| json!({"worker": id, "name": name, "version": version}))
        .collect();
    Ok(axum::Json(json!({"workers": workers})).into_response())
}

/// `GET /compute/workers/{id}`: the descriptor as registered.
pub async fn get(
    State(state): State<AppState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let id = path_hash(&id)?;
    let json = state
        .engine
        .store()
        .tenant(&tenant)
        .worker(&id)?
        .ok_or_else(|| ApiError::NotFound(format!("worker {id} not found")))?;
    let value: serde_json::Value =
        serde_json::from_str(&json).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(axum::Json(value).into_response())
}
