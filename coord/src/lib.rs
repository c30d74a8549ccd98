//! sluice coordination (DESIGN.md §5), not yet built.
//!
//! This crate will hold one coordination API with two backends, etcd (leases, revisions,
//! watches, interoperable with `etcdctl elect` and `etcdctl lock`) and an embedded in-process
//! backend for single nodes and tests; on it, leader election with fencing tokens (only the
//! leader holds a replication slot), distributed locks, a service registry with leases and
//! watches, and configuration watched for live reload. It will also hold unique IDs: Snowflake
//! with leased worker ids and clock-rollback handling, UUID v4/v7, monotonic ULID, database
//! sequences with block allocation and Redis `INCR` with a date prefix. Pipelines will reach it
//! through a watch source, a KV sink and an ID transform.
//!
//! Today it only re-exports the engine it will build on.

pub use sluice_pipeline as pipeline;
