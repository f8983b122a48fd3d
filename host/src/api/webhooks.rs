//! `/api/v1/webhooks`: endpoints a tenant registers for events, and their delivery
//! logs (see `node::webhooks` for delivery, signing and retries).

use axum::Extension;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use crate::api::AppState;
use crate::api::auth::Tenant;
use crate::api::body::json_value;
use crate::api::error::{ApiError, ApiResult};
use crate::node::webhooks::WebhookError;

impl From<WebhookError> for ApiError {
    fn from(e: WebhookError) -> Self {
        match e {
            WebhookError::Invalid(message) => ApiError::BadRequest("invalid_request", message),
            WebhookError::NotFound => ApiError::NotFound("webhook not found".into()),
            WebhookError::Db(e) => e.into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    url: String,
    events: Vec<String>,
}

/// `POST /api/v1/webhooks` `{"url","events":[...]}` -> 201 with the id and, this once,
/// the secret.
pub async fn create(
    State(state): State<AppState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    request: Request,
) -> ApiResult<Response> {
    let body: CreateBody = serde_json::from_value(json_value(&state, request).await?)
        .map_err(|e| ApiError::BadRequest("invalid_request", format!("webhook: {e}")))?;
    let created = state
        .node
        .webhooks
        .create(&state.node.db, &tenant, &body.url, body.events)?;
    Ok((StatusCode::CREATED, axum::Json(created)).into_response())
}

/// `GET /api/v1/webhooks`.
pub async fn list(
    State(state): State<AppState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
) -> ApiResult<Response> {
    let hooks = state.node.webhooks.list(&state.node.db, &tenant)?;
    Ok(axum::Json(json!({ "webhooks": hooks })).into_response())
}

/// `GET /api/v1/webhooks/{id}`.
pub async fn get(
    State(state): State<AppState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let hook = state.node.webhooks.get(&state.node.db, &tenant, &id)?;
    Ok(axum::Json(hook).into_response())
}

/// `DELETE /api/v1/webhooks/{id}`: the endpoint and its delivery log.
pub async fn delete(
    State(state): State<AppState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    state.node.webhooks.delete(&state.node.db, &tenant, &id)?;
    Ok(axum::Json(json!({"id": id, "deleted": true})).into_response())
}

/// `POST /api/v1/webhooks/{id}/enable`: a disabled endpoint gets deliveries again.
pub async fn enable(
    State(state): State<AppState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let hook = state.node.webhooks.enable(&state.node.db, &tenant, &id)?;
    Ok(axum::Json(hook).into_response())
}

/// `?limit=N` (default 100, at most 1,000).
#[derive(Debug, Default, Deserialize)]
pub struct LimitQuery {
    limit: Option<usize>,
}

/// `GET /api/v1/webhooks/{id}/deliveries`: the newest deliveries first.
pub async fn deliveries(
    State(state): State<AppState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Path(id): Path<String>,
    Query(query): Query<LimitQuery>,
) -> ApiResult<Response> {
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    let deliveries = state
        .node
        .webhooks
        .deliveries(&state.node.db, &tenant, &id, limit)?;
    Ok(axum::Json(json!({ "deliveries": deliveries })).into_response())
}
