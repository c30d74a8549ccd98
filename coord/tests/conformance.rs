//! The conformance suite: one set of tests over `Arc<dyn Backend>` that checks every rule of
//! `coord/src/backend.rs` (revisions and watches, compaction, sessions, tokens, fairness,
//! fencing, the key-value methods), run on each backend against its real server from
//! `scripts/services.sh`. Each test has a namespace of its own.
//!
//! A backend is one [`Subject`]: how to connect a backend (a process, in effect) to a
//! namespace, and its declared [`Capabilities`] where backends legitimately differ. Adding a
//! backend is one `conformance!` line and its subject function.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use sluice_coord::etcd::{Etcd, EtcdOptions};
use sluice_coord::zookeeper::{ZooKeeper, ZooKeeperOptions};
use sluice_coord::{
    Backend, Change, CoordError, Embedded, Fenced, Held, Op, SessionId, WatchEvent,
};
use tokio::task::JoinHandle;

#[path = "support/poll.rs"]
mod poll;
#[path = "support/private_etcd.rs"]
mod private_etcd;
use poll::eventually;
use private_etcd::PrivateEtcd;

/// The TTL sessions ask for: the smallest sluice allows.
const TTL: Duration = Duration::from_secs(2);
/// How long a condition that should hold soon may take.
const SOON: Duration = Duration::from_secs(10);

type Connect = Box<dyn Fn(String) -> BoxFuture<'static, Result<Arc<dyn Backend>>> + Send + Sync>;

/// A backend under test.
struct Subject {
    /// Connects a new backend to a namespace.
    connect: Connect,
    /// What the backend does where the rules leave room.
    caps: Capabilities,
}

/// Where backends differ, declared once per backend.
struct Capabilities {
    /// A live watch delivers every write to a key, not only the latest of writes in quick
    /// succession (ZooKeeper may merge them into one `Put`).
    every_write: bool,
    /// A watch from an older revision replays every change since, not only each key's
    /// latest value (ZooKeeper keeps no history).
    history: bool,
    /// How the history a watch starts from goes away, so that it says `Compacted`.
    forgets: Forgets,
}

/// How a backend's history goes.
enum Forgets {
    /// When the store is compacted: the suite compacts a server of its own (never the shared
    /// one), through this: a backend on it, and a function compacting it at a revision.
    ByCompaction(fn() -> BoxFuture<'static, Result<Compactable>>),
    /// It keeps none: a key deleted after the start revision cannot be replayed.
    KeepsNone,
}

/// A backend on a server the test may compact, and what compacts it.
struct Compactable {
    backend: Arc<dyn Backend>,
    compact: Box<dyn Fn(u64) -> BoxFuture<'static, Result<()>> + Send + Sync>,
    /// What must live as long as the backend (a server of the test's own), dropped with it.
    _alive: Box<dyn std::any::Any + Send + Sync>,
}

/// One namespace of a test's own, and a backend on it.
struct Fixture<'s> {
    subject: &'s Subject,
    namespace: String,
    b: Arc<dyn Backend>,
}

impl<'s> Fixture<'s> {
    async fn new(subject: &'s Subject) -> Result<Self> {
        let namespace = format!("sluice-conformance/{}", uuid::Uuid::new_v4().simple());
        let b = (subject.connect)(namespace.clone()).await?;
        Ok(Fixture {
            subject,
            namespace,
            b,
        })
    }

    /// Another backend (another process, in effect) on the same namespace.
    async fn peer(&self) -> Result<Arc<dyn Backend>> {
        (self.subject.connect)(self.namespace.clone()).await
    }

    /// The candidates of election `name`, as keys (every backend lists them under the
    /// prefix its layout names).
    async fn candidates(&self, template: &str, name: &str) -> Result<usize> {
        let prefix = template.replace("{name}", name);
        Ok(self.b.range(&prefix).await?.0.len())
    }

    /// Waits until election or lock `name` has `n` candidates.
    async fn wait_candidates(&self, template: &str, name: &str, n: usize) -> Result<()> {
        eventually(&format!("{n} candidates of {name}"), SOON, || async {
            Ok((self.candidates(template, name).await? == n).then_some(()))
        })
        .await
    }

    /// Deletes the keys the test left.
    async fn cleanup(self) -> Result<()> {
        let (keys, _) = self.b.range("").await?;
        for kv in keys.iter().rev() {
            self.b.delete(&kv.key).await?;
        }
        Ok(())
    }
}

async fn within<T>(what: &str, limit: Duration, fut: impl Future<Output = T>) -> Result<T> {
    tokio::time::timeout(limit, fut)
        .await
        .with_context(|| format!("{what}: not within {limit:?}"))
}

/// Campaigns in the background.
fn spawn_campaign(
    b: &Arc<dyn Backend>,
    session: SessionId,
    name: &'static str,
    value: &'static [u8],
) -> JoinHandle<Result<Held, CoordError>> {
    let b = Arc::clone(b);
    tokio::spawn(async move { b.campaign(session, name, Bytes::from_static(value)).await })
}

/// Waits for a lock in the background.
fn spawn_lock(
    b: &Arc<dyn Backend>,
    session: SessionId,
    name: &'static str,
) -> JoinHandle<Result<Held, CoordError>> {
    let b = Arc::clone(b);
    tokio::spawn(async move { b.lock(session, name).await })
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

fn summary(changes: &[Change]) -> Vec<(&str, u64, bool)> {
    changes
        .iter()
        .map(|c| (c.key(), c.revision(), matches!(c, Change::Put(_))))
        .collect()
}

fn v(value: &'static str) -> Bytes {
    Bytes::from_static(value.as_bytes())
}

// ---------------------------------------------------------------------------------------------
// The rules
// ---------------------------------------------------------------------------------------------

/// get, range, put and delete, with the revisions they report.
async fn keys_and_revisions(subject: &Subject) -> Result<()> {
    let f = Fixture::new(subject).await?;
    let b = &f.b;
    assert_eq!(b.get("k/a").await?, None);
    let r1 = b.put("k/a", v("1"), None).await?;
    let a = b.get("k/a").await?.context("k/a after its put")?;
    assert_eq!(
        (
            a.key.as_str(),
            &a.value[..],
            a.create_revision,
            a.mod_revision
        ),
        ("k/a", &b"1"[..], r1, r1)
    );
    assert_eq!((a.version, a.session), (1, None));
    let r2 = b.put("k/a", v("2"), None).await?;
    ensure!(r2 > r1, "revisions grow: {r1} then {r2}");
    let a = b.get("k/a").await?.context("k/a")?;
    assert_eq!(
        (&a.value[..], a.create_revision, a.mod_revision, a.version),
        (&b"2"[..], r1, r2, 2)
    );
    // Revisions are comparable across keys.
    let r3 = b.put("k/b/x", v("x"), None).await?;
    let r4 = b.put("k/b/y", v("y"), None).await?;
    b.put("k/bz", v("z"), None).await?;
    b.put("other", v("o"), None).await?;
    ensure!(r2 < r3 && r3 < r4);
    let (keys, at) = b.range("k/b/").await?;
    let names: Vec<&str> = keys.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(names, ["k/b/x", "k/b/y"]);
    ensure!(
        at >= r4,
        "a range is read at a revision after its keys' writes"
    );
    let (keys, _) = b.range("k/b").await?;
    let names: Vec<&str> = keys.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(names, ["k/b/x", "k/b/y", "k/bz"], "key order");
    let deleted = b.delete("k/a").await?.context("k/a existed")?;
    ensure!(deleted > r4);
    assert_eq!(b.delete("k/a").await?, None);
    assert_eq!(b.get("k/a").await?, None);
    // Bad input is refused, named.
    match b.put("", v("x"), None).await {
        Err(CoordError::Config(message)) => ensure!(message.contains("key"), "{message}"),
        other => bail!("an empty key gave {other:?}"),
    }
    f.cleanup().await
}

/// A live watch delivers each change after its start once, in revision order, deletes and
/// the end of a session included, and nothing outside its prefix.
async fn watch_delivers_each_change_once_in_order(subject: &Subject) -> Result<()> {
    let f = Fixture::new(subject).await?;
    let b = &f.b;
    b.put("cfg/old", v("0"), None).await?;
    let (keys, rev) = b.range("cfg/").await?;
    assert_eq!(keys.len(), 1);
    let mut stream = b.watch("cfg/", rev).await?;
    let (s, _) = b.open_session(TTL).await?;
    let mut wrote = vec![
        (b.put("cfg/a", v("1"), None).await?, "cfg/a", true),
        (
            b.put("cfg/deep/b", v("2"), Some(s)).await?,
            "cfg/deep/b",
            true,
        ),
    ];
    b.put("outside", v("no"), None).await?;
    wrote.push((b.put("cfg/old", v("1"), None).await?, "cfg/old", true));
    if subject.caps.every_write {
        wrote.push((b.put("cfg/old", v("2"), None).await?, "cfg/old", true));
        wrote.push((b.put("cfg/old", v("3"), None).await?, "cfg/old", true));
    }
    wrote.push((b.delete("cfg/a").await?.context("cfg/a")?, "cfg/a", false));
    b.close_session(s).await?;
    let changes = collect(&mut stream, |c| {
        c.iter()
            .any(|c| matches!(c, Change::Delete { key, .. } if key == "cfg/deep/b"))
    })
    .await?;
    let seen = summary(&changes);
    let expected: Vec<(&str, u64, bool)> = wrote.iter().map(|&(r, k, p)| (k, r, p)).collect();
    assert_eq!(seen[..expected.len()], expected[..], "{seen:?}");
    assert_eq!(seen.len(), expected.len() + 1, "{seen:?}");
    let (_, last, put) = seen[expected.len()];
    ensure!(!put && last > wrote.last().map_or(0, |w| w.0), "{seen:?}");
    // Nothing more: a later write is the next change, not a repeat.
    let r = b.put("cfg/z", v("z"), None).await?;
    let next = collect(&mut stream, |c| !c.is_empty()).await?;
    assert_eq!(summary(&next), [("cfg/z", r, true)]);
    f.cleanup().await
}

/// A watch from an older revision replays what changed since (every change, or each key's
/// latest value where the backend keeps no history), then follows live changes.
async fn watch_from_the_past(subject: &Subject) -> Result<()> {
    let f = Fixture::new(subject).await?;
    let b = &f.b;
    b.put("w/k1", v("1"), None).await?;
    let r2 = b.put("w/k2", v("1"), None).await?;
    let r3 = b.put("w/k1", v("2"), None).await?;
    let r4 = b.put("w/k2", v("2"), None).await?;
    let r5 = b.put("w/k2", v("3"), None).await?;
    let mut stream = b.watch("w/", r2).await?;
    let expected: Vec<(&str, u64, bool)> = if subject.caps.history {
        vec![("w/k1", r3, true), ("w/k2", r4, true), ("w/k2", r5, true)]
    } else {
        vec![("w/k1", r3, true), ("w/k2", r5, true)]
    };
    let replay = collect(&mut stream, |c| c.len() >= expected.len()).await?;
    assert_eq!(summary(&replay), expected);
    if let Change::Put(kv) = &replay[replay.len() - 1] {
        assert_eq!(&kv.value[..], b"3");
    }
    let r6 = b.put("w/k3", v("1"), None).await?;
    let live = collect(&mut stream, |c| !c.is_empty()).await?;
    assert_eq!(summary(&live), [("w/k3", r6, true)]);
    f.cleanup().await
}

/// When the history a watch starts from is gone, it says `Compacted` and ends; watching again
/// from a fresh read goes on.
async fn watch_says_compacted(subject: &Subject) -> Result<()> {
    // A store of the test's own where compaction is how history goes.
    let (b, compact, _fixture) = match subject.caps.forgets {
        Forgets::ByCompaction(start) => {
            let server = start().await?;
            (Arc::clone(&server.backend), Some(server), None)
        }
        Forgets::KeepsNone => {
            let f = Fixture::new(subject).await?;
            (Arc::clone(&f.b), None, Some(f))
        }
    };
    let ns = format!("c{}/", uuid::Uuid::new_v4().simple());
    let key = |k: &str| format!("{ns}{k}");
    let r1 = b.put(&key("a"), v("1"), None).await?;
    b.put(&key("b"), v("1"), None).await?;
    b.delete(&key("a")).await?.context("a")?;
    let r4 = b.put(&key("b"), v("2"), None).await?;
    if let Some(server) = &compact {
        (server.compact)(r4).await?;
    }
    let mut stream = b.watch(&ns, r1).await?;
    match within("compacted", SOON, stream.next()).await? {
        Some(Ok(WatchEvent::Compacted { compacted })) => {
            ensure!(
                compacted > r1,
                "compacted {compacted} does not cover the gap after {r1}"
            );
        }
        other => bail!("expected Compacted, got {other:?}"),
    }
    assert!(
        within("the end after Compacted", SOON, stream.next())
            .await?
            .is_none(),
        "the watch goes on after Compacted"
    );
    // The documented recovery: read the prefix again, watch from that read.
    let (keys, at) = b.range(&ns).await?;
    assert_eq!(keys.len(), 1);
    let mut stream = b.watch(&ns, at).await?;
    let r5 = b.delete(&key("b")).await?.context("b")?;
    let live = collect(&mut stream, |c| !c.is_empty()).await?;
    assert_eq!(
        live,
        [Change::Delete {
            key: key("b"),
            mod_revision: r5
        }]
    );
    Ok(())
}

/// Closing a session deletes its keys and gives up its candidacies and locks; a session
/// nobody renews ends after its TTL; a candidate whose session ends while waiting is told.
async fn sessions_take_their_keys_and_claims_with_them(subject: &Subject) -> Result<()> {
    let f = Fixture::new(subject).await?;
    let b = &f.b;
    let layout = b.layout();
    let (s, granted) = b.open_session(TTL).await?;
    ensure!(granted >= TTL, "granted {granted:?} for {TTL:?}");
    assert_eq!(b.renew(s).await?, granted);
    b.put("eph/x", v("1"), Some(s)).await?;
    assert_eq!(b.get("eph/x").await?.context("eph/x")?.session, Some(s));
    let leading = b.campaign(s, "e1", v("me")).await?;
    let locked = b.lock(s, "l1").await?;
    // A candidate of another session waits, and is told when its own session ends.
    let (waiter, _) = b.open_session(TTL).await?;
    let waiting = spawn_campaign(b, waiter, "e1", b"w");
    f.wait_candidates(&layout.election, "e1", 2).await?;
    b.close_session(waiter).await?;
    match within("the waiter's end", SOON, waiting).await?? {
        Err(CoordError::SessionExpired) => {}
        other => bail!("a campaign whose session closed gave {other:?}"),
    }
    b.close_session(s).await?;
    assert_eq!(b.get("eph/x").await?, None);
    assert_eq!(b.leader("e1").await?, None);
    within("released after close", SOON, b.released(&leading)).await??;
    within("released after close", SOON, b.released(&locked)).await??;
    let other = f.peer().await?;
    let (s2, _) = other.open_session(TTL).await?;
    within("a free lock", SOON, other.lock(s2, "l1")).await??;
    assert!(matches!(b.renew(s).await, Err(CoordError::SessionExpired)));

    // Not renewed: gone within its TTL (and the server's grace) by itself.
    let opened = Instant::now();
    let (s3, granted) = b.open_session(TTL).await?;
    b.put("eph/y", v("1"), Some(s3)).await?;
    let held = b.campaign(s3, "e2", v("x")).await?;
    within("released by expiry", granted + SOON, b.released(&held)).await??;
    eventually("eph/y gone", SOON, || async {
        Ok(b.get("eph/y").await?.is_none().then_some(()))
    })
    .await?;
    ensure!(
        opened.elapsed() >= granted,
        "ended {:?} after its opening, before its TTL {granted:?}",
        opened.elapsed()
    );
    assert!(matches!(b.renew(s3).await, Err(CoordError::SessionExpired)));
    other.close_session(s2).await?;
    f.cleanup().await
}

/// Candidates lead in the order they asked, with growing tokens, each one as its
/// predecessors go; the leader is observable.
async fn elections_follow_request_order_with_growing_tokens(subject: &Subject) -> Result<()> {
    let f = Fixture::new(subject).await?;
    let layout = f.b.layout();
    let (b1, b2, b3) = (Arc::clone(&f.b), f.peer().await?, f.peer().await?);
    assert_eq!(b1.leader("e").await?, None);
    let (s1, _) = b1.open_session(SOON).await?;
    let (s2, _) = b2.open_session(SOON).await?;
    let (s3, _) = b3.open_session(SOON).await?;
    let first = b1.campaign(s1, "e", v("one")).await?;
    assert_eq!(b1.leader("e").await?, Some((v("one"), first.token)));
    let second = spawn_campaign(&b2, s2, "e", b"two");
    f.wait_candidates(&layout.election, "e", 2).await?;
    let third = spawn_campaign(&b3, s3, "e", b"three");
    f.wait_candidates(&layout.election, "e", 3).await?;
    ensure!(
        !second.is_finished() && !third.is_finished(),
        "a waiter leads"
    );
    b1.resign(&first).await?;
    let second = within("the second leads", SOON, second).await???;
    ensure!(second.token > first.token, "{second:?} after {first:?}");
    assert_eq!(b1.leader("e").await?, Some((v("two"), second.token)));
    ensure!(!third.is_finished(), "the third leads with the second");
    b2.resign(&second).await?;
    let third = within("the third leads", SOON, third).await???;
    ensure!(third.token > second.token);
    assert_eq!(b1.leader("e").await?, Some((v("three"), third.token)));
    // A new term after every earlier one has the largest token.
    b3.resign(&third).await?;
    let fourth = b1.campaign(s1, "e", v("one")).await?;
    ensure!(fourth.token > third.token);
    for (b, s) in [(&b1, s1), (&b2, s2), (&b3, s3)] {
        b.close_session(s).await?;
    }
    f.cleanup().await
}

/// A waiter whose predecessor withdraws keeps waiting on the one before it (and does not
/// take the lead from a live leader); dropping a campaign withdraws it.
async fn waiters_wait_on_their_predecessor(subject: &Subject) -> Result<()> {
    let f = Fixture::new(subject).await?;
    let layout = f.b.layout();
    let (b1, b2, b3) = (Arc::clone(&f.b), f.peer().await?, f.peer().await?);
    let (s1, _) = b1.open_session(SOON).await?;
    let (s2, _) = b2.open_session(SOON).await?;
    let (s3, _) = b3.open_session(SOON).await?;
    let leader = b1.lock(s1, "q").await?;
    let middle = spawn_lock(&b2, s2, "q");
    f.wait_candidates(&layout.lock, "q", 2).await?;
    let last = spawn_lock(&b3, s3, "q");
    f.wait_candidates(&layout.lock, "q", 3).await?;
    // The middle waiter gives up: its key goes, the last one now waits on the holder.
    middle.abort();
    f.wait_candidates(&layout.lock, "q", 2).await?;
    // The last waiter has seen its predecessor go: a write after it, then the check.
    f.b.put("probe", v("1"), None).await?;
    ensure!(!last.is_finished(), "the last waiter took a held lock");
    b1.unlock(&leader).await?;
    let last = within("the last takes the lock", SOON, last).await???;
    ensure!(last.token > leader.token);
    for (b, s) in [(&b1, s1), (&b2, s2), (&b3, s3)] {
        b.close_session(s).await?;
    }
    f.cleanup().await
}

/// Dropping a waiting campaign withdraws it, and the same session may campaign again at once.
async fn a_dropped_campaign_withdraws_its_candidacy(subject: &Subject) -> Result<()> {
    let f = Fixture::new(subject).await?;
    let layout = f.b.layout();
    let (b1, b2) = (Arc::clone(&f.b), f.peer().await?);
    let (s1, _) = b1.open_session(SOON).await?;
    let (s2, _) = b2.open_session(SOON).await?;
    let first = b1.campaign(s1, "e", v("one")).await?;
    // Drive the second campaign until its candidacy is there, then drop it.
    let mut waiting = b2.campaign(s2, "e", v("dropped"));
    let deadline = Instant::now() + SOON;
    while f.candidates(&layout.election, "e").await? < 2 {
        ensure!(
            Instant::now() < deadline,
            "the second candidacy never appeared"
        );
        tokio::select! {
            won = &mut waiting => bail!("a waiter won beside a leader: {won:?}"),
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
    drop(waiting);
    let again = spawn_campaign(&b2, s2, "e", b"again");
    // The withdrawal runs after the drop; the new candidacy appears only once it is done.
    let prefix = layout.election.replace("{name}", "e");
    let values = eventually("the new candidacy", SOON, || async {
        let (keys, _) = f.b.range(&prefix).await?;
        let values: Vec<Vec<u8>> = keys.iter().map(|kv| kv.value.to_vec()).collect();
        Ok(values.iter().any(|v| v == b"again").then_some(values))
    })
    .await?;
    ensure!(
        !values.iter().any(|v| v == b"dropped") && values.len() == 2,
        "the dropped candidacy stayed: {values:?}"
    );
    b1.resign(&first).await?;
    let again = within("the new candidacy leads", SOON, again).await???;
    assert_eq!(b1.leader("e").await?, Some((v("again"), again.token)));
    for (b, s) in [(&b1, s1), (&b2, s2)] {
        b.close_session(s).await?;
    }
    f.cleanup().await
}

/// A lock excludes across sessions and backends, and is served in request order.
async fn locks_exclude_and_serve_in_order(subject: &Subject) -> Result<()> {
    let f = Fixture::new(subject).await?;
    let layout = f.b.layout();
    let (b1, b2) = (Arc::clone(&f.b), f.peer().await?);
    let (s1, _) = b1.open_session(SOON).await?;
    let (s2, _) = b2.open_session(SOON).await?;
    let (s3, _) = b1.open_session(SOON).await?;
    let held = b1.lock(s1, "l").await?;
    let second = spawn_lock(&b2, s2, "l");
    f.wait_candidates(&layout.lock, "l", 2).await?;
    let third = spawn_lock(&b1, s3, "l");
    f.wait_candidates(&layout.lock, "l", 3).await?;
    ensure!(
        !second.is_finished() && !third.is_finished(),
        "two hold one lock"
    );
    b1.unlock(&held).await?;
    within("released after unlock", SOON, b1.released(&held)).await??;
    let second = within("the second holds", SOON, second).await???;
    ensure!(second.token > held.token);
    ensure!(!third.is_finished(), "the third holds with the second");
    b2.unlock(&second).await?;
    let third = within("the third holds", SOON, third).await???;
    ensure!(third.token > second.token);
    for (b, s) in [(&b1, s1), (&b2, s2), (&b1, s3)] {
        b.close_session(s).await?;
    }
    f.cleanup().await
}

/// Fenced writes apply only while the election or lock is held with that token.
async fn fenced_writes_apply_only_while_held(subject: &Subject) -> Result<()> {
    let f = Fixture::new(subject).await?;
    let (b1, b2) = (Arc::clone(&f.b), f.peer().await?);
    let (s1, _) = b1.open_session(SOON).await?;
    let put = |value: &'static str| Op::Put {
        key: "fenced/k".to_owned(),
        value: v(value),
    };
    let value = || async { Ok::<_, anyhow::Error>(b2.get("fenced/k").await?.map(|kv| kv.value)) };

    // Election: applied while leading, refused after resigning.
    let term = b1.campaign(s1, "e", v("n1")).await?;
    let Fenced::Applied(at) = b1.fenced(&term, put("1")).await? else {
        bail!("a leader's fenced write was refused");
    };
    assert_eq!(
        b2.get("fenced/k").await?.context("written")?.mod_revision,
        at
    );
    b1.resign(&term).await?;
    assert_eq!(b1.fenced(&term, put("2")).await?, Fenced::Refused);
    assert_eq!(value().await?, Some(v("1")));

    // Lock: refused after unlocking, and a stale holder is refused once another holds it.
    let (s2, _) = b2.open_session(SOON).await?;
    let old = b1.lock(s1, "l").await?;
    assert!(matches!(
        b1.fenced(&old, put("3")).await?,
        Fenced::Applied(_)
    ));
    b1.unlock(&old).await?;
    assert_eq!(b1.fenced(&old, put("4")).await?, Fenced::Refused);
    let new = b2.lock(s2, "l").await?;
    assert_eq!(b1.fenced(&old, put("5")).await?, Fenced::Refused);
    let delete = Op::Delete {
        key: "fenced/k".to_owned(),
    };
    assert!(matches!(b2.fenced(&new, delete).await?, Fenced::Applied(_)));
    assert_eq!(value().await?, None);

    // Session end: refused.
    b2.close_session(s2).await?;
    assert_eq!(b2.fenced(&new, put("6")).await?, Fenced::Refused);
    assert_eq!(value().await?, None);
    b1.close_session(s1).await?;
    f.cleanup().await
}

/// Defines the suite's tests for one backend.
macro_rules! conformance {
    ($backend:ident, $subject:expr) => {
        mod $backend {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn keys_and_revisions() -> Result<()> {
                super::keys_and_revisions(&$subject).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn watch_delivers_each_change_once_in_order() -> Result<()> {
                super::watch_delivers_each_change_once_in_order(&$subject).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn watch_from_the_past() -> Result<()> {
                super::watch_from_the_past(&$subject).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn watch_says_compacted() -> Result<()> {
                super::watch_says_compacted(&$subject).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sessions_take_their_keys_and_claims_with_them() -> Result<()> {
                super::sessions_take_their_keys_and_claims_with_them(&$subject).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn elections_follow_request_order_with_growing_tokens() -> Result<()> {
                super::elections_follow_request_order_with_growing_tokens(&$subject).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn waiters_wait_on_their_predecessor() -> Result<()> {
                super::waiters_wait_on_their_predecessor(&$subject).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_dropped_campaign_withdraws_its_candidacy() -> Result<()> {
                super::a_dropped_campaign_withdraws_its_candidacy(&$subject).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn locks_exclude_and_serve_in_order() -> Result<()> {
                super::locks_exclude_and_serve_in_order(&$subject).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn fenced_writes_apply_only_while_held() -> Result<()> {
                super::fenced_writes_apply_only_while_held(&$subject).await
            }
        }
    };
}

conformance!(embedded, embedded_subject());
conformance!(etcd, etcd_subject());
conformance!(zookeeper, zookeeper_subject());

// ---------------------------------------------------------------------------------------------
// The backends
// ---------------------------------------------------------------------------------------------

fn embedded_subject() -> Subject {
    Subject {
        connect: Box::new(|ns| {
            Box::pin(async move { Ok(Arc::new(Embedded::shared(Some(&ns))) as Arc<dyn Backend>) })
        }),
        caps: Capabilities {
            every_write: true,
            history: true,
            forgets: Forgets::ByCompaction(|| {
                Box::pin(async {
                    let store = Embedded::new();
                    Ok(Compactable {
                        backend: Arc::new(store.clone()),
                        compact: Box::new(move |revision| {
                            store.compact(revision);
                            Box::pin(std::future::ready(Ok(())))
                        }),
                        _alive: Box::new(()),
                    })
                })
            }),
        },
    }
}

fn etcd_endpoints() -> Vec<String> {
    std::env::var("ETCD_ENDPOINTS")
        .unwrap_or_else(|_| "http://127.0.0.1:2379".to_owned())
        .split(',')
        .map(str::to_owned)
        .collect()
}

async fn etcd_on(endpoints: Vec<String>, namespace: Option<String>) -> Result<Arc<dyn Backend>> {
    let mut options = EtcdOptions::new(endpoints);
    options.namespace = namespace;
    Ok(Arc::new(Etcd::connect(options).await?))
}

fn etcd_subject() -> Subject {
    Subject {
        connect: Box::new(|ns| Box::pin(etcd_on(etcd_endpoints(), Some(ns)))),
        caps: Capabilities {
            every_write: true,
            history: true,
            forgets: Forgets::ByCompaction(|| Box::pin(private_etcd())),
        },
    }
}

/// An etcd of the test's own, to compact: the shared one's history is everybody's.
async fn private_etcd() -> Result<Compactable> {
    let server = PrivateEtcd::start(None).await?;
    let url = server.url.clone();
    let backend = eventually("the private etcd answers", SOON, || {
        let url = url.clone();
        async move { Ok(etcd_on(vec![url], None).await.ok()) }
    })
    .await?;
    let raw = etcd_client::Client::connect([url.as_str()], None).await?;
    Ok(Compactable {
        backend,
        compact: Box::new(move |revision| {
            let mut raw = raw.clone();
            Box::pin(async move {
                raw.compact(i64::try_from(revision)?, None).await?;
                Ok(())
            })
        }),
        _alive: Box::new(server),
    })
}

fn zookeeper_subject() -> Subject {
    Subject {
        connect: Box::new(|ns| {
            Box::pin(async move {
                let endpoints = std::env::var("ZOOKEEPER_ENDPOINTS")
                    .unwrap_or_else(|_| "127.0.0.1:2181".to_owned());
                let options = ZooKeeperOptions {
                    endpoints: endpoints.split(',').map(str::to_owned).collect(),
                    namespace: Some(ns),
                };
                Ok(Arc::new(ZooKeeper::connect(options).await?) as Arc<dyn Backend>)
            })
        }),
        caps: Capabilities {
            every_write: false,
            history: false,
            forgets: Forgets::KeepsNone,
        },
    }
}
