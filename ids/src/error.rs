//! The errors of every generator, and the one place that says which of them may pass if tried
//! again.

use std::time::Duration;

/// Why no id was issued. Whenever a generator returns one of these, it issued nothing for that
/// call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// The layout or a value in it is not usable (bit widths, worker out of range, epoch).
    #[error(transparent)]
    Layout(#[from] crate::snowflake::LayoutError),
    /// The wall clock is further behind the last issued id than `max_backward` allows.
    #[error(
        "the clock moved back {step_ms} ms, more than max_backward ({max_backward_ms} ms) allows: refusing to issue ids until it catches up"
    )]
    ClockMovedBack {
        /// How far behind the last issued id's time the clock is, in milliseconds.
        step_ms: u64,
        /// The configured tolerance, in milliseconds.
        max_backward_ms: u64,
    },
    /// A wait for the clock to reach a millisecond ended before it did (a stopped clock).
    #[error("the clock did not reach {target_ms} (Unix ms) within {limit:?}; it reads {now_ms}")]
    ClockStalled {
        /// The millisecond waited for.
        target_ms: u64,
        /// What the clock read when the wait ended.
        now_ms: u64,
        /// How long the wait was allowed to take.
        limit: Duration,
    },
    /// The clock reads a time before the generator's epoch.
    #[error("the clock reads {now} (Unix ms {now_ms}), before the epoch {epoch}")]
    BeforeEpoch {
        /// The clock's time.
        now_ms: u64,
        /// It, as RFC 3339.
        now: String,
        /// The epoch, as RFC 3339.
        epoch: String,
    },
    /// The layout's timestamp field cannot hold the current time any more.
    #[error(
        "the {bits}-bit timestamp ran out on {date}: no more ids can be issued with this layout and epoch (choose a later epoch or more timestamp bits)"
    )]
    TimestampExhausted {
        /// The timestamp field's width.
        bits: u8,
        /// The first instant it cannot hold, as RFC 3339.
        date: String,
    },
    /// The worker id can no longer be proven to be this process's (a lease lost or expired).
    #[error("the worker id is no longer held: {reason}")]
    WorkerNotHeld {
        /// What the claim reported.
        reason: String,
    },
    /// A counter's own value space is used up (a sequence at its maximum, 2^80 ULIDs in a ms).
    #[error("{what} is exhausted")]
    Exhausted {
        /// Which counter.
        what: String,
    },
    /// The generator's server setup does not match its config (an existing sequence with
    /// another increment).
    #[error("{0}")]
    Setup(String),
    /// PostgreSQL could not be reached, refused TLS or its certificate, or refused the login;
    /// or a TLS file the URL names is unusable.
    #[cfg(feature = "postgres")]
    #[error(transparent)]
    Connect(sluice_connect::postgres::ConnectError),
    /// A statement failed, or the connection was lost.
    #[cfg(feature = "postgres")]
    #[error("{context}")]
    Postgres {
        /// What was being done.
        context: String,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// Redis failed or could not be reached.
    #[cfg(feature = "redis")]
    #[error("{context}")]
    Redis {
        /// What was being done.
        context: String,
        /// The driver's error.
        #[source]
        source: redis::RedisError,
    },
}

impl IdError {
    /// A short lowercase name of the kind, for metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            IdError::Layout(_) | IdError::Setup(_) => "config",
            IdError::ClockMovedBack { .. } => "clock_moved_back",
            IdError::ClockStalled { .. } => "clock_stalled",
            IdError::BeforeEpoch { .. } => "before_epoch",
            IdError::TimestampExhausted { .. } | IdError::Exhausted { .. } => "exhausted",
            IdError::WorkerNotHeld { .. } => "worker_not_held",
            #[cfg(feature = "postgres")]
            IdError::Postgres { .. } | IdError::Connect(_) => "postgres",
            #[cfg(feature = "redis")]
            IdError::Redis { .. } => "redis",
        }
    }

    /// Whether asking again later may succeed: a clock that catches up, a worker id held
    /// again, a server back. Config mistakes and exhausted value spaces do not pass.
    pub fn is_retryable(&self) -> bool {
        match self {
            IdError::ClockMovedBack { .. }
            | IdError::ClockStalled { .. }
            | IdError::BeforeEpoch { .. }
            | IdError::WorkerNotHeld { .. } => true,
            IdError::Layout(_)
            | IdError::TimestampExhausted { .. }
            | IdError::Exhausted { .. }
            | IdError::Setup(_) => false,
            #[cfg(feature = "postgres")]
            IdError::Postgres { source, .. } => source.as_db_error().is_none(),
            #[cfg(feature = "postgres")]
            IdError::Connect(source) => source.is_retryable(),
            #[cfg(feature = "redis")]
            IdError::Redis { source, .. } => {
                source.is_io_error() || source.is_connection_dropped() || source.is_timeout()
            }
        }
    }
}
