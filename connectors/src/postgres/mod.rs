//! PostgreSQL: the outbox sources (logical replication and polling) and what they share.
//!
//! - [`pgoutput`]: sluice's own decoder of PostgreSQL's logical replication protocol.
//! - [`row`]: the row event both sources emit and the `outbox` transform reads.

pub mod pgoutput;
pub mod row;
