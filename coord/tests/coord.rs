//! The `Coord` layer on every backend: elections raced by several processes, leaders that
//! lose their session, a PostgreSQL counter under a lock, the registry under crashes, and
//! following a prefix across compaction. Each test runs on the embedded backend and on the
//! real ZooKeeper of `scripts/services.sh` (`ZOOKEEPER_ENDPOINTS`); a backend is one
//! [`Store`] variant, so another backend is one more variant and one more line in
//! [`per_backend!`].
//!
//! A "process" is a `Coord` of its own: on ZooKeeper each has its own connection and session,
//! on the embedded backend each its own session on one shared store.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use futures::StreamExt;
use sluice_coord::backend::BoxStream;
use sluice_coord::{
    Backend, Change, Coord, CoordError, Embedded, Fenced, Follow, Instance, LeaderTerm, Op,
    SessionId,
};
use sluice_pipeline::leadership::{Leadership, Term};

#[cfg(feature = "zookeeper")]
#[path = "support/poll.rs"]
mod poll;
#[cfg(feature = "zookeeper")]
#[path = "support/proxy.rs"]
mod proxy;

/// The session TTL of every test: the shortest allowed.
const TTL: Duration = Duration::from_secs(2);
/// How long something that should happen soon may take.
const SOON: Duration = Duration::from_secs(15);

/// A name no other test (or run) uses.
fn unique(what: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{what}-{}-{nanos:x}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The value behind `mutex`, also after a panicking test task.
fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One coordination store that several processes share.
#[derive(Clone)]
enum Store {
    Embedded(Embedded),
    #[cfg(feature = "zookeeper")]
    ZooKeeper {
        namespace: String,
    },
    #[cfg(feature = "etcd")]
    Etcd {
        namespace: String,
    },
}

impl Store {
    fn embedded() -> Self {
        Store::Embedded(Embedded::new())
    }

    #[cfg(feature = "zookeeper")]
    fn zookeeper() -> Self {
        Store::ZooKeeper {
            namespace: format!("sluice-tests/{}", unique("coord")),
        }
    }

    #[cfg(feature = "etcd")]
    fn etcd() -> Self {
        Store::Etcd {
            namespace: unique("coord"),
        }
    }

    /// A new process on the store.
    async fn coord(&self, node: &str) -> Result<Coord> {
        let backend: Arc<dyn Backend> = match self {
            Store::Embedded(store) => Arc::new(store.clone()),
            #[cfg(feature = "zookeeper")]
            Store::ZooKeeper { namespace } => {
                let mut config = sluice_coord::CoordConfig::from_url(&format!(
                    "zookeeper://{}",
                    zk::endpoints()
                ))?;
                config.namespace = Some(namespace.clone());
                config.ttl = sluice_pipeline::HumanDuration(TTL);
                config.node = Some(node.to_owned());
                return Ok(Coord::connect(&config).await?);
            }
            #[cfg(feature = "etcd")]
            Store::Etcd { namespace } => {
                let endpoints = std::env::var("ETCD_ENDPOINTS")
                    .unwrap_or_else(|_| "http://127.0.0.1:2379".to_owned());
                let hosts: Vec<&str> = endpoints
                    .split(',')
                    .map(|e| e.trim_start_matches("http://"))
                    .collect();
                let mut config =
                    sluice_coord::CoordConfig::from_url(&format!("etcd://{}", hosts.join(",")))?;
                config.namespace = Some(namespace.clone());
                config.ttl = sluice_pipeline::HumanDuration(TTL);
                config.node = Some(node.to_owned());
                return Ok(Coord::connect(&config).await?);
            }
        };
        Ok(Coord::with_backend(backend, TTL, node))
    }

    /// Cuts `coord`'s process off from the server without closing `session`: on the embedded
    /// store its renewals hang (the `Coord` notices only through its deadline); elsewhere it
    /// stops renewing, as a killed process would. The session expires on the server after
    /// its TTL.
    #[cfg_attr(
        not(any(feature = "zookeeper", feature = "etcd")),
        allow(unused_variables)
    )]
    fn cut_off(&self, coord: &Coord, session: SessionId) {
        match self {
            Store::Embedded(store) => store.block_renewals(session, true),
            #[cfg(feature = "zookeeper")]
            Store::ZooKeeper { .. } => coord.abandon(),
            #[cfg(feature = "etcd")]
            Store::Etcd { .. } => coord.abandon(),
        }
    }

    /// Removes what the test left on the server.
    async fn cleanup(self) -> Result<()> {
        match self {
            Store::Embedded(_) => Ok(()),
            #[cfg(feature = "zookeeper")]
            Store::ZooKeeper { namespace } => zk::delete_tree(&format!("/{namespace}")).await,
            #[cfg(feature = "etcd")]
            Store::Etcd { .. } => {
                let coord = self.coord("cleanup").await?;
                let backend = coord
                    .backend()
                    .ok_or_else(|| anyhow::anyhow!("not connected"))?;
                let (keys, _) = backend.range("").await?;
                for kv in keys {
                    backend.delete(&kv.key).await?;
                }
                coord.close().await;
                Ok(())
            }
        }
    }
}

#[cfg(feature = "zookeeper")]
mod zk {
    use anyhow::Result;
    use zookeeper_client as zk;

    pub(crate) fn endpoints() -> String {
        std::env::var("ZOOKEEPER_ENDPOINTS").unwrap_or_else(|_| "127.0.0.1:2181".to_owned())
    }

    pub(crate) async fn delete_tree(path: &str) -> Result<()> {
        let client = zk::Client::connector()
            .with_fail_eagerly()
            .connect(&endpoints())
            .await?;
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
}

/// One test per backend: `per_backend!(name)` runs `async fn name(store: Store)` on each.
macro_rules! per_backend {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn embedded() -> anyhow::Result<()> {
                let store = super::Store::embedded();
                super::$name(store.clone()).await?;
                store.cleanup().await
            }

            #[cfg(feature = "zookeeper")]
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn zookeeper() -> anyhow::Result<()> {
                let store = super::Store::zookeeper();
                let outcome = super::$name(store.clone()).await;
                store.cleanup().await?;
                outcome
            }

            #[cfg(feature = "etcd")]
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn etcd() -> anyhow::Result<()> {
                let store = super::Store::etcd();
                let outcome = super::$name(store.clone()).await;
                store.cleanup().await?;
                outcome
            }
        }
    };
}

per_backend!(five_candidates_never_lead_at_once);
per_backend!(a_revoked_leader_stops_and_its_fenced_writes_are_refused);
per_backend!(a_lock_makes_a_postgres_counter_exact);
per_backend!(discovery_drops_crashed_instances_within_the_ttl);
per_backend!(the_engine_campaigns_through_leadership);
per_backend!(a_lost_session_ends_locks_and_registrations_come_back);
per_backend!(six_elections_spread_over_three_nodes_follow_a_crash_and_a_join);

/// The next item of `stream`, within [`SOON`].
async fn next<T>(stream: &mut BoxStream<'static, Result<T, CoordError>>) -> Result<T> {
    match tokio::time::timeout(SOON, stream.next()).await {
        Ok(Some(item)) => Ok(item?),
        Ok(None) => bail!("the stream ended"),
        Err(_) => bail!("nothing within {SOON:?}"),
    }
}

/// Polls `check` until it gives something, or fails after `within`.
async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(found) = check().await? {
            return Ok(found);
        }
        if Instant::now() > deadline {
            bail!("{what}: not within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Five processes campaign over and over in one election, each leading for a moment and
/// resigning; every third leader is cut off instead (see [`Store::cut_off`]) and must stop on
/// its own. A checker looks at every candidate's term all the time: at no instant may two
/// believe they lead, and every term's token is larger than the one before.
async fn five_candidates_never_lead_at_once(store: Store) -> Result<()> {
    const TERMS: u64 = 15;
    let election = unique("race");
    let terms: Arc<Mutex<Vec<Option<Arc<LeaderTerm>>>>> = Arc::new(Mutex::new(vec![None; 5]));
    let won = Arc::new(AtomicU64::new(0));
    let tokens = Arc::new(Mutex::new(Vec::new()));
    let mut candidates = Vec::new();
    for n in 0..5 {
        let node = format!("node-{n}");
        let mut coord = store.coord(&node).await?;
        let (store, election, terms, won, tokens) = (
            store.clone(),
            election.clone(),
            Arc::clone(&terms),
            Arc::clone(&won),
            Arc::clone(&tokens),
        );
        candidates.push(tokio::spawn(async move {
            while won.load(Ordering::SeqCst) < TERMS {
                let term = Arc::new(coord.campaign(&election, node.clone()).await?);
                let count = won.fetch_add(1, Ordering::SeqCst) + 1;
                locked(&tokens).push(term.token().0);
                locked(&terms)[n] = Some(Arc::clone(&term));
                tokio::time::sleep(Duration::from_millis(30)).await;
                if count % 3 == 0 {
                    store.cut_off(&coord, term.held().session);
                    tokio::time::timeout(SOON, term.ended())
                        .await
                        .context("the term of a cut-off process ends")?;
                    coord = store.coord(&node).await?;
                } else {
                    Term::resign(&*term).await;
                }
                ensure!(!term.is_valid(), "a resigned or cut-off term is not valid");
                locked(&terms)[n] = None;
            }
            anyhow::Ok(())
        }));
    }
    let checker = {
        let terms = Arc::clone(&terms);
        let won = Arc::clone(&won);
        tokio::spawn(async move {
            let mut checks = 0u64;
            while won.load(Ordering::SeqCst) < TERMS {
                let leading: Vec<u64> = locked(&terms)
                    .iter()
                    .flatten()
                    .filter(|t| t.is_valid())
                    .map(|t| t.token().0)
                    .collect();
                ensure!(
                    leading.len() <= 1,
                    "two leaders at once: tokens {leading:?}"
                );
                checks += 1;
                tokio::task::yield_now().await;
            }
            anyhow::Ok(checks)
        })
    };
    let all = async {
        for candidate in candidates {
            candidate.await??;
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(120), all)
        .await
        .context("15 terms")??;
    let checks = checker.await??;
    ensure!(checks > 100, "the checker looked only {checks} times");
    let tokens = locked(&tokens).clone();
    ensure!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "tokens must grow from term to term: {tokens:?}"
    );
    Ok(())
}

/// A leader whose session is revoked on the server stops being valid and its fenced writes
/// are refused, while the next candidate takes over and writes.
async fn a_revoked_leader_stops_and_its_fenced_writes_are_refused(store: Store) -> Result<()> {
    let election = unique("revoked");
    let key = unique("fenced");
    let a = store.coord("a").await?;
    let b = store.coord("b").await?;
    let first = a.campaign(&election, "a").await?;
    let put = |value: &str| Op::Put {
        key: key.clone(),
        value: Bytes::copy_from_slice(value.as_bytes()),
    };
    ensure!(matches!(first.fenced(put("a1")).await?, Fenced::Applied(_)));
    let second = tokio::spawn({
        let election = election.clone();
        async move { b.campaign(&election, "b").await.map(|t| (b, t)) }
    });
    let revoked_at = Instant::now();
    a.backend()
        .context("connected")?
        .close_session(first.held().session)
        .await?;
    tokio::time::timeout(TTL + Duration::from_secs(1), first.ended())
        .await
        .context("the revoked term ends within the TTL + 1 s")?;
    ensure!(!first.is_valid());
    let (b, second) = tokio::time::timeout(SOON, second)
        .await
        .context("b leads")???;
    let failover = revoked_at.elapsed();
    ensure!(
        second.token() > first.token(),
        "{:?} after {:?}",
        second.token(),
        first.token()
    );
    ensure!(
        first.fenced(put("a2")).await? == Fenced::Refused,
        "the old leader's fenced write is refused"
    );
    // Also when asked directly, bypassing the session check of `Coord`.
    let raw = a.backend().context("connected")?;
    ensure!(raw.fenced(first.held(), put("a3")).await? == Fenced::Refused);
    ensure!(matches!(
        second.fenced(put("b1")).await?,
        Fenced::Applied(_)
    ));
    let stored = b
        .backend()
        .context("connected")?
        .get(&key)
        .await?
        .context("the key")?;
    ensure!(stored.value == "b1", "{:?}", stored.value);
    let leader = b.leader(&election).await?.context("a leader")?;
    ensure!(leader.value == "b" && leader.token == second.token());
    eprintln!("failover after a revoked session: {failover:?}");
    Ok(())
}

/// A leader cut off from its server (renewals hang) stops being valid while its lease still
/// lives on the server — before anyone else can lead — and refuses its fenced writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_whose_renewals_hang_stops_before_its_lease_expires() -> Result<()> {
    let embedded = Embedded::new();
    let a = Coord::with_backend(Arc::new(embedded.clone()), TTL, "a");
    let b = Coord::with_backend(Arc::new(embedded.clone()), TTL, "b");
    let first = a.campaign("cut", "a").await?;
    let session = first.held().session;
    let waiting = tokio::spawn(async move { b.campaign("cut", "b").await.map(|t| (b, t)) });
    embedded.block_renewals(session, true);
    let invalid_at = eventually(SOON, "the cut-off leader stops", || async {
        Ok((!first.is_valid()).then(Instant::now))
    })
    .await?;
    ensure!(
        embedded.session_alive(session),
        "the term must end while the lease still lives on the server"
    );
    let op = Op::Put {
        key: "cut/k".into(),
        value: Bytes::from("a"),
    };
    ensure!(a.fenced(first.held(), op.clone()).await? == Fenced::Refused);
    let (_b, second) = tokio::time::timeout(SOON, waiting).await???;
    ensure!(!embedded.session_alive(session));
    ensure!(second.token() > first.token());
    eprintln!(
        "the cut-off leader stopped; the next one led {:?} later",
        invalid_at.elapsed()
    );
    ensure!(matches!(second.fenced(op).await?, Fenced::Applied(_)));
    Ok(())
}

/// Ten processes add 1 to a PostgreSQL counter 100 times each, reading and writing it
/// under the lock with no other protection: the counter must end at exactly 1,000.
async fn a_lock_makes_a_postgres_counter_exact(store: Store) -> Result<()> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let table = unique("coord_counter").replace('-', "_");
    let (admin, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    admin
        .batch_execute(&format!(
            "CREATE TABLE {table} (n bigint NOT NULL); INSERT INTO {table} VALUES (0)"
        ))
        .await?;
    let lock = unique("counter");
    let mut workers = Vec::new();
    for w in 0..10 {
        let coord = store.coord(&format!("worker-{w}")).await?;
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        let (table, lock) = (table.clone(), lock.clone());
        workers.push(tokio::spawn(async move {
            let mut tokens = Vec::new();
            for _ in 0..100 {
                let guard = coord.lock(&lock).await?;
                ensure!(guard.is_valid());
                tokens.push(guard.token().0);
                let row = client
                    .query_one(&format!("SELECT n FROM {table}"), &[])
                    .await?;
                let n: i64 = row.get(0);
                client
                    .execute(&format!("UPDATE {table} SET n = $1"), &[&(n + 1)])
                    .await?;
                guard.unlock().await?;
            }
            anyhow::Ok(tokens)
        }));
    }
    let mut tokens = Vec::new();
    for worker in workers {
        tokens.extend(worker.await??);
    }
    let n: i64 = admin
        .query_one(&format!("SELECT n FROM {table}"), &[])
        .await?
        .get(0);
    admin.batch_execute(&format!("DROP TABLE {table}")).await?;
    ensure!(n == 1000, "the counter is {n}, not 1000");
    let distinct: BTreeSet<u64> = tokens.iter().copied().collect();
    ensure!(
        distinct.len() == 1000,
        "every holder has a token of its own"
    );
    Ok(())
}

/// Twenty instances register from twenty processes; five crash (stop renewing, as `kill -9`
/// would). Discovery drops them within TTL + 1 s, the watch reports every registration and
/// every loss, and a malformed entry written by another client is skipped.
async fn discovery_drops_crashed_instances_within_the_ttl(store: Store) -> Result<()> {
    let service = unique("svc");
    let observer = store.coord("observer").await?;
    let mut watch = observer.watch_instances(&service).await?;
    let first = next(&mut watch).await?;
    ensure!(first.is_empty(), "{first:?}");
    let lists: Arc<Mutex<Vec<Vec<String>>>> = Arc::default();
    let watching = tokio::spawn({
        let lists = Arc::clone(&lists);
        async move {
            while let Some(list) = watch.next().await {
                let ids = list?.into_iter().map(|i| i.id).collect();
                locked(&lists).push(ids);
            }
            anyhow::Ok(())
        }
    });
    let mut processes = Vec::new();
    for n in 0..20 {
        let coord = store.coord(&format!("instance-{n}")).await?;
        let registration = coord
            .register(Instance {
                service: service.clone(),
                id: format!("i{n:02}"),
                address: format!("127.0.0.1:{}", 9000 + n),
                metadata: serde_json::json!({ "n": n }),
            })
            .await?;
        processes.push((coord, registration));
    }
    // Another client writes garbage into the service's directory.
    let raw = observer.backend().context("connected")?;
    let layout = raw.layout().instance.replace("{service}", &service);
    raw.put(
        &layout.replace("{id}", "junk"),
        Bytes::from("not json"),
        None,
    )
    .await?;
    let all = eventually(SOON, "20 instances discovered", || async {
        let found = observer.discover(&service).await?;
        Ok((found.len() == 20).then_some(found))
    })
    .await?;
    ensure!(all[3].address == "127.0.0.1:9003" && all[3].metadata["n"] == 3);
    let crashed_at = Instant::now();
    for (coord, registration) in processes.drain(15..) {
        coord.abandon();
        std::mem::forget(registration);
    }
    let gone_after = eventually(SOON, "the crashed instances dropped", || async {
        let found = observer.discover(&service).await?;
        Ok((found.len() == 15).then(|| crashed_at.elapsed()))
    })
    .await?;
    ensure!(
        gone_after <= TTL + Duration::from_secs(1),
        "the crashed instances went after {gone_after:?}, more than the TTL + 1 s"
    );
    eprintln!("crashed instances left discovery after {gone_after:?}");
    let expected: Vec<String> = (0..15).map(|n| format!("i{n:02}")).collect();
    eventually(SOON, "the watch's last list", || async {
        Ok((locked(&lists).last() == Some(&expected)).then_some(()))
    })
    .await?;
    let lists = locked(&lists).clone();
    let mut seen = BTreeSet::new();
    let mut lost = BTreeSet::new();
    for pair in lists.windows(2) {
        let (before, after): (BTreeSet<_>, BTreeSet<_>) =
            (pair[0].iter().collect(), pair[1].iter().collect());
        lost.extend(before.difference(&after).map(|id| (*id).clone()));
    }
    for list in &lists {
        seen.extend(list.iter().cloned());
    }
    ensure!(seen.len() == 20, "the watch saw {} instances", seen.len());
    let crashed: BTreeSet<String> = (15..20).map(|n| format!("i{n:02}")).collect();
    ensure!(lost == crashed, "the watch reported losing {lost:?}");
    ensure!(
        !watching.is_finished(),
        "the watcher survives a malformed entry"
    );
    watching.abort();
    for (_, registration) in processes {
        registration.close().await?;
    }
    ensure!(observer.discover(&service).await?.is_empty());
    Ok(())
}

/// When the server drops a process's session, its lock holder is told and its registration
/// is put again under the next session; the lock can be taken again, with a larger token.
async fn a_lost_session_ends_locks_and_registrations_come_back(store: Store) -> Result<()> {
    let service = unique("again");
    let lock = unique("lost");
    let coord = store.coord("p").await?;
    let registration = coord
        .register(Instance {
            service: service.clone(),
            id: "only".into(),
            address: "127.0.0.1:1".into(),
            metadata: serde_json::Value::Null,
        })
        .await?;
    let guard = coord.lock(&lock).await?;
    let old = guard.held().session;
    let backend = coord.backend().context("connected")?;
    let key = backend
        .layout()
        .instance
        .replace("{service}", &service)
        .replace("{id}", "only");
    ensure!(backend.get(&key).await?.context("registered")?.session == Some(old));
    backend.close_session(old).await?;
    tokio::time::timeout(SOON, guard.lost())
        .await
        .context("the holder is told the lock is lost")?;
    ensure!(!guard.is_valid());
    ensure!(
        coord
            .fenced(guard.held(), Op::Delete { key: key.clone() })
            .await?
            == Fenced::Refused
    );
    eventually(SOON, "registered again under a new session", || async {
        let entry = backend.get(&key).await?;
        Ok(entry
            .and_then(|kv| kv.session)
            .filter(|session| *session != old))
    })
    .await?;
    let again = coord.lock(&lock).await?;
    ensure!(again.token() > guard.token() && again.held().session != old);
    again.unlock().await?;
    drop(guard);
    ensure!(registration.instance().id == "only");
    registration.close().await?;
    ensure!(
        backend.get(&key).await?.is_none(),
        "closed means deregistered"
    );
    Ok(())
}

/// The engine's view: `Leadership::campaign` proclaims the node name and gives a term whose
/// token fences.
async fn the_engine_campaigns_through_leadership(store: Store) -> Result<()> {
    let election = unique("engine");
    let coord = store.coord("engine-node").await?;
    let leadership: &dyn Leadership = &coord;
    let term = leadership.campaign(&election).await?;
    ensure!(term.is_valid() && term.election() == election);
    let leader = coord.leader(&election).await?.context("a leader")?;
    ensure!(leader.value == coord.node().as_bytes() && leader.token == term.token());
    let ours = term
        .as_any()
        .downcast_ref::<LeaderTerm>()
        .context("a LeaderTerm")?;
    ensure!(ours.held().token == term.token().0);
    term.resign().await;
    ensure!(!term.is_valid());
    eventually(SOON, "no leader after resigning", || async {
        Ok(coord.leader(&election).await?.is_none().then_some(()))
    })
    .await?;
    Ok(())
}

/// The terms the nodes of a cluster hold, as the engine's runtime would: each node runs every
/// election of a set on a task of its own, enlisted for good, campaigning through
/// `Leadership`, leading until the term ends, then resigning and campaigning again.
#[derive(Clone, Default)]
struct Cluster {
    terms: Arc<Mutex<Vec<NodeTerm>>>,
}

/// A term, and the node that holds it.
type NodeTerm = (String, Arc<dyn Term>);

impl Cluster {
    /// Runs `elections` on `coord` until the returned tasks are aborted.
    fn run(&self, coord: &Coord, elections: &[String]) -> Vec<tokio::task::JoinHandle<Result<()>>> {
        elections
            .iter()
            .map(|election| {
                let (coord, election, terms) =
                    (coord.clone(), election.clone(), Arc::clone(&self.terms));
                tokio::spawn(async move {
                    let _enlisted = Leadership::enlist(&coord, &election);
                    loop {
                        let term = Leadership::campaign(&coord, &election).await?;
                        locked(&terms).push((coord.node().to_owned(), Arc::clone(&term)));
                        term.ended().await;
                        term.resign().await;
                    }
                })
            })
            .collect()
    }

    /// How many elections each node validly leads now; fails if one has two leaders.
    fn leading(&self) -> Result<std::collections::BTreeMap<String, usize>> {
        let mut terms = locked(&self.terms);
        terms.retain(|(_, term)| term.is_valid());
        let mut elections = BTreeSet::new();
        let mut counts = std::collections::BTreeMap::new();
        for (node, term) in terms.iter() {
            ensure!(
                elections.insert(term.election().to_owned()),
                "two valid leaders of {}",
                term.election()
            );
            *counts.entry(node.clone()).or_default() += 1;
        }
        Ok(counts)
    }

    /// Waits until the nodes lead as many elections as `wanted` says, each.
    async fn settled(&self, within: Duration, wanted: &[(&str, usize)]) -> Result<Duration> {
        let started = Instant::now();
        let wanted: std::collections::BTreeMap<String, usize> =
            wanted.iter().map(|(n, c)| ((*n).to_owned(), *c)).collect();
        eventually(within, &format!("the nodes leading {wanted:?}"), || async {
            Ok((self.leading()? == wanted).then(|| started.elapsed()))
        })
        .await
        .with_context(|| format!("they lead {:?}", self.leading()))
    }
}

/// Three nodes run the same six elections: two each. One crashes (stops renewing, as `kill
/// -9` would): the survivors lead three each within TTL + 1 s. Another node joins: two each
/// again, the extra terms handed over. No election ever has two valid leaders at a poll.
async fn six_elections_spread_over_three_nodes_follow_a_crash_and_a_join(
    store: Store,
) -> Result<()> {
    let elections: Vec<String> = (1..=6).map(|n| unique(&format!("spread{n}"))).collect();
    let cluster = Cluster::default();
    let mut nodes = Vec::new();
    for name in ["a", "b", "c"] {
        let coord = store.coord(name).await?;
        let tasks = cluster.run(&coord, &elections);
        nodes.push((coord, tasks));
    }
    cluster
        .settled(SOON, &[("a", 2), ("b", 2), ("c", 2)])
        .await?;
    // Each node's entry says what it runs and leads, once written.
    eventually(SOON, "the registry showing two terms each", || async {
        let seen = nodes[1].0.nodes().await?;
        Ok((seen.len() == 3
            && seen
                .iter()
                .all(|m| m.state.elections.len() == 6 && m.state.leading.len() == 2))
        .then_some(()))
    })
    .await?;

    // Its tasks go on, as the runtime of a frozen process would, without a session.
    nodes[0].0.abandon();
    let crashed = nodes.remove(0);
    let taken = cluster.settled(SOON, &[("b", 3), ("c", 3)]).await?;
    eprintln!("the crashed node's elections were taken after {taken:?}");
    ensure!(
        taken <= TTL + Duration::from_secs(1),
        "taken after {taken:?}, more than the TTL + 1 s"
    );

    let joined = store.coord("d").await?;
    let tasks = cluster.run(&joined, &elections);
    nodes.push((joined, tasks));
    let shared = cluster
        .settled(SOON, &[("b", 2), ("c", 2), ("d", 2)])
        .await?;
    eprintln!("the joining node had its share after {shared:?}");
    nodes.push(crashed);
    for (coord, tasks) in nodes {
        tasks.iter().for_each(|task| task.abort());
        coord.close().await;
    }
    Ok(())
}

/// A follower that falls behind the store's history gets a fresh read marked as a recovery,
/// without the deleted key, and then follows on.
#[tokio::test]
async fn following_survives_compaction() -> Result<()> {
    let embedded = Embedded::with_history(4);
    let coord = Coord::with_backend(Arc::new(embedded.clone()), TTL, "follower");
    let backend = coord.backend().context("connected")?;
    backend.put("f/a", Bytes::from("1"), None).await?;
    let mut follow = coord.follow("f/");
    let Follow::Snapshot {
        kvs,
        revision,
        recovered: false,
    } = next(&mut follow).await?
    else {
        bail!("the follow starts with a read");
    };
    ensure!(kvs.len() == 1 && kvs[0].key == "f/a");
    backend.put("f/b", Bytes::from("1"), None).await?;
    let Follow::Changes(changes) = next(&mut follow).await? else {
        bail!("a change follows");
    };
    ensure!(matches!(&changes[..], [Change::Put(kv)] if kv.key == "f/b"));
    // Unread, more changes than the history keeps.
    for n in 0..10 {
        backend.put("f/c", Bytes::from(n.to_string()), None).await?;
    }
    backend.delete("f/a").await?;
    let Follow::Snapshot {
        kvs,
        revision: recovered_at,
        recovered: true,
    } = next(&mut follow).await?
    else {
        bail!("a recovery read follows compaction");
    };
    let keys: Vec<&str> = kvs.iter().map(|kv| kv.key.as_str()).collect();
    ensure!(keys == ["f/b", "f/c"], "{keys:?}");
    ensure!(kvs[1].value == "9");
    backend.put("f/d", Bytes::from("1"), None).await?;
    let Follow::Changes(changes) = next(&mut follow).await? else {
        bail!("changes follow the recovery");
    };
    ensure!(
        changes
            .iter()
            .all(|c| c.revision() > recovered_at && c.key() == "f/d")
    );
    // Resuming from a checkpoint that is gone recovers the same way.
    let mut resumed = coord.follow_from("f/", revision);
    ensure!(matches!(
        next(&mut resumed).await?,
        Follow::Snapshot {
            recovered: true,
            ..
        }
    ));
    // From a checkpoint still in the history: exactly what came after it.
    let now = embedded.revision();
    backend.put("f/e", Bytes::from("1"), None).await?;
    let mut exact = coord.follow_from("f/", now);
    let Follow::Changes(changes) = next(&mut exact).await? else {
        bail!("changes from a kept revision");
    };
    ensure!(matches!(&changes[..], [Change::Put(kv)] if kv.key == "f/e"));
    Ok(())
}

/// Configurations are stored as text, and a watch yields the value now, then each new one.
#[tokio::test]
async fn configurations_are_stored_and_watched() -> Result<()> {
    let coord = Coord::with_backend(Arc::new(Embedded::new()), TTL, "config");
    ensure!(coord.get_config("relay").await?.is_none());
    let mut watch = coord.watch_config("relay").await?;
    ensure!(next(&mut watch).await? == None);
    coord.put_config("relay", "[pipeline]\n").await?;
    ensure!(next(&mut watch).await?.as_deref() == Some("[pipeline]\n"));
    // Written together, read together: the latest value counts.
    coord.put_config("relay", "[pipeline] # v1\n").await?;
    coord.put_config("relay-2", "other").await?;
    coord.put_config("relay", "[pipeline] # v2\n").await?;
    ensure!(next(&mut watch).await?.as_deref() == Some("[pipeline] # v2\n"));
    ensure!(coord.get_config("relay").await?.as_deref() == Some("[pipeline] # v2\n"));
    coord.put_config("relay", "[pipeline] # v2\n").await?;
    coord
        .backend()
        .context("connected")?
        .delete("config/relay")
        .await?;
    ensure!(
        next(&mut watch).await?.is_none(),
        "the same text again is no new value; the delete is"
    );
    let error = coord.get_config("").await.unwrap_err();
    ensure!(error.to_string().contains("configuration key"), "{error}");
    Ok(())
}

/// A backend nobody answers for: connecting fails within the connect timeout, retryable,
/// naming the endpoint.
#[cfg(feature = "zookeeper")]
#[tokio::test]
async fn an_unreachable_backend_is_named() -> Result<()> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    drop(listener);
    let mut config = sluice_coord::CoordConfig::from_url(&format!("zookeeper://127.0.0.1:{port}"))?;
    config.connect_timeout = sluice_pipeline::HumanDuration(Duration::from_secs(1));
    let error = Coord::connect(&config).await.unwrap_err();
    ensure!(error.is_retryable(), "{error:?}");
    let message = sluice_pipeline::error::chain(&error);
    ensure!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
    ensure!(matches!(error, CoordError::Unreachable { .. }), "{error:?}");
    Ok(())
}

/// `sluice check` on `[coord]`: a reachable backend is named with the session it grants, an
/// unreachable one with its endpoint.
#[cfg(feature = "zookeeper")]
#[tokio::test]
async fn check_reaches_the_backend_or_names_the_endpoint() -> Result<()> {
    use sluice_pipeline::component::Level;
    use sluice_pipeline::resource::ResourceConfig;
    let good = sluice_coord::CoordConfig::from_url(&format!("zookeeper://{}", zk::endpoints()))?;
    let findings = good.check().await;
    ensure!(
        findings.len() == 1 && findings[0].level == Level::Ok,
        "{findings:?}"
    );
    ensure!(
        findings[0].message.contains("grants sessions"),
        "{findings:?}"
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    drop(listener);
    let mut bad = sluice_coord::CoordConfig::from_url(&format!("zookeeper://127.0.0.1:{port}"))?;
    bad.connect_timeout = sluice_pipeline::HumanDuration(Duration::from_secs(1));
    let findings = bad.check().await;
    ensure!(
        findings.len() == 1
            && findings[0].level == Level::Fail
            && findings[0].message.contains(&format!("127.0.0.1:{port}")),
        "{findings:?}"
    );
    ensure!(good.provides_leadership());
    Ok(())
}

/// A leader whose whole process freezes (here: its runtime's only thread blocked, as under
/// `SIGSTOP`) for a TTL knows, at its first check after waking and before any of its tasks
/// has run, that it no longer leads, and its fenced writes are refused.
async fn a_frozen_leader_knows_before_anything_runs(store: Store) -> Result<()> {
    let election = unique("frozen");
    let coord = store.coord("frozen").await?;
    let term = coord.campaign(&election, "frozen").await?;
    ensure!(term.is_valid());
    // The fault under test, not a wait for a condition: nothing of this process runs.
    std::thread::sleep(TTL);
    ensure!(
        !term.is_valid(),
        "the term is still valid after a freeze of a TTL"
    );
    let op = Op::Put {
        key: unique("frozen-key"),
        value: Bytes::from("late"),
    };
    ensure!(term.fenced(op).await? == Fenced::Refused);
    Ok(())
}

// On a single-threaded runtime, so that blocking its thread freezes every task of the process.
#[tokio::test(flavor = "current_thread")]
async fn a_frozen_leader_knows_before_anything_runs_embedded() -> Result<()> {
    a_frozen_leader_knows_before_anything_runs(Store::embedded()).await
}

#[cfg(feature = "zookeeper")]
#[tokio::test(flavor = "current_thread")]
async fn a_frozen_leader_knows_before_anything_runs_zookeeper() -> Result<()> {
    let store = Store::zookeeper();
    let outcome = a_frozen_leader_knows_before_anything_runs(store.clone()).await;
    store.cleanup().await?;
    outcome
}

/// A process cut off from ZooKeeper until the server expires its session comes back whole
/// once it can reach the server again: its lock is lost and taken again with a larger token
/// under a new session, its registration is put again under that session, and its watches,
/// whose connections came back within their own (longer) sessions, deliver what changes next.
#[cfg(feature = "zookeeper")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_process_cut_off_past_its_session_recovers_zookeeper() -> Result<()> {
    let store = Store::zookeeper();
    let outcome = a_process_cut_off_past_its_session_recovers(&store).await;
    store.cleanup().await?;
    outcome
}

#[cfg(feature = "zookeeper")]
async fn a_process_cut_off_past_its_session_recovers(store: &Store) -> Result<()> {
    use sluice_coord::zookeeper::{ZooKeeper, ZooKeeperOptions};

    let Store::ZooKeeper { namespace } = store else {
        bail!("a ZooKeeper store")
    };
    let upstream = zk::endpoints();
    let upstream = upstream.split(',').next().context("an endpoint")?;
    let proxy = proxy::Proxy::start(upstream.to_owned()).await?;
    let backend = ZooKeeper::connect(ZooKeeperOptions {
        endpoints: vec![proxy.addr.to_string()],
        namespace: Some(namespace.clone()),
    })
    .await?;
    let coord = Coord::with_backend(Arc::new(backend), TTL, "cut-off");
    let observer = store.coord("observer").await?;
    let (service, lock, config) = (unique("cut-off"), unique("cut-off"), unique("cut-off"));
    let instance = |id: &str| Instance {
        service: service.clone(),
        id: id.to_owned(),
        address: "127.0.0.1:1".into(),
        metadata: serde_json::Value::Null,
    };
    let ids = |list: Vec<Instance>| list.into_iter().map(|i| i.id).collect::<Vec<_>>();
    // Each watch delivers a change before the cut, so its connection is open by then.
    let mut values = coord.watch_config(&config).await?;
    ensure!(next(&mut values).await?.is_none());
    coord.put_config(&config, "v1").await?;
    ensure!(next(&mut values).await?.as_deref() == Some("v1"));
    let mut lists = coord.watch_instances(&service).await?;
    ensure!(next(&mut lists).await?.is_empty());
    let registration = coord.register(instance("cut-off")).await?;
    ensure!(ids(next(&mut lists).await?) == ["cut-off"]);
    let guard = coord.lock(&lock).await?;
    let old = guard.held().session;

    proxy.cut_all().await?;
    eventually(
        SOON,
        "the cut-off session expired on the server",
        || async { Ok(observer.discover(&service).await?.is_empty().then_some(())) },
    )
    .await?;
    ensure!(!guard.is_valid(), "a lock held past its session's expiry");
    proxy.set_cut(false);

    let key = observer
        .backend()
        .context("connected")?
        .layout()
        .instance
        .replace("{service}", &service)
        .replace("{id}", "cut-off");
    let new = eventually(SOON, "registered again under a new session", || async {
        let entry = observer.backend().context("connected")?.get(&key).await?;
        Ok(entry
            .and_then(|kv| kv.session)
            .filter(|session| *session != old))
    })
    .await?;
    let again = coord.lock(&lock).await?;
    ensure!(again.token() > guard.token() && again.held().session == new);
    // What changes now reaches the watches: the first change may come with the read a watch
    // makes once reconnected, so the second one, made after it arrived, comes live.
    observer.put_config(&config, "v2").await?;
    ensure!(next(&mut values).await?.as_deref() == Some("v2"));
    observer.put_config(&config, "v3").await?;
    ensure!(next(&mut values).await?.as_deref() == Some("v3"));
    let other = observer.register(instance("other")).await?;
    while ids(next(&mut lists).await?) != ["cut-off", "other"] {}
    other.close().await?;
    while ids(next(&mut lists).await?) != ["cut-off"] {}

    again.unlock().await?;
    registration.close().await?;
    coord.close().await;
    observer.close().await;
    Ok(())
}
