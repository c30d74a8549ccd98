//! sluice coordination (DESIGN.md §6): one API over three backends — etcd, ZooKeeper and an
//! embedded in-process one — for leader election with fencing tokens, locks, a service
//! registry and configuration watched for live reload, exposed to pipelines as the `[coord]`
//! resource (which provides the engine's `Leadership`), a watch source and a KV sink.
//!
//! - [`backend`]: what every backend provides; [`error`]: its errors.
//! - [`etcd`] (cargo feature `etcd`, on by default): the etcd backend.
//! - [`zookeeper`] (cargo feature `zookeeper`, on by default): the ZooKeeper backend.

pub mod backend;
pub mod error;
#[cfg(feature = "etcd")]
pub mod etcd;
#[cfg(feature = "zookeeper")]
pub mod zookeeper;

pub use backend::{Backend, Change, Fenced, Held, KeyValue, Layout, Op, SessionId, WatchEvent};
pub use error::CoordError;
