//! Descriptor bodies: JSON (read by `api::json`), or multipart packages whose chunks
//! are verified before any is stored.

use axum::extract::{FromRequest, Multipart, Request};
use futures_util::stream;

use crate::api::AppState;
use crate::api::error::{ApiError, ApiResult};
use crate::cas::{CasError, Staged};
use crate::model::HashHex;

/// Parts a package may have (the descriptor and its chunks). Each staged part is a
/// file on disk until the package is complete (closed, so parts cost no descriptors).
pub const MAX_PARTS: usize = 1024;

/// A descriptor body: plain JSON, or a package whose chunks were stored.
#[derive(Debug)]
pub struct Descriptor {
    /// The descriptor JSON.
    pub value: serde_json::Value,
}

fn is_multipart(request: &Request) -> bool {
    request
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"))
}

/// Reads a descriptor: JSON, or a package (multipart) whose chunks are verified
/// against their names, all of them before any is stored, and recorded for `tenant`.
pub async fn descriptor(state: &AppState, tenant: &str, request: Request) -> ApiResult<Descriptor> {
    if !is_multipart(&request) {
        let limit = state.engine.config().max_json_bytes;
        return Ok(Descriptor {
            value: crate::api::json::read(request.into_body(), limit).await?,
        });
    }
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // Admitted before a byte is read, as a blob upload is: the package's chunks share
    // one place among the tenant's uploads and what its quota leaves.
    let permit = state.engine.admit_staging(tenant, declared, true)?;
    let mut staged_bytes = 0u64;
    let mut multipart = Multipart::from_request(request, state).await.map_err(|e| {
        ApiError::BadRequest("invalid_package", format!("malformed multipart body: {e}"))
    })?;
    let mut value = None;
    let mut staged: Vec<Staged> = Vec::new();
    let bad = |e: axum::extract::multipart::MultipartError| {
        ApiError::BadRequest("invalid_package", format!("malformed multipart body: {e}"))
    };
    let invalid = |message: String| ApiError::BadRequest("invalid_package", message);
    let mut parts = 0;
    while let Some(mut field) = multipart.next_field().await.map_err(bad)? {
        parts += 1;
        if parts > MAX_PARTS {
            return Err(invalid(format!("a package has at most {MAX_PARTS} parts")));
        }
        let name = field.name().unwrap_or_default().to_string();
        if name == "descriptor" {
            if value.is_some() {
                return Err(invalid("the package has two `descriptor` parts".into()));
            }
            let limit = state.engine.config().max_json_bytes;
            let mut bytes = Vec::new();
            while let Some(chunk) = field.chunk().await.map_err(bad)? {
                if bytes.len() + chunk.len() > limit {
                    return Err(ApiError::TooLarge(format!(
                        "a descriptor is limited to {limit} bytes"
                    )));
                }
                bytes.extend_from_slice(&chunk);
            }
            value = Some(serde_json::from_slice(&bytes).map_err(ApiError::json)?);
            continue;
        }
        let hash: HashHex = name
            .parse()
            .map_err(|e| invalid(format!("part names are `descriptor` or a chunk hash: {e}")))?;
        if staged.iter().any(|blob| blob.hash == hash) {
            return Err(invalid(format!("the package has two parts named {hash}")));
        }
        let chunks = stream::try_unfold(field, |mut field| async move {
            Ok::<_, axum::extract::multipart::MultipartError>(
                field.chunk().await?.map(|chunk| (chunk, field)),
            )
        });
        let chunks = Box::pin(chunks);
        let left = permit.limit.saturating_sub(staged_bytes);
        let blob = state
            .engine
            .cas()
            .stage_within(hash, chunks, left, permit.by_quota)
            .await
            .map_err(cas_error)?;
        staged_bytes += blob.size;
        staged.push(blob);
    }
    let value = value.ok_or_else(|| {
        ApiError::BadRequest(
            "invalid_package",
            "the package has no `descriptor` part".into(),
        )
    })?;
    // Every chunk verified and within the tenant's quota: now store them.
    let sizes: Vec<(HashHex, u64)> = staged.iter().map(|s| (s.hash, s.size)).collect();
    state.engine.admit_blobs(tenant, &sizes)?;
    for blob in staged {
        let (hash, size) = (blob.hash, blob.size);
        state.engine.cas().commit(blob)?;
        state.engine.store().tenant(tenant).own_blob(&hash, size)?;
        state.engine.metrics().cas_bytes_written.add(size);
    }
    drop(permit);
    Ok(Descriptor { value })
}

/// The API error for a store error.
pub fn cas_error(e: CasError) -> ApiError {
    match e {
        CasError::Mismatch { .. } => ApiError::BadRequest("hash_mismatch", e.to_string()),
        CasError::TooLarge(_) => ApiError::TooLarge(e.to_string()),
        CasError::Quota(_) => ApiError::Forbidden("quota_exceeded", e.to_string()),
        CasError::Body(m) => ApiError::BadRequest("invalid_body", m),
        CasError::Io(io) => ApiError::from(io),
    }
}

/// Parses a path hash.
pub fn path_hash(text: &str) -> ApiResult<HashHex> {
    text.parse()
        .map_err(|e: crate::model::BadHash| ApiError::BadRequest("invalid_hash", e.to_string()))
}
