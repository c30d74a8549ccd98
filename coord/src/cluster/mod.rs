//! Spreading leader-gated pipelines over a cluster of nodes: [`Coord`] as the engine's
//! [`Leadership`] campaigns only in the elections the cluster assigns to this node.
//!
//! Every process that runs pipelines under elections registers itself as instance `NODE` of
//! service [`NODES_SERVICE`] (its node name as the id, its API address as the address), with
//! a [`NodeState`] as metadata: the elections it runs and those it leads, with their tokens.
//! The entry lives on the process's session, so a dead node's entry and its election keys
//! vanish together when its lease expires. Each node follows the list and computes the same
//! [`assign`]ment from it: it campaigns in an election only while the election is assigned to
//! it (withdrawing when it no longer is), and ends its term of an election assigned to
//! another node — the engine then stops the sources, drains what is in flight and resigns, so
//! the new node, already waiting in the election, takes over at once.
//!
//! The assignment decides only who tries. Safety comes from the election: two nodes that see
//! different lists for a moment both campaign, and one waits behind the other.

mod assign;

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sluice_pipeline::component::BoxFuture;
use sluice_pipeline::error::{Error, chain};
use sluice_pipeline::leadership::{Enlistment, FencingToken, Leadership, Term};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

pub use assign::{Assignment, assign};

use crate::backend::BoxStream;
use crate::coord::Coord;
use crate::election::LeaderTerm;
use crate::error::CoordError;
use crate::registry::{Instance, Registration};

/// The registry service every node of a cluster registers in.
pub const NODES_SERVICE: &str = "sluice-nodes";

/// What a node says about itself in its registry entry (the instance's metadata):
/// `{"elections": ["orders"], "leading": {"orders": 42}}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    /// The elections it runs pipelines under.
    #[serde(default)]
    pub elections: BTreeSet<String>,
    /// The elections it leads, each with its term's fencing token.
    #[serde(default)]
    pub leading: BTreeMap<String, u64>,
}

/// A live node of the cluster, as the registry lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its node name.
    pub node: String,
    /// Its API address (`host:port`), if it serves one.
    pub api: Option<String>,
    /// What it runs and leads.
    pub state: NodeState,
}

impl Member {
    /// The member an instance of [`NODES_SERVICE`] describes; `None` when its metadata is not
    /// a [`NodeState`] (an entry written by something else).
    fn from_instance(instance: Instance) -> Option<Member> {
        match serde_json::from_value(instance.metadata) {
            Ok(state) => Some(Member {
                node: instance.id,
                api: Some(instance.address).filter(|a| !a.is_empty()),
                state,
            }),
            Err(error) => {
                tracing::debug!(node = %instance.id, %error, "skipping a node entry whose metadata is not a node state");
                None
            }
        }
    }
}

fn members(instances: Vec<Instance>) -> Vec<Member> {
    instances
        .into_iter()
        .filter_map(Member::from_instance)
        .collect()
}

/// This process's part in the cluster: what it runs and leads, and the assignment it last
/// computed.
#[derive(Default)]
pub(crate) struct Cluster {
    local: Mutex<Local>,
    /// Wakes the task that keeps the registry entry when `local` changed.
    changed: Notify,
    /// `None` until the node list was read, and while nothing is enlisted.
    assignment: watch::Sender<Option<Arc<Assignment>>>,
}

#[derive(Default)]
struct Local {
    api: Option<SocketAddr>,
    /// Each election enlisted in, with how many enlistments hold it.
    enlisted: BTreeMap<String, usize>,
    leading: BTreeMap<String, u64>,
    /// Whether the task keeping the entry runs.
    running: bool,
}

impl Cluster {
    fn local(&self) -> MutexGuard<'_, Local> {
        self.local.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The entry this node should have, or `None` when it runs no election.
    fn instance(&self, node: &str) -> Option<Instance> {
        let local = self.local();
        if local.enlisted.is_empty() {
            return None;
        }
        let state = NodeState {
            elections: local.enlisted.keys().cloned().collect(),
            leading: local.leading.clone(),
        };
        Some(Instance {
            service: NODES_SERVICE.to_owned(),
            id: node.to_owned(),
            address: local.api.map(|a| a.to_string()).unwrap_or_default(),
            metadata: serde_json::to_value(state).unwrap_or_default(),
        })
    }

    /// Stops the task if nothing is enlisted any more; says whether it did.
    fn retire(&self) -> bool {
        let mut local = self.local();
        if local.enlisted.is_empty() {
            local.running = false;
            self.assignment.send_replace(None);
            true
        } else {
            false
        }
    }

    fn update(&self, change: impl FnOnce(&mut Local)) {
        change(&mut self.local());
        self.changed.notify_one();
    }
}

impl Coord {
    /// Sets the API address this node's entry shows, before the backend is attached.
    pub(crate) fn set_api_address(&self, api: Option<SocketAddr>) {
        self.cluster().update(|local| local.api = api);
    }

    /// The nodes of the cluster registered now, in node order.
    pub async fn nodes(&self) -> Result<Vec<Member>, CoordError> {
        Ok(members(self.discover(NODES_SERVICE).await?))
    }

    /// Counts this process in `election` until the result is dropped, starting the task that
    /// keeps its entry if it is not running.
    fn enlisted(&self, election: &str) -> Enlisted {
        let cluster = self.cluster();
        let start = {
            let mut local = cluster.local();
            *local.enlisted.entry(election.to_owned()).or_default() += 1;
            !std::mem::replace(&mut local.running, true)
        };
        cluster.changed.notify_one();
        if start {
            tokio::spawn(keep_entry(self.clone()));
        }
        Enlisted {
            coord: self.clone(),
            election: election.to_owned(),
        }
    }

    /// Resolves once `election` is assigned to this node (`here`) or to another one.
    async fn assigned(&self, election: &str, here: bool) {
        let node = self.node();
        let mut assignment = self.cluster().assignment.subscribe();
        // The sender lives in `self`.
        let _ = assignment
            .wait_for(|now| {
                now.as_ref()
                    .and_then(|a| a.get(election))
                    .is_some_and(|assigned| (assigned == node) == here)
            })
            .await;
    }
}

/// One enlistment in an election (see [`Leadership::enlist`]).
struct Enlisted {
    coord: Coord,
    election: String,
}

impl Drop for Enlisted {
    fn drop(&mut self) {
        self.coord.cluster().update(|local| {
            if let Some(count) = local.enlisted.get_mut(&self.election) {
                *count -= 1;
                if *count == 0 {
                    local.enlisted.remove(&self.election);
                }
            }
        });
    }
}

/// How long to wait before trying the registry again after an error.
fn pause(coord: &Coord) -> tokio::time::Sleep {
    tokio::time::sleep(coord.ttl() / 10)
}

/// Keeps this node's entry in the registry as its state changes, follows the node list and
/// publishes the assignment computed from each version of it, until nothing is enlisted.
async fn keep_entry(coord: Coord) {
    let cluster = coord.cluster();
    // The resource sets the API address before it attaches the backend.
    coord.connected().await;
    let mut registration: Option<Registration> = None;
    let mut nodes: Option<BoxStream<'static, Result<Vec<Instance>, CoordError>>> = None;
    loop {
        let Some(instance) = cluster.instance(coord.node()) else {
            if let Some(registration) = registration.take()
                && let Err(error) = registration.close().await
            {
                tracing::debug!(error = %chain(&error), "cannot deregister the node; it goes with the session");
            }
            if cluster.retire() {
                return;
            }
            continue;
        };
        // The address is set before the first registration and stays.
        let written = match &mut registration {
            Some(registration) if registration.instance().metadata == instance.metadata => Ok(()),
            Some(registration) => registration.update(instance.metadata),
            None => coord
                .register(instance)
                .await
                .map(|registered| registration = Some(registered)),
        };
        if let Err(error) = written {
            tracing::warn!(error = %chain(&error), "cannot register the node in the cluster; trying again");
            pause(&coord).await;
            continue;
        }
        let stream = match &mut nodes {
            Some(stream) => stream,
            None => match coord.watch_instances(NODES_SERVICE).await {
                Ok(stream) => nodes.insert(stream),
                Err(error) => {
                    tracing::warn!(error = %chain(&error), "cannot follow the cluster's nodes; trying again");
                    pause(&coord).await;
                    continue;
                }
            },
        };
        tokio::select! {
            () = cluster.changed.notified() => {}
            listed = stream.next() => match listed {
                Some(Ok(instances)) => {
                    let assignment = assign(&members(instances));
                    cluster.assignment.send_if_modified(|now| {
                        let changed = now.as_deref() != Some(&assignment);
                        if changed {
                            tracing::debug!(?assignment, "the cluster's assignment changed");
                            *now = Some(Arc::new(assignment));
                        }
                        changed
                    });
                }
                Some(Err(error)) => {
                    tracing::warn!(error = %chain(&error), "lost the cluster's node list; following it again");
                    nodes = None;
                    pause(&coord).await;
                }
                None => nodes = None,
            },
        }
    }
}

/// A term of an election spread over the cluster: it also ends when the election is assigned
/// to another node, and this node's entry shows it while it lasts.
struct ClusterTerm {
    term: LeaderTerm,
    coord: Coord,
    /// Takes the term out of the entry as soon as it is over, not when it is dropped: a
    /// process frozen past its lease must not claim it once it is back.
    watcher: JoinHandle<()>,
    _enlisted: Enlisted,
}

impl ClusterTerm {
    fn new(coord: &Coord, term: LeaderTerm, enlisted: Enlisted) -> ClusterTerm {
        let election = term.election().to_owned();
        let token = term.held().token;
        coord.cluster().update(|local| {
            local.leading.insert(election.clone(), token);
        });
        let over = term.over();
        let watcher = tokio::spawn({
            let coord = coord.clone();
            async move {
                over.await;
                left(&coord, &election, token);
            }
        });
        ClusterTerm {
            term,
            coord: coord.clone(),
            watcher,
            _enlisted: enlisted,
        }
    }
}

/// This node no longer leads `election` with `token`.
fn left(coord: &Coord, election: &str, token: u64) {
    coord.cluster().update(|local| {
        if local.leading.get(election) == Some(&token) {
            local.leading.remove(election);
        }
    });
}

impl Drop for ClusterTerm {
    fn drop(&mut self) {
        self.watcher.abort();
        left(&self.coord, self.term.election(), self.term.held().token);
    }
}

impl Term for ClusterTerm {
    fn election(&self) -> &str {
        self.term.election()
    }

    fn token(&self) -> FencingToken {
        self.term.token()
    }

    fn is_valid(&self) -> bool {
        self.term.is_valid()
    }

    fn ended(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            tokio::select! {
                () = self.term.ended() => {}
                () = self.coord.assigned(self.election(), false) => {
                    tracing::info!(election = self.election(), "assigned to another node: handing the election over");
                }
            }
        })
    }

    fn resign(&self) -> BoxFuture<'_, ()> {
        self.term.resign()
    }

    fn as_any(&self) -> &dyn Any {
        self.term.as_any()
    }
}

impl Leadership for Coord {
    /// Waits until the cluster assigns `election` to this node, then campaigns with the node
    /// name, withdrawing (and waiting again) if the election is assigned elsewhere meanwhile.
    fn campaign<'a>(&'a self, election: &'a str) -> BoxFuture<'a, Result<Arc<dyn Term>, Error>> {
        Box::pin(async move {
            let enlisted = self.enlisted(election);
            loop {
                self.assigned(election, true).await;
                let won = tokio::select! {
                    won = Coord::campaign(self, election, self.node().to_owned()) => won,
                    () = self.assigned(election, false) => {
                        tracing::debug!(election, "assigned to another node: withdrawing the candidacy");
                        continue;
                    }
                };
                let term =
                    won.map_err(|e| e.into_error(format!("campaigning in election {election}")))?;
                return Ok(Arc::new(ClusterTerm::new(self, term, enlisted)) as Arc<dyn Term>);
            }
        })
    }

    fn enlist(&self, election: &str) -> Enlistment {
        Box::new(self.enlisted(election))
    }
}
