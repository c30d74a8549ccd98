//! What every coordination backend provides (etcd, ZooKeeper, embedded), at the level the
//! recipes need: sessions, elections and locks with fencing tokens, a key-value store with
//! revisions and watches, and writes fenced on a held election or lock.
//!
//! The `Coord` layer builds everything users see on this trait: it keeps the
//! session alive and decides, from the renewals, until when a leader may act; it maps names to
//! keys through the backend's [`Layout`]. A backend only talks to its server.
//!
//! Rules every implementation keeps (the conformance suite in `coord/tests/` checks them on
//! each backend):
//! - **Revisions** grow with every write to the store and are comparable across keys; a watch
//!   from revision `r` delivers every change after `r`, in revision order, exactly once, or says
//!   [`WatchEvent::Compacted`] when that history is gone.
//! - **Sessions**: keys put with a session and candidacies and locks taken under it disappear
//!   when the session ends (closed, or not renewed within its TTL on the server).
//! - **Tokens**: the token of a won election or a taken lock is larger than the token of every
//!   earlier term of that election or holder of that lock.
//! - **Fairness**: candidates and lock waiters are served in the order they asked, each waiting
//!   only on its predecessor (no herd).

use std::fmt;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use sluice_pipeline::component::BoxFuture;

use crate::error::CoordError;

/// A boxed, sendable stream.
pub type BoxStream<'a, T> = Pin<Box<dyn Stream<Item = T> + Send + 'a>>;

/// A session: the liveness that ephemeral keys, candidacies and locks hang on (an etcd lease,
/// a ZooKeeper session, an embedded lease).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId(pub i64);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

/// A key and its value, with the revisions that ordered its writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key, as the user named it (without the backend's namespace).
    pub key: String,
    /// The value.
    pub value: Bytes,
    /// The revision of the write that created the key.
    pub create_revision: u64,
    /// The revision of the latest write to the key.
    pub mod_revision: u64,
    /// Writes to the key since it was created (1 after the create).
    pub version: u64,
    /// The session the key lives with, if it is ephemeral.
    pub session: Option<SessionId>,
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A key was created or updated.
    Put(KeyValue),
    /// A key was deleted (or its session ended).
    Delete {
        /// The key (without the namespace).
        key: String,
        /// The revision of the delete.
        mod_revision: u64,
    },
}

impl Change {
    /// The key changed.
    pub fn key(&self) -> &str {
        match self {
            Change::Put(kv) => &kv.key,
            Change::Delete { key, .. } => key,
        }
    }

    /// The revision of the change.
    pub fn revision(&self) -> u64 {
        match self {
            Change::Put(kv) => kv.mod_revision,
            Change::Delete { mod_revision, .. } => *mod_revision,
        }
    }
}

/// What a watch delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// Changes, in revision order (one revision may hold several, from one transaction).
    Changes(Vec<Change>),
    /// The history the watch was asked to start from is gone: every revision up to and
    /// including `compacted` was compacted away. The watch ends after this event; the caller
    /// re-reads the prefix and watches again from the revision of that read.
    Compacted {
        /// The newest revision that is gone.
        compacted: u64,
    },
}

/// A won candidacy or a taken lock: the backend's key for it and its fencing token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// The backend's own key of the candidacy or lock (etcd: `NAME/<lease hex>`; ZooKeeper:
    /// the sequential node's path), with the namespace.
    pub key: String,
    /// The fencing token (etcd: the key's create revision; ZooKeeper: the node's sequence
    /// number; embedded: the key's create revision).
    pub token: u64,
    /// The session it was taken under.
    pub session: SessionId,
}

/// A write that [`Backend::fenced`] applies only while a [`Held`] is still held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Sets `key` to `value`.
    Put {
        /// The key (without the namespace).
        key: String,
        /// The value.
        value: Bytes,
    },
    /// Deletes `key`.
    Delete {
        /// The key (without the namespace).
        key: String,
    },
}

/// The outcome of a fenced write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fenced {
    /// The write was applied, at this revision.
    Applied(u64),
    /// The election or lock is no longer held with that token: nothing was written.
    Refused,
}

/// Where a backend keeps what sluice names, given the `[coord] namespace`: documented per
/// backend so that a client nobody here wrote can take part (`etcdctl elect NAME`, a kazoo
/// `Lock`, a service registering itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The key prefix of election `NAME`.
    pub election: String,
    /// The key prefix of lock `NAME`.
    pub lock: String,
    /// Where instance `ID` of service `SERVICE` registers.
    pub instance: String,
    /// Where configuration `KEY` is stored.
    pub config: String,
    /// Where plain key `KEY` (the `coord_watch` source, the `coord_kv` sink) lives.
    pub key: String,
}

/// A coordination backend.
///
/// Every method may be called concurrently from several tasks. Errors say whether retrying can
/// help ([`CoordError::is_retryable`]); a server that cannot be reached is retryable.
pub trait Backend: Send + Sync + 'static {
    /// What it talks to, for messages: the endpoints, never credentials.
    fn describe(&self) -> String;

    /// The backend's key layout, with `{name}`, `{service}`, `{id}` and `{key}` placeholders
    /// (for the docs and `sluice check`).
    fn layout(&self) -> Layout;

    /// Opens a session that lives `ttl` after its last renewal, and returns it with the TTL
    /// the server granted (which may be longer).
    fn open_session(
        &self,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<(SessionId, Duration), CoordError>>;

    /// Renews `session` once and returns the TTL the server grants it from the moment the
    /// request was sent; [`CoordError::SessionExpired`] when it is gone.
    fn renew(&self, session: SessionId) -> BoxFuture<'_, Result<Duration, CoordError>>;

    /// Ends `session` at once, deleting its keys and giving up its candidacies and locks.
    fn close_session(&self, session: SessionId) -> BoxFuture<'_, Result<(), CoordError>>;

    /// Campaigns in election `name` with `value` (what observers see, such as the node name),
    /// under `session`; resolves once this candidate leads. Dropping the future withdraws the
    /// candidacy; [`CoordError::SessionExpired`] if the session ends while waiting.
    fn campaign<'a>(
        &'a self,
        session: SessionId,
        name: &'a str,
        value: Bytes,
    ) -> BoxFuture<'a, Result<Held, CoordError>>;

    /// Gives up a won election (deletes its key), so the next candidate leads.
    fn resign<'a>(&'a self, held: &'a Held) -> BoxFuture<'a, Result<(), CoordError>>;

    /// The current leader of election `name`: its value and token.
    fn leader<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<(Bytes, u64)>, CoordError>>;

    /// Takes lock `name` under `session`; resolves once held. Dropping the future gives up the
    /// wait; [`CoordError::SessionExpired`] if the session ends while waiting.
    fn lock<'a>(
        &'a self,
        session: SessionId,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Held, CoordError>>;

    /// Releases a held lock.
    fn unlock<'a>(&'a self, held: &'a Held) -> BoxFuture<'a, Result<(), CoordError>>;

    /// Resolves once `held` is no longer held: its key was deleted, or its session ended.
    fn released<'a>(&'a self, held: &'a Held) -> BoxFuture<'a, Result<(), CoordError>>;

    /// The value of `key`.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<KeyValue>, CoordError>>;

    /// Every key under `prefix`, in key order, and the store's revision they were read at.
    fn range<'a>(
        &'a self,
        prefix: &'a str,
    ) -> BoxFuture<'a, Result<(Vec<KeyValue>, u64), CoordError>>;

    /// Sets `key` to `value`, ephemeral when `session` is given; returns the write's revision.
    fn put<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        session: Option<SessionId>,
    ) -> BoxFuture<'a, Result<u64, CoordError>>;

    /// Deletes `key`; returns the revision of the delete, or `None` when there was no such key.
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<u64>, CoordError>>;

    /// Watches every key under `prefix` for changes after revision `after`.
    fn watch<'a>(
        &'a self,
        prefix: &'a str,
        after: u64,
    ) -> BoxFuture<'a, Result<BoxStream<'static, Result<WatchEvent, CoordError>>, CoordError>>;

    /// Applies `op` only if `held` is still held with its token, in one atomic step (etcd: a
    /// transaction comparing the key's create revision; ZooKeeper: a multi with a version
    /// check on the node).
    fn fenced<'a>(&'a self, held: &'a Held, op: Op) -> BoxFuture<'a, Result<Fenced, CoordError>>;
}
