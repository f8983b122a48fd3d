//! The one JSON reader: [`Json<T>`], an extractor whose rejection is [`ApiError`], so a
//! malformed, oversize or empty body gets the contract's error shape like everything
//! else, and no handler reads raw bytes. A body is read whatever its content type
//! (curl's default form type included), within its type's own limit
//! ([`JsonBody::limit`]), and parsed straight into its type.

use axum::body::Body;
use axum::extract::{FromRef, FromRequest, Request};
use serde::de::DeserializeOwned;

use crate::api::error::{ApiError, ApiResult};

/// A JSON request body of type `T`.
#[derive(Debug)]
pub struct Json<T>(pub T);

/// The size limits bodies are read within (from the server's configuration).
#[derive(Clone, Copy, Debug)]
pub struct JsonLimits {
    /// An ordinary JSON body (`max_json_bytes`).
    pub json: usize,
    /// The largest request (`max_request_bytes`): a node's batch of results.
    pub request: usize,
}

/// How a body type is read.
pub trait JsonBody: DeserializeOwned {
    /// Its largest size.
    fn limit(limits: &JsonLimits) -> usize {
        limits.json
    }

    /// What an empty body means; `None` refuses it as `invalid_json`.
    fn empty() -> Option<Self> {
        None
    }

    /// The error for a well-formed document of the wrong shape.
    fn shape_error(e: serde_json::Error) -> ApiError {
        ApiError::BadRequest("invalid_request", e.to_string())
    }
}

impl JsonBody for serde_json::Value {}

/// Reads a `T` from `body` within `limit` bytes.
pub async fn read<T: JsonBody>(body: Body, limit: usize) -> ApiResult<T> {
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::TooLarge(format!("JSON bodies are limited to {limit} bytes")))?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return T::empty().ok_or_else(|| {
            ApiError::BadRequest(
                "invalid_json",
                "the body is empty; a JSON document was expected".into(),
            )
        });
    }
    // Syntax first (`invalid_json`: checked without building anything), then
    // straight into the type (its own error): no `Value` tree, which costs many times
    // the body's size, is built, and a duplicate field is refused.
    serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).map_err(ApiError::json)?;
    serde_json::from_slice(&bytes).map_err(T::shape_error)
}

impl<S, T> FromRequest<S> for Json<T>
where
    T: JsonBody,
    S: Send + Sync,
    JsonLimits: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let limits = JsonLimits::from_ref(state);
        read(request.into_body(), T::limit(&limits)).await.map(Json)
    }
}
