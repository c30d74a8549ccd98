//! `postgres_cdc`: outbox rows read from PostgreSQL's WAL through a logical replication slot,
//! decoded from pgoutput by sluice's own decoder.
//!
//! Guarantees:
//! - **Nothing confirmed before delivery.** The slot's `confirmed_flush_lsn` moves only to the
//!   end of transactions whose events the engine's checkpoint has passed, so `kill -9` at any
//!   moment re-reads rather than loses.
//! - **No WAL bloat from a quiet outbox.** With nothing in flight, keepalive positions (and
//!   optional heartbeats) are confirmed, so the slot follows the server.
//! - **Lost slots are noticed.** A slot that was dropped, invalidated or not carried over by a
//!   failover stops the source with the reason, or, with `recover = "replay"`, is recreated
//!   and the outbox tables are republished (same ids).
//! - **Rows already there can come first.** With `snapshot = "initial"`, the slot is created
//!   with an exported snapshot and the rows it shows are delivered before the stream, which
//!   starts exactly where that snapshot ends; `sluice backfill` ([`BackfillConfig`])
//!   republishes chosen rows at any time.
//! - **Bad rows never stall the stream.** A value that cannot be represented (an unchanged
//!   TOASTed column, text that is not UTF-8) or an undecodable message goes to the quarantine
//!   with the reason and its bytes.
//!
//! Events follow the row event contract of [`crate::postgres::row`]; the events of one
//! transaction share its commit LSN as their position.

mod backfill;
mod check;
mod config;
mod metrics;
mod read;
mod slot;
mod source;

pub use backfill::{BackfillConfig, BackfillRecord, BackfillState};
pub use config::{HEARTBEAT_PREFIX, Operation, PostgresCdcConfig, Recover, Snapshot};
pub use metrics::{
    BYTES, CONFIRMED_LSN, DECODE_ERRORS, EVENTS, HEARTBEATS, IGNORED, LAG, LAST_COMMIT, RECONNECTS,
    TRANSACTIONS,
};
pub use source::PostgresCdc;
