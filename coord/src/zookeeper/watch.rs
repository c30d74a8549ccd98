//! Watching a key prefix on a server that keeps no history: a persistent recursive watch on
//! the prefix's directory, a consistent snapshot read after setting it, and changes read back
//! from the nodes the watch names. See the module docs of [`super`] for what that guarantees.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use futures::FutureExt;
use tokio::sync::mpsc;
use zookeeper_client as zk;

use super::Inner;
use super::kv::{self, Snapshot, key_value, revision};
use super::paths;
use super::session::{SHARED_SESSION_TIMEOUT, is_connection_loss, to_coord};
use crate::backend::{BoxStream, Change, KeyValue, WatchEvent};
use crate::error::CoordError;

/// Events buffered for a slow reader before the watch waits for it.
const BUFFER: usize = 64;
/// Rounds of reading back before a batch is delivered even though new events kept arriving.
const SETTLE_ROUNDS: usize = 16;

/// What the watch knows of a key it has delivered (or found in its first snapshot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    czxid: i64,
    mzxid: i64,
}

/// How many recent views of a prefix a backend keeps, and up to how many keys each: a watch
/// from the revision of one of them replays the difference exactly.
const RECENT_VIEWS: usize = 16;
const RECENT_KEYS: usize = 10_000;

/// A view of the keys under a prefix as of a revision: a `range`'s, or what a watch had
/// delivered when it ended with an error.
pub struct Recent {
    prefix: String,
    revision: u64,
    keys: BTreeMap<String, Seen>,
}

/// The recent views a backend keeps.
pub type Recents = Mutex<VecDeque<Recent>>;

/// Keeps the view of `prefix` at `revision`.
fn remember(recents: &Recents, prefix: &str, revision: u64, keys: BTreeMap<String, Seen>) {
    if keys.len() > RECENT_KEYS {
        return;
    }
    let mut recents = recents.lock().unwrap_or_else(PoisonError::into_inner);
    recents.retain(|r| !(r.prefix == prefix && r.revision == revision));
    if recents.len() == RECENT_VIEWS {
        recents.pop_front();
    }
    recents.push_back(Recent {
        prefix: prefix.to_owned(),
        revision,
        keys,
    });
}

/// Keeps what a `range` of `prefix` read.
pub fn remember_range(recents: &Recents, prefix: &str, revision: u64, keys: &[KeyValue]) {
    let keys = keys
        .iter()
        .map(|kv| {
            let seen = Seen {
                czxid: i64::try_from(kv.create_revision).unwrap_or(i64::MAX),
                mzxid: i64::try_from(kv.mod_revision).unwrap_or(i64::MAX),
            };
            (kv.key.clone(), seen)
        })
        .collect();
    remember(recents, prefix, revision, keys);
}

/// The view of `prefix` at exactly `revision`, if this backend has it.
fn recall(recents: &Recents, prefix: &str, revision: u64) -> Option<BTreeMap<String, Seen>> {
    let recents = recents.lock().unwrap_or_else(PoisonError::into_inner);
    recents
        .iter()
        .rev()
        .find(|r| r.prefix == prefix && r.revision == revision)
        .map(|r| r.keys.clone())
}

/// Starts watching `prefix` for changes after `after`.
pub async fn watch(
    inner: Arc<Inner>,
    prefix: String,
    after: u64,
) -> Result<BoxStream<'static, Result<WatchEvent, CoordError>>, CoordError> {
    let base = paths::prefix_base(&inner.root, &prefix)?;
    let (client, watcher) = connect(&inner, &base).await?;
    let snapshot = kv::snapshot(&client, &base, &inner.sessions.endpoints).await?;
    let (tx, rx) = mpsc::channel(BUFFER);
    let recalled = recall(&inner.recents, &prefix, after);
    let mut task = Watch {
        inner,
        prefix,
        base,
        after,
        through: after,
        client,
        known: BTreeMap::new(),
        tx,
    };
    let first = match recalled {
        Some(known) => {
            task.known = known;
            let changes = task.diff(&snapshot);
            task.sorted(changes).map(WatchEvent::Changes)
        }
        None => task.first(&snapshot),
    };
    if let Some(WatchEvent::Changes(changes)) = &first {
        task.through = changes.last().map_or(after, Change::revision);
    }
    tokio::spawn(async move {
        let ended = match first {
            Some(event) => {
                let end = matches!(event, WatchEvent::Compacted { .. });
                !task.send(Ok(event)).await || end
            }
            None => false,
        };
        if !ended {
            task.run(watcher).await;
        }
    });
    Ok(Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })))
}

/// A dedicated connection (so the session's persistent watch shares it with nothing) with the
/// persistent recursive watch on `base` set.
async fn connect(
    inner: &Inner,
    base: &str,
) -> Result<(zk::Client, zk::PersistentWatcher), CoordError> {
    let client = inner.sessions.connect(SHARED_SESSION_TIMEOUT).await?;
    let watcher = client
        .watch(base, zk::AddWatchMode::PersistentRecursive)
        .await
        .map_err(|e| to_coord(e, &inner.sessions.endpoints, "setting a persistent watch"))?;
    Ok((client, watcher))
}

struct Watch {
    inner: Arc<Inner>,
    prefix: String,
    base: String,
    after: u64,
    /// The revision the watch has delivered everything up to: what `known` is the state at.
    through: u64,
    client: zk::Client,
    known: BTreeMap<String, Seen>,
    tx: mpsc::Sender<Result<WatchEvent, CoordError>>,
}

impl Watch {
    /// From the first snapshot, when this backend has no view at `after`: the keys changed
    /// after `after` (their latest values), or `Compacted` when a key may have been deleted
    /// since then, which ZooKeeper cannot tell.
    fn first(&mut self, snapshot: &Snapshot) -> Option<WatchEvent> {
        let after = i64::try_from(self.after).unwrap_or(i64::MAX);
        let mut changes = Vec::new();
        let mut unseen_deletes = snapshot
            .ancestor
            .as_ref()
            .is_some_and(|(_, stat)| stat.pzxid > after);
        for (path, node) in &snapshot.nodes {
            let stat = &node.stat;
            // A child created or deleted since `after`; only a node younger than `after` that
            // never lost a child proves that none of those were deletions.
            if stat.pzxid > after && !(stat.czxid > after && stat.cversion == stat.num_children) {
                unseen_deletes = true;
            }
            let Some(key) = self.key_of(path) else {
                continue;
            };
            match key_value(&self.inner.root, path, &node.data, stat) {
                Some(kv) => {
                    self.known.insert(
                        key.clone(),
                        Seen {
                            czxid: stat.czxid,
                            mzxid: stat.mzxid,
                        },
                    );
                    if stat.mzxid > after {
                        changes.push(Change::Put(kv));
                    }
                }
                // A key emptied (deleted while it had keys below it) since `after`.
                None if stat.version > 0 && stat.mzxid > after => {
                    changes.push(Change::Delete {
                        key,
                        mod_revision: revision(stat.mzxid),
                    });
                }
                None => {}
            }
        }
        if unseen_deletes {
            return Some(WatchEvent::Compacted {
                compacted: snapshot.revision,
            });
        }
        changes.sort_by_key(Change::revision);
        (!changes.is_empty()).then_some(WatchEvent::Changes(changes))
    }

    /// The key of `path` when it lies under the watched prefix.
    fn key_of(&self, path: &str) -> Option<String> {
        paths::path_key(&self.inner.root, path)
            .filter(|k| k.starts_with(&self.prefix))
            .map(str::to_owned)
    }

    /// Sends to the reader; `false` once the reader is gone.
    async fn send(&self, item: Result<WatchEvent, CoordError>) -> bool {
        self.tx.send(item).await.is_ok()
    }

    async fn run(mut self, mut watcher: zk::PersistentWatcher) {
        // Paths named by events and not read back yet, with the newest zxid an event gave
        // (ZooKeeper 3.9 and later; -1 before).
        let mut pending = BTreeMap::<String, i64>::new();
        loop {
            let mut state = None;
            if pending.is_empty() {
                let event = tokio::select! {
                    event = watcher.changed() => event,
                    () = self.tx.closed() => return,
                };
                state = self.note(event, &mut pending);
            }
            if state.is_none() {
                state = drain(&mut watcher, &mut pending, |e, p| self.note(e, p));
            }
            if !pending.is_empty() && state.is_none() {
                match self.settle(&mut watcher, &mut pending).await {
                    Ok(changes) => {
                        if !self.deliver(changes).await {
                            return;
                        }
                    }
                    Err(Interrupted::Session(s)) => state = Some(s),
                    Err(Interrupted::Failed(err)) => {
                        self.fail(err).await;
                        return;
                    }
                }
            }
            let Some(state) = state else { continue };
            match state {
                zk::SessionState::Disconnected => {
                    // Events while disconnected may be lost (ZOOKEEPER-4698): read everything
                    // again once connected.
                    pending.clear();
                    if !self.reconnected(&mut watcher).await {
                        return;
                    }
                }
                zk::SessionState::Expired => {
                    pending.clear();
                    if !self.new_session(&mut watcher).await {
                        return;
                    }
                }
                zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => {}
                zk::SessionState::AuthFailed | zk::SessionState::Closed => {
                    self.fail(CoordError::SessionExpired).await;
                    return;
                }
            }
        }
    }

    /// Records a node event in `pending`; returns a session event's state.
    fn note(
        &self,
        event: zk::WatchedEvent,
        pending: &mut BTreeMap<String, i64>,
    ) -> Option<zk::SessionState> {
        if event.event_type == zk::EventType::Session {
            return Some(event.session_state);
        }
        if self.key_of(&event.path).is_some() {
            let zxid = pending.entry(event.path).or_insert(event.zxid);
            *zxid = (*zxid).max(event.zxid);
        }
        None
    }

    /// Waits, after a disconnection, until connected again, sets the persistent watch again,
    /// then reads everything again. `false` when the watch ends.
    ///
    /// The server drops a connection's watches with the connection, and the client
    /// (`zookeeper-client` 0.11) restores only one-shot watches when it reconnects within the
    /// session: without setting it again here, the persistent watch would be gone on the
    /// server while the session lives on, and the watch would stay silent for good.
    async fn reconnected(&mut self, watcher: &mut zk::PersistentWatcher) -> bool {
        loop {
            let event = tokio::select! {
                event = watcher.changed() => event,
                () = self.tx.closed() => return false,
            };
            if event.event_type != zk::EventType::Session {
                continue;
            }
            match event.session_state {
                zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => {
                    // The new watcher is added before the old one is dropped, so the client
                    // never asks the server to remove the watch they share.
                    match self
                        .client
                        .watch(&self.base, zk::AddWatchMode::PersistentRecursive)
                        .await
                    {
                        Ok(again) => {
                            *watcher = again;
                            tracing::debug!(base = %self.base, "zookeeper watch set again after a reconnection");
                            return self.resync().await;
                        }
                        // Disconnected again before it was set: wait for the next connection.
                        Err(e) if is_connection_loss(&e) => {}
                        Err(zk::Error::SessionExpired) => return self.new_session(watcher).await,
                        Err(e) => {
                            let endpoints = &self.inner.sessions.endpoints;
                            self.fail(to_coord(e, endpoints, "setting a persistent watch again"))
                                .await;
                            return false;
                        }
                    }
                }
                zk::SessionState::Disconnected => {}
                zk::SessionState::Expired => return self.new_session(watcher).await,
                zk::SessionState::AuthFailed | zk::SessionState::Closed => {
                    self.fail(CoordError::SessionExpired).await;
                    return false;
                }
            }
        }
    }

    /// The watch's own session (it holds nothing) ended: connects with a new one, sets the
    /// watch on it and reads everything again. `false` when the watch ends.
    async fn new_session(&mut self, watcher: &mut zk::PersistentWatcher) -> bool {
        match connect(&self.inner, &self.base).await {
            Ok((client, new)) => {
                self.client = client;
                *watcher = new;
                self.resync().await
            }
            Err(err) => {
                self.fail(err).await;
                false
            }
        }
    }

    /// Reads the whole sub-tree and delivers what differs from what the watch knows; `false`
    /// when the watch ends.
    async fn resync(&mut self) -> bool {
        let snapshot =
            match kv::snapshot(&self.client, &self.base, &self.inner.sessions.endpoints).await {
                Ok(snapshot) => snapshot,
                Err(err) => {
                    self.fail(err).await;
                    return false;
                }
            };
        let changes = self.diff(&snapshot);
        self.deliver(changes).await
    }

    /// What differs between the keys the watch knows and `snapshot`, `known` brought up to
    /// date: a `Put` for each key new or changed, a `Delete` for each key gone, dated by the
    /// `pzxid` of its closest ancestor left (not earlier than the deletion).
    fn diff(&mut self, snapshot: &Snapshot) -> Vec<Change> {
        let mut changes = Vec::new();
        let mut present = BTreeSet::new();
        for (path, node) in &snapshot.nodes {
            let Some(key) = self.key_of(path) else {
                continue;
            };
            if let Some(kv) = key_value(&self.inner.root, path, &node.data, &node.stat) {
                present.insert(key.clone());
                let seen = Seen {
                    czxid: node.stat.czxid,
                    mzxid: node.stat.mzxid,
                };
                if self.known.insert(key, seen) != Some(seen) {
                    changes.push(Change::Put(kv));
                }
            }
        }
        let gone: Vec<String> = self
            .known
            .keys()
            .filter(|k| !present.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            self.known.remove(&key);
            let mut at = paths::key_path(&self.inner.root, &key).ok();
            let mut when = None;
            while let Some(path) = at.as_deref().and_then(paths::parent) {
                if let Some(node) = snapshot.nodes.get(path) {
                    when = Some(revision(node.stat.pzxid));
                    break;
                }
                at = Some(path.to_owned());
            }
            let when = when
                .or(snapshot
                    .ancestor
                    .as_ref()
                    .map(|(_, stat)| revision(stat.pzxid)))
                .unwrap_or(snapshot.revision);
            changes.push(Change::Delete {
                key,
                mod_revision: when,
            });
        }
        changes
    }

    /// `changes` after `after`, sorted by revision; `None` when none is left.
    fn sorted(&self, mut changes: Vec<Change>) -> Option<Vec<Change>> {
        changes.retain(|c| c.revision() > self.after);
        changes.sort_by_key(Change::revision);
        (!changes.is_empty()).then_some(changes)
    }

    /// Ends the watch with `err`, keeping what it had delivered as a view, so that a watch
    /// from its last revision replays the difference exactly.
    async fn fail(&self, err: CoordError) {
        remember(
            &self.inner.recents,
            &self.prefix,
            self.through,
            self.known.clone(),
        );
        self.send(Err(err)).await;
    }

    async fn deliver(&mut self, changes: Vec<Change>) -> bool {
        let Some(changes) = self.sorted(changes) else {
            return true;
        };
        self.through = changes.last().map_or(self.through, Change::revision);
        self.send(Ok(WatchEvent::Changes(changes))).await
    }

    /// Reads back the pending nodes (and their ancestors, whose `pzxid` dates a deletion) in
    /// one `multiRead`, and again while events for other nodes arrived before its answer: the
    /// server sends a change's event before the answer to any read that sees the change, so
    /// once no event names a node outside the read, the read holds every change up to its
    /// moment and the batch comes out in revision order. Events for nodes inside the read may
    /// be for later changes: they stay in `pending` for the next read.
    async fn settle(
        &mut self,
        watcher: &mut zk::PersistentWatcher,
        pending: &mut BTreeMap<String, i64>,
    ) -> Result<Vec<Change>, Interrupted> {
        let endpoints = &self.inner.sessions.endpoints;
        let mut reading = std::mem::take(pending);
        let mut round = 0;
        loop {
            round += 1;
            let mut read: BTreeSet<String> = BTreeSet::new();
            // Up to `/`, which always exists: a node deleted with its whole sub-tree is still
            // dated by the closest ancestor left.
            for path in reading.keys() {
                let mut at = Some(path.as_str());
                while let Some(p) = at {
                    if !read.insert(p.to_owned()) {
                        break;
                    }
                    at = paths::parent(p);
                }
            }
            let mut reader = self.client.new_multi_reader();
            for path in &read {
                reader
                    .add_get_data(path)
                    .map_err(|e| Interrupted::Failed(to_coord(e, endpoints, "reading changes")))?;
            }
            let results = match reader.commit().await {
                Ok(results) => results,
                Err(e) if is_connection_loss(&e) => {
                    tracing::debug!(error = %e, "zookeeper watch lost its connection while reading changes");
                    return Err(Interrupted::Session(zk::SessionState::Disconnected));
                }
                Err(zk::Error::SessionExpired) => {
                    return Err(Interrupted::Session(zk::SessionState::Expired));
                }
                Err(e) => {
                    return Err(Interrupted::Failed(to_coord(
                        e,
                        endpoints,
                        "reading changes",
                    )));
                }
            };
            let mut arrived = BTreeMap::new();
            if let Some(state) = drain(watcher, &mut arrived, |e, p| self.note(e, p)) {
                return Err(Interrupted::Session(state));
            }
            if arrived.keys().any(|p| !reading.contains_key(p)) && round < SETTLE_ROUNDS {
                for (path, zxid) in arrived {
                    let at = reading.entry(path).or_insert(zxid);
                    *at = (*at).max(zxid);
                }
                continue;
            }
            if arrived.keys().any(|p| !reading.contains_key(p)) {
                tracing::debug!(base = %self.base, "zookeeper watch delivering while changes keep arriving");
            }
            let nodes: BTreeMap<&str, Option<(Vec<u8>, zk::Stat)>> = read
                .iter()
                .map(String::as_str)
                .zip(results.into_iter().map(|r| match r {
                    zk::MultiReadResult::Data { data, stat } => Some((data, stat)),
                    _ => None,
                }))
                .collect();
            let changes = self.changes(&reading, &nodes);
            *pending = arrived;
            return Ok(changes);
        }
    }

    /// The changes the read-back nodes show against what the watch knows.
    fn changes(
        &mut self,
        pending: &BTreeMap<String, i64>,
        nodes: &BTreeMap<&str, Option<(Vec<u8>, zk::Stat)>>,
    ) -> Vec<Change> {
        let mut changes = Vec::new();
        for (path, event_zxid) in pending {
            let Some(key) = self.key_of(path) else {
                continue;
            };
            match nodes.get(path.as_str()) {
                Some(Some((data, stat))) => match key_value(&self.inner.root, path, data, stat) {
                    Some(kv) => {
                        let seen = Seen {
                            czxid: stat.czxid,
                            mzxid: stat.mzxid,
                        };
                        if self
                            .known
                            .get(&key)
                            .is_none_or(|k| k.mzxid < seen.mzxid || k.czxid != seen.czxid)
                        {
                            self.known.insert(key, seen);
                            changes.push(Change::Put(kv));
                        }
                    }
                    None => {
                        if self.known.remove(&key).is_some() {
                            changes.push(Change::Delete {
                                key,
                                mod_revision: revision(stat.mzxid),
                            });
                        }
                    }
                },
                _ => {
                    if self.known.remove(&key).is_some() {
                        let when = if *event_zxid > 0 {
                            *event_zxid
                        } else {
                            deleted_at(path, nodes)
                        };
                        changes.push(Change::Delete {
                            key,
                            mod_revision: revision(when),
                        });
                    }
                }
            }
        }
        changes
    }
}

/// When a node found gone was deleted, at the latest: the `pzxid` of its closest ancestor that
/// was read (the zxid of that ancestor's latest child change).
fn deleted_at(path: &str, nodes: &BTreeMap<&str, Option<(Vec<u8>, zk::Stat)>>) -> i64 {
    let mut at = paths::parent(path);
    while let Some(dir) = at {
        if let Some(Some((_, stat))) = nodes.get(dir) {
            return stat.pzxid;
        }
        at = paths::parent(dir);
    }
    nodes
        .values()
        .flatten()
        .map(|(_, s)| s.pzxid.max(s.mzxid))
        .max()
        .unwrap_or(0)
}

/// Why reading back stopped.
enum Interrupted {
    Session(zk::SessionState),
    Failed(CoordError),
}

/// Takes every event already delivered to `watcher` without waiting; stops at a session
/// event and returns its state.
fn drain(
    watcher: &mut zk::PersistentWatcher,
    pending: &mut BTreeMap<String, i64>,
    note: impl Fn(zk::WatchedEvent, &mut BTreeMap<String, i64>) -> Option<zk::SessionState>,
) -> Option<zk::SessionState> {
    // A pending `changed()` dropped unpolled loses nothing: the event stays in the channel.
    while let Some(event) = watcher.changed().now_or_never() {
        if let Some(state) = note(event, pending) {
            return Some(state);
        }
    }
    None
}
