//! Metrics of the `postgres_cdc` source: names in one place, handles registered once.

use metrics::{Counter, Gauge, counter, gauge};
use sluice_pipeline::metrics::labels;

/// Row and message events emitted.
pub const EVENTS: &str = "sluice_postgres_cdc_events_total";
/// Transactions read (with or without events).
pub const TRANSACTIONS: &str = "sluice_postgres_cdc_transactions_total";
/// Bytes of pgoutput data read.
pub const BYTES: &str = "sluice_postgres_cdc_bytes_total";
/// Row changes read but not turned into events (operations not configured, truncates).
pub const IGNORED: &str = "sluice_postgres_cdc_ignored_changes_total";
/// pgoutput messages that could not be decoded (quarantined with their bytes).
pub const DECODE_ERRORS: &str = "sluice_postgres_cdc_decode_errors_total";
/// Bytes of WAL the slot holds back (`pg_current_wal_lsn() - confirmed_flush_lsn`).
pub const LAG: &str = "sluice_postgres_cdc_replication_lag_bytes";
/// Commit time of the last transaction read, in seconds since the Unix epoch.
pub const LAST_COMMIT: &str = "sluice_postgres_cdc_last_commit_timestamp_seconds";
/// The LSN last confirmed to PostgreSQL.
pub const CONFIRMED_LSN: &str = "sluice_postgres_cdc_confirmed_lsn";
/// Heartbeat messages written.
pub const HEARTBEATS: &str = "sluice_postgres_cdc_heartbeats_total";
/// Reconnections of the replication stream.
pub const RECONNECTS: &str = "sluice_postgres_cdc_reconnects_total";

/// The source's handles.
#[derive(Debug, Clone)]
pub(crate) struct CdcMetrics {
    pub events: Counter,
    pub transactions: Counter,
    pub bytes: Counter,
    pub ignored: Counter,
    pub decode_errors: Counter,
    pub lag: Gauge,
    pub last_commit: Gauge,
    pub confirmed: Gauge,
    pub reconnects: Counter,
    pub heartbeats: Counter,
}

impl CdcMetrics {
    pub(crate) fn new(id: &str) -> Self {
        let labels = labels("source", id);
        CdcMetrics {
            events: counter!(EVENTS, &labels),
            transactions: counter!(TRANSACTIONS, &labels),
            bytes: counter!(BYTES, &labels),
            ignored: counter!(IGNORED, &labels),
            decode_errors: counter!(DECODE_ERRORS, &labels),
            lag: gauge!(LAG, &labels),
            last_commit: gauge!(LAST_COMMIT, &labels),
            confirmed: gauge!(CONFIRMED_LSN, &labels),
            reconnects: counter!(RECONNECTS, &labels),
            heartbeats: counter!(HEARTBEATS, &labels),
        }
    }
}
