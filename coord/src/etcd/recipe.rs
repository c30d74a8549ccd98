//! The election and lock recipe of etcd's `concurrency` package (what `etcdctl elect` and
//! `etcdctl lock` run): each candidate puts `PREFIX<lease hex>` under its lease, the lowest
//! create revision under the prefix leads (holds), and every other candidate waits for the
//! deletion of the key created just before its own (`waitDeletes`), so no herd wakes up.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, PutOptions, SortOrder, SortTarget, Txn,
    TxnOp, TxnOpResponse, WatchOptions,
};

use super::errors::to_coord;
use super::keys::candidate;
use crate::backend::{Held, SessionId};
use crate::error::CoordError;
use tokio::task::JoinHandle;

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
/// key in the background, if it still is this candidacy's.
struct Withdraw<'a> {
    client: &'a Client,
    withdrawals: &'a Withdrawals,
    key: String,
    revision: i64,
    /// Disarmed: won, or failed after the key was deleted.
    done: bool,
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
        let txn =
            still_ours(&self.key, self.revision).and_then([TxnOp::delete(self.key.as_str(), None)]);
        tracing::debug!(key = %self.key, "etcd candidacy withdrawn");
        let (withdrawals, key) = (Arc::clone(&self.withdrawals.0), self.key.clone());
        // Held while spawning, so the task's own removal comes after the insert.
        let mut pending = self.withdrawals.pending();
        let task = runtime.spawn(async move {
            if let Err(err) = client.txn(txn).await {
                tracing::debug!(error = %err, "withdrawing an etcd candidacy failed; its lease's end removes it");
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
    client: &Client,
    withdrawals: &Withdrawals,
    session: SessionId,
    recipe: &str,
    value: Bytes,
    endpoints: &str,
) -> Result<Held, CoordError> {
    let key = candidate(recipe, session.0);
    withdrawals.settled(&key).await;
    let mut kv = client.clone();
    // Create the key only if it is absent, as `concurrency.Election.Campaign` does; a key that
    // exists is another candidacy of this same session, which cannot be told apart from ours.
    let created = kv
        .txn(
            Txn::new()
                .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    key.as_str(),
                    value.to_vec(),
                    Some(PutOptions::new().with_lease(session.0)),
                )]),
        )
        .await
        .map_err(|e| to_coord(e, endpoints, "putting a candidate key"))?;
    if !created.succeeded() {
        return Err(CoordError::Config(format!(
            "{key} exists: session {session} already contends for {recipe} (etcd keys one \
             candidacy per lease and name)"
        )));
    }
    let revision = header_revision(created.header())?;
    let mut withdraw = Withdraw {
        client,
        withdrawals,
        key: key.clone(),
        revision,
        done: false,
    };
    loop {
        match wait_for_predecessor(client, recipe, &key, revision, endpoints).await {
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
    client: &Client,
    recipe: &str,
    key: &str,
    revision: i64,
    endpoints: &str,
) -> Result<bool, CoordError> {
    let mut kv = client.clone();
    let before = GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Create, SortOrder::Descend)
        .with_max_create_revision(revision - 1)
        .with_limit(1);
    let read = kv
        .txn(Txn::new().and_then([TxnOp::get(recipe, Some(before)), TxnOp::get(key, None)]))
        .await
        .map_err(|e| to_coord(e, endpoints, "reading an election's candidates"))?;
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
    let mut watch = client
        .clone()
        .watch(
            predecessor.clone(),
            Some(WatchOptions::new().with_start_revision(at + 1)),
        )
        .await
        .map_err(|e| to_coord(e, endpoints, "watching the previous candidate"))?;
    watch
        .watch(key, Some(WatchOptions::new().with_start_revision(at + 1)))
        .await
        .map_err(|e| to_coord(e, endpoints, "watching the candidate key"))?;
    loop {
        let response = watch
            .message()
            .await
            .map_err(|e| to_coord(e, endpoints, "waiting for the previous candidate"))?
            .ok_or_else(|| watch_ended(endpoints))?;
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
pub async fn first(
    client: &Client,
    recipe: &str,
    endpoints: &str,
) -> Result<Option<(Bytes, u64)>, CoordError> {
    let oldest = GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Create, SortOrder::Ascend)
        .with_limit(1);
    let found = client
        .clone()
        .get(recipe, Some(oldest))
        .await
        .map_err(|e| to_coord(e, endpoints, "reading an election's leader"))?;
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
pub async fn give_up(client: &Client, held: &Held, endpoints: &str) -> Result<(), CoordError> {
    let revision = to_i64(held.token)?;
    client
        .clone()
        .txn(still_ours(&held.key, revision).and_then([TxnOp::delete(held.key.as_str(), None)]))
        .await
        .map_err(|e| to_coord(e, endpoints, "deleting a candidate key"))?;
    Ok(())
}

/// Resolves once `held`'s key is gone or is no longer the one taken with its token.
pub async fn released(client: &Client, held: &Held, endpoints: &str) -> Result<(), CoordError> {
    let revision = to_i64(held.token)?;
    let read = client
        .clone()
        .get(held.key.as_str(), None)
        .await
        .map_err(|e| to_coord(e, endpoints, "reading a candidate key"))?;
    if read.kvs().first().map(|kv| kv.create_revision()) != Some(revision) {
        return Ok(());
    }
    let at = header_revision(read.header())?;
    let mut watch = client
        .clone()
        .watch(
            held.key.as_str(),
            Some(WatchOptions::new().with_start_revision(at + 1)),
        )
        .await
        .map_err(|e| to_coord(e, endpoints, "watching a candidate key"))?;
    loop {
        let response = watch
            .message()
            .await
            .map_err(|e| to_coord(e, endpoints, "watching a candidate key"))?
            .ok_or_else(|| watch_ended(endpoints))?;
        if response.canceled() {
            // Cannot follow from `at` any more: look at the key again.
            return Box::pin(released(client, held, endpoints)).await;
        }
        let gone = response.events().iter().any(|event| {
            event.event_type() == EventType::Delete
                || event
                    .kv()
                    .is_some_and(|kv| kv.create_revision() != revision)
        });
        if gone {
            return Ok(());
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
