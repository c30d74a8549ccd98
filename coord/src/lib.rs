//! sluice coordination (DESIGN.md §6): one API over three backends — etcd, ZooKeeper and an
//! embedded in-process one — for leader election with fencing tokens, locks, a service
//! registry and configuration watched for live reload, exposed to pipelines as the `[coord]`
//! resource (which provides the engine's `Leadership`), a watch source and a KV sink.
//!
//! - [`Coord`]: the API users and components see; [`CoordConfig`]: the `[coord]` section
//!   (also the engine's resource), and its `--coord URL` form.
//! - [`LeaderTerm`] from [`Coord::campaign`], [`LockGuard`] from [`Coord::lock`],
//!   [`Registration`] from [`Coord::register`], [`Follow`] from [`Coord::follow`].
//! - [`backend`]: what every backend provides; [`error`]: its errors;
//!   [`embedded`]: the in-process backend; [`etcd`] (cargo feature `etcd`, on by default):
//!   the etcd backend; [`zookeeper`] (cargo feature `zookeeper`, on by default): the
//!   ZooKeeper backend.
//! - [`session`]: how a session is kept, and why a leader never acts after its lease.
//! - [`cluster`]: how the engine's leader-gated pipelines spread over the nodes of a cluster
//!   ([`Coord`] is the engine's `Leadership`).
//! - [`watch_source`] (`coord_watch`) and [`kv_sink`] (`coord_kv`): the service's keys as a
//!   pipeline source and sink.

pub mod backend;
pub mod cluster;
pub mod config;
mod config_store;
mod coord;
mod election;
pub mod embedded;
pub mod error;
#[cfg(feature = "etcd")]
pub mod etcd;
mod follow;
mod hold;
pub mod kv_sink;
mod lock;
pub mod metrics;
mod registry;
mod resource;
pub mod session;
pub mod watch_source;
#[cfg(feature = "zookeeper")]
pub mod zookeeper;

pub use backend::{Backend, Change, Fenced, Held, KeyValue, Layout, Op, SessionId, WatchEvent};
pub use cluster::{Member, NODES_SERVICE, NodeState};
pub use config::{BackendKind, CoordConfig, Password, TlsConfig};
pub use coord::Coord;
pub use election::{Leader, LeaderTerm};
pub use embedded::Embedded;
pub use error::CoordError;
pub use follow::Follow;
pub use lock::LockGuard;
pub use registry::{Instance, Registration};
