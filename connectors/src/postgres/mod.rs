//! PostgreSQL: the outbox sources (logical replication and polling) and what they share.
//!
//! - [`cdc`]: the `postgres_cdc` source (logical replication).
//! - [`connect`]: connection URLs, SQL and replication sessions.
//! - [`pgoutput`]: sluice's own decoder of PostgreSQL's logical replication protocol.
//! - [`row`]: the row event both sources emit and the `outbox` transform reads.

pub mod cdc;
pub mod connect;
pub mod pgoutput;
pub mod row;
