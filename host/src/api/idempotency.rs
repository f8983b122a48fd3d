//! `Idempotency-Key` on POST requests (after the IETF httpapi
//! idempotency-key-header draft): the first request with a key runs and its response
//! is stored (per tenant, in the journal, for `NodeConfig::idempotency_retention`);
//! the same key with the same request replays that response
//! (`Idempotent-Replayed: true`); with a different request it is a 422
//! `idempotency_key_mismatch`; while the first is still running, a 409
//! `idempotency_key_in_flight`. A 5xx is not stored, so a retry runs again; nor is a
//! `202` (a `needs` answer: the client uploads the chunks and retries with the same
//! key, which must then run).
//!
//! The body is fingerprinted as it arrives: up to [`IN_MEMORY`] bytes stay in memory,
//! a larger one (a package) is spooled to an unlinked file in the data directory, so
//! a keyed request costs no more memory than an unkeyed one.

use std::path::Path;

use axum::Extension;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

use crate::api::AppState;
use crate::api::auth::Tenant;
use crate::api::error::{ApiError, ApiResult};
use crate::store::IdempotencyBegin;

/// Longest key accepted.
const MAX_KEY: usize = 255;

/// Responses are JSON answers; a stored one is at most this large.
const MAX_RESPONSE: usize = 16 << 20;

/// A keyed body larger than this is spooled to disk instead of held in memory.
pub const IN_MEMORY: usize = 1 << 20;

/// Releases the key if the request never completes (the client went away).
struct Claim<'a> {
    state: &'a AppState,
    tenant: &'a str,
    key: &'a str,
    settled: bool,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if !self.settled
            && let Err(e) = self
                .state
                .engine
                .store()
                .tenant(self.tenant)
                .idempotency_forget(self.key)
        {
            tracing::warn!(error = %e, "releasing an idempotency key");
        }
    }
}

/// The middleware (after the tenant is known).
pub async fn idempotency(
    State(state): State<AppState>,
    Extension(Tenant(tenant)): Extension<Tenant>,
    request: Request,
    next: Next,
) -> ApiResult<Response> {
    if request.method() != Method::POST {
        return Ok(next.run(request).await);
    }
    let Some(key) = request.headers().get("idempotency-key") else {
        return Ok(next.run(request).await);
    };
    let key = key
        .to_str()
        .ok()
        .map(|k| k.trim().trim_matches('"').to_string())
        .filter(|k| !k.is_empty() && k.len() <= MAX_KEY)
        .ok_or_else(|| {
            ApiError::BadRequest(
                "invalid_idempotency_key",
                format!("Idempotency-Key is 1 to {MAX_KEY} visible characters"),
            )
        })?;
    let (parts, body) = request.into_parts();
    let mut hasher = blake3::Hasher::new();
    hasher.update(parts.method.as_str().as_bytes());
    hasher.update(b" ");
    hasher.update(
        parts
            .uri
            .path_and_query()
            .map_or("", |p| p.as_str())
            .as_bytes(),
    );
    hasher.update(b"\n");
    // Bounded by the route's own limit (a package's, else a JSON body's), and one of
    // the tenant's uploads while it is spooled.
    let config = state.engine.config();
    let multipart = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    let limit = if multipart {
        config.max_request_bytes
    } else {
        config.max_json_bytes as u64
    };
    // (Held to the end of the request: the spooled file lives as long.)
    let _permit = state.engine.admit_staging(&tenant, None, false)?;
    let body = spool(body, limit, &config.data_dir, &mut hasher).await?;
    let fingerprint = hasher.finalize().to_hex().to_string();
    match state
        .engine
        .store()
        .tenant(&tenant)
        .idempotency_begin(&key, &fingerprint)?
    {
        IdempotencyBegin::New => {}
        IdempotencyBegin::InFlight => {
            return Err(ApiError::Conflict(
                "idempotency_key_in_flight",
                format!("a request with Idempotency-Key {key:?} is still being processed"),
            ));
        }
        IdempotencyBegin::Mismatch => {
            return Err(ApiError::Unprocessable(
                "idempotency_key_mismatch",
                format!("Idempotency-Key {key:?} was used with a different request"),
            ));
        }
        IdempotencyBegin::Done(status, content_type, body) => {
            let mut response = (
                StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
                Body::from(body),
            )
                .into_response();
            let headers = response.headers_mut();
            if let Some(value) = content_type.and_then(|c| HeaderValue::from_str(&c).ok()) {
                headers.insert(header::CONTENT_TYPE, value);
            }
            headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
            return Ok(response);
        }
    }
    let mut claim = Claim {
        state: &state,
        tenant: &tenant,
        key: &key,
        settled: false,
    };
    let response = next.run(Request::from_parts(parts, body)).await;
    let (parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_RESPONSE).await else {
        return Err(ApiError::Internal("a response too large to keep".into()));
    };
    // A 202 asks the client to send what is missing and try again with the same key.
    if !parts.status.is_server_error() && parts.status != StatusCode::ACCEPTED {
        let content_type = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        state.engine.store().tenant(&tenant).idempotency_finish(
            &key,
            parts.status.as_u16(),
            content_type,
            &bytes,
        )?;
        claim.settled = true;
    }
    drop(claim);
    Ok(Response::from_parts(parts, Body::from(bytes)))
}

/// Reads a keyed body into `hasher` and returns it to be read again: in memory up to
/// [`IN_MEMORY`] bytes, else from an unlinked temporary file in `dir`. Over `limit`
/// bytes it is a 413.
async fn spool(body: Body, limit: u64, dir: &Path, hasher: &mut blake3::Hasher) -> ApiResult<Body> {
    let mut stream = body.into_data_stream();
    let mut memory = Vec::new();
    let mut file: Option<tokio::fs::File> = None;
    let mut total = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk
            .map_err(|e| ApiError::BadRequest("invalid_body", format!("reading the body: {e}")))?;
        total += chunk.len() as u64;
        if total > limit {
            return Err(ApiError::TooLarge(format!(
                "request larger than {limit} bytes"
            )));
        }
        hasher.update(&chunk);
        match &mut file {
            Some(file) => file.write_all(&chunk).await?,
            None => {
                memory.extend_from_slice(&chunk);
                if memory.len() > IN_MEMORY {
                    let mut spooled = tokio::fs::File::from_std(tempfile::tempfile_in(dir)?);
                    spooled.write_all(&memory).await?;
                    memory = Vec::new();
                    file = Some(spooled);
                }
            }
        }
    }
    Ok(match file {
        None => Body::from(memory),
        Some(mut file) => {
            file.flush().await?;
            file.seek(std::io::SeekFrom::Start(0)).await?;
            Body::from_stream(tokio_util::io::ReaderStream::new(file))
        }
    })
}
