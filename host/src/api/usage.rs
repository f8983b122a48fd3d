//! `GET /compute/usage`: what finished jobs consumed, by tenant, worker or queue over a
//! time range. A tenant sees its own; the operator sees every tenant's.

use std::collections::HashMap;

use axum::Extension;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::api::AppState;
use crate::api::auth::{Role, Tenant};
use crate::api::error::{ApiError, ApiResult};
use crate::model::UsageBy;
use crate::store::now_ms;

/// `GET /compute/usage?by=tenant|worker|queue&from=MS&to=MS` (Unix milliseconds of the
/// jobs' ends; `from` defaults to the beginning, `to` to now).
pub async fn get(
    State(state): State<AppState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Extension(role): Extension<Role>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let bad = |m: String| ApiError::BadRequest("invalid_request", m);
    let by = match query.get("by").map(String::as_str) {
        None | Some("tenant") => UsageBy::Tenant,
        Some("worker") => UsageBy::Worker,
        Some("queue") => UsageBy::Queue,
        Some(other) => return Err(bad(format!("by={other:?}: tenant, worker or queue"))),
    };
    let time = |key: &str, default: i64| -> ApiResult<i64> {
        query.get(key).map_or(Ok(default), |text| {
            text.parse()
                .map_err(|_| bad(format!("{key}={text:?}: Unix milliseconds")))
        })
    };
    let (from, to) = (time("from", 0)?, time("to", now_ms() + 1)?);
    let engine = state.engine.clone();
    let mut rows = tokio::task::spawn_blocking(move || match role {
        Role::Operator => engine.store().unscoped().usage(by, from, to),
        Role::Tenant => engine.store().tenant(&tenant).usage(by, from, to),
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))??;
    if let Some(prices) = &state.engine.config().prices {
        for row in &mut rows {
            row.cost = Some(prices.cost(row));
        }
    }
    Ok(axum::Json(json!({"by": by, "from_ms": from, "to_ms": to, "usage": rows})).into_response())
}
