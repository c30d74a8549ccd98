//! Where a PostgreSQL database is and how to log in, from a connection URL, and ordinary SQL
//! sessions (`tokio-postgres`) over rustls as its `sslmode` asks. The relay builds its
//! replication sessions from the same settings ([`Database::ssl`], [`Database::config`]).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use tokio_postgres::config::Host;
use tokio_postgres::{Client, Connection, Socket};

use super::tls::{MakeRustls, RustlsStream};
use crate::tls::{PemFile, TlsOptions, Verify};
use crate::url::{ConnectionUrl, ParseUrl, check_userinfo, query_pairs};

/// How long connecting may take unless the URL says (`connect_timeout=`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle time before TCP keepalives probe a silent connection.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
/// The URL parameters sluice reads itself (TLS runs on rustls, not on `tokio-postgres`'s
/// settings); every other parameter goes to `tokio-postgres`, which refuses unknown ones.
const TLS_PARAMS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// PostgreSQL's `sslmode`, as libpq reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// TLS when the server offers it, without verifying its certificate; plain otherwise.
    /// The default, as in libpq.
    Prefer,
    /// TLS or nothing; the certificate is verified against `sslrootcert` only when one is given.
    Require,
    /// TLS with a certificate signed by a trusted CA, whatever host it names.
    VerifyCa,
    /// TLS with a certificate signed by a trusted CA that names the host connected to.
    VerifyFull,
}

impl SslMode {
    /// The `sslmode` values, as written in a URL.
    pub const NAMES: [&str; 5] = ["disable", "prefer", "require", "verify-ca", "verify-full"];

    fn parse(value: &str) -> Result<Self, String> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(format!(
                    "sslmode={other:?} is not an sslmode: use one of {}",
                    Self::NAMES.join(", ")
                ));
            }
        })
    }

    fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// The TLS parameters of a connection URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ssl {
    /// `sslmode`.
    pub mode: SslMode,
    /// `sslrootcert`: the CAs trusted to sign the server's certificate.
    pub root_cert: Option<PathBuf>,
    /// `sslcert` and `sslkey`: the client certificate and its key (both or neither).
    pub identity: Option<(PathBuf, PathBuf)>,
}

impl Ssl {
    fn from_params(params: Vec<(String, String)>) -> Result<Self, String> {
        let mut mode = SslMode::Prefer;
        let (mut root_cert, mut cert, mut key) = (None, None, None);
        for (name, value) in params {
            match name.as_str() {
                "sslmode" => mode = SslMode::parse(&value)?,
                "sslrootcert" => root_cert = Some(PathBuf::from(value)),
                "sslcert" => cert = Some(PathBuf::from(value)),
                _ => key = Some(PathBuf::from(value)),
            }
        }
        let identity = match (cert, key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            (Some(_), None) => {
                return Err("sslcert is set without sslkey: set sslkey to the client certificate's private key file".into());
            }
            (None, Some(_)) => {
                return Err(
                    "sslkey is set without sslcert: set sslcert to the client certificate file"
                        .into(),
                );
            }
        };
        Ok(Ssl {
            mode,
            root_cert,
            identity,
        })
    }

    /// What the rustls settings are built from: how far to verify, the CA and client files.
    pub fn options(&self) -> TlsOptions {
        let verify = match self.mode {
            SslMode::VerifyFull => Verify::Full,
            SslMode::VerifyCa => Verify::Chain,
            // As libpq: `require` with a CA file verifies the chain.
            SslMode::Require if self.root_cert.is_some() => Verify::Chain,
            SslMode::Require | SslMode::Prefer | SslMode::Disable => Verify::Nothing,
        };
        TlsOptions {
            verify,
            ca: self
                .root_cert
                .as_ref()
                .map(|p| PemFile::new("sslrootcert", p)),
            identity: self
                .identity
                .as_ref()
                .map(|(cert, key)| (PemFile::new("sslcert", cert), PemFile::new("sslkey", key))),
        }
    }
}

/// Where a PostgreSQL database is and how to log in, parsed from a URL
/// (`postgres://user:password@host:port/dbname?sslmode=verify-full&sslrootcert=ca.pem`) or a
/// key-value string (`host=… user=… dbname=… sslmode=…`). Displays and debugs without the
/// password.
#[derive(Clone)]
pub struct Database {
    config: tokio_postgres::Config,
    ssl: Ssl,
}

impl Database {
    /// Parses `url`; the error says what is wrong with it (never echoing a password).
    pub fn parse(url: &str) -> Result<Self, String> {
        check_userinfo(url)?;
        let (rest, params) = take_params(url, &TLS_PARAMS)?;
        let ssl = Ssl::from_params(params)?;
        let mut config = tokio_postgres::Config::from_str(&rest).map_err(|e| {
            let reason = crate::chain(&e);
            if url.contains(&reason) || reason.contains("password") {
                "not a PostgreSQL connection URL".to_owned()
            } else {
                format!("not a PostgreSQL connection URL: {reason}")
            }
        })?;
        if config.get_hosts().is_empty() {
            return Err("the URL names no host (write postgres://user@host:port/dbname)".into());
        }
        config.ssl_mode(match ssl.mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        });
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.keepalives_idle(KEEPALIVE_IDLE);
        if config.get_application_name().is_none() {
            // As replication sessions do: `pg_stat_activity` shows whose sessions these are.
            config.application_name("sluice");
        }
        Ok(Database { config, ssl })
    }

    /// The URL's `sslmode` (`prefer` when it sets none).
    pub fn ssl_mode(&self) -> SslMode {
        self.ssl.mode
    }

    /// The URL's TLS parameters.
    pub fn ssl(&self) -> &Ssl {
        &self.ssl
    }

    /// The driver's settings: host, port, user, password, database and the rest of the URL.
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// Opens an ordinary SQL session; its connection runs on its own task.
    pub async fn open(&self) -> Result<Client, ConnectError> {
        let (client, connection) = self.open_raw().await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "postgresql connection ended");
            }
        });
        Ok(client)
    }

    /// Opens an SQL session and hands back its connection, for a caller that drives it itself
    /// (to receive `LISTEN` notifications with [`Connection::poll_message`]).
    pub async fn open_raw(
        &self,
    ) -> Result<(Client, Connection<Socket, RustlsStream<Socket>>), ConnectError> {
        let tls = self
            .ssl
            .options()
            .client_config()
            .map_err(|problem| ConnectError::Tls {
                database: self.to_string(),
                problem,
            })?;
        self.config
            .connect(MakeRustls::new(tls))
            .await
            .map_err(|source| {
                let mut context = format!("connecting to {self}");
                if let Some(remedy) = self.remedy(&source) {
                    context = format!("{context} ({remedy})");
                }
                ConnectError::Connect { context, source }
            })
    }

    /// What to change when connecting failed over TLS.
    fn remedy(&self, error: &tokio_postgres::Error) -> Option<String> {
        if let Some(remedy) = crate::tls::remedy(error, "sslrootcert") {
            return Some(remedy);
        }
        let text = crate::chain(error);
        text.contains("server does not support TLS").then(|| {
            format!(
                "the server does not accept TLS and sslmode={} requires it: enable ssl on the server, or lower sslmode",
                self.ssl.mode.name()
            )
        })
    }
}

/// Splits the parameters named in `names` off a URL's query string or a key-value string:
/// the rest, and each taken parameter decoded, in order.
fn take_params(url: &str, names: &[&str]) -> Result<(String, Vec<(String, String)>), String> {
    let mut taken = Vec::new();
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else {
            return Ok((url.to_owned(), taken));
        };
        let mut kept = Vec::new();
        for (name, value, pair) in query_pairs(query)? {
            if names.contains(&name.as_str()) {
                taken.push((name, value));
            } else {
                kept.push(pair);
            }
        }
        let rest = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        return Ok((rest, taken));
    }
    let mut rest = String::new();
    for (name, value, raw) in key_values(url)? {
        if names.contains(&name.as_str()) {
            taken.push((name, value));
        } else {
            rest.push_str(raw);
            rest.push(' ');
        }
    }
    Ok((rest, taken))
}

/// The pairs of a libpq key-value string (`host=h password='a b'`): name, value (unquoted)
/// and the pair as written.
fn key_values(text: &str) -> Result<Vec<(String, String, &str)>, String> {
    let mut pairs = Vec::new();
    let mut rest = text.trim_start();
    while !rest.is_empty() {
        let start = rest;
        let eq = rest
            .find('=')
            .ok_or("a key-value connection string has a word without '=' (write key=value)")?;
        let name = rest[..eq].trim().to_owned();
        rest = rest[eq + 1..].trim_start();
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let quoted = rest.starts_with('\'');
        if quoted {
            chars.next();
        }
        let mut end = rest.len();
        let mut closed = !quoted;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(escaped);
                    }
                }
                '\'' if quoted => {
                    end = i + 1;
                    closed = true;
                    break;
                }
                c if c.is_whitespace() && !quoted => {
                    end = i;
                    break;
                }
                c => value.push(c),
            }
        }
        if !closed {
            return Err(format!(
                "the value of {name} opens a quote it does not close"
            ));
        }
        let raw_len = start.len() - rest.len() + end;
        pairs.push((name, value, &start[..raw_len]));
        rest = rest[end..].trim_start();
    }
    Ok(pairs)
}

/// A PostgreSQL URL in a config, whose password never appears in `Debug` output.
pub type PostgresUrl = ConnectionUrl<Database>;

impl ParseUrl for Database {
    fn parse_url(url: &str) -> Result<Self, String> {
        Database::parse(url)
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
        )?;
        if self.ssl.mode != SslMode::Prefer {
            write!(f, "?sslmode={}", self.ssl.mode.name())?;
        }
        Ok(())
    }
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why no SQL session was opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The TLS files the URL names cannot be used (missing, not PEM): nothing was sent.
    #[error("{database}: {problem}")]
    Tls {
        /// The database, shown without its password.
        database: String,
        /// What is wrong with which file, naming its URL parameter.
        problem: String,
    },
    /// The server could not be reached, refused TLS or its certificate, or refused the login.
    #[error("{context}")]
    Connect {
        /// `connecting to …`, with the remedy when the failure is about TLS.
        context: String,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
}

impl ConnectError {
    /// Whether trying again may help: a server out of reach may come back, unusable files do
    /// not mend themselves.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ConnectError::Connect { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls_and_hides_passwords() {
        let db = Database::parse("postgres://app:s3cret@db.local:6543/orders").unwrap();
        assert_eq!(db.to_string(), "postgres://app@db.local:6543/orders");
        assert!(!format!("{db:?}").contains("s3cret"));
        assert_eq!(db.config().get_password(), Some(&b"s3cret"[..]));
        let url = PostgresUrl::new("postgres://app:s3cret@db.local/orders");
        assert_eq!(
            format!("{url:?}"),
            "\"postgres://app@db.local:5432/orders\""
        );
    }

    #[test]
    fn refuses_what_it_cannot_use() {
        assert!(Database::parse("mysql://x").is_err());
        let mode = Database::parse("postgres://h/db?sslmode=verify-all").unwrap_err();
        assert!(
            mode.contains("sslmode=\"verify-all\"") && mode.contains("verify-full"),
            "{mode}"
        );
        let alone = Database::parse("postgres://h/db?sslcert=c.pem").unwrap_err();
        assert!(alone.contains("sslkey"), "{alone}");
        let unknown = Database::parse("postgres://h/db?sslmod=require").unwrap_err();
        assert!(unknown.contains("sslmod"), "{unknown}");
    }

    #[test]
    fn reads_tls_parameters_from_urls_and_key_values() {
        let url = Database::parse(
            "postgres://u:pw@h/db?application_name=a&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&connect_timeout=3",
        )
        .unwrap();
        assert_eq!(url.ssl_mode(), SslMode::VerifyFull);
        assert_eq!(
            url.ssl.root_cert.as_deref(),
            Some(std::path::Path::new("/etc/ca.pem"))
        );
        assert_eq!(url.config.get_application_name(), Some("a"));
        assert_eq!(
            url.to_string(),
            "postgres://u@h:5432/db?sslmode=verify-full"
        );
        let kv = Database::parse(
            "host=h user=u password='a b\\'c' sslmode=verify-ca sslcert=/c.pem sslkey='/k.pem' dbname=db",
        )
        .unwrap();
        assert_eq!(kv.ssl_mode(), SslMode::VerifyCa);
        assert_eq!(kv.config.get_password(), Some(&b"a b'c"[..]));
        assert_eq!(
            kv.ssl.identity.as_ref().map(|(c, _)| c.as_path()),
            Some(std::path::Path::new("/c.pem"))
        );
        assert_eq!(kv.ssl.options().verify, Verify::Chain);
        let plain = Database::parse("postgres://u@h/db").unwrap();
        assert_eq!(plain.ssl_mode(), SslMode::Prefer);
    }

    #[test]
    fn unescaped_userinfo_is_refused() {
        let error = Database::parse("postgres://u:s3c@r3t@h/db").unwrap_err();
        assert!(
            error.contains("percent-encode") && !error.contains("r3t"),
            "{error}"
        );
    }
}
