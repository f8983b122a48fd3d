//! `/cas`: the needs dance and blob upload/download.

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use crate::api::AppState;
use crate::api::auth::Tenant;
use crate::api::body::{cas_error, path_hash};
use crate::api::error::{ApiError, ApiResult};
use crate::api::json::{Json, JsonBody};
use crate::model::HashHex;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NeedsRequest {
    hashes: Vec<HashHex>,
}

impl JsonBody for NeedsRequest {}

/// `POST /cas/needs`: the subset of the hashes this tenant's store lacks.
pub async fn needs(
    State(state): State<AppState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Json(body): Json<NeedsRequest>,
) -> ApiResult<Response> {
    let needs = state.engine.needs(&tenant, &body.hashes)?;
    Ok(axum::Json(json!({ "needs": needs })).into_response())
}

/// `PUT /cas/{hash}`: streams the body to disk, verifying its hash.
pub async fn put_blob(
    State(state): State<AppState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Path(hash): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let hash = path_hash(&hash)?;
    let max = state.engine.cas().max_blob_bytes();
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max) {
        return Err(ApiError::TooLarge(format!("blob larger than {max} bytes")));
    }
    let held = state.engine.holds(&tenant, &hash)? && state.engine.cas().contains(&hash);
    // Admitted before a byte is read: a place among the tenant's uploads, and (for a
    // blob it does not hold yet) the bytes its quota leaves.
    let permit = state.engine.admit_staging(&tenant, declared, !held)?;
    // The body is verified even when the blob is already held, so that a client with
    // wrong bytes learns about it.
    let staged = state
        .engine
        .cas()
        .stage_within(hash, body.into_data_stream(), permit.limit, permit.by_quota)
        .await
        .map_err(cas_error)?;
    if held {
        return Ok((
            StatusCode::OK,
            axum::Json(json!({ "hash": hash, "stored": false })),
        )
            .into_response());
    }
    let size = staged.size;
    state.engine.admit_blobs(&tenant, &[(hash, size)])?;
    state.engine.cas().commit(staged)?;
    state.engine.store().tenant(&tenant).own_blob(&hash, size)?;
    state.engine.metrics().cas_bytes_written.add(size);
    drop(permit);
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({ "hash": hash, "stored": true })),
    )
        .into_response())
}

fn visible(state: &AppState, tenant: &str, hash: &HashHex) -> ApiResult<u64> {
    if !state.engine.store().tenant(tenant).owns_blob(hash)? {
        return Err(ApiError::NotFound(format!("blob {hash} not found")));
    }
    state
        .engine
        .cas()
        .size(hash)
        .ok_or_else(|| ApiError::NotFound(format!("blob {hash} not found")))
}

/// A blob response: its headers, and the body (empty for HEAD).
fn blob_response(size: u64, body: Body) -> Response {
    let headers = [
        (header::CONTENT_TYPE, "application/octet-stream".to_string()),
        (header::CONTENT_LENGTH, size.to_string()),
    ];
    (headers, body).into_response()
}

/// `GET /cas/{hash}`: the bytes, streamed.
pub async fn get_blob(
    State(state): State<AppState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Path(hash): Path<String>,
) -> ApiResult<Response> {
    let hash = path_hash(&hash)?;
    let size = visible(&state, &tenant, &hash)?;
    let file = tokio::fs::File::open(state.engine.cas().path(&hash)).await?;
    Ok(blob_response(
        size,
        Body::from_stream(tokio_util::io::ReaderStream::new(file)),
    ))
}

/// `HEAD /cas/{hash}`: 200 with Content-Length, or 404.
pub async fn head_blob(
    State(state): State<AppState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    Path(hash): Path<String>,
) -> ApiResult<Response> {
    let hash = path_hash(&hash)?;
    let size = visible(&state, &tenant, &hash)?;
    Ok(blob_response(size, Body::empty()))
}
