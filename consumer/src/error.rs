//! The kit's error: what failed, with the cause attached.

/// A boxed error, what handlers return.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why the consumer stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A URL of the config cannot be used: it does not parse, or a TLS file it names is
    /// missing or not PEM. The message names the URL parameter, never the password.
    #[error("{field}: {problem}")]
    Url {
        /// The config field: `amqp_url` or `database_url`.
        field: &'static str,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// RabbitMQ could not be reached, refused TLS or its certificate, or refused the login.
    #[error("rabbitmq: connecting to {broker}{}", remedy.as_ref().map(|r| format!(" ({r})")).unwrap_or_default())]
    BrokerConnect {
        /// The broker, shown without the password.
        broker: String,
        /// What to change, when the failure is about TLS.
        remedy: Option<String>,
        /// The cause.
        #[source]
        source: lapin::Error,
    },
    /// PostgreSQL could not be reached, refused TLS or its certificate, or refused the login;
    /// or a TLS file the URL names is unusable.
    #[error("postgresql")]
    DatabaseConnect(#[source] sluice_connect::postgres::ConnectError),
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
            Error::Broker { .. } | Error::BrokerConnect { .. } | Error::Cancelled { .. } => true,
            Error::Url { .. } => false,
            Error::DatabaseConnect(source) => source.is_retryable(),
            Error::Database { source, .. } => source.as_db_error().is_none(),
        }
    }
}
