//! The `rabbitmq` sink's metric names, in one place, and the handles it records them with.
//!
//! Every series carries the labels of [`sluice_pipeline::metrics::labels`] (`component_kind`,
//! `component_id`). Counters are incremented once per settled group of messages, not once per
//! message, and latencies are histograms in seconds.

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use sluice_pipeline::metrics::labels;

sluice_pipeline::metric_families! {
    /// Messages handed to the broker (`basic.publish`), first attempts and re-sends alike.
    counter PUBLISHED = "sluice_rabbitmq_published_messages_total";
    /// Messages the broker confirmed (`basic.ack`), including quarantine publishes.
    counter CONFIRMED = "sluice_rabbitmq_confirmed_messages_total";
    /// Negative confirms (`basic.nack`); each is retried with backoff.
    counter NACKED = "sluice_rabbitmq_nacked_messages_total";
    /// Messages the broker returned as unroutable (`basic.return`).
    counter RETURNED = "sluice_rabbitmq_returned_messages_total";
    /// Messages published again: after a nack, or after a lost connection left them unconfirmed.
    counter REPUBLISHED = "sluice_rabbitmq_republished_messages_total";
    /// Events delivered to the quarantine exchange (confirmed there).
    counter QUARANTINED = "sluice_rabbitmq_quarantined_messages_total";
    /// Connections lost (or refused) and attempted again.
    counter RECONNECTS = "sluice_rabbitmq_reconnects_total";
    /// 1 while the broker blocks publishing (`connection.blocked`: a memory or disk alarm), else 0.
    gauge BLOCKED = "sluice_rabbitmq_blocked";
    /// Times the broker blocked publishing.
    counter BLOCKS = "sluice_rabbitmq_blocks_total";
    /// Messages published and not yet confirmed.
    gauge IN_FLIGHT = "sluice_rabbitmq_in_flight_messages";
    /// The most messages that may be in flight (`confirm_window`): beside
    /// `sluice_rabbitmq_in_flight_messages`, how much of the window is used.
    gauge IN_FLIGHT_LIMIT = "sluice_rabbitmq_in_flight_messages_limit";
    /// Time from `basic.publish` to the broker's confirm.
    histogram CONFIRM_LATENCY = "sluice_rabbitmq_confirm_latency_seconds";
    /// Time from the source's commit to the broker's confirm (events whose source knows its
    /// commit time).
    histogram COMMIT_TO_CONFIRM_LATENCY = "sluice_rabbitmq_commit_to_confirm_latency_seconds";
}

/// The sink's metric handles, registered once.
#[derive(Debug, Clone)]
pub(crate) struct RabbitmqMetrics {
    pub published: Counter,
    pub confirmed: Counter,
    pub nacked: Counter,
    pub returned: Counter,
    pub republished: Counter,
    pub quarantined: Counter,
    pub reconnects: Counter,
    pub blocked: Gauge,
    pub blocks: Counter,
    pub in_flight: Gauge,
    pub confirm_latency: Histogram,
    pub commit_to_confirm_latency: Histogram,
}

impl RabbitmqMetrics {
    /// Registers the handles of sink `id`, whose window holds `confirm_window` messages.
    pub fn new(id: &str, confirm_window: usize) -> Self {
        describe();
        let labels = labels("sink", id);
        gauge!(IN_FLIGHT_LIMIT, &labels).set(confirm_window as f64);
        RabbitmqMetrics {
            published: counter!(PUBLISHED, &labels),
            confirmed: counter!(CONFIRMED, &labels),
            nacked: counter!(NACKED, &labels),
            returned: counter!(RETURNED, &labels),
            republished: counter!(REPUBLISHED, &labels),
            quarantined: counter!(QUARANTINED, &labels),
            reconnects: counter!(RECONNECTS, &labels),
            blocked: gauge!(BLOCKED, &labels),
            blocks: counter!(BLOCKS, &labels),
            in_flight: gauge!(IN_FLIGHT, &labels),
            confirm_latency: histogram!(CONFIRM_LATENCY, &labels),
            commit_to_confirm_latency: histogram!(COMMIT_TO_CONFIRM_LATENCY, &labels),
        }
    }
}
