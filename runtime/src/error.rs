//! Errors of the runtime itself, as opposed to outcomes of a guest.

use thiserror::Error;

/// Why the runtime could not run an action at all. A guest that misbehaves is not an
/// error: that is an [`Outcome`](crate::Outcome).
#[derive(Debug, Error, Clone)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The bytes are not a valid WebAssembly module for this sandbox: they fail
    /// validation, import something the sandbox does not provide, or have no `_start`.
    #[error("invalid module: {0}")]
    InvalidModule(String),
    /// A file or directory to mount is unusable (bad guest path, missing host file).
    #[error("invalid mount: {0}")]
    InvalidMount(String),
    /// Every instance slot of the pooling allocator is in use; try again later.
    #[error("the sandbox is at capacity ({0} instances)")]
    Busy(u32),
    /// A host-side failure (I/O, engine set-up). The message is for logs.
    #[error("sandbox host error: {0}")]
    Host(String),
}

impl RuntimeError {
    pub(crate) fn host(context: &str, err: impl std::fmt::Display) -> Self {
        RuntimeError::Host(format!("{context}: {err}"))
    }
}
