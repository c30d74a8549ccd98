//! The ZooKeeper backend: sluice's coordination on a ZooKeeper ensemble (3.6 or later: it uses
//! persistent recursive watches), with the `zookeeper-client` crate.
//!
//! # Layout
//! Everything lives under the namespace root, `/{namespace}` (`/sluice` by default):
//!
//! | what | znode |
//! |---|---|
//! | election `NAME` | `/sluice/elections/NAME/<uuid>__lock__<seq>`, one per candidate |
//! | lock `NAME` | `/sluice/locks/NAME/<uuid>__lock__<seq>`, one per holder or waiter |
//! | key `a/b` | `/sluice/a/b` |
//! | instance `ID` of `SERVICE` | key `services/SERVICE/ID`: `/sluice/services/SERVICE/ID` |
//! | configuration `KEY` | key `config/KEY`: `/sluice/config/KEY` |
//!
//! Candidate nodes are EPHEMERAL_SEQUENTIAL, named and ordered as Python kazoo's `Lock` names
//! and orders them (kazoo's `Election` is a `Lock`): `uuid4().hex + "__lock__"` completed by
//! ZooKeeper's ten-digit sequence, contenders recognised by `__lock__(-?\d{10})$` and sorted by
//! that sequence, the data the candidate's value (kazoo: its identifier). The lowest leads or
//! holds; every other candidate watches only the one just below it. So a kazoo `Lock` or
//! `Election` on `/sluice/locks/NAME` or `/sluice/elections/NAME` and sluice share one queue.
//!
//! # Tokens
//! The fencing token is the candidate's sequence: ZooKeeper takes it from the directory's
//! child-change counter (`cversion`), which every create and delete of a child raises, so in
//! one directory a later candidate always has a larger sequence. sluice creates the
//! directories persistent and never deletes them; a directory deleted by hand and created
//! again starts from 0, and tokens go back (a resource that refuses lower tokens then refuses
//! the new leader until the count passes the old one: safe, but stuck). The counter is 32-bit:
//! after 2^31 candidacies in one election ZooKeeper's sequence turns negative, which this
//! backend refuses as a token.
//!
//! # Keys
//! Key `K` is the znode `{root}/K` (the [`Layout`] templates are keys: the election `NAME` is
//! the prefix `elections/NAME/`): `/`-separated segments, none empty, `.` or `..`, no control
//! or private-use characters. **A znode is a key when it has data or is ephemeral**; other
//! empty znodes are directories (created persistent and empty for a key's missing parents,
//! never deleted by sluice). So candidate nodes are keys under their election's prefix, the
//! backend refuses to store an empty value, and deleting a key that has keys below it
//! empties it instead. Revisions are zxids (`create_revision` = `czxid`,
//! `mod_revision` = `mzxid`), `version` is the data version + 1. A put with a session is an
//! EPHEMERAL node of that session's connection; ZooKeeper cannot change a node's owner or
//! kind, so a put that must (persistent to ephemeral, to another session, or back) deletes and
//! creates the node in one `multi` (its create revision and version start again), and is
//! refused for a node with children. Every write is one `multi` that also sets the root's
//! (empty) data, the only way to learn a write's own zxid on every server version.
//!
//! # Sessions
//! A sluice session is a ZooKeeper session with a connection of its own; `open_session`
//! returns the timeout the server negotiated (clamped to its `minSessionTimeout` ..
//! `maxSessionTimeout`). The client pings by itself, so the backend closes a session whose
//! timeout passed after its last renewal: it lives its timeout after the last renewal, as a
//! lease does, and the server's expiry covers a client cut off or frozen. `renew` is a `sync`
//! through the ensemble's leader on the session's connection: it proves the session alive
//! (and restarts the server's timer), and returns the negotiated timeout. While the
//! connection is down, `renew` answers `Unreachable` at once: a leader cannot prove its
//! session and must act as if it had lost it; once the client sees the server expire the
//! session (or fails to reconnect within the timeout), `SessionExpired`.
//! Reads, plain writes and fenced writes go over one shared connection.
//!
//! # Watch
//! `watch(prefix, after)` sets a persistent recursive watch on the prefix's directory (`a/b`
//! → `{root}/a`) from a connection of its own, then reads the sub-tree consistently, then
//! follows the events, reading back the nodes they name. ZooKeeper keeps no history, so:
//! - when this backend read the prefix at exactly `after` (a recent `range`, or a watch that
//!   ended with an error there), the first batch is the difference: each key created or
//!   changed since with its latest value, each key gone, in revision order;
//! - otherwise the first batch holds each key changed after `after` **with its latest value**
//!   (writes in between are not seen), in revision order; a key deleted since `after` cannot
//!   be seen, so when any node below the directory gained or lost a child since `after` (its
//!   `pzxid`), the watch says `Compacted` with the revision of its read and ends, unless the
//!   node is younger than `after` and never lost a child;
//! - after that, every change is delivered once, in revision order, but writes to one key in
//!   quick succession may arrive as one `Put` of the latest value, a deletion's revision is the
//!   `pzxid` of its closest remaining ancestor when read (not earlier than the deletion, and
//!   exact unless that ancestor's children changed again before the read; exact from
//!   ZooKeeper 3.9, whose events carry zxids), and a delete and create between two reads is
//!   one `Put` with a new `create_revision`;
//! - after a disconnection (events may be lost, ZOOKEEPER-4698) or the end of the watch's own
//!   session, the watch sets its persistent watch again (the server drops a connection's
//!   watches with it, and the client restores only one-shot ones), reads the sub-tree again
//!   and delivers the difference, deletions dated at that read.
//!
//! etcd, by contrast, delivers every revision exactly once, deletes included, from any revision
//! it has not compacted.

mod kv;
mod paths;
mod recipe;
mod session;
mod watch;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sluice_pipeline::component::BoxFuture;

use crate::backend::{
    Backend, BoxStream, Fenced, Held, KeyValue, Layout, Op, SessionId, WatchEvent,
};
use crate::error::CoordError;
use kv::{Write, Written};
pub use paths::DEFAULT_NAMESPACE;
use session::{Sessions, to_coord};

/// Where the ZooKeeper ensemble is and which part of its tree is sluice's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZooKeeperOptions {
    /// The servers, `host:port` each.
    pub endpoints: Vec<String>,
    /// The namespace: the tree lives under `/{namespace}`; `None` for [`DEFAULT_NAMESPACE`].
    pub namespace: Option<String>,
}

/// The ZooKeeper backend. See the [module docs](self) for the layout and the guarantees.
pub struct ZooKeeper {
    inner: Arc<Inner>,
}

/// What the backend's parts share.
struct Inner {
    /// The namespace root, such as `/sluice`.
    root: String,
    sessions: Sessions,
    /// Recent views of prefixes, for exact replays of watches from their revisions.
    recents: watch::Recents,
}

impl ZooKeeper {
    /// Connects to the ensemble and creates the namespace root when missing.
    pub async fn connect(options: ZooKeeperOptions) -> Result<Self, CoordError> {
        let root = paths::root(options.namespace.as_deref())?;
        if options.endpoints.is_empty() {
            return Err(CoordError::Config("zookeeper: no endpoints".to_owned()));
        }
        if let Some(bad) = options
            .endpoints
            .iter()
            .find(|e| e.is_empty() || e.contains(['/', ',']))
        {
            return Err(CoordError::Config(format!(
                "zookeeper endpoint {bad:?}: expected host:port (the namespace sets the root, not a chroot)"
            )));
        }
        let sessions = Sessions::new(options.endpoints.join(","));
        let shared = sessions.shared().await?;
        recipe::ensure_parents(&shared, &paths::child(&root, "probe"))
            .await
            .map_err(|e| to_coord(e, &sessions.endpoints, "creating the namespace root"))?;
        tracing::debug!(endpoints = %sessions.endpoints, %root, "zookeeper backend connected");
        Ok(ZooKeeper {
            inner: Arc::new(Inner {
                root,
                sessions,
                recents: watch::Recents::default(),
            }),
        })
    }

    fn endpoints(&self) -> &str {
        &self.inner.sessions.endpoints
    }
}

impl Inner {
    /// The connection for `session`'s own operations, or the shared one.
    async fn client_of(&self, session: SessionId) -> Result<zookeeper_client::Client, CoordError> {
        match self.sessions.get(session) {
            Ok(s) => Ok(s.client.clone()),
            Err(_) => self.sessions.shared().await,
        }
    }
}

impl Backend for ZooKeeper {
    fn describe(&self) -> String {
        format!("zookeeper {} (root {})", self.endpoints(), self.inner.root)
    }

    fn layout(&self) -> Layout {
        // Keys as the KV methods take them; the znode is the root, `/`, and the key.
        Layout {
            election: format!("{}/{{name}}/", paths::ELECTIONS),
            lock: format!("{}/{{name}}/", paths::LOCKS),
            instance: "services/{service}/{id}".to_owned(),
            config: "config/{key}".to_owned(),
            key: "{key}".to_owned(),
        }
    }

    fn open_session(
        &self,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<(SessionId, Duration), CoordError>> {
        Box::pin(self.inner.sessions.open(ttl))
    }

    fn renew(&self, session: SessionId) -> BoxFuture<'_, Result<Duration, CoordError>> {
        Box::pin(async move {
            let s = self.inner.sessions.get(session)?;
            // Watch the state from before the check: a request sent while disconnected waits
            // for a reconnection, and a renew must not wait for one.
            let mut state = s.client.state_watcher();
            s.check(self.endpoints())?;
            let sent = std::time::Instant::now();
            let synced = s.client.sync("/");
            tokio::select! {
                synced = synced => {
                    synced.map_err(|e| to_coord(e, self.endpoints(), "renewing the session"))?;
                }
                lost = session::connection_lost(&mut state, self.endpoints()) => return Err(lost),
                () = s.closed() => return Err(CoordError::SessionExpired),
            }
            if !s.renewed(sent) {
                return Err(CoordError::SessionExpired);
            }
            Ok(s.client.session_timeout())
        })
    }

    fn close_session(&self, session: SessionId) -> BoxFuture<'_, Result<(), CoordError>> {
        Box::pin(self.inner.sessions.close(session))
    }

    fn campaign<'a>(
        &'a self,
        session: SessionId,
        name: &'a str,
        value: Bytes,
    ) -> BoxFuture<'a, Result<Held, CoordError>> {
        Box::pin(async move {
            let dir = paths::recipe_dir(&self.inner.root, paths::ELECTIONS, name)?;
            let s = self.inner.sessions.get(session)?;
            recipe::contend(&s, session, &dir, &value, self.endpoints()).await
        })
    }

    fn resign<'a>(&'a self, held: &'a Held) -> BoxFuture<'a, Result<(), CoordError>> {
        Box::pin(async move {
            let client = self.inner.client_of(held.session).await?;
            recipe::give_up(&client, held, self.endpoints()).await
        })
    }

    fn leader<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<(Bytes, u64)>, CoordError>> {
        Box::pin(async move {
            let dir = paths::recipe_dir(&self.inner.root, paths::ELECTIONS, name)?;
            let client = self.inner.sessions.shared().await?;
            recipe::first(&client, &dir, self.endpoints()).await
        })
    }

    fn lock<'a>(
        &'a self,
        session: SessionId,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Held, CoordError>> {
        Box::pin(async move {
            let dir = paths::recipe_dir(&self.inner.root, paths::LOCKS, name)?;
            let s = self.inner.sessions.get(session)?;
            // kazoo's `Lock` without an identifier writes no data either.
            recipe::contend(&s, session, &dir, &[], self.endpoints()).await
        })
    }

    fn unlock<'a>(&'a self, held: &'a Held) -> BoxFuture<'a, Result<(), CoordError>> {
        self.resign(held)
    }

    fn released<'a>(&'a self, held: &'a Held) -> BoxFuture<'a, Result<(), CoordError>> {
        Box::pin(async move {
            match self.inner.sessions.get(held.session) {
                Ok(s) => recipe::released(Some(&s), &s.client, held, self.endpoints()).await,
                Err(_) => {
                    let shared = self.inner.sessions.shared().await?;
                    recipe::released(None, &shared, held, self.endpoints()).await
                }
            }
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<KeyValue>, CoordError>> {
        Box::pin(async move {
            let path = paths::key_path(&self.inner.root, key)?;
            let client = self.inner.sessions.shared().await?;
            match client.get_data(&path).await {
                Ok((data, stat)) => Ok(kv::key_value(&self.inner.root, &path, &data, &stat)),
                Err(zookeeper_client::Error::NoNode) => Ok(None),
                Err(e) => Err(to_coord(e, self.endpoints(), "reading a key")),
            }
        })
    }

    fn range<'a>(
        &'a self,
        prefix: &'a str,
    ) -> BoxFuture<'a, Result<(Vec<KeyValue>, u64), CoordError>> {
        Box::pin(async move {
            let base = paths::prefix_base(&self.inner.root, prefix)?;
            let client = self.inner.sessions.shared().await?;
            let snapshot = kv::snapshot(&client, &base, self.endpoints()).await?;
            let keys = snapshot.keys(&self.inner.root, prefix);
            watch::remember_range(&self.inner.recents, prefix, snapshot.revision, &keys);
            Ok((keys, snapshot.revision))
        })
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        session: Option<SessionId>,
    ) -> BoxFuture<'a, Result<u64, CoordError>> {
        Box::pin(async move {
            let (client, owner) = match session {
                Some(id) => (self.inner.sessions.get(id)?.client.clone(), id.0),
                None => (self.inner.sessions.shared().await?, 0),
            };
            let what = Write::Put {
                value: &value,
                owner,
            };
            match kv::write(&client, &self.inner.root, self.endpoints(), key, None, what).await? {
                Written::Applied(revision) => Ok(revision),
                other => Err(CoordError::Protocol(format!("a put came back {other:?}"))),
            }
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<u64>, CoordError>> {
        Box::pin(async move {
            let client = self.inner.sessions.shared().await?;
            match kv::write(
                &client,
                &self.inner.root,
                self.endpoints(),
                key,
                None,
                Write::Delete,
            )
            .await?
            {
                Written::Applied(revision) => Ok(Some(revision)),
                Written::NotFound => Ok(None),
                Written::Refused => Err(CoordError::Protocol(
                    "an unfenced delete was refused".to_owned(),
                )),
            }
        })
    }

    fn watch<'a>(
        &'a self,
        prefix: &'a str,
        after: u64,
    ) -> BoxFuture<'a, Result<BoxStream<'static, Result<WatchEvent, CoordError>>, CoordError>> {
        Box::pin(watch::watch(
            Arc::clone(&self.inner),
            prefix.to_owned(),
            after,
        ))
    }

    fn fenced<'a>(&'a self, held: &'a Held, op: Op) -> BoxFuture<'a, Result<Fenced, CoordError>> {
        Box::pin(async move {
            let client = self.inner.sessions.shared().await?;
            let (key, what) = match &op {
                Op::Put { key, value } => (key, Write::Put { value, owner: 0 }),
                Op::Delete { key } => (key, Write::Delete),
            };
            match kv::write(
                &client,
                &self.inner.root,
                self.endpoints(),
                key,
                Some(&held.key),
                what,
            )
            .await?
            {
                Written::Applied(revision) => Ok(Fenced::Applied(revision)),
                Written::Refused => Ok(Fenced::Refused),
                Written::NotFound => Err(CoordError::Protocol(
                    "a fenced write found no key".to_owned(),
                )),
            }
        })
    }
}
