//! Keys as znodes: reads, consistent snapshots of a sub-tree, and writes, each write one
//! `multi` that can carry a fence (a check that a held candidate node still exists) and that
//! learns its own zxid by also setting the namespace root's data (the "revision probe").

use std::collections::BTreeMap;

use bytes::Bytes;
use zookeeper_client as zk;

use super::paths;
use super::recipe::{PERSISTENT, ensure_parents};
use super::session::to_coord;
use crate::backend::{KeyValue, SessionId};
use crate::error::CoordError;

/// Ephemeral key nodes.
const EPHEMERAL: zk::CreateOptions<'static> =
    zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all());

/// How often a write is tried again when the node changed between reading its stat and
/// writing (someone else wrote it), before giving up.
const WRITE_ATTEMPTS: usize = 32;
/// How often a snapshot walks the tree again when it changed while being walked.
const SNAPSHOT_ATTEMPTS: usize = 16;

/// A zxid as a revision (zxids are positive).
pub fn revision(zxid: i64) -> u64 {
    u64::try_from(zxid).unwrap_or(0)
}

/// The key a node holds, or `None` for a directory: a node is a key when it has data or is
/// ephemeral (an ephemeral node can have no children, so it is never a directory: candidate
/// nodes, kazoo's without an identifier too, are keys).
pub fn key_value(root: &str, path: &str, data: &[u8], stat: &zk::Stat) -> Option<KeyValue> {
    let key = paths::path_key(root, path)?;
    if data.is_empty() && stat.ephemeral_owner == 0 {
        return None;
    }
    Some(KeyValue {
        key: key.to_owned(),
        value: Bytes::copy_from_slice(data),
        create_revision: revision(stat.czxid),
        mod_revision: revision(stat.mzxid),
        version: u64::try_from(stat.version).unwrap_or(0) + 1,
        session: (stat.ephemeral_owner != 0).then_some(SessionId(stat.ephemeral_owner)),
    })
}

/// What a write does to its key.
pub enum Write<'a> {
    /// Create or set, ephemeral for `owner` (a session id) or persistent (`0`).
    Put {
        /// The value, never empty.
        value: &'a [u8],
        /// The session the node must belong to, `0` for none.
        owner: i64,
    },
    /// Delete the key (empty it when it has keys below it).
    Delete,
}

/// What became of a write.
#[derive(Debug, PartialEq, Eq)]
pub enum Written {
    /// Applied at this revision.
    Applied(u64),
    /// A delete of a key that does not exist (and no fence to check).
    NotFound,
    /// The fence's node is gone: nothing was written.
    Refused,
}

/// What one operation of a write's `multi` is, to read its failure.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Step {
    Fence,
    Create,
    Change,
    Probe,
}

/// Writes `key` through `client` (for an ephemeral put, the owning session's), only while
/// `fence` exists when given.
pub async fn write(
    client: &zk::Client,
    root: &str,
    endpoints: &str,
    key: &str,
    fence: Option<&str>,
    what: Write<'_>,
) -> Result<Written, CoordError> {
    let path = paths::key_path(root, key)?;
    if let Write::Put { value: [], .. } = what {
        return Err(CoordError::Config(format!(
            "key {key:?}: the ZooKeeper backend cannot store an empty value (an empty znode is a directory)"
        )));
    }
    let err = |e: zk::Error| to_coord(e, endpoints, "writing a key");
    for _ in 0..WRITE_ATTEMPTS {
        let stat = client.check_stat(&path).await.map_err(err)?;
        let mut multi = client.new_multi_writer();
        let mut steps = Vec::with_capacity(4);
        let mut add = |step: Step, added: Result<(), zk::Error>| {
            steps.push(step);
            added
        };
        if let Some(fence) = fence {
            add(Step::Fence, multi.add_check_version(fence, -1)).map_err(err)?;
        }
        match (&what, stat) {
            (Write::Put { value, owner }, None) => {
                let mode = if *owner == 0 { &PERSISTENT } else { &EPHEMERAL };
                add(Step::Create, multi.add_create(&path, value, mode)).map_err(err)?;
            }
            (Write::Put { value, owner }, Some(stat)) if stat.ephemeral_owner == *owner => {
                add(
                    Step::Change,
                    multi.add_set_data(&path, value, Some(stat.version)),
                )
                .map_err(err)?;
            }
            (Write::Put { value, owner }, Some(stat)) => {
                // ZooKeeper cannot hand a node to another session or change its kind: replace
                // it in the same transaction (its create revision and version start again).
                let mode = if *owner == 0 { &PERSISTENT } else { &EPHEMERAL };
                add(Step::Change, multi.add_delete(&path, Some(stat.version))).map_err(err)?;
                add(Step::Create, multi.add_create(&path, value, mode)).map_err(err)?;
            }
            (Write::Delete, Some(stat)) if stat.data_length > 0 && stat.num_children > 0 => {
                // A key with keys below it cannot be deleted: emptied, it is a directory.
                add(
                    Step::Change,
                    multi.add_set_data(&path, &[], Some(stat.version)),
                )
                .map_err(err)?;
            }
            (Write::Delete, Some(stat)) if stat.data_length > 0 || stat.ephemeral_owner != 0 => {
                add(Step::Change, multi.add_delete(&path, Some(stat.version))).map_err(err)?;
            }
            (Write::Delete, _) if fence.is_none() => return Ok(Written::NotFound),
            // A fenced delete of a missing key still checks the fence, at a revision of its own.
            (Write::Delete, _) => {}
        }
        add(Step::Probe, multi.add_set_data(root, &[], None)).map_err(err)?;
        match multi.commit().await {
            Ok(results) => {
                return match results.last() {
                    Some(zk::MultiWriteResult::SetData { stat }) => {
                        Ok(Written::Applied(revision(stat.mzxid)))
                    }
                    _ => Err(CoordError::Protocol(
                        "a write's multi answered without its probe".to_owned(),
                    )),
                };
            }
            Err(zk::MultiWriteError::RequestFailed { source }) => return Err(err(source)),
            Err(zk::MultiWriteError::OperationFailed { index, source }) => {
                match (steps.get(index).copied(), source) {
                    (Some(Step::Fence), zk::Error::NoNode | zk::Error::BadVersion) => {
                        return Ok(Written::Refused);
                    }
                    (Some(Step::Create), zk::Error::NoNode) => {
                        ensure_parents(client, &path).await.map_err(err)?
                    }
                    (Some(Step::Probe), zk::Error::NoNode) => {
                        ensure_parents(client, &paths::child(root, "probe"))
                            .await
                            .map_err(err)?;
                    }
                    (Some(Step::Create), zk::Error::NoChildrenForEphemerals) => {
                        return Err(CoordError::Config(format!(
                            "key {key:?}: a key above it is ephemeral, and ZooKeeper keeps nothing below an ephemeral node"
                        )));
                    }
                    (Some(Step::Change), zk::Error::NotEmpty)
                        if matches!(what, Write::Put { .. }) =>
                    {
                        return Err(CoordError::Config(format!(
                            "key {key:?} has keys below it: ZooKeeper cannot make it ephemeral or hand it to another session"
                        )));
                    }
                    // Someone else changed the node since its stat was read: read it again.
                    (
                        Some(Step::Change | Step::Create),
                        zk::Error::NoNode
                        | zk::Error::BadVersion
                        | zk::Error::NodeExists
                        | zk::Error::NotEmpty,
                    ) => {}
                    (_, source) => return Err(err(source)),
                }
            }
        }
    }
    Err(CoordError::Protocol(format!(
        "key {key:?} kept changing under {WRITE_ATTEMPTS} write attempts"
    )))
}

/// A node read by a snapshot.
#[derive(Debug, Clone)]
pub struct Node {
    /// Its data.
    pub data: Vec<u8>,
    /// Its stat.
    pub stat: zk::Stat,
}

/// A consistent view of a sub-tree: every node below and at `base` as it was at one moment.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// The nodes by path (directories too).
    pub nodes: BTreeMap<String, Node>,
    /// When `base` does not exist, its closest ancestor that does, whose `pzxid` covers the
    /// deletion of `base`.
    pub ancestor: Option<(String, zk::Stat)>,
    /// No change to the sub-tree before the moment of the view has a larger zxid.
    pub revision: u64,
}

impl Snapshot {
    /// The keys under `prefix`, in key order.
    pub fn keys(&self, root: &str, prefix: &str) -> Vec<KeyValue> {
        self.nodes
            .iter()
            .filter_map(|(path, node)| key_value(root, path, &node.data, &node.stat))
            .filter(|kv| kv.key.starts_with(prefix))
            .collect()
    }
}

/// Reads the sub-tree at `base` (walking it level by level, requests of a level pipelined),
/// then reads every node again in one `multiRead`; when nothing changed in between, that read
/// is a view of one moment. Otherwise walks again.
pub async fn snapshot(
    client: &zk::Client,
    base: &str,
    endpoints: &str,
) -> Result<Snapshot, CoordError> {
    let err = |e: zk::Error| to_coord(e, endpoints, "reading keys");
    for _ in 0..SNAPSHOT_ATTEMPTS {
        let mut nodes = BTreeMap::new();
        let mut level = vec![base.to_owned()];
        while !level.is_empty() {
            // Requests go out when these are called, in order; the answers are awaited after.
            let reads: Vec<_> = level
                .iter()
                .map(|p| (client.get_data(p), client.list_children(p)))
                .collect();
            let mut next = Vec::new();
            for (path, (data, children)) in level.iter().zip(reads) {
                let (data, children) = (data.await, children.await);
                match (data, children) {
                    (Ok((data, stat)), Ok(children)) => {
                        next.extend(children.iter().map(|c| paths::child(path, c)));
                        nodes.insert(path.clone(), Node { data, stat });
                    }
                    // Gone since its parent was listed: the parent's stat changed, and the
                    // check below walks again.
                    (Err(zk::Error::NoNode), _) | (_, Err(zk::Error::NoNode)) => {}
                    (Err(e), _) | (_, Err(e)) => return Err(err(e)),
                }
            }
            level = next;
        }
        let ancestor = match nodes.is_empty() {
            true => existing_ancestor(client, base).await.map_err(err)?,
            false => None,
        };
        let checked: Vec<(&str, &zk::Stat)> = nodes
            .iter()
            .map(|(path, node)| (path.as_str(), &node.stat))
            .chain(ancestor.as_ref().map(|(path, stat)| (path.as_str(), stat)))
            .collect();
        let mut check = client.new_multi_reader();
        for (path, _) in &checked {
            check.add_get_data(path).map_err(err)?;
        }
        let results = check.commit().await.map_err(err)?;
        let mut newest = 0;
        let same = results.len() == checked.len()
            && results
                .iter()
                .zip(&checked)
                .all(|(result, (_, walked))| match result {
                    zk::MultiReadResult::Data { stat, .. } => {
                        newest = newest.max(stat.czxid).max(stat.mzxid).max(stat.pzxid);
                        stat == *walked
                    }
                    _ => false,
                });
        if same {
            return Ok(Snapshot {
                nodes,
                ancestor,
                revision: revision(newest),
            });
        }
        tracing::debug!(base, "zookeeper sub-tree changed while read; reading again");
    }
    Err(CoordError::Protocol(format!(
        "{base} kept changing under {SNAPSHOT_ATTEMPTS} reads"
    )))
}

/// The closest ancestor of `path` that exists, with its stat.
async fn existing_ancestor(
    client: &zk::Client,
    path: &str,
) -> Result<Option<(String, zk::Stat)>, zk::Error> {
    let mut at = paths::parent(path);
    while let Some(dir) = at {
        if let Some(stat) = client.check_stat(dir).await? {
            return Ok(Some((dir.to_owned(), stat)));
        }
        at = paths::parent(dir);
    }
    Ok(None)
}
