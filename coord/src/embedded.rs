//! The embedded backend: the coordination store in this process, with the semantics of the
//! server backends — leases that expire on a clock, a revision for every write, watches with a
//! bounded history that say [`WatchEvent::Compacted`] beyond it, sequential candidacies and
//! lock queues, and fenced writes — for a single node, and for tests that race several
//! [`Coord`](crate::Coord)s on one store.
//!
//! # Layout
//! | what | key |
//! |---|---|
//! | election `NAME` | `elections/NAME/<session hex>`, one per candidate |
//! | lock `NAME` | `locks/NAME/<session hex>`, one per holder or waiter |
//! | instance `ID` of `SERVICE` | `services/SERVICE/ID` |
//! | configuration `KEY` | `config/KEY` |
//! | key `K` | `K` |
//!
//! As etcd's election and lock services do, a candidacy is a key under the name's prefix
//! made ephemeral on the candidate's session; the candidate with the lowest create revision
//! leads (or holds the lock), and its create revision is the fencing token. The others wait
//! for the deletion of the candidacy just before theirs; in process every waiter re-checks
//! after each change of the store, which costs a scan of the prefix, not a herd on a server.
//!
//! # Time
//! A session expires `ttl` after its last renewal, on the monotonic clock; the store expires
//! overdue sessions before every operation, and anything waiting on the store also wakes at
//! the next expiry, so nobody needs to call in for a lease to end. The keys of an expired
//! session are deleted in one revision.
//!
//! # Faults
//! [`Embedded::block_renewals`] makes a session's renewals (and its closing) hang, as a cut
//! network would;
//! [`Embedded::compact`] drops history as etcd's compaction does. Both are for tests of the
//! layers above.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use sluice_pipeline::component::BoxFuture;
use tokio::sync::watch;

use crate::backend::{
    Backend, BoxStream, Change, Fenced, Held, KeyValue, Layout, Op, SessionId, WatchEvent,
};
use crate::error::CoordError;

/// Default for how many changes a store keeps for watches that fall behind.
pub const DEFAULT_HISTORY: usize = 10_000;

/// An in-process coordination store. Clones share the store.
#[derive(Clone)]
pub struct Embedded {
    store: Arc<Store>,
}

struct Store {
    name: String,
    history_limit: usize,
    state: Mutex<State>,
    /// Bumped after every change of `state`, so that waiters re-check.
    changed: watch::Sender<u64>,
}

#[derive(Default)]
struct State {
    revision: u64,
    /// Every revision up to this one is gone from `history`.
    compacted: u64,
    kvs: BTreeMap<String, Entry>,
    history: VecDeque<Change>,
    sessions: HashMap<i64, Lease>,
    next_session: i64,
    blocked: HashSet<i64>,
}

struct Lease {
    ttl: Duration,
    expires: Instant,
}

struct Entry {
    value: Bytes,
    create_revision: u64,
    mod_revision: u64,
    version: u64,
    session: Option<SessionId>,
}

impl Embedded {
    /// A new, empty store keeping [`DEFAULT_HISTORY`] changes.
    pub fn new() -> Self {
        Embedded::with_history(DEFAULT_HISTORY)
    }

    /// A new, empty store keeping the latest `changes` changes for watches.
    pub fn with_history(changes: usize) -> Self {
        Embedded::named("embedded store".to_owned(), changes)
    }

    fn named(name: String, history_limit: usize) -> Self {
        Embedded {
            store: Arc::new(Store {
                name,
                history_limit: history_limit.max(1),
                state: Mutex::new(State {
                    next_session: 1,
                    ..State::default()
                }),
                changed: watch::channel(0).0,
            }),
        }
    }

    /// The process's store for `namespace`: every caller in the process with the same
    /// namespace gets the same store (`[coord] backend = "embedded"`).
    pub fn shared(namespace: Option<&str>) -> Self {
        static STORES: OnceLock<Mutex<HashMap<String, Embedded>>> = OnceLock::new();
        let namespace = namespace.unwrap_or_default().to_owned();
        let mut stores = STORES
            .get_or_init(Mutex::default)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        stores
            .entry(namespace.clone())
            .or_insert_with(|| {
                let name = if namespace.is_empty() {
                    "embedded store".to_owned()
                } else {
                    format!("embedded store {namespace:?}")
                };
                Embedded::named(name, DEFAULT_HISTORY)
            })
            .clone()
    }

    /// Makes `session`'s renewals and its closing hang (`true`) until called again with
    /// `false`, as a network cut between its process and the server would. The session then
    /// expires on its TTL.
    pub fn block_renewals(&self, session: SessionId, blocked: bool) {
        self.store.with(|s| {
            if blocked {
                s.blocked.insert(session.0);
            } else {
                s.blocked.remove(&session.0);
            }
        });
        self.store.changed.send_modify(|n| *n += 1);
    }

    /// Drops the history up to and including `revision`: a watch from an earlier revision
    /// then gets [`WatchEvent::Compacted`].
    pub fn compact(&self, revision: u64) {
        self.store.with(|s| s.compact(revision.min(s.revision)));
        self.store.changed.send_modify(|n| *n += 1);
    }

    /// Whether `session` is still alive in the store (not closed, not expired).
    pub fn session_alive(&self, session: SessionId) -> bool {
        self.store.with(|s| s.sessions.contains_key(&session.0))
    }

    /// The store's current revision.
    pub fn revision(&self) -> u64 {
        self.store.with(|s| s.revision)
    }
}

impl Default for Embedded {
    fn default() -> Self {
        Embedded::new()
    }
}

impl Store {
    /// Runs `f` on the state after expiring overdue sessions; wakes waiters when anything
    /// changed.
    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let before = state.revision;
        state.expire(Instant::now());
        let result = f(&mut state);
        state.trim(self.history_limit);
        let changed = state.revision != before;
        drop(state);
        if changed {
            self.changed.send_modify(|n| *n += 1);
        }
        result
    }

    /// Waits until `check` returns something, re-checking after every change and at every
    /// lease expiry.
    async fn wait_until<T>(&self, mut check: impl FnMut(&mut State) -> Option<T>) -> T {
        let mut changes = self.changed.subscribe();
        loop {
            changes.borrow_and_update();
            let (found, next_expiry) = self.with(|s| (check(s), s.next_expiry()));
            if let Some(found) = found {
                return found;
            }
            let expiry = async {
                match next_expiry {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                // The sender lives in `self`, so this cannot fail while we wait.
                _ = changes.changed() => {}
                () = expiry => {}
            }
        }
    }
}

impl State {
    fn next_revision(&mut self) -> u64 {
        self.revision += 1;
        self.revision
    }

    fn next_expiry(&self) -> Option<Instant> {
        self.sessions.values().map(|l| l.expires).min()
    }

    fn expire(&mut self, now: Instant) {
        let overdue: Vec<i64> = self
            .sessions
            .iter()
            .filter(|(_, lease)| lease.expires <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in overdue {
            self.end_session(SessionId(id));
        }
    }

    /// Removes `session` and deletes its keys, in one revision.
    fn end_session(&mut self, session: SessionId) {
        self.sessions.remove(&session.0);
        self.blocked.remove(&session.0);
        let keys: Vec<String> = self
            .kvs
            .iter()
            .filter(|(_, e)| e.session == Some(session))
            .map(|(k, _)| k.clone())
            .collect();
        if keys.is_empty() {
            return;
        }
        let revision = self.next_revision();
        for key in keys {
            self.kvs.remove(&key);
            self.history.push_back(Change::Delete {
                key,
                mod_revision: revision,
            });
        }
    }

    fn alive(&self, session: SessionId) -> Result<(), CoordError> {
        if self.sessions.contains_key(&session.0) {
            Ok(())
        } else {
            Err(CoordError::SessionExpired)
        }
    }

    fn key_value(key: &str, entry: &Entry) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: entry.value.clone(),
            create_revision: entry.create_revision,
            mod_revision: entry.mod_revision,
            version: entry.version,
            session: entry.session,
        }
    }

    fn put(&mut self, key: &str, value: Bytes, session: Option<SessionId>) -> u64 {
        let revision = self.next_revision();
        let entry = self.kvs.entry(key.to_owned()).or_insert(Entry {
            value: Bytes::new(),
            create_revision: revision,
            mod_revision: revision,
            version: 0,
            session,
        });
        entry.value = value;
        entry.mod_revision = revision;
        entry.version += 1;
        entry.session = session;
        let kv = State::key_value(key, entry);
        self.history.push_back(Change::Put(kv));
        revision
    }

    fn delete(&mut self, key: &str) -> Option<u64> {
        self.kvs.remove(key)?;
        let revision = self.next_revision();
        self.history.push_back(Change::Delete {
            key: key.to_owned(),
            mod_revision: revision,
        });
        Some(revision)
    }

    fn under<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a String, &'a Entry)> {
        self.kvs
            .range(prefix.to_owned()..)
            .take_while(move |(k, _)| k.starts_with(prefix))
    }

    /// Whether `held` is still held: its key exists with its token as create revision.
    fn holds(&self, held: &Held) -> bool {
        self.kvs
            .get(&held.key)
            .is_some_and(|e| e.create_revision == held.token && e.session == Some(held.session))
    }

    fn compact(&mut self, revision: u64) {
        self.compacted = self.compacted.max(revision);
        while self
            .history
            .front()
            .is_some_and(|c| c.revision() <= self.compacted)
        {
            self.history.pop_front();
        }
    }

    fn trim(&mut self, limit: usize) {
        if self.history.len() > limit {
            let excess = self.history.len() - limit;
            if let Some(newest_dropped) = self.history.get(excess - 1).map(Change::revision) {
                self.compact(newest_dropped);
            }
        }
    }
}

/// Refuses a name that cannot be a key segment.
fn check_name(what: &str, name: &str) -> Result<(), CoordError> {
    if name.is_empty() || name.contains('/') || name.chars().any(char::is_control) {
        return Err(CoordError::Config(format!(
            "{what} name {name:?}: must be non-empty, without '/' or control characters"
        )));
    }
    Ok(())
}

fn check_key(key: &str) -> Result<(), CoordError> {
    if key.is_empty() || key.chars().any(char::is_control) {
        return Err(CoordError::Config(format!(
            "key {key:?}: must be non-empty, without control characters"
        )));
    }
    Ok(())
}

/// Deletes a candidacy whose campaign or lock wait was given up.
struct Withdraw<'a> {
    store: &'a Store,
    key: String,
    token: u64,
    armed: bool,
}

impl Drop for Withdraw<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.store.with(|s| {
                if s.kvs
                    .get(&self.key)
                    .is_some_and(|e| e.create_revision == self.token)
                {
                    s.delete(&self.key);
                }
            });
        }
    }
}

impl Embedded {
    /// Queues a candidacy with `value` under `prefix` and waits until it is the oldest.
    async fn contend(
        &self,
        session: SessionId,
        prefix: String,
        value: Bytes,
    ) -> Result<Held, CoordError> {
        let key = format!("{prefix}{:x}", session.0);
        let token = self.store.with(|s| {
            s.alive(session)?;
            match s.kvs.get(&key) {
                // Campaigning again under the same session continues the candidacy, as
                // etcd's election service does.
                Some(e) if e.session == Some(session) => {
                    let token = e.create_revision;
                    s.put(&key, value, Some(session));
                    Ok(token)
                }
                _ => Ok(s.put(&key, value, Some(session))),
            }
        })?;
        let mut withdraw = Withdraw {
            store: &self.store,
            key: key.clone(),
            token,
            armed: true,
        };
        let held = Held {
            key: key.clone(),
            token,
            session,
        };
        let outcome = self
            .store
            .wait_until(|s| {
                if !s.holds(&held) {
                    return Some(Err(match s.alive(session) {
                        Err(expired) => expired,
                        Ok(()) => CoordError::Protocol(format!(
                            "the candidacy {key} was deleted by another client"
                        )),
                    }));
                }
                let first = s.under(&prefix).min_by_key(|(_, e)| e.create_revision);
                match first {
                    Some((_, e)) if e.create_revision == token => Some(Ok(())),
                    _ => None,
                }
            })
            .await;
        outcome?;
        withdraw.armed = false;
        Ok(held)
    }

    fn give_up(&self, held: &Held) {
        self.store.with(|s| {
            if s.holds(held) {
                s.delete(&held.key);
            }
        });
    }
}

fn election_prefix(name: &str) -> String {
    format!("elections/{name}/")
}

fn lock_prefix(name: &str) -> String {
    format!("locks/{name}/")
}

impl Backend for Embedded {
    fn describe(&self) -> String {
        self.store.name.clone()
    }

    fn layout(&self) -> Layout {
        Layout {
            election: "elections/{name}/".to_owned(),
            lock: "locks/{name}/".to_owned(),
            instance: "services/{service}/{id}".to_owned(),
            config: "config/{key}".to_owned(),
            key: "{key}".to_owned(),
        }
    }

    fn open_session(
        &self,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<(SessionId, Duration), CoordError>> {
        let opened = self.store.with(|s| {
            let id = s.next_session;
            s.next_session += 1;
            s.sessions.insert(
                id,
                Lease {
                    ttl,
                    expires: Instant::now() + ttl,
                },
            );
            (SessionId(id), ttl)
        });
        Box::pin(std::future::ready(Ok(opened)))
    }

    fn renew(&self, session: SessionId) -> BoxFuture<'_, Result<Duration, CoordError>> {
        Box::pin(async move {
            self.store
                .wait_until(|s| {
                    if s.blocked.contains(&session.0) {
                        return None;
                    }
                    Some(match s.sessions.get_mut(&session.0) {
                        Some(lease) => {
                            lease.expires = Instant::now() + lease.ttl;
                            Ok(lease.ttl)
                        }
                        None => Err(CoordError::SessionExpired),
                    })
                })
                .await
        })
    }

    fn close_session(&self, session: SessionId) -> BoxFuture<'_, Result<(), CoordError>> {
        Box::pin(async move {
            self.store
                .wait_until(|s| {
                    if s.blocked.contains(&session.0) {
                        return None;
                    }
                    s.end_session(session);
                    Some(())
                })
                .await;
            Ok(())
        })
    }

    fn campaign<'a>(
        &'a self,
        session: SessionId,
        name: &'a str,
        value: Bytes,
    ) -> BoxFuture<'a, Result<Held, CoordError>> {
        Box::pin(async move {
            check_name("election", name)?;
            self.contend(session, election_prefix(name), value).await
        })
    }

    fn resign<'a>(&'a self, held: &'a Held) -> BoxFuture<'a, Result<(), CoordError>> {
        self.give_up(held);
        Box::pin(std::future::ready(Ok(())))
    }

    fn leader<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<(Bytes, u64)>, CoordError>> {
        let leader = check_name("election", name).map(|()| {
            let prefix = election_prefix(name);
            self.store.with(|s| {
                s.under(&prefix)
                    .min_by_key(|(_, e)| e.create_revision)
                    .map(|(_, e)| (e.value.clone(), e.create_revision))
            })
        });
        Box::pin(std::future::ready(leader))
    }

    fn lock<'a>(
        &'a self,
        session: SessionId,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Held, CoordError>> {
        Box::pin(async move {
            check_name("lock", name)?;
            self.contend(session, lock_prefix(name), Bytes::new()).await
        })
    }

    fn unlock<'a>(&'a self, held: &'a Held) -> BoxFuture<'a, Result<(), CoordError>> {
        self.resign(held)
    }

    fn released<'a>(&'a self, held: &'a Held) -> BoxFuture<'a, Result<(), CoordError>> {
        Box::pin(async move {
            self.store
                .wait_until(|s| (!s.holds(held)).then_some(()))
                .await;
            Ok(())
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<KeyValue>, CoordError>> {
        let found = check_key(key).map(|()| {
            self.store
                .with(|s| s.kvs.get(key).map(|e| State::key_value(key, e)))
        });
        Box::pin(std::future::ready(found))
    }

    fn range<'a>(
        &'a self,
        prefix: &'a str,
    ) -> BoxFuture<'a, Result<(Vec<KeyValue>, u64), CoordError>> {
        let read = self.store.with(|s| {
            let kvs = s
                .under(prefix)
                .map(|(k, e)| State::key_value(k, e))
                .collect();
            (kvs, s.revision)
        });
        Box::pin(std::future::ready(Ok(read)))
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        session: Option<SessionId>,
    ) -> BoxFuture<'a, Result<u64, CoordError>> {
        let written = check_key(key).and_then(|()| {
            self.store.with(|s| {
                if let Some(session) = session {
                    s.alive(session)?;
                }
                Ok(s.put(key, value, session))
            })
        });
        Box::pin(std::future::ready(written))
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<u64>, CoordError>> {
        let deleted = check_key(key).map(|()| self.store.with(|s| s.delete(key)));
        Box::pin(std::future::ready(deleted))
    }

    fn watch<'a>(
        &'a self,
        prefix: &'a str,
        after: u64,
    ) -> BoxFuture<'a, Result<BoxStream<'static, Result<WatchEvent, CoordError>>, CoordError>> {
        let store = Arc::clone(&self.store);
        let prefix = prefix.to_owned();
        let events = futures::stream::unfold(Some(after), move |cursor| {
            let store = Arc::clone(&store);
            let prefix = prefix.clone();
            async move {
                let mut cursor = cursor?;
                let event = store
                    .wait_until(|s| {
                        if cursor < s.compacted {
                            return Some(WatchEvent::Compacted {
                                compacted: s.compacted,
                            });
                        }
                        let changes: Vec<Change> = s
                            .history
                            .iter()
                            .filter(|c| c.revision() > cursor && c.key().starts_with(&prefix))
                            .cloned()
                            .collect();
                        // Nothing else up to here concerns this watch.
                        cursor = s.revision;
                        (!changes.is_empty()).then_some(WatchEvent::Changes(changes))
                    })
                    .await;
                let next = match event {
                    WatchEvent::Compacted { .. } => None,
                    WatchEvent::Changes(_) => Some(cursor),
                };
                Some((Ok(event), next))
            }
        });
        Box::pin(std::future::ready(Ok(events.boxed())))
    }

    fn fenced<'a>(&'a self, held: &'a Held, op: Op) -> BoxFuture<'a, Result<Fenced, CoordError>> {
        let key = match &op {
            Op::Put { key, .. } | Op::Delete { key } => key.clone(),
        };
        let outcome = check_key(&key).map(|()| {
            self.store.with(|s| {
                if !s.holds(held) {
                    return Fenced::Refused;
                }
                match op {
                    Op::Put { key, value } => Fenced::Applied(s.put(&key, value, None)),
                    Op::Delete { key } => Fenced::Applied(s.delete(&key).unwrap_or(s.revision)),
                }
            })
        });
        Box::pin(std::future::ready(outcome))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(2);

    #[tokio::test]
    async fn the_oldest_candidate_leads_and_the_next_follows_it() {
        let store = Embedded::new();
        let (a, _) = store.open_session(TTL).await.unwrap();
        let (b, _) = store.open_session(TTL).await.unwrap();
        let first = store.campaign(a, "e", Bytes::from("a")).await.unwrap();
        let second = tokio::spawn({
            let store = store.clone();
            async move { store.campaign(b, "e", Bytes::from("b")).await }
        });
        let (value, token) = store.leader("e").await.unwrap().unwrap();
        assert_eq!((value, token), (Bytes::from("a"), first.token));
        store.resign(&first).await.unwrap();
        let second = second.await.unwrap().unwrap();
        assert!(second.token > first.token);
        assert_eq!(store.leader("e").await.unwrap().unwrap().0, "b");
    }

    #[tokio::test]
    async fn an_abandoned_campaign_withdraws_its_candidacy() {
        let store = Embedded::new();
        let (a, _) = store.open_session(TTL).await.unwrap();
        let (b, _) = store.open_session(TTL).await.unwrap();
        let _leader = store.lock(a, "l").await.unwrap();
        let waiting = store.lock(b, "l");
        assert!(
            tokio::time::timeout(Duration::from_millis(20), waiting)
                .await
                .is_err()
        );
        let (keys, _) = store.range("locks/l/").await.unwrap();
        assert_eq!(keys.len(), 1, "{keys:?}");
    }

    #[tokio::test]
    async fn a_session_not_renewed_expires_with_its_keys_and_candidacies() {
        let store = Embedded::new();
        let (a, ttl) = store
            .open_session(Duration::from_millis(200))
            .await
            .unwrap();
        let held = store.campaign(a, "e", Bytes::from("a")).await.unwrap();
        store.put("eph", Bytes::from("x"), Some(a)).await.unwrap();
        store.block_renewals(a, true);
        assert!(
            tokio::time::timeout(ttl / 2, store.renew(a)).await.is_err(),
            "a blocked renewal hangs"
        );
        tokio::time::timeout(ttl * 5, store.released(&held))
            .await
            .expect("the candidacy ends with the lease")
            .unwrap();
        assert!(!store.session_alive(a));
        assert!(store.get("eph").await.unwrap().is_none());
        assert_eq!(
            store
                .fenced(&held, Op::Delete { key: "k".into() })
                .await
                .unwrap(),
            Fenced::Refused
        );
        assert!(matches!(
            store.renew(a).await,
            Err(CoordError::SessionExpired)
        ));
    }

    #[tokio::test]
    async fn a_watch_delivers_every_change_once_then_compacted_beyond_the_history() {
        let store = Embedded::with_history(3);
        let start = store.revision();
        let mut watch = store.watch("p/", start).await.unwrap();
        store.put("p/a", Bytes::from("1"), None).await.unwrap();
        store.put("q/x", Bytes::from("1"), None).await.unwrap();
        store.delete("p/a").await.unwrap();
        let mut seen = Vec::new();
        while seen.len() < 2 {
            match watch.next().await.unwrap().unwrap() {
                WatchEvent::Changes(changes) => seen.extend(changes),
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(&seen[0], Change::Put(kv) if kv.key == "p/a"));
        assert!(matches!(&seen[1], Change::Delete { key, .. } if key == "p/a"));
        for n in 0..5 {
            store
                .put("p/b", Bytes::from(n.to_string()), None)
                .await
                .unwrap();
        }
        let mut late = store.watch("p/", start).await.unwrap();
        match late.next().await.unwrap().unwrap() {
            WatchEvent::Compacted { compacted } => assert!(compacted > start),
            other => panic!("{other:?}"),
        }
        assert!(
            late.next().await.is_none(),
            "the watch ends after Compacted"
        );
    }
}
