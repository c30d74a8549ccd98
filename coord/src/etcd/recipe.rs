//! The election and lock recipe of etcd's `concurrency` package (what `etcdctl elect` and
//! `etcdctl lock` run): each candidate puts `PREFIX<lease hex>` under its lease, the lowest
//! create revision under the prefix leads (holds), and every other candidate waits for the
//! deletion of the key created just before its own (`waitDeletes`), so no herd wakes up.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, PutOptions, SortOrder, SortTarget, Txn,
    TxnOp, TxnOpResponse, TxnResponse, WatchOptions,
};

use super::conn::Conn;
use super::keys::candidate;
use crate::backend::{Held, SessionId};
use crate::error::CoordError;
use tokio::task::JoinHandle;

/// The pause between reads of a candidate key while no member answers.
const REREAD_PAUSE: Duration = Duration::from_millis(100);

/// Withdrawals of dropped candidacies still on their way, by key: a new candidacy of the same
/// session and name waits for its predecessor's withdrawal instead of finding its key.
#[derive(Default)]
pub struct Withdrawals(Arc<Mutex<HashMap<String, JoinHandle<()>>>>);

impl Withdrawals {
    fn pending(&self) -> MutexGuard<'_, HashMap<String, JoinHandle<()>>> {
        // Plain values: a map poisoned by a panic elsewhere is still consistent.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until a withdrawal of `key` in flight is done.
    async fn settled(&self, key: &str) {
        let pending = self.pending().remove(key);
        if let Some(withdrawal) = pending {
            // A withdrawal that failed leaves the key to its lease: the create then says so.
            let _ = withdrawal.await;
        }
    }
}

/// Withdraws a candidacy that was not won when the future holding it is dropped: deletes the
/// key in the background, if it still is this candidacy's — also when the future is dropped
/// while the create is on its way (the create then finishes first, and says whether there is
/// a key to withdraw).
struct Withdraw<'a> {
    client: &'a Client,
    withdrawals: &'a Withdrawals,
    key: String,
    /// The create, until it answered.
    creating: Option<JoinHandle<Result<TxnResponse, CoordError>>>,
    /// The revision the key was created at, once known.
    revision: Option<i64>,
    /// Disarmed: won, or failed after the key was deleted.
    done: bool,
}

impl Withdraw<'_> {
    /// Waits for the create's answer.
    async fn created(&mut self) -> Result<TxnResponse, CoordError> {
        let Some(creating) = self.creating.as_mut() else {
            return Err(CoordError::Protocol(
                "a candidate key's create awaited twice".to_owned(),
            ));
        };
        let created = creating.await.map_err(|e| {
            CoordError::Protocol(format!("putting a candidate key: the task failed: {e}"))
        });
        self.creating = None;
        let created = created?;
        match &created {
            Ok(answer) if answer.succeeded() => {
                self.revision = Some(header_revision(answer.header())?);
            }
            // No key of ours was made.
            _ => self.done = true,
        }
        created
    }
}

impl Drop for Withdraw<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime to send it from: the lease's end removes the key.
            return;
        };
        let mut client = self.client.clone();
        let (creating, known) = (self.creating.take(), self.revision);
        tracing::debug!(key = %self.key, "etcd candidacy withdrawn");
        let (withdrawals, key) = (Arc::clone(&self.withdrawals.0), self.key.clone());
        // Held while spawning, so the task's own removal comes after the insert.
        let mut pending = self.withdrawals.pending();
        let task = runtime.spawn(async move {
            let revision = match (known, creating) {
                (Some(revision), _) => Some(revision),
                (None, Some(creating)) => match creating.await {
                    Ok(Ok(created)) if created.succeeded() => {
                        header_revision(created.header()).ok()
                    }
                    _ => None,
                },
                (None, None) => None,
            };
            if let Some(revision) = revision {
                let txn = still_ours(&key, revision).and_then([TxnOp::delete(key.as_str(), None)]);
                if let Err(err) = client.txn(txn).await {
                    tracing::debug!(error = %err, "withdrawing an etcd candidacy failed; its lease's end removes it");
                }
            }
            withdrawals
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&key);
        });
        pending.insert(self.key.clone(), task);
    }
}

/// A transaction that applies only while `key` is the one created at `revision`.
pub fn still_ours(key: &str, revision: i64) -> Txn {
    Txn::new().when([Compare::create_revision(key, CompareOp::Equal, revision)])
}

/// Puts this session's candidate under `recipe` (`NS/NAME/`) and waits until it is the oldest.
pub async fn contend(
    conn: &Conn,
    withdrawals: &Withdrawals,
    session: SessionId,
    recipe: &str,
    value: Bytes,
) -> Result<Held, CoordError> {
    let key = candidate(recipe, session.0);
    withdrawals.settled(&key).await;
    // Create the key only if it is absent, as `concurrency.Election.Campaign` does; a key that
    // exists is another candidacy of this same session, which cannot be told apart from ours.
    // With the put, read the oldest candidate: when it is ours (no one else contends), the
    // claim is won in this one round trip.
    let oldest = GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Create, SortOrder::Ascend)
        .with_limit(1)
        .with_keys_only();
    let create = Txn::new()
        .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
        .and_then([
            TxnOp::put(
                key.as_str(),
                value.to_vec(),
                Some(PutOptions::new().with_lease(session.0)),
            ),
            TxnOp::get(recipe, Some(oldest)),
        ]);
    // The create goes on its own task, so that a candidacy dropped while it is on its way
    // still knows whether it made a key, and withdraws it.
    let creating = tokio::spawn({
        let conn = conn.clone();
        async move {
            conn.call("putting a candidate key", |mut c| {
                let create = create.clone();
                async move { c.txn(create).await }
            })
            .await
        }
    });
    let mut withdraw = Withdraw {
        client: conn.client(),
        withdrawals,
        key: key.clone(),
        creating: Some(creating),
        revision: None,
        done: false,
    };
    let created = withdraw.created().await?;
    if !created.succeeded() {
        return Err(CoordError::Config(format!(
            "{key} exists: session {session} already contends for {recipe} (etcd keys one \
             candidacy per lease and name)"
        )));
    }
    let revision = header_revision(created.header())?;
    let first = match created.op_responses().as_slice() {
        [_, TxnOpResponse::Get(oldest)] => {
            oldest.kvs().first().map(|kv| kv.key() == key.as_bytes())
        }
        _ => None,
    };
    if first == Some(true) {
        withdraw.done = true;
        return Ok(Held {
            key,
            token: to_u64(revision)?,
            session,
        });
    }
    loop {
        match wait_for_predecessor(conn, recipe, &key, revision).await {
            Ok(true) => {
                withdraw.done = true;
                return Ok(Held {
                    key,
                    token: to_u64(revision)?,
                    session,
                });
            }
            Ok(false) => {}
            Err(CoordError::SessionExpired) => {
                withdraw.done = true;
                return Err(CoordError::SessionExpired);
            }
            Err(err) => return Err(err),
        }
    }
}

/// One step of waiting: `Ok(true)` when `key` (created at `revision`) is the oldest under
/// `recipe`, `Ok(false)` once the candidate just before it is gone (look again), and
/// [`CoordError::SessionExpired`] when `key` itself went (its lease ended).
async fn wait_for_predecessor(
    conn: &Conn,
    recipe: &str,
    key: &str,
    revision: i64,
) -> Result<bool, CoordError> {
    let before = GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Create, SortOrder::Descend)
        .with_max_create_revision(revision - 1)
        .with_limit(1);
    let reads = Txn::new().and_then([TxnOp::get(recipe, Some(before)), TxnOp::get(key, None)]);
    let read = conn
        .call("reading an election's candidates", |mut c| {
            let reads = reads.clone();
            async move { c.txn(reads).await }
        })
        .await?;
    let at = header_revision(read.header())?;
    let (predecessor, ours) = match read.op_responses().as_slice() {
        [TxnOpResponse::Get(before), TxnOpResponse::Get(ours)] => (
            before.kvs().first().map(|kv| kv.key().to_vec()),
            ours.kvs().first().map(|kv| kv.create_revision()),
        ),
        other => {
            return Err(CoordError::Protocol(format!(
                "etcd answered {} results to two reads",
                other.len()
            )));
        }
    };
    if ours != Some(revision) {
        return Err(CoordError::SessionExpired);
    }
    let Some(predecessor) = predecessor else {
        return Ok(true);
    };
    // Watch both keys from just after the read: the predecessor's delete, or our own.
    let from = || Some(WatchOptions::new().with_start_revision(at + 1));
    let mut watch = conn
        .call("watching the previous candidate", |mut c| {
            let predecessor = predecessor.clone();
            async move {
                let mut watch = c.watch(predecessor, from()).await?;
                watch.watch(key, from()).await?;
                Ok(watch)
            }
        })
        .await?;
    loop {
        let Ok(Some(response)) = watch.message().await else {
            // The stream was lost (its member, say): read again, maybe from another.
            return Ok(false);
        };
        if response.canceled() {
            // Compacted past `at` (or cancelled by the server): read again.
            return Ok(false);
        }
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            if event.event_type() != EventType::Delete {
                continue;
            }
            if kv.key() == key.as_bytes() {
                return Err(CoordError::SessionExpired);
            }
            if kv.key() == predecessor.as_slice() {
                return Ok(false);
            }
        }
    }
}

/// The oldest candidate under `recipe`: its value and create revision (the leader).
pub async fn first(conn: &Conn, recipe: &str) -> Result<Option<(Bytes, u64)>, CoordError> {
    let oldest = GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Create, SortOrder::Ascend)
        .with_limit(1);
    let found = conn
        .call("reading an election's leader", |mut c| {
            let oldest = oldest.clone();
            async move { c.get(recipe, Some(oldest)).await }
        })
        .await?;
    found
        .kvs()
        .first()
        .map(|kv| {
            Ok((
                Bytes::copy_from_slice(kv.value()),
                to_u64(kv.create_revision())?,
            ))
        })
        .transpose()
}

/// Gives up `held`: deletes its key if it is still the one taken with its token.
pub async fn give_up(conn: &Conn, held: &Held) -> Result<(), CoordError> {
    let delete = still_ours(&held.key, to_i64(held.token)?)
        .and_then([TxnOp::delete(held.key.as_str(), None)]);
    conn.call("deleting a candidate key", |mut c| {
        let delete = delete.clone();
        async move { c.txn(delete).await }
    })
    .await?;
    Ok(())
}

/// Resolves once `held`'s key is gone or is no longer the one taken with its token.
///
/// A read that finds no member able to answer (during a Raft election, say) is tried again
/// for up to `patience` (the lease's TTL: the key cannot outlive it unrenewed); after that,
/// the error.
pub async fn released(conn: &Conn, held: &Held, patience: Duration) -> Result<(), CoordError> {
    let revision = to_i64(held.token)?;
    let mut failing_since: Option<Instant> = None;
    // The key was created at `revision`: watching from just after it tells of any change
    // since, without reading it first. Only when that history is gone (or the stream is lost)
    // is the key read again.
    let mut known = Some(revision);
    loop {
        if let Some(at) = known.take() {
            if watch_until_gone(conn, held, revision, at).await? {
                return Ok(());
            }
            continue;
        }
        let read = conn
            .call("reading a candidate key", |mut c| async move {
                c.get(held.key.as_str(), None).await
            })
            .await;
        let read = match read {
            Ok(read) => read,
            Err(err @ CoordError::Unreachable { .. }) => {
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= patience {
                    return Err(err);
                }
                tokio::time::sleep(REREAD_PAUSE).await;
                continue;
            }
            Err(err) => return Err(err),
        };
        failing_since = None;
        if read.kvs().first().map(|kv| kv.create_revision()) != Some(revision) {
            return Ok(());
        }
        known = Some(header_revision(read.header())?);
    }
}

/// Watches `held`'s key from just after revision `at`: `true` once it is deleted or replaced,
/// `false` when the stream is lost or cannot follow from `at` any more.
async fn watch_until_gone(
    conn: &Conn,
    held: &Held,
    revision: i64,
    at: i64,
) -> Result<bool, CoordError> {
    let mut watch = conn
        .call("watching a candidate key", |mut c| async move {
            let from = WatchOptions::new().with_start_revision(at + 1);
            c.watch(held.key.as_str(), Some(from)).await
        })
        .await?;
    loop {
        let Ok(Some(response)) = watch.message().await else {
            return Ok(false);
        };
        if response.canceled() {
            return Ok(false);
        }
        let gone = response.events().iter().any(|event| {
            event.event_type() == EventType::Delete
                || event
                    .kv()
                    .is_some_and(|kv| kv.create_revision() != revision)
        });
        if gone {
            return Ok(true);
        }
    }
}

/// The revision a response was served at.
pub fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Result<i64, CoordError> {
    header
        .map(etcd_client::ResponseHeader::revision)
        .ok_or_else(|| CoordError::Protocol("an etcd response without a header".to_owned()))
}

/// A revision as the trait's `u64` (etcd's are positive `int64`s).
pub fn to_u64(revision: i64) -> Result<u64, CoordError> {
    u64::try_from(revision)
        .map_err(|_| CoordError::Protocol(format!("etcd answered revision {revision}")))
}

/// A token or revision as etcd's `int64`.
pub fn to_i64(revision: u64) -> Result<i64, CoordError> {
    i64::try_from(revision)
        .map_err(|_| CoordError::Config(format!("revision {revision} is beyond etcd's range")))
}

/// A watch stream the server or the connection closed.
pub fn watch_ended(endpoints: &str) -> CoordError {
    CoordError::Unreachable {
        endpoints: endpoints.to_owned(),
        source: "the watch stream ended".into(),
    }
}
