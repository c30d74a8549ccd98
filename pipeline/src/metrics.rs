//! The engine's metric names, in one place, and the per-component handles that record them.
//!
//! Names follow `sluice_<component>_<name>_<unit>[_total]`. Every component series carries
//! `component_id` and `component_kind` (`source`, `transform`, `sink`, `resource`); the
//! leadership series carry `election`. Handles are registered
//! once per component, so recording on the hot path is an atomic add, not a registry lookup.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

use crate::event::{Event, Position};

/// Events a transform or sink received.
pub const RECEIVED_EVENTS: &str = "sluice_component_received_events_total";
/// Payload and metadata bytes a transform or sink received.
pub const RECEIVED_BYTES: &str = "sluice_component_received_bytes_total";
/// Events a source or transform passed on.
pub const SENT_EVENTS: &str = "sluice_component_sent_events_total";
/// Bytes a source emitted.
pub const SENT_BYTES: &str = "sluice_component_sent_bytes_total";
/// Events a transform dropped on purpose (filtered, duplicate).
pub const DROPPED_EVENTS: &str = "sluice_component_dropped_events_total";
/// Events a component sent to the quarantine.
pub const QUARANTINED_EVENTS: &str = "sluice_component_quarantined_events_total";
/// Run-time errors of a component, by `error_kind`.
pub const ERRORS: &str = "sluice_component_errors_total";
/// Whether a component is ready (1) or not (0).
pub const READY: &str = "sluice_component_ready";
/// Sizes of the batches a transform or sink received.
pub const BATCH_SIZE: &str = "sluice_component_batch_size_events";
/// A source's checkpoint position.
pub const CHECKPOINT_POSITION: &str = "sluice_source_checkpoint_position";
/// Events a source emitted and has not yet seen acknowledged.
pub const IN_FLIGHT_EVENTS: &str = "sluice_source_in_flight_events";
/// The most events a source ever had in flight at once.
pub const IN_FLIGHT_EVENTS_PEAK: &str = "sluice_source_in_flight_events_peak";
/// Events that failed and hold their source's checkpoint.
pub const FAILED_EVENTS: &str = "sluice_source_failed_events";
/// Times the runtime restarted a component, by `reason` (`error`: it failed with a retryable
/// error; `failed_events`: a source read again from its checkpoint after events failed).
pub const RESTARTS: &str = "sluice_component_restarts_total";
/// Config reloads, by `result`: `applied` (the new config runs), `invalid` (refused; the
/// running pipeline kept running).
pub const CONFIG_RELOADS: &str = "sluice_config_reloads_total";
/// Whether this process leads election `election` (1) or is a standby (0).
pub const LEADER: &str = "sluice_leader";
/// The fencing token of this process's latest term of `election`.
pub const LEADER_TOKEN: &str = "sluice_leader_fencing_token";
/// Terms of `election` this process has won.
pub const LEADER_TERMS: &str = "sluice_leader_terms_total";

/// Counters shared by transforms and sinks.
#[derive(Debug, Clone)]
pub struct ComponentMetrics {
    received_events: Counter,
    received_bytes: Counter,
    batch_size: Histogram,
    pub(crate) sent_events: Counter,
    pub(crate) dropped_events: Counter,
}

impl ComponentMetrics {
    /// Registers the handles of component `id` of `kind`.
    pub fn new(kind: &'static str, id: &str) -> Self {
        let labels = labels(kind, id);
        ComponentMetrics {
            received_events: counter!(RECEIVED_EVENTS, &labels),
            received_bytes: counter!(RECEIVED_BYTES, &labels),
            batch_size: histogram!(BATCH_SIZE, &labels),
            sent_events: counter!(SENT_EVENTS, &labels),
            dropped_events: counter!(DROPPED_EVENTS, &labels),
        }
    }

    /// Records a received batch.
    pub fn received(&self, batch: &[Event]) {
        self.received_events.increment(batch.len() as u64);
        self.received_bytes
            .increment(batch.iter().map(Event::byte_size).sum::<usize>() as u64);
        self.batch_size.record(batch.len() as f64);
    }
}

/// A source's figures for `/status`: what its gauges say, readable without the recorder, and
/// whatever the source reports itself (a slot's lag).
#[derive(Debug, Default)]
pub struct SourceFigures {
    in_flight: AtomicU64,
    /// The checkpoint plus one; 0 while there is none.
    checkpoint: AtomicU64,
    failed: AtomicU64,
    reported: Mutex<BTreeMap<&'static str, f64>>,
}

impl SourceFigures {
    /// Events in flight, the checkpoint, events failed, and what the source reported.
    pub fn read(&self) -> (u64, Option<u64>, u64, BTreeMap<&'static str, f64>) {
        let checkpoint = self.checkpoint.load(Ordering::Relaxed).checked_sub(1);
        let reported = self
            .reported
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        (
            self.in_flight.load(Ordering::Relaxed),
            checkpoint,
            self.failed.load(Ordering::Relaxed),
            reported,
        )
    }

    pub(crate) fn report(&self, name: &'static str, value: f64) {
        self.reported
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name, value);
    }
}

/// A source's handles.
#[derive(Debug, Clone)]
pub struct SourceMetrics {
    sent_events: Counter,
    sent_bytes: Counter,
    checkpoint: Gauge,
    in_flight: Gauge,
    in_flight_peak: Gauge,
    failed: Gauge,
    pub(crate) figures: Arc<SourceFigures>,
}

impl SourceMetrics {
    /// Registers the handles of source `id`.
    pub fn new(id: &str) -> Self {
        let labels = labels("source", id);
        SourceMetrics {
            sent_events: counter!(SENT_EVENTS, &labels),
            sent_bytes: counter!(SENT_BYTES, &labels),
            checkpoint: gauge!(CHECKPOINT_POSITION, &labels),
            in_flight: gauge!(IN_FLIGHT_EVENTS, &labels),
            in_flight_peak: gauge!(IN_FLIGHT_EVENTS_PEAK, &labels),
            failed: gauge!(FAILED_EVENTS, &labels),
            figures: Arc::default(),
        }
    }

    pub(crate) fn emitted(&self, events: usize, bytes: usize) {
        self.sent_events.increment(events as u64);
        self.sent_bytes.increment(bytes as u64);
    }

    pub(crate) fn in_flight(&self, current: usize, peak: usize) {
        self.in_flight.set(current as f64);
        self.in_flight_peak.set(peak as f64);
        self.figures
            .in_flight
            .store(current as u64, Ordering::Relaxed);
    }

    pub(crate) fn checkpoint(&self, position: Option<Position>, in_flight: usize, failed: u64) {
        if let Some(position) = position {
            self.checkpoint.set(position.0 as f64);
            self.figures
                .checkpoint
                .store(position.0.saturating_add(1), Ordering::Relaxed);
        }
        self.in_flight.set(in_flight as f64);
        self.failed.set(failed as f64);
        self.figures
            .in_flight
            .store(in_flight as u64, Ordering::Relaxed);
        self.figures.failed.store(failed, Ordering::Relaxed);
    }
}

/// The quarantine counter of component `id` of `kind`.
pub fn quarantined_counter(kind: &'static str, id: &str) -> Counter {
    counter!(QUARANTINED_EVENTS, &labels(kind, id))
}

/// The error counter of component `id` of `kind` for errors of `error_kind`.
pub fn error_counter(kind: &'static str, id: &str, error_kind: &'static str) -> Counter {
    let mut labels = labels(kind, id);
    labels.push(("error_kind", error_kind.to_owned()));
    counter!(ERRORS, &labels)
}

/// The restart counter of component `id` of `kind` for restarts for `reason`.
pub fn restart_counter(kind: &'static str, id: &str, reason: &'static str) -> Counter {
    let mut labels = labels(kind, id);
    labels.push(("reason", reason.to_owned()));
    counter!(RESTARTS, &labels)
}

/// The reload counter for reloads with `result` (`applied`, `invalid`).
pub fn reload_counter(result: &'static str) -> Counter {
    counter!(CONFIG_RELOADS, "result" => result)
}

pub(crate) fn leader_gauge(election: &str) -> Gauge {
    gauge!(LEADER, "election" => election.to_owned())
}

pub(crate) fn leader_token_gauge(election: &str) -> Gauge {
    gauge!(LEADER_TOKEN, "election" => election.to_owned())
}

pub(crate) fn leader_terms_counter(election: &str) -> Counter {
    counter!(LEADER_TERMS, "election" => election.to_owned())
}

pub(crate) fn ready_gauge(kind: &'static str, id: &str) -> Gauge {
    gauge!(READY, &labels(kind, id))
}

/// The labels every component series carries; components add their own metrics with these.
pub fn labels(kind: &'static str, id: &str) -> Vec<(&'static str, String)> {
    vec![
        ("component_kind", kind.to_owned()),
        ("component_id", id.to_owned()),
    ]
}
