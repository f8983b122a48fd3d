//! `POST /compute/gc[?dry_run=true]`: a garbage collection now (the operator only).

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};

use crate::api::AppState;
use crate::api::auth::Operator;
use crate::api::error::{ApiError, ApiResult};

/// Runs a sweep (or, with `dry_run=true`, reports what one would free) and answers
/// its report.
pub async fn collect(
    State(state): State<AppState>,
    _: Operator,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let dry_run = match query.get("dry_run").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(
                "invalid_request",
                format!("dry_run={other:?}: true or false"),
            ));
        }
    };
    let engine = state.engine.clone();
    let report = tokio::task::spawn_blocking(move || engine.collect_garbage(dry_run))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    Ok(axum::Json(report).into_response())
}
