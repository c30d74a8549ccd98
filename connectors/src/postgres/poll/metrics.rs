//! Metrics of the `postgres_poll` source: names in one place, handles registered once.
//!
//! Every series carries the labels of [`sluice_pipeline::metrics::labels`] (`component_kind`,
//! `component_id`); errors also `error_kind`.

use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use sluice_pipeline::ErrorKind;
use sluice_pipeline::metrics::labels;

sluice_pipeline::metric_families! {
    /// Rows a poll locked (admitted or deferred).
    counter POLLED_ROWS = "sluice_postgres_poll_polled_rows_total";
    /// Locked rows left for a later batch because an earlier row of their aggregate was not yet
    /// published.
    counter DEFERRED_ROWS = "sluice_postgres_poll_deferred_rows_total";
    /// Batches emitted (polls that admitted at least one row).
    counter BATCHES = "sluice_postgres_poll_batches_total";
    /// Time one poll statement took, from sending it to holding its rows.
    histogram QUERY_DURATION = "sluice_postgres_poll_query_duration_seconds";
    /// Rows marked published after their events were acknowledged.
    counter MARKED_ROWS = "sluice_postgres_poll_marked_rows_total";
    /// Rows of batches whose transaction was lost before marking; they are polled again.
    counter ABANDONED_ROWS = "sluice_postgres_poll_abandoned_rows_total";
    /// Batches emitted and not yet marked (each holds a connection and a transaction).
    gauge OPEN_BATCHES = "sluice_postgres_poll_open_batches";
    /// The most batches that may be open at once (`max_batches_in_flight`).
    gauge OPEN_BATCHES_LIMIT = "sluice_postgres_poll_open_batches_limit";
    /// Unpublished rows in the table (its published column NULL), in flight or not yet polled,
    /// measured every `backlog_interval`.
    gauge BACKLOG_ROWS = "sluice_postgres_poll_backlog_rows";
    /// Age of the oldest unpublished row (now minus its `created_column`), 0 when there is
    /// none, measured every `backlog_interval`.
    gauge BACKLOG_AGE = "sluice_postgres_poll_backlog_age_seconds";
    /// Notifications received on the wake-up channel.
    counter NOTIFICATIONS = "sluice_postgres_poll_notifications_total";
    /// Errors the poller recovered from by reconnecting or polling again, by `error_kind`.
    counter ERRORS = "sluice_postgres_poll_errors_total";
}

/// The `postgres_poll` source's handles.
#[derive(Debug, Clone)]
pub(crate) struct PollMetrics {
    id: String,
    polled_rows: Counter,
    deferred_rows: Counter,
    batches: Counter,
    query_duration: Histogram,
    marked_rows: Counter,
    abandoned_rows: Counter,
    open_batches: Gauge,
    backlog_rows: Gauge,
    backlog_age: Gauge,
    notifications: Counter,
}

impl PollMetrics {
    /// Registers the handles of source `id`, which keeps at most `max_batches_in_flight`
    /// batches open.
    pub(crate) fn new(id: &str, max_batches_in_flight: usize) -> Self {
        describe();
        let labels = labels("source", id);
        gauge!(OPEN_BATCHES_LIMIT, &labels).set(max_batches_in_flight as f64);
        PollMetrics {
            id: id.to_owned(),
            polled_rows: counter!(POLLED_ROWS, &labels),
            deferred_rows: counter!(DEFERRED_ROWS, &labels),
            batches: counter!(BATCHES, &labels),
            query_duration: histogram!(QUERY_DURATION, &labels),
            marked_rows: counter!(MARKED_ROWS, &labels),
            abandoned_rows: counter!(ABANDONED_ROWS, &labels),
            open_batches: gauge!(OPEN_BATCHES, &labels),
            backlog_rows: gauge!(BACKLOG_ROWS, &labels),
            backlog_age: gauge!(BACKLOG_AGE, &labels),
            notifications: counter!(NOTIFICATIONS, &labels),
        }
    }

    /// A poll locked `polled` rows in `took`, of which `deferred` wait for a later batch.
    pub(crate) fn polled(&self, polled: usize, deferred: usize, took: Duration) {
        self.polled_rows.increment(polled as u64);
        self.deferred_rows.increment(deferred as u64);
        self.query_duration.record(took.as_secs_f64());
        if polled > deferred {
            self.batches.increment(1);
        }
    }

    /// `rows` were marked published.
    pub(crate) fn marked(&self, rows: usize) {
        self.marked_rows.increment(rows as u64);
    }

    /// A batch of `rows` lost its transaction before marking.
    pub(crate) fn abandoned(&self, rows: usize) {
        self.abandoned_rows.increment(rows as u64);
    }

    /// `open` batches are emitted and not yet marked.
    pub(crate) fn open_batches(&self, open: usize) {
        self.open_batches.set(open as f64);
    }

    /// The table holds `rows` unpublished rows, the oldest `age_secs` old (when measured).
    pub(crate) fn backlog(&self, rows: i64, age_secs: Option<f64>) {
        self.backlog_rows.set(rows as f64);
        if let Some(age) = age_secs {
            self.backlog_age.set(age.max(0.0));
        }
    }

    /// A wake-up notification arrived.
    pub(crate) fn notified(&self) {
        self.notifications.increment(1);
    }

    /// An error the poller recovers from.
    pub(crate) fn error(&self, kind: ErrorKind) {
        let mut labels = labels("source", &self.id);
        labels.push(("error_kind", kind.as_str().to_owned()));
        counter!(ERRORS, &labels).increment(1);
    }
}
