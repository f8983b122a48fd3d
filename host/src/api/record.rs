//! `/compute/record`: start and stop recording accepted actions.

use axum::Extension;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::api::AppState;
use crate::api::auth::Tenant;
use crate::api::error::{ApiError, ApiResult};

/// `POST /compute/record/start`.
pub async fn start(
    State(state): State<AppState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
) -> ApiResult<Response> {
    let id = state.engine.recorder().start(&tenant)?;
    Ok(axum::Json(json!({"recording": id})).into_response())
}

/// `POST /compute/record/stop`: its id and how many actions it holds (the server's
/// paths are nobody's business: the operator finds it as `DATA_DIR/recordings/<id>`).
pub async fn stop(
    State(state): State<AppState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
) -> ApiResult<Response> {
    let stopped = state
        .engine
        .recorder()
        .stop(&tenant)?
        .ok_or_else(|| ApiError::Conflict("not_recording", "no recording is running".into()))?;
    Ok(axum::Json(
        json!({"recording": stopped.id, "actions": stopped.actions, "full": stopped.full}),
    )
    .into_response())
}

/// `DELETE /compute/record/{id}`: deletes one of the caller's recordings (stopping
/// it first if it runs); 404 for any other.
pub async fn delete(
    State(state): State<AppState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> ApiResult<Response> {
    if !state.engine.recorder().delete(&tenant, &id)? {
        return Err(ApiError::NotFound(format!("recording {id} not found")));
    }
    Ok(axum::Json(json!({"recording": id, "deleted": true})).into_response())
}
