//! PostgreSQL for tests: a database of its own per test, created on the server `DATABASE_URL`
//! names (`scripts/services.sh env` sets it) and dropped when the test ends, failed or not.
//!
//! Works from plain and from async tests alike: the synchronous helpers run their statements
//! on a thread and runtime of their own.

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result};
use tokio_postgres::{Client, NoTls};

/// The server used when `DATABASE_URL` is not set.
pub const DEFAULT_SERVER_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// PostgreSQL's limit on identifier length, in bytes.
const MAX_NAME: usize = 63;

/// The server to create test databases on: `DATABASE_URL`, or [`DEFAULT_SERVER_URL`].
pub fn server_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_SERVER_URL.to_owned())
}

/// A database that exists for one test: `sluice_test_<test>_<pid>_<n>`.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    url: String,
    server: String,
}

impl TestDatabase {
    /// Creates an empty database for `test`.
    pub fn create(test: &str) -> Self {
        Self::create_with(test, "")
    }

    /// Creates a database for `test` with `CREATE DATABASE` `options`, such as
    /// `ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0`.
    pub fn create_with(test: &str, options: &str) -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let suffix = format!(
            "_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let test: String = test
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .take(MAX_NAME - "sluice_test_".len() - suffix.len())
            .collect();
        let name = format!("sluice_test_{test}{suffix}");
        let server = server_url();
        let (at, sql) = (server.clone(), format!("CREATE DATABASE {name} {options}"));
        on_own_runtime(move || async move {
            connect(&at).await?.batch_execute(&sql).await?;
            Ok(())
        })
        .with_context(|| format!("creating database {name} on {server}"))
        .unwrap();
        TestDatabase {
            url: with_dbname(&server, &name),
            name,
            server,
        }
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A connection string for it, in the form the server's was written in.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Connects to it (from an async test).
    pub async fn connect(&self) -> Client {
        connect(&self.url).await.unwrap()
    }

    /// Runs `sql` (one or more statements) in it.
    pub fn execute(&self, sql: &str) {
        let url = self.url.clone();
        let sql = sql.to_owned();
        on_own_runtime(move || async move {
            connect(&url).await?.batch_execute(&sql).await?;
            Ok(())
        })
        .with_context(|| format!("running SQL in {}", self.name))
        .unwrap();
    }

    /// The `bigint` the single-value query `sql` returns.
    pub fn query_i64(&self, sql: &str) -> i64 {
        let url = self.url.clone();
        let sql = sql.to_owned();
        on_own_runtime(move || async move {
            let row = connect(&url).await?.query_one(&sql, &[]).await?;
            Ok(row.try_get(0)?)
        })
        .with_context(|| format!("querying {}", self.name))
        .unwrap()
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let server = self.server.clone();
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if let Err(e) = on_own_runtime(move || async move {
            connect(&server).await?.batch_execute(&sql).await?;
            Ok(())
        }) {
            eprintln!("could not drop test database {}: {e:#}", self.name);
        }
    }
}

/// Runs the future `make` returns to completion on a new thread with a runtime of its own, so
/// it can be called from synchronous code and from inside another runtime alike.
pub fn on_own_runtime<F, T>(make: impl FnOnce() -> F + Send + 'static) -> Result<T>
where
    F: Future<Output = Result<T>>,
    T: Send + 'static,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(make())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the SQL thread panicked"))?
}

/// Connects to `url` and drives the connection on the current runtime.
pub async fn connect(url: &str) -> Result<Client> {
    let (client, connection) = url
        .parse::<tokio_postgres::Config>()?
        .connect(NoTls)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// `server` (a URL or a `key=value` string) pointed at database `name`.
fn with_dbname(server: &str, name: &str) -> String {
    let Some((scheme, rest)) = server.split_once("://") else {
        return format!("{server} dbname={name}");
    };
    let (location, query) = match rest.split_once('?') {
        Some((location, query)) => (location, format!("?{query}")),
        None => (rest, String::new()),
    };
    let authority = location.split_once('/').map_or(location, |(a, _)| a);
    format!("{scheme}://{authority}/{name}{query}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_either_form_at_the_database() {
        assert_eq!(
            with_dbname("postgres://u@h:5432/postgres", "t1"),
            "postgres://u@h:5432/t1"
        );
        assert_eq!(with_dbname("postgres://u@h", "t1"), "postgres://u@h/t1");
        assert_eq!(
            with_dbname("postgresql://u@h/db?sslmode=disable", "t1"),
            "postgresql://u@h/t1?sslmode=disable"
        );
        assert_eq!(
            with_dbname("host=h user=u", "t1"),
            "host=h user=u dbname=t1"
        );
    }
}
