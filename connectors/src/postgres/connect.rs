//! Connecting to PostgreSQL from a connection URL: ordinary SQL sessions (`tokio-postgres`) and
//! replication sessions (`pgwire-replication`) from the same settings.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use sluice_pipeline::{Error, ErrorKind};
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::tls::NoTlsStream;
use tokio_postgres::{Client, Connection, Socket};

/// How long connecting may take unless the URL says (`connect_timeout=`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle time before TCP keepalives probe a silent connection.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);

/// Where a PostgreSQL database is and how to log in, parsed from a URL
/// (`postgres://user:password@host:port/dbname`) or a key-value string
/// (`host=… user=… dbname=…`). Displays without the password.
#[derive(Clone)]
pub struct Database {
    config: tokio_postgres::Config,
}

impl Database {
    /// Parses `url`; the error says what is wrong with it (never echoing a password).
    pub fn parse(url: &str) -> Result<Self, String> {
        let mut config = tokio_postgres::Config::from_str(url)
            .map_err(|e| format!("not a PostgreSQL connection URL: {e}"))?;
        if config.get_hosts().is_empty() {
            return Err("the URL names no host (write postgres://user@host:port/dbname)".into());
        }
        if config.get_ssl_mode() == SslMode::Require {
            return Err(
                "sslmode=require is not supported yet: sluice connects to PostgreSQL without TLS (use a local or tunnelled connection)".into(),
            );
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.keepalives_idle(KEEPALIVE_IDLE);
        if config.get_application_name().is_none() {
            // As replication sessions do: `pg_stat_activity` shows whose sessions these are.
            config.application_name("sluice");
        }
        Ok(Database { config })
    }

    /// Opens an ordinary SQL session; its connection runs on its own task.
    pub async fn connect(&self) -> Result<Client, Error> {
        let (client, connection) = self.connect_raw().await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "postgresql connection ended");
            }
        });
        Ok(client)
    }

    /// Opens an SQL session and hands back its connection, for a caller that drives it itself
    /// (to receive `LISTEN` notifications with [`Connection::poll_message`]).
    pub async fn connect_raw(&self) -> Result<(Client, Connection<Socket, NoTlsStream>), Error> {
        self.config
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| connect_error(format!("connecting to {self}"), e))
    }

    /// Settings for a replication session on `slot` with `publication`.
    pub fn replication(
        &self,
        slot: &str,
        publication: &str,
    ) -> Result<pgwire_replication::ReplicationConfig, Error> {
        let host = match self.config.get_hosts().first() {
            Some(Host::Tcp(host)) => host.clone(),
            Some(Host::Unix(dir)) => dir.display().to_string(),
            None => return Err(Error::new(ErrorKind::Config, "the URL names no host")),
        };
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        let user = self.config.get_user().unwrap_or("postgres");
        let password = self
            .config
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default();
        let dbname = self.config.get_dbname().unwrap_or(user);
        Ok(pgwire_replication::ReplicationConfig::new(
            host,
            user,
            password,
            dbname,
            slot,
            publication,
        )
        .with_port(port)
        .with_tls(pgwire_replication::TlsConfig::disabled())
        .with_application_name("sluice"))
    }
}

impl fmt::Display for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = match self.config.get_hosts().first() {
            Some(Host::Tcp(host)) => host.clone(),
            Some(Host::Unix(dir)) => dir.display().to_string(),
            None => String::new(),
        };
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        write!(
            f,
            "postgres://{}@{host}:{port}/{}",
            self.config.get_user().unwrap_or(""),
            self.config.get_dbname().unwrap_or("")
        )
    }
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A connection-level failure (retryable).
pub fn connect_error(context: String, cause: impl Into<sluice_pipeline::error::BoxError>) -> Error {
    Error::new(ErrorKind::Connect, context).with_source(cause)
}

/// `"schema"."name"` from `schema.name` (or `name`, meaning `public`), quoting each part.
pub fn quote_table(table: &str) -> String {
    let (schema, name) = split_table(table);
    format!("{}.{}", quote_ident(schema), quote_ident(name))
}

/// `(schema, name)` from `schema.name`, `public` when no schema is given.
pub fn split_table(table: &str) -> (&str, &str) {
    table.split_once('.').unwrap_or(("public", table))
}

/// An identifier in double quotes, with embedded quotes doubled.
pub fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls_and_hides_passwords() {
        let db = Database::parse("postgres://app:s3cret@db.local:6543/orders").unwrap();
        assert_eq!(db.to_string(), "postgres://app@db.local:6543/orders");
        assert!(!format!("{db:?}").contains("s3cret"));
        let repl = db.replication("slot", "pub").unwrap();
        assert_eq!((repl.host.as_str(), repl.port), ("db.local", 6543));
        assert_eq!(
            (repl.user.as_str(), repl.password.as_str()),
            ("app", "s3cret")
        );
        assert_eq!(repl.database, "orders");
    }

    #[test]
    fn refuses_what_it_cannot_use() {
        assert!(Database::parse("mysql://x").is_err());
        let tls = Database::parse("postgres://h/db?sslmode=require").unwrap_err();
        assert!(tls.contains("sslmode=require"), "{tls}");
    }

    #[test]
    fn quotes_table_names() {
        assert_eq!(quote_table("public.outbox"), "\"public\".\"outbox\"");
        assert_eq!(quote_table("outbox"), "\"public\".\"outbox\"");
        assert_eq!(quote_table("s.we\"ird"), "\"s\".\"we\"\"ird\"");
    }
}
