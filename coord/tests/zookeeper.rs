//! The ZooKeeper backend against the real ZooKeeper of `scripts/services.sh`
//! (`ZOOKEEPER_ENDPOINTS`, default 127.0.0.1:2181), through the `Backend` trait. Each test has
//! a namespace of its own and removes it at the end; interop tests drive Python's kazoo
//! (`coord/tests/kazoo_peer.py`) and `zkCli.sh`.

use std::collections::BTreeMap;
use std::future::Future;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use futures::StreamExt;
use sluice_coord::zookeeper::{ZooKeeper, ZooKeeperOptions};
use sluice_coord::{Backend, Change, CoordError, Fenced, Held, Op, SessionId, WatchEvent};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::task::JoinHandle;
use zookeeper_client as zk;

#[path = "support/poll.rs"]
mod poll;
#[path = "support/proxy.rs"]
mod proxy;

use poll::eventually;
use proxy::Proxy;

/// The TTL the tests' sessions ask for: the smallest sluice allows, and what the services
/// script's ZooKeeper grants (`minSessionTimeout` 2 s).
const TTL: Duration = Duration::from_secs(2);
/// How long a condition that should hold soon may take.
const SOON: Duration = Duration::from_secs(10);

fn endpoints() -> String {
    std::env::var("ZOOKEEPER_ENDPOINTS").unwrap_or_else(|_| "127.0.0.1:2181".to_owned())
}

/// A namespace of the test's own, and a backend on it.
struct Fixture {
    namespace: String,
    zk: ZooKeeper,
    /// A plain client, for looking at the tree the way any other client sees it.
    raw: zk::Client,
}

impl Fixture {
    async fn new() -> Result<Self> {
        let namespace = format!("sluice-tests/{}", uuid::Uuid::new_v4().simple());
        let zk = connect(&endpoints(), &namespace).await?;
        let raw = zk::Client::connector()
            .with_fail_eagerly()
            .connect(&endpoints())
            .await?;
        Ok(Fixture { namespace, zk, raw })
    }

    /// Another backend (another process, in effect) on the same namespace.
    async fn peer(&self) -> Result<ZooKeeper> {
        connect(&endpoints(), &self.namespace).await
    }

    fn root(&self) -> String {
        format!("/{}", self.namespace)
    }

    /// A backend on the same namespace that reaches ZooKeeper through a proxy the test cuts.
    async fn behind_proxy(&self) -> Result<(Proxy, ZooKeeper)> {
        let upstream = endpoints()
            .split(',')
            .next()
            .context("no endpoint")?
            .to_owned();
        let proxy = Proxy::start(upstream).await?;
        let zk = connect(&proxy.addr.to_string(), &self.namespace).await?;
        Ok((proxy, zk))
    }

    /// Deletes the namespace's tree.
    async fn cleanup(self) -> Result<()> {
        delete_tree(&self.raw, &self.root()).await
    }
}

async fn connect(endpoints: &str, namespace: &str) -> Result<ZooKeeper> {
    let options = ZooKeeperOptions {
        endpoints: endpoints.split(',').map(str::to_owned).collect(),
        namespace: Some(namespace.to_owned()),
    };
    ZooKeeper::connect(options)
        .await
        .with_context(|| format!("connecting to zookeeper {endpoints}"))
}

async fn delete_tree(client: &zk::Client, path: &str) -> Result<()> {
    let mut stack = vec![path.to_owned()];
    let mut order = Vec::new();
    while let Some(p) = stack.pop() {
        match client.list_children(&p).await {
            Ok(children) => stack.extend(children.iter().map(|c| format!("{p}/{c}"))),
            Err(zk::Error::NoNode) => continue,
            Err(e) => return Err(e.into()),
        }
        order.push(p);
    }
    for p in order.iter().rev() {
        match client.delete(p, None).await {
            Ok(()) | Err(zk::Error::NoNode) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Children of `path` that are kazoo-style contender nodes, in sequence order.
async fn contenders(client: &zk::Client, path: &str) -> Result<Vec<String>> {
    let mut children: Vec<String> = match client.list_children(path).await {
        Ok(children) => children,
        Err(zk::Error::NoNode) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    children.retain(|c| c.contains("__lock__"));
    children.sort_by(|a, b| a[a.len() - 10..].cmp(&b[b.len() - 10..]));
    Ok(children)
}

/// Waits until `dir` has `n` contender nodes.
async fn contender_count(client: &zk::Client, dir: &str, n: usize) -> Result<Vec<String>> {
    eventually(&format!("{n} contenders in {dir}"), SOON, || async {
        let found = contenders(client, dir).await?;
        Ok((found.len() == n).then_some(found))
    })
    .await
}

/// Renews a session twice a second, as the `Coord` layer does, until dropped.
struct KeepAlive(JoinHandle<()>);

impl KeepAlive {
    fn start(zk: &Arc<ZooKeeper>, session: SessionId) -> Self {
        let zk = Arc::clone(zk);
        KeepAlive(tokio::spawn(async move {
            loop {
                if let Err(CoordError::SessionExpired) = zk.renew(session).await {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }))
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Campaigns in the background.
fn spawn_campaign(
    zk: &Arc<ZooKeeper>,
    session: SessionId,
    name: &'static str,
    value: Bytes,
) -> JoinHandle<Result<Held, CoordError>> {
    let zk = Arc::clone(zk);
    tokio::spawn(async move { zk.campaign(session, name, value).await })
}

/// Waits for a lock in the background.
fn spawn_lock(
    zk: &Arc<ZooKeeper>,
    session: SessionId,
    name: &'static str,
) -> JoinHandle<Result<Held, CoordError>> {
    let zk = Arc::clone(zk);
    tokio::spawn(async move { zk.lock(session, name).await })
}

async fn within<T>(what: &str, limit: Duration, fut: impl Future<Output = T>) -> Result<T> {
    tokio::time::timeout(limit, fut)
        .await
        .with_context(|| format!("{what}: not within {limit:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_zookeeper_sessions_with_the_negotiated_timeout() -> Result<()> {
    let f = Fixture::new().await?;
    let (s, granted) = f.zk.open_session(TTL).await?;
    assert_eq!(
        granted, TTL,
        "the services script's zookeeper grants 2 s sessions"
    );
    assert_eq!(f.zk.renew(s).await?, granted);
    // Below the server's minimum the server grants its minimum, which is longer.
    let (short, granted_short) = f.zk.open_session(Duration::from_millis(500)).await?;
    assert_eq!(granted_short, TTL);
    // The session is a real one: a plain client sees its ephemeral node owned by it.
    f.zk.put("owned", Bytes::from_static(b"x"), Some(s)).await?;
    let (_, stat) = f.raw.get_data(&format!("{}/owned", f.root())).await?;
    assert_eq!(stat.ephemeral_owner, s.0);
    f.zk.close_session(s).await?;
    f.zk.close_session(short).await?;
    assert!(matches!(
        f.zk.renew(s).await,
        Err(CoordError::SessionExpired)
    ));
    assert!(matches!(
        f.zk.renew(SessionId(12345)).await,
        Err(CoordError::SessionExpired)
    ));
    assert!(f.zk.describe().contains(&endpoints()));
    f.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_nobody_renews_ends_after_its_timeout() -> Result<()> {
    let f = Fixture::new().await?;
    // A session renewed as the Coord layer does, opened first...
    let zk = Arc::new(f.peer().await?);
    let (kept, _) = zk.open_session(TTL).await?;
    let renewing = KeepAlive::start(&zk, kept);
    zk.put("kept", Bytes::from_static(b"1"), Some(kept)).await?;
    // ...and one nobody renews. The client would keep its ZooKeeper session alive by itself;
    // the backend ends it when its timeout passes after the last renewal, as a lease ends.
    let opened = Instant::now();
    let (s, granted) = f.zk.open_session(TTL).await?;
    f.zk.put("lapsing", Bytes::from_static(b"1"), Some(s))
        .await?;
    let held = f.zk.campaign(s, "e", Bytes::from_static(b"a")).await?;
    within(
        "released without renewals",
        granted * 3,
        f.zk.released(&held),
    )
    .await??;
    assert!(
        opened.elapsed() >= granted,
        "ended after {:?}",
        opened.elapsed()
    );
    assert!(matches!(
        f.zk.renew(s).await,
        Err(CoordError::SessionExpired)
    ));
    eventually("the lapsed session's key is gone", SOON, || async {
        Ok(f.zk.get("lapsing").await?.is_none().then_some(()))
    })
    .await?;
    assert!(opened.elapsed() >= granted);
    // The renewed one, older than a timeout by now, lives on.
    assert!(zk.get("kept").await?.is_some());
    drop(renewing);
    zk.close_session(kept).await?;
    f.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ephemeral_keys_and_candidacies_vanish_when_the_session_closes() -> Result<()> {
    let f = Fixture::new().await?;
    let (s, _) = f.zk.open_session(TTL).await?;
    f.zk.put("registry/svc/a", Bytes::from_static(b"{}"), Some(s))
        .await?;
    let held = f.zk.campaign(s, "e", Bytes::from_static(b"node-a")).await?;
    let lock = f.zk.lock(s, "l").await?;
    assert_eq!(
        f.zk.get("registry/svc/a").await?.and_then(|kv| kv.session),
        Some(s)
    );
    f.zk.close_session(s).await?;
    // Closing waits for the server's answer, by which the session's nodes are gone.
    assert_eq!(f.zk.get("registry/svc/a").await?, None);
    assert_eq!(f.zk.leader("e").await?, None);
    within("released after close", SOON, f.zk.released(&held)).await??;
    within("lock released after close", SOON, f.zk.released(&lock)).await??;
    assert!(
        contenders(&f.raw, &format!("{}/locks/l", f.root()))
            .await?
            .is_empty()
    );
    assert!(matches!(
        f.zk.campaign(s, "e", Bytes::new()).await,
        Err(CoordError::SessionExpired)
    ));
    f.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_follows_request_order_with_growing_tokens() -> Result<()> {
    let f = Fixture::new().await?;
    let zk = Arc::new(f.peer().await?);
    let dir = format!("{}/elections/e", f.root());
    let mut sessions = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..3 {
        let (s, _) = zk.open_session(TTL).await?;
        sessions.push(s);
        tasks.push(spawn_campaign(
            &zk,
            s,
            "e",
            Bytes::from(format!("node-{i}")),
        ));
        // The next candidate asks only once this one's node exists: the request order.
        contender_count(&f.raw, &dir, i + 1).await?;
    }
    let first = within("the first candidate leads", SOON, &mut tasks[0]).await???;
    assert_eq!(
        f.zk.leader("e").await?,
        Some((Bytes::from_static(b"node-0"), first.token))
    );
    assert!(!tasks[1].is_finished() && !tasks[2].is_finished());
    // Observers agree on what the lowest node says.
    assert_eq!(
        first.key,
        format!("{dir}/{}", contenders(&f.raw, &dir).await?[0])
    );

    zk.resign(&first).await?;
    let second = within("the second leads after a resign", SOON, &mut tasks[1]).await???;
    assert!(
        second.token > first.token,
        "{} after {}",
        second.token,
        first.token
    );
    assert_eq!(
        f.zk.leader("e").await?,
        Some((Bytes::from_static(b"node-1"), second.token))
    );
    assert!(!tasks[2].is_finished());

    zk.close_session(sessions[1]).await?;
    let third = within("the third leads after a session ends", SOON, &mut tasks[2]).await???;
    assert!(third.token > second.token);
    assert_eq!(
        f.zk.leader("e").await?.map(|(v, _)| v),
        Some(Bytes::from_static(b"node-2"))
    );
    for s in sessions {
        zk.close_session(s).await?;
    }
    f.cleanup().await
}

/// The server's watches by path (the `wchp` four-letter word): path → watching sessions.
async fn watches_by_path() -> Result<BTreeMap<String, usize>> {
    let addr = endpoints()
        .split(',')
        .next()
        .context("no endpoint")?
        .to_owned();
    let mut conn = TcpStream::connect(&addr).await?;
    conn.write_all(b"wchp").await?;
    let mut out = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut conn, &mut out).await?;
    ensure!(
        !out.contains("is not executed"),
        "wchp is not allowed: {out}"
    );
    let mut watches = BTreeMap::new();
    let mut path = None;
    for line in out.lines() {
        if line.starts_with('/') {
            path = Some(line.to_owned());
            watches.insert(line.to_owned(), 0);
        } else if let (Some(p), true) = (&path, line.trim().starts_with("0x")) {
            *watches.entry(p.clone()).or_default() += 1;
        }
    }
    Ok(watches)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_waiting_candidate_watches_only_its_predecessor() -> Result<()> {
    const CANDIDATES: usize = 5;
    let f = Fixture::new().await?;
    let zk = Arc::new(f.peer().await?);
    let dir = format!("{}/elections/herd", f.root());
    let mut tasks = Vec::new();
    for i in 0..CANDIDATES {
        let (s, _) = zk.open_session(TTL).await?;
        tasks.push(spawn_campaign(&zk, s, "herd", Bytes::from(format!("c{i}"))));
        contender_count(&f.raw, &dir, i + 1).await?;
    }
    let nodes = contenders(&f.raw, &dir).await?;
    // Every node but the last is watched by exactly one session (its successor's); nothing
    // watches the directory, so a change wakes one candidate, not all.
    let watched = eventually("one watch per waiting candidate", SOON, || async {
        let all = watches_by_path().await?;
        let ours: BTreeMap<String, usize> = all
            .into_iter()
            .filter(|(p, _)| p.starts_with(&dir))
            .collect();
        Ok((ours.values().sum::<usize>() == CANDIDATES - 1).then_some(ours))
    })
    .await?;
    let expected: BTreeMap<String, usize> = nodes[..CANDIDATES - 1]
        .iter()
        .map(|n| (format!("{dir}/{n}"), 1))
        .collect();
    assert_eq!(watched, expected);
    for task in &tasks[1..] {
        assert!(!task.is_finished());
    }
    for task in tasks {
        task.abort();
    }
    f.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_campaign_withdraws_its_candidacy() -> Result<()> {
    let f = Fixture::new().await?;
    let zk = Arc::new(f.peer().await?);
    let dir = format!("{}/elections/e", f.root());
    let (a, _) = zk.open_session(TTL).await?;
    let (b, _) = zk.open_session(TTL).await?;
    let leader = zk.campaign(a, "e", Bytes::from_static(b"a")).await?;
    // Dropped as soon as the node exists: sometimes before the create's answer arrived (the
    // node's name not known yet), sometimes while waiting on the predecessor.
    for _ in 0..10 {
        let waiting = spawn_campaign(&zk, b, "e", Bytes::from_static(b"b"));
        contender_count(&f.raw, &dir, 2).await?;
        waiting.abort();
        contender_count(&f.raw, &dir, 1).await?;
    }
    // The withdrawn candidate does not lead when the leader leaves.
    zk.resign(&leader).await?;
    contender_count(&f.raw, &dir, 0).await?;
    assert_eq!(zk.leader("e").await?, None);
    zk.close_session(a).await?;
    zk.close_session(b).await?;
    f.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_excludes_across_sessions_and_backends() -> Result<()> {
    const HOLDERS: usize = 4;
    const ROUNDS: usize = 10;
    let f = Fixture::new().await?;
    let inside = Arc::new(AtomicUsize::new(0));
    let tokens = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..HOLDERS {
        // Each holder its own backend: its own connections, as another process would have.
        let zk = f.peer().await?;
        let (inside, tokens) = (Arc::clone(&inside), Arc::clone(&tokens));
        tasks.push(tokio::spawn(async move {
            let (s, _) = zk.open_session(TTL).await?;
            for _ in 0..ROUNDS {
                let held = zk.lock(s, "counter").await?;
                ensure!(
                    inside.fetch_add(1, Ordering::SeqCst) == 0,
                    "two holders at once"
                );
                tokens.lock().unwrap().push(held.token);
                // A read-modify-write with no other protection than the lock.
                let n: u64 = match zk.get("counter").await? {
                    Some(kv) => std::str::from_utf8(&kv.value)?.parse()?,
                    None => 0,
                };
                tokio::task::yield_now().await;
                zk.put("counter", Bytes::from((n + 1).to_string()), None)
                    .await?;
                inside.fetch_sub(1, Ordering::SeqCst);
                zk.unlock(&held).await?;
            }
            zk.close_session(s).await?;
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        within("the lock holders finish", Duration::from_secs(60), task).await???;
    }
    let total = f.zk.get("counter").await?.context("no counter")?;
    assert_eq!(total.value, Bytes::from((HOLDERS * ROUNDS).to_string()));
    let tokens = tokens.lock().unwrap().clone();
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "tokens not increasing: {tokens:?}"
    );
    f.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_writes_apply_only_while_held() -> Result<()> {
    let f = Fixture::new().await?;
    let (s, _) = f.zk.open_session(TTL).await?;
    let held = f.zk.campaign(s, "e", Bytes::from_static(b"me")).await?;
    let put = |v: &'static [u8]| Op::Put {
        key: "fenced/k".to_owned(),
        value: Bytes::from_static(v),
    };
    let Fenced::Applied(rev) = f.zk.fenced(&held, put(b"1")).await? else {
        bail!("refused while leading")
    };
    let kv = f.zk.get("fenced/k").await?.context("not written")?;
    assert_eq!(
        (
            kv.value.as_ref(),
            kv.mod_revision,
            kv.create_revision,
            kv.version
        ),
        (&b"1"[..], rev, rev, 1)
    );
    let Fenced::Applied(rev2) = f.zk.fenced(&held, put(b"2")).await? else {
        bail!("refused")
    };
    assert!(rev2 > rev);
    assert_eq!(
        f.zk.get("fenced/k")
            .await?
            .map(|kv| (kv.version, kv.mod_revision)),
        Some((2, rev2))
    );

    f.zk.resign(&held).await?;
    assert_eq!(f.zk.fenced(&held, put(b"3")).await?, Fenced::Refused);
    assert_eq!(
        f.zk.fenced(
            &held,
            Op::Delete {
                key: "fenced/k".to_owned()
            }
        )
        .await?,
        Fenced::Refused
    );
    assert_eq!(
        f.zk.get("fenced/k").await?.map(|kv| kv.value),
        Some(Bytes::from_static(b"2"))
    );

    // The same with a lock, lost by its session's end, and a fenced delete while held.
    let lock = f.zk.lock(s, "l").await?;
    let Fenced::Applied(del) =
        f.zk.fenced(
            &lock,
            Op::Delete {
                key: "fenced/k".to_owned(),
            },
        )
        .await?
    else {
        bail!("refused while holding")
    };
    assert!(del > rev2);
    assert_eq!(f.zk.get("fenced/k").await?, None);
    f.zk.close_session(s).await?;
    assert_eq!(f.zk.fenced(&lock, put(b"4")).await?, Fenced::Refused);
    assert_eq!(f.zk.get("fenced/k").await?, None);
    f.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_znodes_with_zxid_revisions() -> Result<()> {
    let f = Fixture::new().await?;
    let zk = &f.zk;
    let r1 = zk.put("a/b", Bytes::from_static(b"1"), None).await?;
    let r2 = zk.put("a/c", Bytes::from_static(b"2"), None).await?;
    let r3 = zk.put("a", Bytes::from_static(b"top"), None).await?;
    let r4 = zk.put("ab", Bytes::from_static(b"3"), None).await?;
    let r5 = zk.put("a/b", Bytes::from_static(b"1b"), None).await?;
    assert!(r1 < r2 && r2 < r3 && r3 < r4 && r4 < r5);
    let b = zk.get("a/b").await?.context("a/b")?;
    assert_eq!(
        (
            b.value.as_ref(),
            b.create_revision,
            b.mod_revision,
            b.version,
            b.session
        ),
        (&b"1b"[..], r1, r5, 2, None)
    );
    // The path is the key under the root, as any client sees it.
    let (data, stat) = f.raw.get_data(&format!("{}/a/b", f.root())).await?;
    assert_eq!((data.as_slice(), stat.mzxid as u64), (&b"1b"[..], r5));

    let (keys, rev) = zk.range("a/").await?;
    assert_eq!(
        keys.iter().map(|kv| kv.key.as_str()).collect::<Vec<_>>(),
        ["a/b", "a/c"]
    );
    assert!(rev >= r5);
    let (keys, _) = zk.range("a").await?;
    assert_eq!(
        keys.iter().map(|kv| kv.key.as_str()).collect::<Vec<_>>(),
        ["a", "a/b", "a/c", "ab"]
    );
    let (keys, _) = zk.range("").await?;
    assert_eq!(keys.len(), 4, "directories are no keys: {keys:?}");

    // "a" has keys below it: deleting it empties it, and it is a directory again.
    let d = zk.delete("a").await?.context("a existed")?;
    assert!(d > r5);
    assert_eq!(zk.get("a").await?, None);
    assert_eq!(zk.range("a/").await?.0.len(), 2);
    assert_eq!(zk.delete("a").await?, None);
    let d2 = zk.delete("a/c").await?.context("a/c existed")?;
    assert!(d2 > d);
    assert_eq!(zk.delete("missing/key").await?, None);

    assert!(matches!(
        zk.put("empty", Bytes::new(), None).await,
        Err(CoordError::Config(_))
    ));
    for bad in ["/abs", "trailing/", "a//b", "x/../y", "nul\u{0}"] {
        assert!(
            matches!(
                zk.put(bad, Bytes::from_static(b"v"), None).await,
                Err(CoordError::Config(_))
            ),
            "{bad:?}"
        );
    }
    f.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_moves_a_key_between_sessions_and_persistence() -> Result<()> {
    let f = Fixture::new().await?;
    let zk = &f.zk;
    let (s1, _) = zk.open_session(TTL).await?;
    let (s2, _) = zk.open_session(TTL).await?;
    let r0 = zk.put("k", Bytes::from_static(b"persistent"), None).await?;
    let r1 = zk.put("k", Bytes::from_static(b"s1"), Some(s1)).await?;
    let kv = zk.get("k").await?.context("k")?;
    assert_eq!(
        (kv.session, kv.create_revision, kv.version),
        (Some(s1), r1, 1)
    );
    assert!(r1 > r0);
    zk.put("k", Bytes::from_static(b"s2"), Some(s2)).await?;
    assert_eq!(zk.get("k").await?.and_then(|kv| kv.session), Some(s2));
    // The first session's end no longer takes the key along.
    zk.close_session(s1).await?;
    assert_eq!(
        zk.get("k").await?.map(|kv| kv.value),
        Some(Bytes::from_static(b"s2"))
    );
    zk.close_session(s2).await?;
    assert_eq!(zk.get("k").await?, None);
    // A key with keys below it cannot become ephemeral, nor get keys below an ephemeral one.
    zk.put("p/q", Bytes::from_static(b"1"), None).await?;
    let (s3, _) = zk.open_session(TTL).await?;
    assert!(matches!(
        zk.put("p", Bytes::from_static(b"1"), Some(s3)).await,
        Err(CoordError::Config(_))
    ));
    zk.put("e", Bytes::from_static(b"1"), Some(s3)).await?;
    assert!(matches!(
        zk.put("e/child", Bytes::from_static(b"1"), None).await,
        Err(CoordError::Config(_))
    ));
    zk.close_session(s3).await?;
    f.cleanup().await
}

/// Reads watch events until `done` says the collected changes are complete.
async fn collect(
    stream: &mut (impl futures::Stream<Item = Result<WatchEvent, CoordError>> + Unpin),
    done: impl Fn(&[Change]) -> bool,
) -> Result<Vec<Change>> {
    let mut changes = Vec::new();
    while !done(&changes) {
        match within("watch events", SOON, stream.next()).await? {
            Some(Ok(WatchEvent::Changes(batch))) => changes.extend(batch),
            Some(Ok(WatchEvent::Compacted { compacted })) => bail!("compacted at {compacted}"),
            Some(Err(err)) => return Err(err.into()),
            None => bail!("the watch ended"),
        }
    }
    Ok(changes)
}

fn revisions_increase(changes: &[Change]) -> bool {
    changes
        .windows(2)
        .all(|w| w[0].revision() < w[1].revision())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_delivers_live_changes_once_in_revision_order() -> Result<()> {
    let f = Fixture::new().await?;
    let zk = &f.zk;
    zk.put("cfg/old", Bytes::from_static(b"0"), None).await?;
    zk.put("other", Bytes::from_static(b"x"), None).await?;
    let (keys, rev) = zk.range("cfg/").await?;
    assert_eq!(keys.len(), 1);
    let mut stream = zk.watch("cfg/", rev).await?;
    let (s, _) = zk.open_session(TTL).await?;
    let mut wrote = BTreeMap::new();
    wrote.insert(
        zk.put("cfg/a", Bytes::from_static(b"1"), None).await?,
        "put a",
    );
    wrote.insert(
        zk.put("cfg/deep/b", Bytes::from_static(b"2"), Some(s))
            .await?,
        "put b",
    );
    zk.put("outside", Bytes::from_static(b"no"), None).await?;
    wrote.insert(
        zk.put("cfg/old", Bytes::from_static(b"1"), None).await?,
        "put old",
    );
    wrote.insert(zk.delete("cfg/a").await?.context("a")?, "delete a");
    zk.close_session(s).await?;
    let changes = collect(&mut stream, |c| {
        c.iter()
            .any(|c| matches!(c, Change::Delete { key, .. } if key == "cfg/deep/b"))
    })
    .await?;
    assert!(revisions_increase(&changes), "{changes:?}");
    assert!(
        changes.iter().all(|c| c.key().starts_with("cfg/")),
        "{changes:?}"
    );
    // Writes a read apart each arrive as themselves, at their own revisions.
    let seen: Vec<(u64, &str, bool)> = changes
        .iter()
        .map(|c| (c.revision(), c.key(), matches!(c, Change::Put(_))))
        .collect();
    let expected: Vec<u64> = wrote.keys().copied().collect();
    assert_eq!(
        seen[..4].iter().map(|s| s.0).collect::<Vec<_>>(),
        expected,
        "{seen:?} vs {wrote:?}"
    );
    assert_eq!(
        seen[..4].iter().map(|s| (s.1, s.2)).collect::<Vec<_>>(),
        [
            ("cfg/a", true),
            ("cfg/deep/b", true),
            ("cfg/old", true),
            ("cfg/a", false)
        ]
    );
    // The session's end deleted b: a change after every write above.
    assert_eq!(changes.len(), 5);
    assert!(changes[4].revision() > expected[3]);
    f.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_from_an_older_revision_replays_values_or_says_compacted() -> Result<()> {
    let f = Fixture::new().await?;
    let zk = &f.zk;
    let r1 = zk.put("w/k1", Bytes::from_static(b"1"), None).await?;
    let r2 = zk.put("w/k2", Bytes::from_static(b"1"), None).await?;
    let r3 = zk.put("w/k1", Bytes::from_static(b"2"), None).await?;
    let r4 = zk.put("w/k2", Bytes::from_static(b"2"), None).await?;
    let r5 = zk.put("w/k2", Bytes::from_static(b"3"), None).await?;

    // Only values changed after r2: each key's latest value, in revision order.
    let mut stream = zk.watch("w/", r2).await?;
    let first = collect(&mut stream, |c| c.len() >= 2).await?;
    let got: Vec<(&str, u64)> = first.iter().map(|c| (c.key(), c.revision())).collect();
    assert_eq!(got, [("w/k1", r3), ("w/k2", r5)]);
    assert!(
        !(r4 > r3 && got.iter().any(|(_, r)| *r == r4)),
        "an overwritten value was replayed"
    );
    // ...then live changes go on.
    let r6 = zk.put("w/k3", Bytes::from_static(b"1"), None).await?;
    let live = collect(&mut stream, |c| !c.is_empty()).await?;
    assert_eq!((live[0].key(), live[0].revision()), ("w/k3", r6));
    drop(stream);

    // Since r1 a key was created: a deletion could have happened too, which ZooKeeper cannot
    // show, so the watch says compacted and ends.
    let mut stream = zk.watch("w/", r1).await?;
    match within("compacted", SOON, stream.next()).await? {
        Some(Ok(WatchEvent::Compacted { compacted })) => assert!(compacted >= r6),
        other => bail!("expected compacted, got {other:?}"),
    }
    assert!(
        within("end after compacted", SOON, stream.next())
            .await?
            .is_none()
    );

    // The documented recovery: read again, watch from that read.
    zk.delete("w/k1").await?;
    let (keys, rev) = zk.range("w/").await?;
    assert_eq!(keys.len(), 2);
    let mut stream = zk.watch("w/", rev).await?;
    let r7 = zk.delete("w/k2").await?.context("k2")?;
    let live = collect(&mut stream, |c| !c.is_empty()).await?;
    assert_eq!(
        live,
        [Change::Delete {
            key: "w/k2".to_owned(),
            mod_revision: r7
        }]
    );

    // A prefix whose directory does not exist yet is watched too.
    let mut stream = zk.watch("later/", zk.range("later/").await?.1).await?;
    let r8 = zk.put("later/x", Bytes::from_static(b"1"), None).await?;
    let live = collect(&mut stream, |c| !c.is_empty()).await?;
    assert_eq!((live[0].key(), live[0].revision()), ("later/x", r8));
    f.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_sees_a_sub_tree_deleted_by_another_client() -> Result<()> {
    let f = Fixture::new().await?;
    let zk = &f.zk;
    zk.put("sub/a/x", Bytes::from_static(b"1"), None).await?;
    let last = zk.put("sub/b", Bytes::from_static(b"1"), None).await?;
    let (_, rev) = zk.range("sub/").await?;
    let mut stream = zk.watch("sub/", rev).await?;
    // In one transaction, so that nothing of the sub-tree is left when the watch reads back.
    let mut multi = f.raw.new_multi_writer();
    for node in ["sub/a/x", "sub/a", "sub/b", "sub"] {
        multi.add_delete(&format!("{}/{node}", f.root()), None)?;
    }
    multi.commit().await?;
    let changes = collect(&mut stream, |c| c.len() >= 2).await?;
    let mut deleted: Vec<&str> = changes
        .iter()
        .map(|c| match c {
            Change::Delete { key, .. } => key.as_str(),
            Change::Put(kv) => kv.key.as_str(),
        })
        .collect();
    deleted.sort_unstable();
    assert_eq!(deleted, ["sub/a/x", "sub/b"], "{changes:?}");
    assert!(
        changes
            .iter()
            .all(|c| matches!(c, Change::Delete { .. }) && c.revision() > last)
    );
    assert!(revisions_increase(&changes) || changes[0].revision() == changes[1].revision());
    f.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_from_a_range_of_the_same_backend_replays_the_difference() -> Result<()> {
    let f = Fixture::new().await?;
    let zk = &f.zk;
    zk.put("d/gone", Bytes::from_static(b"1"), None).await?;
    zk.put("d/kept", Bytes::from_static(b"1"), None).await?;
    zk.put("d/changed", Bytes::from_static(b"1"), None).await?;
    let (_, read_at) = zk.range("d/").await?;
    let created = zk.put("d/new", Bytes::from_static(b"1"), None).await?;
    let deleted = zk.delete("d/gone").await?.context("gone")?;
    zk.put("d/changed", Bytes::from_static(b"2"), None).await?;
    let changed = zk.put("d/changed", Bytes::from_static(b"3"), None).await?;

    // This backend read the prefix at that revision: it knows what was there, so a deletion
    // cannot hide, and the watch replays the difference (latest values) instead of Compacted.
    let mut stream = zk.watch("d/", read_at).await?;
    let first = collect(&mut stream, |c| c.len() >= 3).await?;
    let got: Vec<(&str, u64, bool)> = first
        .iter()
        .map(|c| (c.key(), c.revision(), matches!(c, Change::Put(_))))
        .collect();
    assert_eq!(
        got,
        [
            ("d/new", created, true),
            ("d/gone", deleted, false),
            ("d/changed", changed, true)
        ]
    );
    drop(stream);

    // Another backend never saw that revision: it cannot rule out a hidden deletion.
    let other = f.peer().await?;
    let mut stream = other.watch("d/", read_at).await?;
    match within("compacted", SOON, stream.next()).await? {
        Some(Ok(WatchEvent::Compacted { .. })) => {}
        other => bail!("expected compacted, got {other:?}"),
    }
    f.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_leader_cannot_renew_loses_its_session_and_is_fenced() -> Result<()> {
    let f = Fixture::new().await?;
    let (proxy, cut_off) = f.behind_proxy().await?;
    let cut_off = Arc::new(cut_off);
    let (a, _) = cut_off.open_session(TTL).await?;
    let _renewing_a = KeepAlive::start(&cut_off, a);
    let held_a = cut_off.campaign(a, "e", Bytes::from_static(b"a")).await?;
    cut_off
        .put("registry/svc/a", Bytes::from_static(b"{}"), Some(a))
        .await?;

    let zk = Arc::new(f.peer().await?);
    let (b, _) = zk.open_session(TTL).await?;
    let _renewing_b = KeepAlive::start(&zk, b);
    let standby = spawn_campaign(&zk, b, "e", Bytes::from_static(b"b"));
    contender_count(&f.raw, &format!("{}/elections/e", f.root()), 2).await?;
    assert!(matches!(
        zk.fenced(
            &held_a,
            Op::Put {
                key: "x".into(),
                value: Bytes::from_static(b"a")
            }
        )
        .await?,
        Fenced::Applied(_)
    ));

    // Two watchers of the old leader's candidacy: its own backend, and the standby's, which
    // only sees the node.
    let own_view = tokio::spawn({
        let (cut_off, held_a) = (Arc::clone(&cut_off), held_a.clone());
        async move { cut_off.released(&held_a).await }
    });
    let other_view = tokio::spawn({
        let (zk, held_a) = (Arc::clone(&zk), held_a.clone());
        async move { zk.released(&held_a).await }
    });
    let cut_at = Instant::now();
    proxy.cut_all().await?;
    // Disconnected: the leader cannot prove its session, and hears so at once.
    eventually("renew unreachable", SOON, || async {
        Ok(matches!(cut_off.renew(a).await, Err(CoordError::Unreachable { .. })).then_some(()))
    })
    .await?;
    // The server expires the session after its timeout; the standby leads.
    let held_b = within("the standby leads", TTL * 4, standby).await???;
    within("released, seen by another backend", SOON, other_view).await???;
    within("released, seen by the cut-off backend", SOON, own_view).await???;
    let failover = cut_at.elapsed();
    assert!(
        failover >= TTL.saturating_sub(Duration::from_millis(500)),
        "{failover:?}"
    );
    assert!(held_b.token > held_a.token);
    // The old leader's writes are refused wherever they are checked.
    assert_eq!(
        zk.fenced(
            &held_a,
            Op::Put {
                key: "x".into(),
                value: Bytes::from_static(b"late")
            }
        )
        .await?,
        Fenced::Refused
    );
    assert_eq!(zk.get("registry/svc/a").await?, None);
    // The cut-off client concludes its session is over without hearing from the server.
    eventually("renew expired while cut off", SOON, || async {
        Ok(matches!(cut_off.renew(a).await, Err(CoordError::SessionExpired)).then_some(()))
    })
    .await?;
    proxy.set_cut(false);
    assert!(matches!(
        cut_off.renew(a).await,
        Err(CoordError::SessionExpired)
    ));
    let refused = eventually(
        "a fenced write through the old leader's backend",
        SOON,
        || async {
            match cut_off
                .fenced(
                    &held_a,
                    Op::Put {
                        key: "x".into(),
                        value: Bytes::from_static(b"late"),
                    },
                )
                .await
            {
                Ok(outcome) => Ok(Some(outcome)),
                Err(e) if e.is_retryable() => Ok(None),
                Err(e) => Err(e.into()),
            }
        },
    )
    .await?;
    assert_eq!(refused, Fenced::Refused);
    assert_eq!(
        zk.get("x").await?.map(|kv| kv.value),
        Some(Bytes::from_static(b"a"))
    );
    zk.close_session(b).await?;
    f.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_disconnection_keeps_the_session_and_its_nodes() -> Result<()> {
    let f = Fixture::new().await?;
    let (proxy, flaky) = f.behind_proxy().await?;
    let (s, granted) = flaky.open_session(Duration::from_secs(6)).await?;
    let held = flaky.campaign(s, "e", Bytes::from_static(b"a")).await?;
    proxy.cut_all().await?;
    eventually("renew unreachable", SOON, || async {
        Ok(matches!(flaky.renew(s).await, Err(CoordError::Unreachable { .. })).then_some(()))
    })
    .await?;
    proxy.set_cut(false);
    // Back within the timeout: the same session, still leading.
    let renewed = eventually("renew again", granted, || async {
        match flaky.renew(s).await {
            Ok(ttl) => Ok(Some(ttl)),
            Err(CoordError::Unreachable { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    })
    .await?;
    assert_eq!(renewed, granted);
    assert_eq!(
        f.zk.leader("e").await?,
        Some((Bytes::from_static(b"a"), held.token))
    );
    flaky.close_session(s).await?;
    f.cleanup().await
}

/// A watch whose connection breaks and comes back within its session delivers what changed
/// meanwhile, and then every later change: its persistent watch, dropped by the server with
/// the old connection, is set again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_catches_up_after_a_disconnection_and_follows_on() -> Result<()> {
    let f = Fixture::new().await?;
    let zk = &f.zk;
    zk.put("reg/a", Bytes::from_static(b"1"), None).await?;
    zk.put("reg/b", Bytes::from_static(b"1"), None).await?;
    let (proxy, flaky) = f.behind_proxy().await?;
    let (_, rev) = flaky.range("reg/").await?;
    let mut stream = flaky.watch("reg/", rev).await?;
    let r1 = zk.put("reg/a", Bytes::from_static(b"2"), None).await?;
    let live = collect(&mut stream, |c| !c.is_empty()).await?;
    assert_eq!((live[0].key(), live[0].revision()), ("reg/a", r1));

    // Changes while the watch's connection is down reach it once it is back.
    proxy.cut_all().await?;
    let r2 = zk.put("reg/c", Bytes::from_static(b"1"), None).await?;
    let r3 = zk.delete("reg/b").await?.context("b")?;
    proxy.set_cut(false);
    let caught_up = collect(&mut stream, |c| c.len() >= 2).await?;
    assert!(revisions_increase(&caught_up), "{caught_up:?}");
    assert!(
        caught_up
            .iter()
            .any(|c| matches!(c, Change::Put(kv) if kv.key == "reg/c" && kv.mod_revision == r2))
    );
    assert!(caught_up.iter().any(|c| matches!(c, Change::Delete { key, mod_revision } if key == "reg/b" && *mod_revision >= r3)));

    // Changes after the reconnection arrive live, as before the disconnection.
    let r4 = zk.put("reg/d", Bytes::from_static(b"1"), None).await?;
    let r5 = zk.delete("reg/a").await?.context("a")?;
    let after = collect(&mut stream, |c| c.len() >= 2).await?;
    assert!(
        after
            .iter()
            .any(|c| matches!(c, Change::Put(kv) if kv.key == "reg/d" && kv.mod_revision == r4)),
        "{after:?}"
    );
    assert!(
        after.iter().any(|c| matches!(c, Change::Delete { key, mod_revision } if key == "reg/a" && *mod_revision >= r5)),
        "{after:?}"
    );
    f.cleanup().await
}

/// A kazoo process driven over its stdin and stdout.
struct Kazoo {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    /// Lines read while looking for another.
    seen: Vec<String>,
}

impl Kazoo {
    async fn start(session_timeout: Duration) -> Result<Kazoo> {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/kazoo_peer.py");
        let python = kazoo_python().await?;
        let mut child = Command::new(&python)
            .arg(script)
            .arg(endpoints())
            .arg(session_timeout.as_secs_f64().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {python} {script}"))?;
        let stdin = child.stdin.take().context("kazoo stdin")?;
        let lines = BufReader::new(child.stdout.take().context("kazoo stdout")?).lines();
        let mut kazoo = Kazoo {
            child,
            stdin,
            lines,
            seen: Vec::new(),
        };
        kazoo.expect("ready").await?;
        Ok(kazoo)
    }

    async fn send(&mut self, command: &str) -> Result<()> {
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await?;
        Ok(self.stdin.flush().await?)
    }

    /// The next line starting with `start`; other lines are kept in `seen`.
    async fn expect(&mut self, start: &str) -> Result<String> {
        if let Some(i) = self.seen.iter().position(|l| l.starts_with(start)) {
            return Ok(self.seen.remove(i));
        }
        loop {
            let line = within(
                &format!("kazoo says {start:?}"),
                SOON,
                self.lines.next_line(),
            )
            .await??
            .context("kazoo exited")?;
            if line.starts_with(start) {
                return Ok(line);
            }
            self.seen.push(line);
        }
    }

    fn said(&self, start: &str) -> bool {
        self.seen.iter().any(|l| l.starts_with(start))
    }

    async fn quit(mut self) -> Result<()> {
        self.send("quit").await?;
        within("kazoo exits", SOON, self.child.wait()).await??;
        Ok(())
    }
}

/// A Python with kazoo: `SLUICE_KAZOO_PYTHON`, Debian's (services.sh installs python3-kazoo),
/// or the first `python3` on the path.
async fn kazoo_python() -> Result<String> {
    let mut candidates = vec!["/usr/bin/python3".to_owned(), "python3".to_owned()];
    if let Ok(python) = std::env::var("SLUICE_KAZOO_PYTHON") {
        candidates.insert(0, python);
    }
    for python in candidates {
        let ok = Command::new(&python)
            .args(["-c", "import kazoo"])
            .status()
            .await
            .is_ok_and(|s| s.success());
        if ok {
            return Ok(python);
        }
    }
    bail!("no python3 with kazoo: run scripts/services.sh up (installs python3-kazoo)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kazoo_and_sluice_locks_exclude_each_other() -> Result<()> {
    let f = Fixture::new().await?;
    let zk = Arc::new(f.peer().await?);
    let path = format!("{}/locks/shared", f.root());
    let mut kazoo = Kazoo::start(TTL).await?;
    let (s, _) = zk.open_session(TTL).await?;

    // kazoo holds: sluice queues behind it.
    kazoo.send(&format!("lock {path} kazoo")).await?;
    kazoo.expect("locked").await?;
    let waiting = spawn_lock(&zk, s, "shared");
    let queue = contender_count(&f.raw, &path, 2).await?;
    kazoo.send(&format!("contenders {path}")).await?;
    kazoo.expect("contenders").await?;
    assert!(!waiting.is_finished(), "sluice took the lock kazoo holds");
    kazoo.send(&format!("unlock {path}")).await?;
    kazoo.expect("unlocked").await?;
    let held = within("sluice locks after kazoo", SOON, waiting).await???;
    assert_eq!(held.key, format!("{path}/{}", queue[1]));

    // sluice holds: kazoo cannot take it, waits, and gets it on unlock.
    kazoo.send(&format!("trylock {path}")).await?;
    assert_eq!(kazoo.expect("trylock").await?, "trylock false");
    kazoo.send(&format!("lock {path} kazoo")).await?;
    contender_count(&f.raw, &path, 2).await?;
    kazoo.send(&format!("contenders {path}")).await?;
    kazoo.expect("contenders").await?;
    assert!(!kazoo.said("locked"), "kazoo took the lock sluice holds");
    zk.unlock(&held).await?;
    kazoo.expect(&format!("locked {path}")).await?;
    kazoo.quit().await?;
    zk.close_session(s).await?;
    f.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kazoo_and_sluice_share_one_election() -> Result<()> {
    let f = Fixture::new().await?;
    let zk = Arc::new(f.peer().await?);
    let path = format!("{}/elections/e", f.root());
    let (s, _) = zk.open_session(TTL).await?;

    // sluice leads; kazoo's Election sees sluice's value first and waits.
    let held = zk.campaign(s, "e", Bytes::from_static(b"sluice-1")).await?;
    let mut kazoo = Kazoo::start(TTL).await?;
    kazoo.send(&format!("elect {path} kazoo-1")).await?;
    contender_count(&f.raw, &path, 2).await?;
    kazoo.send(&format!("contenders {path}")).await?;
    assert_eq!(
        kazoo.expect("contenders").await?,
        r#"contenders ["sluice-1", "kazoo-1"]"#
    );
    assert!(!kazoo.said("leading"));
    zk.resign(&held).await?;
    kazoo.expect(&format!("leading {path}")).await?;
    let (value, token) = zk.leader("e").await?.context("a leader")?;
    assert_eq!(value, Bytes::from_static(b"kazoo-1"));
    assert!(token > held.token);

    // kazoo leads: sluice waits, and leads when kazoo resigns.
    let waiting = spawn_campaign(&zk, s, "e", Bytes::from_static(b"sluice-2"));
    contender_count(&f.raw, &path, 2).await?;
    kazoo.send(&format!("contenders {path}")).await?;
    assert_eq!(
        kazoo.expect("contenders").await?,
        r#"contenders ["kazoo-1", "sluice-2"]"#
    );
    assert!(!waiting.is_finished(), "sluice leads while kazoo does");
    kazoo.send(&format!("resign {path}")).await?;
    kazoo.expect("resigned").await?;
    let second = within("sluice leads after kazoo resigns", SOON, waiting).await???;
    assert!(second.token > token);
    assert_eq!(
        zk.leader("e").await?,
        Some((Bytes::from_static(b"sluice-2"), second.token))
    );
    zk.resign(&second).await?;
    kazoo.quit().await?;
    zk.close_session(s).await?;
    f.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_kazoo_leader_hands_over_when_its_session_expires() -> Result<()> {
    let f = Fixture::new().await?;
    let path = format!("{}/elections/e", f.root());
    let mut kazoo = Kazoo::start(TTL).await?;
    kazoo.send(&format!("elect {path} doomed")).await?;
    kazoo.expect("leading").await?;
    let zk = Arc::new(f.peer().await?);
    let (s, _) = zk.open_session(TTL).await?;
    let _renewing = KeepAlive::start(&zk, s);
    let waiting = spawn_campaign(&zk, s, "e", Bytes::from_static(b"heir"));
    contender_count(&f.raw, &path, 2).await?;
    let killed_at = Instant::now();
    kazoo.child.kill().await?;
    let held = within("the heir leads", TTL * 4, waiting).await???;
    let failover = killed_at.elapsed();
    // Not before the dead leader's session could expire, not long after.
    assert!(
        failover >= TTL.saturating_sub(Duration::from_millis(500)),
        "{failover:?}"
    );
    assert_eq!(
        zk.leader("e").await?,
        Some((Bytes::from_static(b"heir"), held.token))
    );
    zk.close_session(s).await?;
    f.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zkcli_shows_the_election_and_lock_nodes() -> Result<()> {
    let f = Fixture::new().await?;
    let zk = Arc::new(f.peer().await?);
    let (s, _) = zk.open_session(TTL).await?;
    // zkCli.sh takes about a second a run: the session is renewed meanwhile.
    let _renewing = KeepAlive::start(&zk, s);
    let leader = zk.campaign(s, "e", Bytes::from_static(b"node-a")).await?;
    let lock = zk.lock(s, "l").await?;
    let zkcli =
        std::env::var("ZKCLI").unwrap_or_else(|_| "/usr/share/zookeeper/bin/zkCli.sh".to_owned());
    for (dir, held) in [("elections/e", &leader), ("locks/l", &lock)] {
        let node = held.key.rsplit('/').next().context("node name")?;
        let out = Command::new(&zkcli)
            .args([
                "-server",
                &endpoints(),
                "ls",
                &format!("{}/{dir}", f.root()),
            ])
            .stdin(Stdio::null())
            .output()
            .await
            .with_context(|| format!("running {zkcli}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains(&format!("[{node}]")),
            "zkCli ls {dir}: {stdout}"
        );
        assert!(node.contains("__lock__"));
    }
    let out = Command::new(&zkcli)
        .args(["-server", &endpoints(), "get", &leader.key])
        .stdin(Stdio::null())
        .output()
        .await?;
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l == "node-a")
    );
    zk.close_session(s).await?;
    f.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layout_names_the_paths_under_the_namespace() -> Result<()> {
    let f = Fixture::new().await?;
    let layout = f.zk.layout();
    assert_eq!(layout.election, "elections/{name}/");
    assert_eq!(layout.lock, "locks/{name}/");
    assert_eq!(layout.instance, "services/{service}/{id}");
    assert_eq!(layout.config, "config/{key}");
    assert_eq!(layout.key, "{key}");
    // The templates are keys: the KV methods see candidates under the election's prefix...
    let (s, _) = f.zk.open_session(TTL).await?;
    let held = f.zk.campaign(s, "x", Bytes::from_static(b"me")).await?;
    let lock = f.zk.lock(s, "x").await?;
    let prefix = layout.election.replace("{name}", "x");
    let (candidates, _) = f.zk.range(&prefix).await?;
    assert_eq!(candidates.len(), 1);
    assert_eq!(format!("{}/{}", f.root(), candidates[0].key), held.key);
    assert_eq!(
        (candidates[0].value.as_ref(), candidates[0].session),
        (&b"me"[..], Some(s))
    );
    // ...lock nodes too, though they hold no data (ephemeral nodes are keys)...
    let (holders, _) = f.zk.range(&layout.lock.replace("{name}", "x")).await?;
    assert_eq!(format!("{}/{}", f.root(), holders[0].key), lock.key);
    assert!(holders[0].value.is_empty());
    // ...and an instance key is the znode any client can write.
    let instance = layout
        .instance
        .replace("{service}", "orders")
        .replace("{id}", "a1");
    f.zk.put(&instance, Bytes::from_static(b"{}"), Some(s))
        .await?;
    let (_, stat) = f
        .raw
        .get_data(&format!("{}/services/orders/a1", f.root()))
        .await?;
    assert_eq!(stat.ephemeral_owner, s.0);
    f.zk.close_session(s).await?;
    f.cleanup().await
}
