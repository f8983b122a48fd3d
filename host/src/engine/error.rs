//! Why a request the engine serves was refused; the API maps each to a status.

/// Why a request about jobs or workers was refused.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Malformed input; the code is the API's error code.
    #[error("{1}")]
    Invalid(&'static str, String),
    /// Not found (or another tenant's).
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the current state.
    #[error("{1}")]
    Conflict(&'static str, String),
    /// The module does not validate or compile.
    #[error("{0}")]
    InvalidModule(String),
    /// Over a hard quota (the message names it, its limit and the use).
    #[error("{0}")]
    QuotaExceeded(String),
    /// Larger than the server takes.
    #[error("{0}")]
    TooLarge(String),
    /// Over the submit rate: retry after the duration.
    #[error("{0}")]
    RateLimited(String, std::time::Duration),
    /// Something failed on the host.
    #[error("{0}")]
    Internal(String),
    /// The journal could not be read or written (its database is unreachable, say):
    /// nothing was changed, and the same call may succeed later.
    #[error("database: {0}")]
    Journal(String),
}

impl From<crate::store::StoreError> for EngineError {
    fn from(e: crate::store::StoreError) -> Self {
        EngineError::Journal(e.to_string())
    }
}

impl From<std::io::Error> for EngineError {
    fn from(e: std::io::Error) -> Self {
        EngineError::Internal(format!("store: {e}"))
    }
}
