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
    let root = state.engine.config().data_dir.join("recordings");
    let id = state.engine.recorder().start(&root, &tenant)?;
    Ok(axum::Json(json!({"recording": id})).into_response())
}

/// `POST /compute/record/stop`: also says where the recording is, for `wasmesh replay`.
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
        json!({"recording": stopped.id, "actions": stopped.actions, "path": stopped.dir}),
    )
    .into_response())
}
