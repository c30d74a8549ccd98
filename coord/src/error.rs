//! The coordination errors, and the one place that says which are worth retrying.

use sluice_pipeline::error::BoxError;
use sluice_pipeline::{Error, ErrorKind};

/// What went wrong talking to a coordination backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CoordError {
    /// No endpoint answered (or the connection was lost).
    #[error("cannot reach {endpoints}")]
    Unreachable {
        /// The endpoints tried, never with credentials.
        endpoints: String,
        /// The cause.
        #[source]
        source: BoxError,
    },
    /// The session (lease) ended: not renewed in time, or closed.
    #[error("the coordination session expired")]
    SessionExpired,
    /// The server refused the credentials or the operation.
    #[error("the coordination server refused {doing}")]
    Refused {
        /// What was refused.
        doing: String,
        /// The cause.
        #[source]
        source: BoxError,
    },
    /// The server answered something the backend cannot use.
    #[error("unexpected answer from the coordination server: {0}")]
    Protocol(String),
    /// The configuration cannot work (a bad endpoint, a bad name).
    #[error("{0}")]
    Config(String),
}

impl CoordError {
    /// Whether the same operation may succeed if tried again later.
    pub fn is_retryable(&self) -> bool {
        match self {
            CoordError::Unreachable { .. } | CoordError::SessionExpired => true,
            CoordError::Refused { .. } | CoordError::Protocol(_) | CoordError::Config(_) => false,
        }
    }

    /// The engine's kind for this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            CoordError::Unreachable { .. } | CoordError::SessionExpired => ErrorKind::Connect,
            CoordError::Refused { .. } | CoordError::Config(_) => ErrorKind::Config,
            CoordError::Protocol(_) => ErrorKind::Protocol,
        }
    }

    /// As an engine error while doing `context`.
    pub fn into_error(self, context: impl Into<String>) -> Error {
        Error::new(self.kind(), context).with_source(self)
    }
}
