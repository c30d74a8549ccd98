//! Metrics of the `postgres_cdc` source: names in one place, handles registered once.

use std::time::SystemTime;

use metrics::{Counter, Gauge, counter, gauge};
use sluice_pipeline::metrics::labels;

sluice_pipeline::metric_families! {
    /// Row and message events emitted.
    counter EVENTS = "sluice_postgres_cdc_events_total";
    /// Transactions read (with or without events).
    counter TRANSACTIONS = "sluice_postgres_cdc_transactions_total";
    /// Bytes of pgoutput data read.
    counter BYTES = "sluice_postgres_cdc_bytes_total";
    /// Row changes read but not turned into events (operations not configured, truncates).
    counter IGNORED = "sluice_postgres_cdc_ignored_changes_total";
    /// pgoutput messages that could not be decoded (quarantined with their bytes).
    counter DECODE_ERRORS = "sluice_postgres_cdc_decode_errors_total";
    /// Bytes of WAL the slot holds back (`pg_current_wal_lsn() - confirmed_flush_lsn`).
    gauge LAG = "sluice_postgres_cdc_replication_lag_bytes";
    /// How far behind the stream delivery is, in seconds: the age of the oldest transaction
    /// read and not yet delivered, or, with none waiting, the time since the newest point
    /// everything before which is delivered (a transaction's commit, or a heartbeat's write
    /// time). On a quiet outbox heartbeats keep it below about `heartbeat`; without them it
    /// grows until the next transaction.
    gauge LAG_SECONDS = "sluice_postgres_cdc_replication_lag_seconds";
    /// Commit time of the last transaction read, in seconds since the Unix epoch.
    gauge LAST_COMMIT = "sluice_postgres_cdc_last_commit_timestamp_seconds";
    /// The LSN last confirmed to PostgreSQL.
    gauge CONFIRMED_LSN = "sluice_postgres_cdc_confirmed_lsn";
    /// Heartbeat messages written.
    counter HEARTBEATS = "sluice_postgres_cdc_heartbeats_total";
    /// Reconnections of the replication stream.
    counter RECONNECTS = "sluice_postgres_cdc_reconnects_total";
}

/// The source's handles.
#[derive(Debug, Clone)]
pub(crate) struct CdcMetrics {
    pub events: Counter,
    pub transactions: Counter,
    pub bytes: Counter,
    pub ignored: Counter,
    pub decode_errors: Counter,
    pub lag: Gauge,
    lag_seconds: Gauge,
    pub last_commit: Gauge,
    pub confirmed: Gauge,
    pub reconnects: Counter,
    pub heartbeats: Counter,
}

impl CdcMetrics {
    pub(crate) fn new(id: &str) -> Self {
        describe();
        let labels = labels("source", id);
        CdcMetrics {
            events: counter!(EVENTS, &labels),
            transactions: counter!(TRANSACTIONS, &labels),
            bytes: counter!(BYTES, &labels),
            ignored: counter!(IGNORED, &labels),
            decode_errors: counter!(DECODE_ERRORS, &labels),
            lag: gauge!(LAG, &labels),
            lag_seconds: gauge!(LAG_SECONDS, &labels),
            last_commit: gauge!(LAST_COMMIT, &labels),
            confirmed: gauge!(CONFIRMED_LSN, &labels),
            reconnects: counter!(RECONNECTS, &labels),
            heartbeats: counter!(HEARTBEATS, &labels),
        }
    }

    /// Sets the lag in seconds from `behind`, the server time the stream is behind (see
    /// [`LAG_SECONDS`]), as of now, and returns it; `None` while no such time is known.
    pub(crate) fn lag_seconds(&self, behind: Option<SystemTime>) -> Option<f64> {
        let behind = behind?;
        let seconds = SystemTime::now()
            .duration_since(behind)
            .map_or(0.0, |d| d.as_secs_f64());
        self.lag_seconds.set(seconds);
        Some(seconds)
    }
}
