//! What can go wrong running SQL against PostgreSQL, and the one place that decides which of
//! those failures are worth retrying.

use sluice_pipeline::ErrorKind;
use tokio_postgres::error::SqlState;

/// A failure running SQL, or a table that does not fit (connecting fails with the engine's
/// own error, from [`crate::postgres::connect::Sessions::connect`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DbError {
    /// A statement failed.
    #[error("{doing}")]
    Statement {
        /// What sluice was doing, lowercase: "polling a batch".
        doing: &'static str,
        /// The cause.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The table does not fit what the component needs: missing, a missing column, a column
    /// of the wrong type, a missing privilege.
    #[error("table {table}: {problem}")]
    Table {
        /// The table as configured or resolved.
        table: String,
        /// What is wrong, and what to do about it.
        problem: String,
    },
    /// The server closed the connection.
    #[error("the server closed the connection while {doing}")]
    Closed {
        /// What sluice was doing.
        doing: &'static str,
    },
    /// The server answered in a shape sluice did not expect.
    #[error("unexpected answer while {doing}: {detail}")]
    Unexpected {
        /// What sluice was doing.
        doing: &'static str,
        /// What was wrong with the answer.
        detail: String,
    },
}

impl DbError {
    /// A `map_err` adapter for a failed statement.
    pub fn statement(doing: &'static str) -> impl FnOnce(tokio_postgres::Error) -> DbError {
        move |source| DbError::Statement { doing, source }
    }

    /// How a supervisor should treat this error; [`ErrorKind::is_retryable`] tells whether to
    /// try again.
    pub fn kind(&self) -> ErrorKind {
        match self {
            DbError::Statement { source, .. } => classify(source),
            DbError::Closed { .. } => ErrorKind::Connect,
            DbError::Table { .. } => ErrorKind::Config,
            DbError::Unexpected { .. } => ErrorKind::Protocol,
        }
    }
}

impl From<DbError> for sluice_pipeline::Error {
    fn from(error: DbError) -> Self {
        sluice_pipeline::Error::new(error.kind(), "postgresql").with_source(error)
    }
}

/// The one place that decides what a PostgreSQL error means for retrying.
///
/// Lost connections, server shutdowns and restarts, resource shortages, lock and statement
/// timeouts, and serialization failures pass: they are retried. Everything else the server
/// reports (a missing table or column, a refused privilege, a failing trigger) stays until an
/// operator acts, so it stops the component with a config error. A failure with no SQLSTATE
/// is I/O (retried) or a protocol surprise (not).
pub fn classify(error: &tokio_postgres::Error) -> ErrorKind {
    if error.is_closed() {
        return ErrorKind::Connect;
    }
    let Some(code) = error.code() else {
        let io = std::error::Error::source(error).is_some_and(|s| s.is::<std::io::Error>());
        return if io {
            ErrorKind::Connect
        } else {
            ErrorKind::Protocol
        };
    };
    let class = code.code().get(..2).unwrap_or_default();
    let transient = matches!(class, "08" | "40" | "53" | "57" | "58")
        || *code == SqlState::LOCK_NOT_AVAILABLE
        || *code == SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT;
    if transient {
        ErrorKind::Connect
    } else {
        ErrorKind::Config
    }
}
