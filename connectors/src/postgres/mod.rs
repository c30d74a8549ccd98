//! PostgreSQL: the outbox sources (logical replication and polling) and what they share.
//!
//! - [`cdc`]: the `postgres_cdc` source (logical replication).
//! - [`connect`]: SQL and replication sessions from a connection URL (parsed, with its TLS, by
//!   `sluice-connect`).
//! - [`pgoutput`]: sluice's own decoder of PostgreSQL's logical replication protocol.
//! - [`row`]: the row event both sources emit and the `outbox` transform reads.
//! - [`poll`]: the `postgres_poll` source (polling); [`cleanup`]: deletes delivered rows.
//! - [`error`], [`table`]: SQL failures and which are retried; the table as the catalog
//!   describes it.

pub mod cdc;
pub mod cleanup;
pub mod connect;
pub mod error;
pub mod pgoutput;
pub mod poll;
pub mod row;
pub mod table;
