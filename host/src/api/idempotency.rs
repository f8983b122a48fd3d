//! `Idempotency-Key` on POST requests (after the IETF httpapi
//! idempotency-key-header draft): the first request with a key runs and its response
//! is stored (per tenant, in the journal, for `NodeConfig::idempotency_retention`);
//! the same key with the same request replays that response
//! (`Idempotent-Replayed: true`); with a different request it is a 422
//! `idempotency_key_mismatch`; while the first is still running, a 409
//! `idempotency_key_in_flight`. A 5xx is not stored, so a retry runs again.

use axum::Extension;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::api::AppState;
use crate::api::auth::Tenant;
use crate::api::error::{ApiError, ApiResult};
use crate::node::db::IdempotencyBegin;

/// Longest key accepted.
const MAX_KEY: usize = 255;

/// Responses are JSON answers; a stored one is at most this large.
const MAX_RESPONSE: usize = 16 << 20;

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
            && let Err(e) = self.state.node.db.idempotency_forget(self.tenant, self.key)
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
    let limit = usize::try_from(state.node.config.max_request_bytes).unwrap_or(usize::MAX);
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::TooLarge(format!("request larger than {limit} bytes")))?;
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
    hasher.update(&bytes);
    let fingerprint = hasher.finalize().to_hex().to_string();
    match state
        .node
        .db
        .idempotency_begin(&tenant, &key, &fingerprint)?
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
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    let (parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_RESPONSE).await else {
        return Err(ApiError::Internal("a response too large to keep".into()));
    };
    if !parts.status.is_server_error() {
        let content_type = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        state.node.db.idempotency_finish(
            &tenant,
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
