//! The kit's error: what failed, with the cause attached.

/// A boxed error, what handlers return.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why the consumer stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// RabbitMQ refused or dropped the connection, or an AMQP operation failed.
    #[error("rabbitmq: {context}")]
    Broker {
        /// What was being done.
        context: &'static str,
        /// The cause.
        #[source]
        source: lapin::Error,
    },
    /// PostgreSQL refused or dropped the connection, or a statement failed.
    #[error("postgresql: {context}")]
    Database {
        /// What was being done.
        context: &'static str,
        /// The cause.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The consumer's subscription was cancelled by the broker (the queue was deleted).
    #[error("rabbitmq cancelled the subscription to {queue}")]
    Cancelled {
        /// The queue.
        queue: String,
    },
}

impl Error {
    pub(crate) fn broker(context: &'static str) -> impl FnOnce(lapin::Error) -> Error {
        move |source| Error::Broker { context, source }
    }

    pub(crate) fn database(context: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Error {
        move |source| Error::Database { context, source }
    }

    /// Whether reconnecting may help (a lost connection), as opposed to a refusal.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Broker { .. } | Error::Cancelled { .. } => true,
            Error::Database { source, .. } => source.as_db_error().is_none(),
        }
    }
}
