//! Sessions with PostgreSQL as the relay opens them: ordinary SQL sessions and replication
//! sessions from one connection URL, with the same TLS, failing with the engine's error.
//!
//! The URL itself — its `sslmode`, the rustls settings, a `Debug` without the password — is
//! `sluice-connect`'s [`Database`], shared with the consumer kit and the id generators.

use sluice_pipeline::{Error, ErrorKind};
use tokio_postgres::config::Host;
use tokio_postgres::{Client, Connection, Socket};

use sluice_connect::postgres::tls::RustlsStream;
pub use sluice_connect::postgres::{ConnectError, Database, PostgresUrl, SslMode};
use sluice_connect::tls::Verify;

/// The sessions the relay opens on a [`Database`].
pub trait Sessions {
    /// Opens an ordinary SQL session; its connection runs on its own task.
    fn connect(&self) -> impl Future<Output = Result<Client, Error>> + Send;

    /// Opens an SQL session and hands back its connection, for a caller that drives it itself
    /// (to receive `LISTEN` notifications with [`Connection::poll_message`]).
    #[allow(clippy::type_complexity)]
    fn connect_raw(
        &self,
    ) -> impl Future<Output = Result<(Client, Connection<Socket, RustlsStream<Socket>>), Error>> + Send;

    /// Settings for a replication session on `slot` with `publication`, with the same TLS
    /// as the SQL sessions.
    fn replication(
        &self,
        slot: &str,
        publication: &str,
    ) -> Result<pgwire_replication::ReplicationConfig, Error>;
}

impl Sessions for Database {
    async fn connect(&self) -> Result<Client, Error> {
        self.open().await.map_err(engine_error)
    }

    async fn connect_raw(
        &self,
    ) -> Result<(Client, Connection<Socket, RustlsStream<Socket>>), Error> {
        self.open_raw().await.map_err(engine_error)
    }

    fn replication(
        &self,
        slot: &str,
        publication: &str,
    ) -> Result<pgwire_replication::ReplicationConfig, Error> {
        let config = self.config();
        let host = match config.get_hosts().first() {
            Some(Host::Tcp(host)) => host.clone(),
            Some(Host::Unix(dir)) => dir.display().to_string(),
            None => return Err(Error::new(ErrorKind::Config, "the URL names no host")),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let user = config.get_user().unwrap_or("postgres");
        let password = config
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default();
        let dbname = config.get_dbname().unwrap_or(user);
        Ok(pgwire_replication::ReplicationConfig::new(
            host,
            user,
            password,
            dbname,
            slot,
            publication,
        )
        .with_port(port)
        .with_tls(replication_tls(self)?)
        .with_application_name("sluice"))
    }
}

/// The replication client's TLS settings; it reads the files itself, so they are checked
/// here first for an error that names the parameter.
fn replication_tls(database: &Database) -> Result<pgwire_replication::TlsConfig, Error> {
    use pgwire_replication::config::SslMode as Mode;
    let ssl = database.ssl();
    let options = ssl.options();
    for file in options
        .ca
        .iter()
        .chain(options.identity.iter().flat_map(|(c, k)| [c, k]))
    {
        file.readable()
            .map_err(|m| Error::new(ErrorKind::Config, format!("{database}: {m}")))?;
    }
    // The replication client builds its rustls settings on the process's default provider.
    sluice_connect::tls::provider();
    let mode = match (ssl.mode, options.verify) {
        (SslMode::Disable, _) => Mode::Disable,
        (SslMode::Prefer, _) => Mode::Prefer,
        (_, Verify::Nothing) => Mode::Require,
        (_, Verify::Chain) => Mode::VerifyCa,
        (_, Verify::Full) => Mode::VerifyFull,
    };
    let mut tls = pgwire_replication::TlsConfig {
        mode,
        ca_pem_path: ssl.root_cert.clone(),
        ..pgwire_replication::TlsConfig::default()
    };
    if let Some((cert, key)) = &ssl.identity {
        tls = tls.with_client_cert(cert, key);
    }
    Ok(tls)
}

/// A failed connection as the engine classifies it: unusable TLS files stop the pipeline, a
/// server out of reach is retried.
fn engine_error(error: ConnectError) -> Error {
    match error {
        ConnectError::Connect { context, source } => connect_error(context, source),
        other => Error::new(ErrorKind::Config, other.to_string()),
    }
}

/// A connection-level failure (retryable).
pub fn connect_error(context: String, cause: impl Into<sluice_pipeline::error::BoxError>) -> Error {
    Error::new(ErrorKind::Connect, context).with_source(cause)
}

/// An identifier in double quotes, with embedded quotes doubled.
pub fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replication_sessions_log_in_as_the_url_says() {
        let db = Database::parse("postgres://app:s3cret@db.local:6543/orders").unwrap();
        let repl = db.replication("slot", "pub").unwrap();
        assert_eq!((repl.host.as_str(), repl.port), ("db.local", 6543));
        assert_eq!(
            (repl.user.as_str(), repl.password.as_str()),
            ("app", "s3cret")
        );
        assert_eq!(repl.database, "orders");
    }
}
