//! The etcd backend against the real etcd of `scripts/services.sh` (`ETCD_ENDPOINTS`, default
//! http://127.0.0.1:2379) and the real `etcdctl` (API v3): sluice and etcdctl share elections
//! and locks; a lease revoked by hand ends sluice's hold. Elections and locks here use etcd's
//! own names (no namespace), each test a name of its own. Auth and TLS run on an etcd of the
//! test's own. The rules every backend keeps are in `conformance.rs`.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use futures::StreamExt;
use sluice_coord::etcd::{Etcd, EtcdOptions};
use sluice_coord::{Backend, CoordError, Fenced, Op, WatchEvent};
use sluice_coord::{Password, TlsConfig};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

#[path = "support/poll.rs"]
mod poll;
#[path = "support/private_etcd.rs"]
mod private_etcd;
use poll::eventually;
use private_etcd::{PrivateEtcd, ServerTls, signal};

/// The TTL sessions ask for.
const TTL: Duration = Duration::from_secs(2);
/// How long a condition that should hold soon may take.
const SOON: Duration = Duration::from_secs(10);

fn endpoints() -> Vec<String> {
    std::env::var("ETCD_ENDPOINTS")
        .unwrap_or_else(|_| "http://127.0.0.1:2379".to_owned())
        .split(',')
        .map(str::to_owned)
        .collect()
}

/// A name no other test or run uses.
fn unique(what: &str) -> String {
    format!("sluice-test-{what}-{}", uuid::Uuid::new_v4().simple())
}

async fn etcd() -> Result<Arc<Etcd>> {
    Ok(Arc::new(
        Etcd::connect(EtcdOptions::new(endpoints())).await?,
    ))
}

/// `etcdctl` on the shared etcd, its output piped.
fn etcdctl(args: &[&str]) -> Result<Etcdctl> {
    let mut child = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", endpoints().join(",")))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting etcdctl")?;
    let stdout = child.stdout.take().context("etcdctl's stdout")?;
    Ok(Etcdctl {
        child,
        lines: BufReader::new(stdout).lines(),
    })
}

/// A running etcdctl.
struct Etcdctl {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Etcdctl {
    /// The next line it prints.
    async fn line(&mut self) -> Result<String> {
        tokio::time::timeout(SOON, self.lines.next_line())
            .await
            .context("etcdctl printed nothing")??
            .context("etcdctl ended")
    }

    /// Sends SIGTERM, on which etcdctl gives up its election or lock and exits, and waits.
    async fn terminate(mut self) -> Result<()> {
        signal(self.child.id().context("etcdctl already exited")?, "TERM").await?;
        tokio::time::timeout(SOON, self.child.wait())
            .await
            .context("etcdctl did not exit on SIGTERM")??;
        Ok(())
    }
}

/// Keys under `prefix` on the shared etcd, in create order.
async fn candidates(b: &Etcd, prefix: &str) -> Result<Vec<(String, u64)>> {
    let (mut keys, _) = b.range(prefix).await?;
    keys.sort_by_key(|kv| kv.create_revision);
    Ok(keys
        .into_iter()
        .map(|kv| (kv.key, kv.create_revision))
        .collect())
}

async fn wait_candidates(b: &Etcd, prefix: &str, n: usize) -> Result<Vec<(String, u64)>> {
    eventually(&format!("{n} candidates under {prefix}"), SOON, || async {
        let found = candidates(b, prefix).await?;
        Ok((found.len() == n).then_some(found))
    })
    .await
}

/// Connects to a server that may still be starting.
async fn connect_when_up(options: &EtcdOptions) -> Result<Arc<Etcd>> {
    let connected = eventually("the etcd answers", SOON, || async {
        Ok(Etcd::connect(options.clone()).await.ok())
    })
    .await?;
    Ok(Arc::new(connected))
}

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> Result<T> {
    tokio::time::timeout(SOON, fut)
        .await
        .with_context(|| format!("{what}: not within {SOON:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_elect_listen_prints_the_value_sluice_campaigned_with() -> Result<()> {
    let b = etcd().await?;
    let name = unique("listen");
    let (s, _) = b.open_session(SOON).await?;
    let held = b.campaign(s, &name, Bytes::from_static(b"node-a")).await?;
    assert_eq!(held.key, format!("{name}/{:x}", s.0), "etcd's key layout");
    let mut listen = etcdctl(&["elect", "--listen", &name])?;
    assert_eq!(listen.line().await?, held.key);
    assert_eq!(listen.line().await?, "node-a");
    b.close_session(s).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcdctl_candidate_started_first_keeps_sluice_waiting() -> Result<()> {
    let b = etcd().await?;
    let name = unique("elect");
    let mut first = etcdctl(&["elect", &name, "etcdctl-first"])?;
    // etcdctl prints its key and value once it leads.
    let key = first.line().await?;
    ensure!(key.starts_with(&format!("{name}/")), "{key}");
    let (s, _) = b.open_session(SOON).await?;
    let campaign = {
        let (b, name) = (Arc::clone(&b), name.clone());
        tokio::spawn(async move { b.campaign(s, &name, Bytes::from_static(b"sluice")).await })
    };
    let queue = wait_candidates(&b, &format!("{name}/"), 2).await?;
    assert_eq!(queue[0].0, key);
    let (value, token) = b.leader(&name).await?.context("a leader")?;
    assert_eq!((&value[..], token), (&b"etcdctl-first"[..], queue[0].1));
    // A write after sluice's candidacy, then the check: still waiting.
    b.put(&unique("probe"), Bytes::from_static(b"1"), None)
        .await?;
    ensure!(!campaign.is_finished(), "sluice leads beside etcdctl");
    first.terminate().await?;
    let held = within("sluice leads", campaign).await???;
    ensure!(held.token > queue[0].1);
    let mut listen = etcdctl(&["elect", "--listen", &name])?;
    assert_eq!(listen.line().await?, held.key);
    assert_eq!(listen.line().await?, "sluice");
    b.close_session(s).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_held_by_etcdctl_keeps_sluice_waiting() -> Result<()> {
    let b = etcd().await?;
    let name = unique("lock");
    let mut holder = etcdctl(&["lock", &name])?;
    // Without a command, etcdctl prints its key once it holds the lock.
    let key = holder.line().await?;
    let (s, _) = b.open_session(SOON).await?;
    let lock = {
        let (b, name) = (Arc::clone(&b), name.clone());
        tokio::spawn(async move { b.lock(s, &name).await })
    };
    let queue = wait_candidates(&b, &format!("{name}/"), 2).await?;
    assert_eq!(queue[0].0, key);
    b.put(&unique("probe"), Bytes::from_static(b"1"), None)
        .await?;
    ensure!(!lock.is_finished(), "sluice holds the lock beside etcdctl");
    holder.terminate().await?;
    let held = within("sluice holds", lock).await???;
    ensure!(held.token > queue[0].1);
    b.close_session(s).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_held_by_sluice_keeps_etcdctl_waiting() -> Result<()> {
    let b = etcd().await?;
    let name = unique("lock");
    let (s, _) = b.open_session(SOON).await?;
    let held = b.lock(s, &name).await?;
    let mut waiter = etcdctl(&["lock", &name, "echo", "etcdctl holds it"])?;
    let queue = wait_candidates(&b, &format!("{name}/"), 2).await?;
    assert_eq!(queue[0].0, held.key);
    b.put(&unique("probe"), Bytes::from_static(b"1"), None)
        .await?;
    ensure!(
        waiter.child.try_wait()?.is_none(),
        "etcdctl ran its command while sluice held the lock"
    );
    b.unlock(&held).await?;
    assert_eq!(waiter.line().await?, "etcdctl holds it");
    let status = within("etcdctl exits", waiter.child.wait()).await??;
    ensure!(status.success(), "etcdctl lock: {status}");
    b.close_session(s).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_revoked_with_etcdctl_releases_and_fences() -> Result<()> {
    let b = etcd().await?;
    let name = unique("revoked");
    let (s, _) = b.open_session(SOON).await?;
    let held = b.lock(s, &name).await?;
    let key = unique("fenced");
    let put = |value: &'static [u8]| Op::Put {
        key: key.clone(),
        value: Bytes::from_static(value),
    };
    assert!(matches!(
        b.fenced(&held, put(b"1")).await?,
        Fenced::Applied(_)
    ));
    let released = {
        let (b, held) = (Arc::clone(&b), held.clone());
        tokio::spawn(async move { b.released(&held).await })
    };
    let status = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", endpoints().join(",")))
        .args(["lease", "revoke", &format!("{:x}", s.0)])
        .stdout(Stdio::null())
        .status()
        .await?;
    ensure!(status.success(), "etcdctl lease revoke: {status}");
    within("released", released).await???;
    assert_eq!(b.fenced(&held, put(b"2")).await?, Fenced::Refused);
    assert_eq!(
        &b.get(&key).await?.context("the first write")?.value[..],
        b"1"
    );
    assert!(matches!(b.renew(s).await, Err(CoordError::SessionExpired)));
    b.delete(&key).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_claim_of_one_name_under_one_session_is_refused() -> Result<()> {
    let b = etcd().await?;
    let name = unique("twice");
    let (s, _) = b.open_session(SOON).await?;
    let held = b.lock(s, &name).await?;
    match b.lock(s, &name).await {
        Err(CoordError::Config(message)) => ensure!(message.contains(&held.key), "{message}"),
        other => bail!("a second lock under one lease gave {other:?}"),
    }
    b.close_session(s).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_prefixes_every_key() -> Result<()> {
    let ns = unique("ns");
    let mut options = EtcdOptions::new(endpoints());
    options.namespace = Some(ns.clone());
    let b = Etcd::connect(options).await?;
    let plain = etcd().await?;
    let (s, _) = b.open_session(SOON).await?;
    b.put("config/a", Bytes::from_static(b"1"), Some(s)).await?;
    let held = b.campaign(s, "e", Bytes::from_static(b"v")).await?;
    assert_eq!(held.key, format!("{ns}/e/{:x}", s.0));
    let raw = plain
        .get(&format!("{ns}/config/a"))
        .await?
        .context("NS/config/a")?;
    assert_eq!(raw.session, Some(s));
    let (keys, _) = b.range("").await?;
    let names: Vec<&str> = keys.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(names, ["config/a", &format!("e/{:x}", s.0)]);
    b.close_session(s).await?;
    assert!(plain.range(&format!("{ns}/")).await?.0.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_cluster_names_every_endpoint() -> Result<()> {
    // Ports nobody listens on: bound, then closed.
    let ports: Vec<u16> = (0..2)
        .map(|_| {
            Ok(std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port())
        })
        .collect::<Result<_>>()?;
    let tried: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let mut options = EtcdOptions::new(tried.clone());
    options.connect_timeout = Duration::from_secs(1);
    let started = std::time::Instant::now();
    match Etcd::connect(options).await {
        Err(err @ CoordError::Unreachable { .. }) => {
            let message = err.to_string();
            for endpoint in &tried {
                ensure!(
                    message.contains(endpoint),
                    "{message} does not name {endpoint}"
                );
            }
            ensure!(err.is_retryable());
        }
        Err(other) => bail!("expected Unreachable, got {other}"),
        Ok(_) => bail!("connected to nothing"),
    }
    ensure!(started.elapsed() < SOON, "connect did not keep its timeout");
    // Bad options are refused before any connection, named.
    for (options, needle) in [
        (EtcdOptions::new(Vec::new()), "no endpoints"),
        (EtcdOptions::new(vec!["a:1,b:2".to_owned()]), "a:1,b:2"),
        (
            EtcdOptions {
                namespace: Some("/abs".to_owned()),
                ..EtcdOptions::new(endpoints())
            },
            "namespace",
        ),
        (
            EtcdOptions {
                user: Some("u".to_owned()),
                ..EtcdOptions::new(endpoints())
            },
            "password",
        ),
    ] {
        match Etcd::connect(options).await {
            Err(CoordError::Config(message)) => ensure!(message.contains(needle), "{message}"),
            Err(other) => bail!("expected a config error naming {needle}, got {other}"),
            Ok(_) => bail!("accepted options that should name {needle}"),
        }
    }
    Ok(())
}

/// etcdctl on a private etcd, run to completion.
async fn etcdctl_on(url: &str, args: &[&str]) -> Result<()> {
    let status = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={url}"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await?;
    ensure!(status.success(), "etcdctl {args:?}: {status}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_logs_in_with_its_password_and_a_wrong_one_is_refused() -> Result<()> {
    let server = PrivateEtcd::start(None).await?;
    eventually("the private etcd takes a user", SOON, || async {
        Ok(etcdctl_on(&server.url, &["user", "add", "root:s3cret-pw"])
            .await
            .ok())
    })
    .await?;
    etcdctl_on(&server.url, &["auth", "enable"]).await?;
    let login = |password: &str| EtcdOptions {
        user: Some("root".to_owned()),
        password: Some(Password::new(password)),
        ..EtcdOptions::new(vec![server.url.clone()])
    };
    let options = login("s3cret-pw");
    ensure!(
        !format!("{options:?}").contains("s3cret-pw"),
        "Debug shows the password"
    );
    let b = Etcd::connect(options).await?;
    ensure!(!b.describe().contains("s3cret-pw"));
    let (s, _) = b.open_session(TTL).await?;
    b.put("authed", Bytes::from_static(b"1"), Some(s)).await?;
    match Etcd::connect(login("wrong")).await {
        Err(err @ CoordError::Refused { .. }) => {
            let message = err.to_string();
            ensure!(
                message.contains("root") && !message.contains("wrong"),
                "{message}"
            );
            ensure!(!err.is_retryable());
        }
        Err(other) => bail!("a wrong password gave {other}"),
        Ok(_) => bail!("a wrong password logged in"),
    }
    // Without credentials, auth-enabled etcd refuses the requests.
    let anonymous = Etcd::connect(EtcdOptions::new(vec![server.url.clone()])).await;
    match anonymous {
        Ok(b) => ensure!(b.get("authed").await.is_err(), "read without a user"),
        Err(err) => ensure!(matches!(err, CoordError::Refused { .. }), "{err}"),
    }
    // A user allowed only `allowed/`: elsewhere reads and watches are refused, for good.
    for args in [
        "role add reader",
        "role grant-permission reader readwrite allowed/ --prefix=true",
        "user add reader:reader-pw",
        "user grant-role reader reader",
    ] {
        let mut args: Vec<&str> = args.split_whitespace().collect();
        args.splice(0..0, ["--user", "root:s3cret-pw"]);
        etcdctl_on(&server.url, &args).await?;
    }
    let reader = Etcd::connect(EtcdOptions {
        user: Some("reader".to_owned()),
        password: Some(Password::new("reader-pw")),
        ..EtcdOptions::new(vec![server.url.clone()])
    })
    .await?;
    let written = reader
        .put("allowed/x", Bytes::from_static(b"1"), None)
        .await?;
    let mut watch = reader.watch("allowed/", written - 1).await?;
    match within("the allowed watch", watch.next()).await? {
        Some(Ok(WatchEvent::Changes(changes))) => assert_eq!(changes[0].revision(), written),
        other => bail!("the allowed watch gave {other:?}"),
    }
    match reader.get("authed").await {
        Err(err @ CoordError::Refused { .. }) => ensure!(!err.is_retryable()),
        other => bail!("a read without permission gave {other:?}"),
    }
    let mut watch = reader.watch("secret/", written).await?;
    match within("the refused watch", watch.next()).await? {
        Some(Err(err @ CoordError::Refused { .. })) => ensure!(!err.is_retryable()),
        other => bail!("a watch without permission gave {other:?}"),
    }
    ensure!(within("its end", watch.next()).await?.is_none());
    Ok(())
}

/// A directory of the test's own, removed when dropped (whether the test passed or not).
struct Scratch(std::path::PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_checks_the_server_against_the_ca() -> Result<()> {
    let dir = Scratch(std::env::temp_dir().join(unique("tls")));
    std::fs::create_dir_all(&dir.0)?;
    let dir = &dir.0;
    let path = |name: &str| dir.join(name);
    // Arguments without spaces, split on whitespace.
    let openssl = |args: &str| {
        let status = std::process::Command::new("openssl")
            .args(args.split_whitespace())
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        ensure!(status.success(), "openssl {args}: {status}");
        Ok(())
    };
    let key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    for ca in ["ca", "other-ca"] {
        openssl(&format!(
            "req -x509 {key} -days 1 -subj /CN={ca} -keyout {ca}.key -out {ca}.pem"
        ))?;
    }
    // Version 3 certificates (rustls takes no other), with their usage.
    std::fs::write(
        path("server.ext"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )?;
    std::fs::write(path("client.ext"), "extendedKeyUsage=clientAuth\n")?;
    for (name, cn) in [("server", "127.0.0.1"), ("client", "sluice")] {
        openssl(&format!(
            "req {key} -subj /CN={cn} -keyout {name}.key -out {name}.csr"
        ))?;
        openssl(&format!(
            "x509 -req -in {name}.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 \
             -extfile {name}.ext -out {name}.pem"
        ))?;
    }
    let server = PrivateEtcd::start(Some(ServerTls {
        ca: &path("ca.pem"),
        cert: &path("server.pem"),
        key: &path("server.key"),
    }))
    .await?;
    // The server checks client certificates against the same CA (`--trusted-ca-file`).
    let over_tls = |ca: &str, client: Option<&str>| EtcdOptions {
        tls: Some(TlsConfig {
            ca: Some(path(ca)),
            cert: client.map(|c| path(&format!("{c}.pem"))),
            key: client.map(|c| path(&format!("{c}.key"))),
        }),
        ..EtcdOptions::new(vec![server.url.trim_start_matches("https://").to_owned()])
    };
    let b = connect_when_up(&over_tls("ca.pem", Some("client"))).await?;
    let written = b.put("over-tls", Bytes::from_static(b"1"), None).await?;
    assert_eq!(
        b.get("over-tls").await?.context("over-tls")?.mod_revision,
        written
    );
    // A server the CA did not sign is not trusted; a client without a certificate is not let in.
    ensure!(
        Etcd::connect(over_tls("other-ca.pem", Some("client")))
            .await
            .is_err(),
        "a server signed by another CA was trusted"
    );
    ensure!(
        Etcd::connect(over_tls("ca.pem", None)).await.is_err(),
        "connected without the client certificate the server requires"
    );
    // A missing file is named.
    match Etcd::connect(over_tls("missing.pem", Some("client"))).await {
        Err(CoordError::Config(message)) => ensure!(message.contains("missing.pem"), "{message}"),
        other => bail!("a missing CA file gave {:?}", other.err()),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_server_fails_renewals_and_its_lease_is_gone_when_it_thaws() -> Result<()> {
    let server = PrivateEtcd::start(None).await?;
    let b = connect_when_up(&EtcdOptions::new(vec![server.url.clone()])).await?;
    let (s, granted) = b.open_session(TTL).await?;
    let held = b.lock(s, "frozen").await?;
    let released = {
        let (b, held) = (Arc::clone(&b), held.clone());
        tokio::spawn(async move { b.released(&held).await })
    };
    server.signal("STOP").await?;
    // The renewal gets no answer: it says so after the TTL instead of waiting.
    let frozen = std::time::Instant::now();
    match within("a renewal of a frozen server", b.renew(s)).await? {
        Err(err @ CoordError::Unreachable { .. }) => ensure!(err.is_retryable()),
        other => bail!("renewing on a frozen server gave {other:?}"),
    }
    ensure!(frozen.elapsed() >= granted, "gave up before the TTL");
    ensure!(
        !released.is_finished(),
        "released while the server could not say so"
    );
    server.signal("CONT").await?;
    // The lease was not renewed within its TTL: the server revokes it on waking up.
    within("released after the thaw", released).await???;
    assert!(matches!(b.renew(s).await, Err(CoordError::SessionExpired)));
    let put = Op::Put {
        key: "after-thaw".to_owned(),
        value: Bytes::from_static(b"1"),
    };
    assert_eq!(b.fenced(&held, put).await?, Fenced::Refused);
    Ok(())
}

/// A figure from a private etcd's `/metrics`: the sum of the samples whose line starts with
/// `sample` (a name, and optionally the start of its labels).
async fn metric(url: &str, sample: &str) -> Result<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    stream
        .write_all(format!("GET /metrics HTTP/1.0\r\nHost: {address}\r\n\r\n").as_bytes())
        .await?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await?;
    let mut sum = 0.0;
    for line in body.lines().filter(|l| l.starts_with(sample)) {
        let value = line
            .rsplit(' ')
            .next()
            .context("a sample without a value")?;
        sum += value
            .parse::<f64>()
            .with_context(|| format!("sample {line}"))?;
    }
    Ok(sum)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_next_waiter_wakes_when_a_lock_is_released() -> Result<()> {
    const WAITERS: usize = 5;
    const WATCHERS: &str = "etcd_debugging_mvcc_watcher_total";
    const TXNS: &str = "grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Txn\"";
    // A server of the test's own: its counters count this test's requests only.
    let server = PrivateEtcd::start(None).await?;
    let b = connect_when_up(&EtcdOptions::new(vec![server.url.clone()])).await?;
    let (s0, _) = b.open_session(SOON).await?;
    let holder = b.lock(s0, "herd").await?;
    let mut waiters = Vec::new();
    for n in 1..=WAITERS {
        let (s, _) = b.open_session(SOON).await?;
        let b2 = Arc::clone(&b);
        waiters.push(tokio::spawn(async move { b2.lock(s, "herd").await }));
        wait_candidates(&b, "herd/", n + 1).await?;
    }
    // Each waiter watches its predecessor's key and its own.
    let settle = |watchers: usize| {
        let url = server.url.clone();
        async move {
            eventually(&format!("{watchers} watchers"), SOON, || async {
                Ok((metric(&url, WATCHERS).await? == watchers as f64).then_some(()))
            })
            .await
        }
    };
    settle(2 * WAITERS).await?;
    let before = metric(&server.url, TXNS).await?;
    b.unlock(&holder).await?;
    let next = within("the first waiter holds", waiters.remove(0)).await???;
    ensure!(next.token > holder.token);
    // Its two watchers are gone; the other waiters' stayed as they were.
    settle(2 * (WAITERS - 1)).await?;
    let woke = metric(&server.url, TXNS).await? - before;
    // The unlock, and the one read of the waiter whose predecessor went; a herd would make
    // every waiter read again.
    assert_eq!(woke, 2.0, "transactions after the unlock");
    ensure!(waiters.iter().all(|w| !w.is_finished()));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_member_cluster_keeps_a_leader_through_one_loss_and_fails_without_quorum()
-> Result<()> {
    let mut cluster = PrivateEtcd::cluster(3, None).await?;
    let b = connect_when_up(&EtcdOptions::new(cluster.urls())).await?;
    // Long enough to ride out a Raft election of the cluster itself (etcd extends every lease
    // on a new Raft leader, too).
    let (s, _) = b.open_session(Duration::from_secs(5)).await?;
    let held = b.campaign(s, "leader", Bytes::from_static(b"n1")).await?;
    let released = {
        let (b, held) = (Arc::clone(&b), held.clone());
        tokio::spawn(async move { b.released(&held).await })
    };
    let put = |value: &'static [u8]| Op::Put {
        key: "fenced".to_owned(),
        value: Bytes::from_static(value),
    };

    let (_, from) = b.range("w/").await?;
    let mut watch = b.watch("w/", from).await?;
    let before_loss = b.put("w/before", Bytes::from_static(b"1"), None).await?;

    // One member down: the others still form a quorum. Once they have a Raft leader, every
    // renewal and fenced write goes through (a request the client sends to the dead member
    // fails before it leaves, and goes to another).
    cluster.kill(0).await?;
    eventually("a renewal with one member down", SOON, || async {
        Ok(b.renew(s).await.ok())
    })
    .await?;
    for n in 0..50 {
        b.renew(s)
            .await
            .with_context(|| format!("renewal {n} with one member down"))?;
    }
    let Fenced::Applied(applied) = b.fenced(&held, put(b"1")).await? else {
        bail!("a fenced write refused while the lease lives");
    };
    ensure!(applied > held.token);
    ensure!(!released.is_finished(), "released while held");
    // The watch goes on (from another member if its own died): each change once, in order.
    let after_loss = b.put("w/after", Bytes::from_static(b"2"), None).await?;
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match within("watch events", watch.next()).await? {
            Some(Ok(WatchEvent::Changes(changes))) => {
                seen.extend(changes.iter().map(|c| (c.key().to_owned(), c.revision())));
            }
            other => bail!("the watch across a member's loss gave {other:?}"),
        }
    }
    assert_eq!(
        seen,
        [
            ("w/before".to_owned(), before_loss),
            ("w/after".to_owned(), after_loss)
        ]
    );

    // Two down: no quorum, so no Raft leader; the last member refuses what needs one, and a
    // leader cannot renew.
    cluster.kill(1).await?;
    let refused = eventually("a failed renewal without quorum", SOON, || async {
        Ok(b.renew(s).await.err())
    })
    .await?;
    assert!(
        matches!(refused, CoordError::Unreachable { .. }),
        "{refused}"
    );

    // Quorum back: the cluster serves again, and a candidate can lead.
    cluster.restart(0).await?;
    cluster.restart(1).await?;
    let (after, _) = eventually("a session once quorum is back", SOON, || async {
        Ok(b.open_session(TTL).await.ok())
    })
    .await?;
    let next = within(
        "leading once quorum is back",
        b.campaign(after, "after", Bytes::new()),
    )
    .await??;
    ensure!(next.token > applied);
    Ok(())
}
