//! `/api/v1/webhooks`: endpoints a tenant registers for events, and their delivery
//! logs (see `node::webhooks` for delivery, signing and retries).

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use crate::api::AppState;
use crate::api::auth::Tenant;
use crate::api::error::{ApiError, ApiResult};
use crate::api::json::{Json, JsonBody};
use crate::webhooks::WebhookError;

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
pub(crate) struct CreateBody {
    url: String,
    events: Vec<String>,
}

impl JsonBody for CreateBody {
    fn shape_error(e: serde_json::Error) -> ApiError {
        ApiError::BadRequest("invalid_request", format!("webhook: {e}"))
    }
}

/// `POST /api/v1/webhooks` `{"url","events":[...]}` -> 201 with the id and, this once,
/// the secret.
pub async fn create(
    State(state): State<AppState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Json(body): Json<CreateBody>,
) -> ApiResult<Response> {
    state.engine.admit_webhook(&tenant)?;
    let created = state
        .engine
        .webhooks()
        .create(&tenant, &body.url, body.events)?;
    Ok((StatusCode::CREATED, axum::Json(created)).into_response())
}

/// `GET /api/v1/webhooks`.
pub async fn list(
    State(state): State<AppState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
) -> ApiResult<Response> {
    let hooks = state.engine.webhooks().list(&tenant)?;
    Ok(axum::Json(json!({ "webhooks": hooks })).into_response())
}

/// `GET /api/v1/webhooks/{id}`.
pub async fn get(
    State(state): State<AppState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let hook = state.engine.webhooks().get(&tenant, &id)?;
    Ok(axum::Json(hook).into_response())
}

/// `DELETE /api/v1/webhooks/{id}`: the endpoint and its delivery log.
pub async fn delete(
    State(state): State<AppState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    state.engine.webhooks().delete(&tenant, &id)?;
    Ok(axum::Json(json!({"id": id, "deleted": true})).into_response())
}

/// `POST /api/v1/webhooks/{id}/enable`: a disabled endpoint gets deliveries again.
pub async fn enable(
    State(state): State<AppState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let hook = state.engine.webhooks().enable(&tenant, &id)?;
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
    let deliveries = state.engine.webhooks().deliveries(&tenant, &id, limit)?;
    Ok(axum::Json(json!({ "deliveries": deliveries })).into_response())
}
