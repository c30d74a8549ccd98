//! PostgreSQL: the outbox sources (logical replication and polling) and what they share.
//!
//! - [`pgoutput`]: sluice's own decoder of PostgreSQL's logical replication protocol.

pub mod pgoutput;
