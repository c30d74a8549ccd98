//! Metric names of the PostgreSQL components, in one place, and the handles that record them.
//!
//! Names follow `sluice_postgres_<component>_<name>_<unit>[_total]`; every series carries the
//! labels of [`sluice_pipeline::metrics::labels`] (`component_kind`, `component_id`), errors
//! also `error_kind`. Handles are registered once per component, so recording is an atomic add.

use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use sluice_pipeline::ErrorKind;
use sluice_pipeline::metrics::labels;

/// Rows a poll locked (admitted or deferred).
pub const POLL_POLLED_ROWS: &str = "sluice_postgres_poll_polled_rows_total";
/// Locked rows left for a later batch because an earlier row of their aggregate was not yet
/// published.
pub const POLL_DEFERRED_ROWS: &str = "sluice_postgres_poll_deferred_rows_total";
/// Batches emitted (polls that admitted at least one row).
pub const POLL_BATCHES: &str = "sluice_postgres_poll_batches_total";
/// Time one poll statement took, from sending it to holding its rows.
pub const POLL_QUERY_DURATION: &str = "sluice_postgres_poll_query_duration_seconds";
/// Rows marked published after their events were acknowledged.
pub const POLL_MARKED_ROWS: &str = "sluice_postgres_poll_marked_rows_total";
/// Rows of batches whose transaction was lost before marking; they are polled again.
pub const POLL_ABANDONED_ROWS: &str = "sluice_postgres_poll_abandoned_rows_total";
/// Batches emitted and not yet marked (each holds a connection and a transaction).
pub const POLL_OPEN_BATCHES: &str = "sluice_postgres_poll_open_batches";
/// Notifications received on the wake-up channel.
pub const POLL_NOTIFICATIONS: &str = "sluice_postgres_poll_notifications_total";
/// Errors the poller recovered from by reconnecting or polling again, by `error_kind`.
pub const POLL_ERRORS: &str = "sluice_postgres_poll_errors_total";
/// Delivered outbox rows the cleanup deleted.
pub const CLEANUP_DELETED_ROWS: &str = "sluice_postgres_cleanup_deleted_rows_total";
/// Failed cleanup rounds, by `error_kind`; the next round tries again.
pub const CLEANUP_ERRORS: &str = "sluice_postgres_cleanup_errors_total";

/// The `postgres_poll` source's handles.
#[derive(Debug, Clone)]
pub struct PollTelemetry {
    id: String,
    polled_rows: Counter,
    deferred_rows: Counter,
    batches: Counter,
    query_duration: Histogram,
    marked_rows: Counter,
    abandoned_rows: Counter,
    open_batches: Gauge,
    notifications: Counter,
}

impl PollTelemetry {
    /// Registers the handles of source `id`.
    pub fn new(id: &str) -> Self {
        let labels = labels("source", id);
        PollTelemetry {
            id: id.to_owned(),
            polled_rows: counter!(POLL_POLLED_ROWS, &labels),
            deferred_rows: counter!(POLL_DEFERRED_ROWS, &labels),
            batches: counter!(POLL_BATCHES, &labels),
            query_duration: histogram!(POLL_QUERY_DURATION, &labels),
            marked_rows: counter!(POLL_MARKED_ROWS, &labels),
            abandoned_rows: counter!(POLL_ABANDONED_ROWS, &labels),
            open_batches: gauge!(POLL_OPEN_BATCHES, &labels),
            notifications: counter!(POLL_NOTIFICATIONS, &labels),
        }
    }

    /// A poll locked `polled` rows in `took`, of which `deferred` wait for a later batch.
    pub fn polled(&self, polled: usize, deferred: usize, took: Duration) {
        self.polled_rows.increment(polled as u64);
        self.deferred_rows.increment(deferred as u64);
        self.query_duration.record(took.as_secs_f64());
        if polled > deferred {
            self.batches.increment(1);
        }
    }

    /// `rows` were marked published.
    pub fn marked(&self, rows: usize) {
        self.marked_rows.increment(rows as u64);
    }

    /// A batch of `rows` lost its transaction before marking.
    pub fn abandoned(&self, rows: usize) {
        self.abandoned_rows.increment(rows as u64);
    }

    /// `open` batches are emitted and not yet marked.
    pub fn open_batches(&self, open: usize) {
        self.open_batches.set(open as f64);
    }

    /// A wake-up notification arrived.
    pub fn notified(&self) {
        self.notifications.increment(1);
    }

    /// An error the poller recovers from.
    pub fn error(&self, kind: ErrorKind) {
        error_counter(POLL_ERRORS, &self.id, kind).increment(1);
    }
}

/// An outbox cleanup's handles.
#[derive(Debug, Clone)]
pub struct CleanupTelemetry {
    id: String,
    deleted_rows: Counter,
}

impl CleanupTelemetry {
    /// Registers the handles of the cleanup run by source `id`.
    pub fn new(id: &str) -> Self {
        CleanupTelemetry {
            id: id.to_owned(),
            deleted_rows: counter!(CLEANUP_DELETED_ROWS, &labels("source", id)),
        }
    }

    /// `rows` delivered rows were deleted.
    pub fn deleted(&self, rows: u64) {
        self.deleted_rows.increment(rows);
    }

    /// A cleanup round failed.
    pub fn error(&self, kind: ErrorKind) {
        error_counter(CLEANUP_ERRORS, &self.id, kind).increment(1);
    }
}

fn error_counter(name: &'static str, id: &str, kind: ErrorKind) -> Counter {
    let mut labels = labels("source", id);
    labels.push(("error_kind", kind.as_str().to_owned()));
    counter!(name, &labels)
}
