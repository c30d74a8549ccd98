//! The election and lock recipe: EPHEMERAL_SEQUENTIAL candidate nodes in the election's or
//! lock's directory, the lowest sequence leads (holds), every other candidate watches only the
//! node just below its own. Nodes are named and ordered exactly as kazoo's `Lock` (and so its
//! `Election`) names and orders them, so kazoo and sluice contend in one queue.

use std::sync::Arc;

use bytes::Bytes;
use zookeeper_client as zk;

use super::paths::{self, contenders};
use super::session::{Session, is_connection_loss, reconnected, to_coord};
use crate::backend::{Held, SessionId};
use crate::error::CoordError;

/// Persistent nodes with an open ACL: the directories of elections, locks and keys.
pub const PERSISTENT: zk::CreateOptions<'static> =
    zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
/// Candidate nodes.
const CANDIDATE: zk::CreateOptions<'static> =
    zk::CreateMode::EphemeralSequential.with_acls(zk::Acls::anyone_all());

/// Creates every missing ancestor of `path` (not `path` itself) as a persistent, empty node.
///
/// Election and lock directories must stay persistent: the sequence ZooKeeper hands out is the
/// directory's child counter, and a directory deleted and created again starts from 0.
pub async fn ensure_parents(client: &zk::Client, path: &str) -> Result<(), zk::Error> {
    let mut end = 0;
    while let Some(next) = path[end + 1..].find('/') {
        end += 1 + next;
        match client.create(&path[..end], &[], &PERSISTENT).await {
            Ok(_) | Err(zk::Error::NodeExists) => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// Withdraws a candidacy that was not won when the future holding it is dropped: deletes the
/// node once its path is known, else (dropped while its create was in flight) finds it by its
/// unique prefix in the background and deletes it.
struct Withdraw<'a> {
    client: &'a zk::Client,
    /// `{dir}/{uuid}__lock__`: the node once its create is answered is this plus the sequence.
    prefix: String,
    /// The node, once its create was answered.
    path: Option<String>,
    /// Disarmed: won, or never created.
    done: bool,
}

impl<'a> Withdraw<'a> {
    fn new(client: &'a zk::Client, prefix: String) -> Self {
        Withdraw {
            client,
            prefix,
            path: None,
            done: false,
        }
    }

    /// The candidacy is won: the node stays.
    fn keep(mut self) -> String {
        self.done = true;
        self.path.take().unwrap_or_default()
    }
}

impl Drop for Withdraw<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if let Some(path) = self.path.take() {
            tracing::debug!(node = %path, "zookeeper candidacy withdrawn");
            // The request goes out when `delete` is called, answered or not.
            drop(self.client.delete(&path, None));
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (client, prefix) = (self.client.clone(), std::mem::take(&mut self.prefix));
        // Requests of one session are served in order: this listing sees the node if the
        // create in flight made one.
        runtime.spawn(async move {
            let Some((dir, unique)) = prefix.rsplit_once('/') else { return };
            if let Ok(children) = client.list_children(dir).await {
                for name in children.iter().filter(|c| c.starts_with(unique)) {
                    tracing::debug!(dir, node = %name, "zookeeper candidacy withdrawn while being created");
                    drop(client.delete(&paths::child(dir, name), None));
                }
            }
        });
    }
}

/// Joins the queue in `dir` with `data` under `session` and waits until first; returns the
/// node and its token.
pub async fn contend(
    session: &Arc<Session>,
    id: SessionId,
    dir: &str,
    data: &[u8],
    endpoints: &str,
) -> Result<Held, CoordError> {
    tokio::select! {
        held = contend_inner(&session.client, id, dir, data, endpoints) => held,
        () = session.closed() => Err(CoordError::SessionExpired),
    }
}

async fn contend_inner(
    client: &zk::Client,
    session: SessionId,
    dir: &str,
    data: &[u8],
    endpoints: &str,
) -> Result<Held, CoordError> {
    let err = |e: zk::Error| to_coord(e, endpoints, "campaigning");
    'candidacy: loop {
        let mut node = Withdraw::new(client, paths::candidate_prefix(dir));
        match create_candidate(client, &node.prefix, data, endpoints).await {
            Ok(path) => node.path = Some(path),
            Err(e) => {
                // Nothing was created (or the session that owned it is over).
                node.done = true;
                return Err(e);
            }
        }
        let Some(name) = node
            .path
            .as_deref()
            .and_then(|p| p.rsplit('/').next())
            .map(str::to_owned)
        else {
            return Err(CoordError::Protocol(
                "candidate node without a name".to_owned(),
            ));
        };
        loop {
            let children = match client.list_children(dir).await {
                Ok(children) => children,
                Err(e) if is_connection_loss(&e) => {
                    reconnected(client).await?;
                    continue;
                }
                Err(e) => return Err(err(e)),
            };
            let queue = contenders(&children);
            let Some(place) = queue.iter().position(|(_, n)| *n == name) else {
                if client.state().is_terminated() {
                    return Err(CoordError::SessionExpired);
                }
                let path = node.path.as_deref().unwrap_or_default();
                if client.check_stat(path).await.map_err(err)?.is_some() {
                    return Err(CoordError::Protocol(format!(
                        "candidate node {path} is not named as a contender"
                    )));
                }
                // Our node is gone while the session lives: someone deleted it. Like kazoo,
                // queue again (at the back).
                tracing::info!(
                    dir,
                    "zookeeper candidate node deleted by someone else; queueing again"
                );
                drop(node);
                continue 'candidacy;
            };
            if place == 0 {
                let token = paths::token(queue[0].0)?;
                let key = node.keep();
                tracing::debug!(node = %key, token, "zookeeper candidate first in line");
                return Ok(Held {
                    key,
                    token,
                    session,
                });
            }
            let predecessor = paths::child(dir, queue[place - 1].1);
            match client.check_and_watch_stat(&predecessor).await {
                Ok((None, _)) => continue,
                Ok((Some(_), watcher)) => {
                    watcher.changed().await;
                }
                Err(e) if is_connection_loss(&e) => reconnected(client).await?,
                Err(e) => return Err(err(e)),
            }
        }
    }
}

/// Creates the candidate node `{prefix}{sequence}`; after a lost reply, finds it again by the
/// unique prefix before trying once more.
async fn create_candidate(
    client: &zk::Client,
    prefix: &str,
    data: &[u8],
    endpoints: &str,
) -> Result<String, CoordError> {
    let err = |e: zk::Error| to_coord(e, endpoints, "creating a candidate node");
    let (dir, unique) = prefix.rsplit_once('/').unwrap_or(("", prefix));
    let mut maybe_created = false;
    loop {
        if maybe_created {
            match client.list_children(dir).await {
                Ok(children) => {
                    if let Some(name) = children.iter().find(|c| c.starts_with(unique)) {
                        return Ok(paths::child(dir, name));
                    }
                }
                Err(e) if is_connection_loss(&e) => {
                    reconnected(client).await?;
                    continue;
                }
                Err(zk::Error::NoNode) => {}
                Err(e) => return Err(err(e)),
            }
        }
        match client.create(prefix, data, &CANDIDATE).await {
            Ok((_, sequence)) => return Ok(format!("{prefix}{sequence}")),
            Err(zk::Error::NoNode) => ensure_parents(client, prefix).await.map_err(err)?,
            Err(e) if is_connection_loss(&e) => {
                maybe_created = true;
                reconnected(client).await?;
            }
            Err(e) => return Err(err(e)),
        }
    }
}

/// The first contender in `dir`: its data and token.
pub async fn first(
    client: &zk::Client,
    dir: &str,
    endpoints: &str,
) -> Result<Option<(Bytes, u64)>, CoordError> {
    let err = |e: zk::Error| to_coord(e, endpoints, "reading an election");
    loop {
        let children = match client.list_children(dir).await {
            Ok(children) => children,
            Err(zk::Error::NoNode) => return Ok(None),
            Err(e) => return Err(err(e)),
        };
        let Some((sequence, name)) = contenders(&children).first().copied() else {
            return Ok(None);
        };
        match client.get_data(&paths::child(dir, name)).await {
            Ok((data, _)) => return Ok(Some((Bytes::from(data), paths::token(sequence)?))),
            // It left between the listing and the read: look again.
            Err(zk::Error::NoNode) => continue,
            Err(e) => return Err(err(e)),
        }
    }
}

/// Deletes a held candidate node; a node already gone is fine.
pub async fn give_up(client: &zk::Client, held: &Held, endpoints: &str) -> Result<(), CoordError> {
    match client.delete(&held.key, None).await {
        Ok(()) | Err(zk::Error::NoNode) => Ok(()),
        Err(e) => Err(to_coord(e, endpoints, "giving up an election or lock")),
    }
}

/// Resolves once `held`'s node is gone or its session ended. With the session's own connection
/// (when this backend opened the session) the session's end is seen too; with the shared
/// connection only the node's deletion is, and the end of the shared session is an error.
pub async fn released(
    session: Option<&Arc<Session>>,
    client: &zk::Client,
    held: &Held,
    endpoints: &str,
) -> Result<(), CoordError> {
    let watching = session.map_or(client, |s| &s.client);
    // What the end of the watching connection's session means for `held`.
    let ended = || match session {
        Some(_) => Ok(()),
        None => Err(CoordError::Unreachable {
            endpoints: endpoints.to_owned(),
            source: "the shared zookeeper session ended while watching a held node".into(),
        }),
    };
    let wait = async {
        loop {
            match watching.check_and_watch_stat(&held.key).await {
                Ok((None, _)) => return Ok(()),
                Ok((Some(_), watcher)) => {
                    let event = watcher.changed().await;
                    if event.event_type == zk::EventType::Session
                        && event.session_state.is_terminated()
                    {
                        return ended();
                    }
                }
                Err(e) if is_connection_loss(&e) => {
                    if reconnected(watching).await.is_err() {
                        return ended();
                    }
                }
                Err(zk::Error::SessionExpired | zk::Error::ClientClosed) => return ended(),
                Err(e) => return Err(to_coord(e, endpoints, "watching a held node")),
            }
        }
    };
    match session {
        Some(session) => tokio::select! {
            released = wait => released,
            () = session.closed() => Ok(()),
        },
        None => wait.await,
    }
}
