//! Talking to PostgreSQL: the connection string as configs write it, connecting, the one place
//! that decides which database errors are worth retrying, and the backoff between attempts.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use sluice_pipeline::ErrorKind;
use tokio_postgres::error::SqlState;
use tokio_postgres::tls::NoTlsStream;
use tokio_postgres::{Client, Connection, NoTls, Socket};
use tracing::Instrument;

/// How long a connection attempt may take when the connection string does not say.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// First delay before reconnecting after a failure.
pub const BACKOFF_INITIAL: Duration = Duration::from_millis(100);
/// Longest delay between reconnection attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// A PostgreSQL connection string, `postgres://user:password@host:port/dbname?options` or
/// `host=… user=… dbname=…`. Parsed when the config is read, so a malformed one is a config
/// error; its `Debug` output hides the password.
#[derive(Clone)]
pub struct ConnectionUrl(tokio_postgres::Config);

impl ConnectionUrl {
    /// The parsed settings.
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.0
    }

    /// The settings for a connection of `component`: the string's own, plus an
    /// `application_name` naming the component (so `pg_stat_activity` shows whose connection
    /// it is) and a connect timeout, where the string sets none.
    fn for_component(&self, component: &str) -> tokio_postgres::Config {
        let mut config = self.0.clone();
        if config.get_application_name().is_none() {
            config.application_name(format!("sluice {component}"));
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
        }
        config
    }
}

impl fmt::Debug for ConnectionUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // tokio-postgres prints the password as `_`.
        fmt::Debug::fmt(&self.0, f)
    }
}

/// A string that is not a PostgreSQL connection string.
#[derive(Debug, thiserror::Error)]
#[error(
    "not a PostgreSQL connection string (write postgres://user@host:port/dbname or host=… user=… dbname=…)"
)]
pub struct UrlError(#[source] tokio_postgres::Error);

impl FromStr for ConnectionUrl {
    type Err = UrlError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        text.parse().map(ConnectionUrl).map_err(UrlError)
    }
}

impl<'de> Deserialize<'de> for ConnectionUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        // The cause names the offending option, never the string (which may hold a password).
        text.parse()
            .map_err(|e: UrlError| serde::de::Error::custom(format!("{e}: {}", e.0)))
    }
}

/// A failure talking to PostgreSQL.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DbError {
    /// The server could not be reached, or refused the connection.
    #[error("cannot connect to PostgreSQL")]
    Connect(#[source] tokio_postgres::Error),
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
            DbError::Connect(source) | DbError::Statement { source, .. } => classify(source),
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
fn classify(error: &tokio_postgres::Error) -> ErrorKind {
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

/// Connects as `component` and drives the connection on its own task; the client's requests
/// fail once the connection is lost.
pub async fn connect(url: &ConnectionUrl, component: &str) -> Result<Client, DbError> {
    let (client, connection) = connect_raw(url, component).await?;
    tokio::spawn(
        async move {
            // A failure surfaces through the client's next request.
            let _ = connection.await;
        }
        .in_current_span(),
    );
    Ok(client)
}

/// Connects as `component` and returns the connection for the caller to drive (to receive
/// notifications with [`Connection::poll_message`]).
pub async fn connect_raw(
    url: &ConnectionUrl,
    component: &str,
) -> Result<(Client, Connection<Socket, NoTlsStream>), DbError> {
    url.for_component(component)
        .connect(NoTls)
        .await
        .map_err(DbError::Connect)
}

/// Delays between attempts after failures: doubling from [`BACKOFF_INITIAL`] up to
/// [`BACKOFF_MAX`], back to the start after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: BACKOFF_INITIAL,
        }
    }
}

impl Backoff {
    /// The delay before the next attempt, lengthening the one after.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        delay
    }

    /// An attempt succeeded: the next failure waits the shortest delay again.
    pub fn reset(&mut self) {
        self.next = BACKOFF_INITIAL;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_forms_and_hides_the_password() {
        let url: ConnectionUrl = "postgres://relay:s3cret@db.internal:6432/shop"
            .parse()
            .unwrap();
        assert_eq!(url.config().get_dbname(), Some("shop"));
        assert_eq!(url.config().get_ports(), [6432]);
        let shown = format!("{url:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        let kv: ConnectionUrl = "host=127.0.0.1 user=postgres dbname=shop".parse().unwrap();
        assert_eq!(kv.config().get_user(), Some("postgres"));
    }

    #[test]
    fn a_bad_string_is_refused_without_echoing_it() {
        let error = "postgres://u:hunter2@h:notaport/db"
            .parse::<ConnectionUrl>()
            .unwrap_err();
        let text = sluice_pipeline::error::chain(&error);
        assert!(
            text.contains("not a PostgreSQL connection string"),
            "{text}"
        );
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn component_settings_fill_only_what_is_unset() {
        let url: ConnectionUrl = "postgres://u@h/db?application_name=mine".parse().unwrap();
        let config = url.for_component("outbox");
        assert_eq!(config.get_application_name(), Some("mine"));
        assert_eq!(config.get_connect_timeout(), Some(&DEFAULT_CONNECT_TIMEOUT));
        let url: ConnectionUrl = "postgres://u@h/db".parse().unwrap();
        assert_eq!(
            url.for_component("outbox").get_application_name(),
            Some("sluice outbox")
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut backoff = Backoff::default();
        let delays: Vec<_> = (0..8).map(|_| backoff.next_delay()).collect();
        assert_eq!(delays[0], BACKOFF_INITIAL);
        assert_eq!(delays[1], BACKOFF_INITIAL * 2);
        assert_eq!(*delays.last().unwrap(), BACKOFF_MAX);
        backoff.reset();
        assert_eq!(backoff.next_delay(), BACKOFF_INITIAL);
    }
}
