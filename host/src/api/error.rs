//! The one error type of the HTTP layer: every failure leaves as
//! `{"error": {"code", "message"}}` with a 4xx/5xx status. 5xx bodies never carry
//! internals; those go to the log.

use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::engine::EngineError;

/// An API error.
#[derive(Debug)]
pub enum ApiError {
    /// 400 with a code (`invalid_json`, `hash_mismatch`, `id_mismatch`, ...).
    BadRequest(&'static str, String),
    /// 401: missing or wrong API key.
    Unauthorized,
    /// 403 with a code (`remote_forbidden`).
    Forbidden(&'static str, String),
    /// 404 `not_found`.
    NotFound(String),
    /// 409 with a code (`queue_not_active`, `retry_limit`, ...).
    Conflict(&'static str, String),
    /// 413 `too_large`.
    TooLarge(String),
    /// 415 `unsupported_media_type`: the body is not declared as the route reads it.
    UnsupportedMediaType(String),
    /// 422 with a code (`invalid_module`, `invalid_dependency`, ...).
    Unprocessable(&'static str, String),
    /// 429 `rate_limited`, with `Retry-After` in whole seconds.
    RateLimited(String, u64),
    /// 503 `unavailable`.
    Unavailable(String),
    /// 500 `internal`; the detail is logged, not returned.
    Internal(String),
}

impl ApiError {
    /// The HTTP status.
    pub fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(..) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(..) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(..) => StatusCode::CONFLICT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unprocessable(..) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::RateLimited(..) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code_and_message(&self) -> (&'static str, String) {
        match self {
            ApiError::BadRequest(code, m)
            | ApiError::Forbidden(code, m)
            | ApiError::Conflict(code, m)
            | ApiError::Unprocessable(code, m) => (code, m.clone()),
            ApiError::Unauthorized => (
                "unauthorized",
                "a valid API key is required (x-api-key or Authorization: Bearer)".into(),
            ),
            ApiError::NotFound(m) => ("not_found", m.clone()),
            ApiError::TooLarge(m) => ("too_large", m.clone()),
            ApiError::UnsupportedMediaType(m) => ("unsupported_media_type", m.clone()),
            ApiError::RateLimited(m, _) => ("rate_limited", m.clone()),
            ApiError::Unavailable(m) => ("unavailable", m.clone()),
            ApiError::Internal(_) => ("internal", "internal error; see the server log".into()),
        }
    }

    /// A malformed JSON body.
    pub fn json(e: impl std::fmt::Display) -> Self {
        ApiError::BadRequest("invalid_json", format!("malformed JSON: {e}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(detail) = &self {
            tracing::error!(%detail, "internal error");
        }
        let (code, message) = self.code_and_message();
        let mut response = (
            self.status_code(),
            Json(json!({"error": {"code": code, "message": message}})),
        )
            .into_response();
        if let ApiError::RateLimited(_, seconds) = self {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
        }
        response
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Invalid(code, m) => ApiError::BadRequest(code, m),
            EngineError::NotFound(m) => ApiError::NotFound(m),
            EngineError::Conflict(code, m) => ApiError::Conflict(code, m),
            EngineError::InvalidModule(m) => ApiError::Unprocessable("invalid_module", m),
            EngineError::QuotaExceeded(m) => ApiError::Forbidden("quota_exceeded", m),
            EngineError::TooLarge(m) => ApiError::TooLarge(m),
            // Whole seconds, rounded up: a client waiting that long finds the tokens.
            EngineError::RateLimited(m, wait) => {
                ApiError::RateLimited(m, wait.as_secs() + u64::from(wait.subsec_nanos() > 0))
            }
            EngineError::Internal(m) => ApiError::Internal(m),
            e @ EngineError::Journal(_) => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        ApiError::Internal(format!("database: {e}"))
    }
}

impl From<std::io::Error> for ApiError {
    fn from(e: std::io::Error) -> Self {
        ApiError::Internal(format!("io: {e}"))
    }
}

/// Result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;
