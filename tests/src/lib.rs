//! Harness for sluice's end-to-end tests: a scratch directory per test, the `sluice` binary
//! run as a real process, and waits on what it reports (its API, its files, its exit), never
//! on the clock.

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod rabbitmq;
pub mod webdriver;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// How long any single wait may take before the test fails (a bound on failure, not a
/// synchronization device).
pub const PATIENCE: Duration = Duration::from_secs(60);

/// A directory that exists for one test and is removed after it.
#[derive(Debug)]
pub struct Scratch {
    path: PathBuf,
}

impl Scratch {
    /// A new empty directory named after `test`.
    pub fn new(test: &str) -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "sluice-test-{test}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Scratch { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside it.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Writes `text` to `name` inside it and returns the path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The CA of the local servers' TLS listeners (`SLUICE_TEST_CA`, as `scripts/services.sh env`
/// prints it).
pub fn test_ca() -> PathBuf {
    PathBuf::from(
        std::env::var("SLUICE_TEST_CA")
            .expect("SLUICE_TEST_CA is set (eval \"$(scripts/services.sh env)\")"),
    )
}

/// `DATABASE_TLS_URL` (the services script's SCRAM role, `verify-full` against its CA)
/// pointed at database `db`, and that role's password.
pub fn database_tls_url(db: &str) -> (String, String) {
    let url = std::env::var("DATABASE_TLS_URL")
        .expect("DATABASE_TLS_URL is set (eval \"$(scripts/services.sh env)\")");
    let (base, query) = url.split_once('?').expect("the URL's TLS parameters");
    assert!(
        query.contains("sslmode=verify-full"),
        "the tests need verify-full"
    );
    let base = base.rsplit_once('/').map_or(base, |(b, _)| b);
    let password = base
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .map(|(_, p)| p.to_owned())
        .expect("the URL's password");
    (format!("{base}/{db}?{query}"), password)
}

/// The text of `error` and of each cause under it, joined by `: `.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

/// A free loopback port (bound, read, released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The `sluice` binary under test.
#[derive(Debug, Clone)]
pub struct Binary(pub PathBuf);

impl Binary {
    /// Runs `sluice <args>` to completion.
    pub fn output(&self, args: &[&str]) -> Output {
        Command::new(&self.0)
            .args(args)
            .env("SLUICE_LOG", "info")
            .output()
            .unwrap()
    }

    /// Starts `sluice run <config>` in the background, logging to `<config>.log`.
    pub fn spawn(&self, config: &Path) -> Running {
        self.spawn_with(config, &[])
    }

    /// Starts `sluice <extra args> run <config>` in the background.
    pub fn spawn_with(&self, config: &Path, extra: &[&str]) -> Running {
        self.spawn_all(&[config], extra)
    }

    /// Starts `sluice <extra args> run <configs…>` in the background, logging to the first
    /// config's `.log`.
    pub fn spawn_all(&self, configs: &[&Path], extra: &[&str]) -> Running {
        let mut args: Vec<&OsStr> = extra.iter().map(OsStr::new).collect();
        args.push(OsStr::new("run"));
        args.extend(configs.iter().map(|c| c.as_os_str()));
        self.spawn_logged(&args, &configs[0].with_extension("log"))
    }

    /// Starts `sluice run <config>` in the background with these environment variables set
    /// (a config that reads them, such as the examples'), logging to `<config>.log`.
    pub fn spawn_env(&self, config: &Path, env: &[(&str, &str)]) -> Running {
        let args = [OsStr::new("run"), config.as_os_str()];
        self.start(&args, env, &config.with_extension("log"))
    }

    /// Starts `sluice <args>` in the background, logging to `log`.
    pub fn spawn_logged(&self, args: &[&OsStr], log: &Path) -> Running {
        self.start(args, &[], log)
    }

    fn start(&self, args: &[&OsStr], env: &[(&str, &str)], log: &Path) -> Running {
        let stderr = std::fs::File::create(log).unwrap();
        let log = log.to_owned();
        let child = Command::new(&self.0)
            .args(args)
            .envs(env.iter().copied())
            .env("SLUICE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        Running { child, log }
    }
}

/// A running `sluice` process.
#[derive(Debug)]
pub struct Running {
    child: Child,
    log: PathBuf,
}

impl Running {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (`TERM`, `INT`, `KILL`).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit.
    pub fn wait(&mut self) -> Result<ExitStatus> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!(
                    "sluice did not exit within {PATIENCE:?}; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Peak resident memory (VmHWM) in KiB, while it runs.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A minimal HTTP GET (the API answers plain HTTP/1.1 on loopback): (status, body).
pub fn http_get(address: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    http_request(address, "GET", path, None, Duration::from_secs(5))
}

/// A minimal HTTP/1.1 request to a loopback server, with a JSON `body` if given, waiting at
/// most `patience` for each read: (status, body). The body ends where `Content-Length` says,
/// or where the server closes the connection.
pub fn http_request(
    address: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    patience: Duration,
) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(patience))?;
    let body = body.unwrap_or_default();
    let content_type = if body.is_empty() {
        ""
    } else {
        "Content-Type: application/json\r\n"
    };
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n{content_type}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let read = stream.read(&mut chunk)?;
        if read == 0 {
            break;
        }
        response.extend_from_slice(&chunk[..read]);
        if let Some((head, body)) = split_head(&response) {
            let length = head.lines().find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse::<usize>().ok())?
            });
            if length.is_some_and(|length| body.len() >= length) {
                break;
            }
        }
    }
    let (head, body) = split_head(&response).unwrap_or_default();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, String::from_utf8_lossy(body).into_owned()))
}

/// An HTTP response's head (as text) and the body bytes after it, once the head is complete.
fn split_head(response: &[u8]) -> Option<(String, &[u8])> {
    let end = response.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&response[..end]).into_owned();
    Some((head, &response[end + 4..]))
}

/// Polls `probe` until it returns `Some`, failing after [`PATIENCE`].
pub fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = probe() {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("gave up waiting for {what} after {PATIENCE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Running {
    /// Waits until `/ready` at `address` answers 200; fails at once, with the log, if the
    /// process exits first.
    pub fn wait_ready(&mut self, address: SocketAddr) -> Result<()> {
        let mut exited = None;
        let ready = wait_for("/ready to answer 200", || {
            if let Ok(Some(status)) = self.child.try_wait() {
                exited = Some(status);
                return Some(false);
            }
            matches!(http_get(address, "/ready"), Ok((200, _))).then_some(true)
        });
        match (ready, exited) {
            (Ok(true), _) => Ok(()),
            (_, Some(status)) => bail!(
                "sluice exited ({status}) before it was ready; log:\n{}",
                self.log()
            ),
            (Err(e), _) => bail!("{e}; log:\n{}", self.log()),
            (Ok(false), None) => unreachable!("false is returned only when the process exited"),
        }
    }
}

/// Scrapes `/metrics` into `series (name{labels})` → value.
pub fn metrics(address: SocketAddr) -> Result<BTreeMap<String, f64>> {
    let (status, body) = http_get(address, "/metrics").context("scraping /metrics")?;
    if status != 200 {
        bail!("/metrics answered {status}");
    }
    Ok(body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect())
}

/// The value of the series named `name` whose labels include every `label="value"` in `labels`.
pub fn metric(all: &BTreeMap<String, f64>, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    all.iter()
        .find(|(series, _)| {
            series.split('{').next() == Some(name)
                && labels
                    .iter()
                    .all(|(k, v)| series.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|(_, v)| *v)
}

/// Reads a JSON-lines file into values (an absent file is empty). A last line without its
/// newline is one a running relay is writing: it is left for the next read.
pub fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .lines()
        .map(|l| serde_json::from_str(l).expect("a valid JSON line"))
        .collect()
}

/// The saved checkpoint of source `id` under `data_dir`, if any.
pub fn saved_checkpoint(data_dir: &Path, id: &str) -> Option<u64> {
    let text =
        std::fs::read_to_string(data_dir.join("checkpoints").join(format!("{id}.json"))).ok()?;
    serde_json::from_str::<serde_json::Value>(&text).ok()?["position"].as_u64()
}

/// A PostgreSQL database that exists for one test: created on the server from `DATABASE_URL`
/// (default `postgres://postgres@127.0.0.1:5432/postgres`), dropped with its replication slots
/// afterwards.
#[derive(Debug)]
pub struct TestDb {
    /// The database name.
    pub name: String,
    /// Its connection URL.
    pub url: String,
    admin_url: String,
}

impl TestDb {
    /// Creates `sluice_<test>_<pid>_<n>`.
    pub fn create(test: &str) -> Self {
        Self::create_with(test, "")
    }

    /// Creates `sluice_<test>_<pid>_<n>` with `CREATE DATABASE` `options`, such as
    /// `ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0`.
    pub fn create_with(test: &str, options: &str) -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let admin_url = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let name = format!(
            "sluice_{test}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let (base, query) = match admin_url.split_once('?') {
            Some((b, q)) => (b, format!("?{q}")),
            None => (admin_url.as_str(), String::new()),
        };
        let base = base.rsplit_once('/').map_or(base, |(b, _)| b);
        let url = format!("{base}/{name}{query}");
        let db = TestDb {
            name,
            url,
            admin_url: admin_url.clone(),
        };
        pg(
            &db.admin_url,
            &format!("CREATE DATABASE {} {options}", db.name),
            |_| (),
        )
        .unwrap();
        db
    }

    /// Runs statements (several, separated by `;`).
    pub fn execute(&self, sql: &str) {
        pg(&self.url, sql, |_| ()).unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// Runs a query and returns its rows, each column as text (`None` for NULL).
    pub fn query(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        query(&self.url, sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// The single value a query returns.
    pub fn value(&self, sql: &str) -> Option<String> {
        self.query(sql).into_iter().next()?.into_iter().next()?
    }

    /// Runs a query on the server's admin database (for cluster-wide views).
    pub fn admin_query(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        query(&self.admin_url, sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let drop_slots = format!(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = '{}' AND NOT active",
            self.name
        );
        let _ = pg(&self.admin_url, &drop_slots, |_| ());
        let _ = pg(
            &self.admin_url,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            |_| (),
        );
    }
}

fn query(url: &str, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
    let mut rows = Vec::new();
    pg(url, sql, |messages| {
        for message in messages {
            if let tokio_postgres::SimpleQueryMessage::Row(row) = message {
                rows.push(
                    (0..row.len())
                        .map(|i| row.get(i).map(str::to_owned))
                        .collect(),
                );
            }
        }
    })?;
    Ok(rows)
}

/// Runs `sql` with the simple query protocol on a fresh connection, on a thread of its own so
/// that sync and async tests can both call it.
fn pg(
    url: &str,
    sql: &str,
    read: impl FnOnce(Vec<tokio_postgres::SimpleQueryMessage>) + Send,
) -> Result<()> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(async {
                    let (client, connection) =
                        tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
                    let driver = tokio::spawn(connection);
                    let messages = client.simple_query(sql).await?;
                    read(messages);
                    drop(client);
                    let _ = driver.await;
                    Ok(())
                })
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}
