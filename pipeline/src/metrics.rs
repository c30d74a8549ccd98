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
use serde::Deserialize;

use crate::ack::{Budget, Tracker};
use crate::event::{Event, Position};

/// Declares metric names, one constant each, and a `describe()` that registers each one's doc
/// comment as its Prometheus HELP text, so that a metric's name, kind and meaning are written
/// once. Each crate declares its metrics with it in one module, and calls `describe()` where it
/// registers their handles (a recorder installed after a description was given never sees it).
///
/// ```
/// sluice_pipeline::metric_families! {
///     /// Widgets made, by `color`.
///     counter WIDGETS = "sluice_widget_made_total";
///     /// Widgets waiting to be painted.
///     gauge WAITING = "sluice_widget_waiting";
/// }
/// describe();
/// assert_eq!(WIDGETS, "sluice_widget_made_total");
/// ```
#[macro_export]
macro_rules! metric_families {
    ($($(#[doc = $doc:literal])+ $kind:ident $name:ident = $value:literal;)+) => {
        $($(#[doc = $doc])+ pub const $name: &str = $value;)+

        /// Registers the HELP text (the doc comment) of every metric declared here with the
        /// process's recorder.
        pub fn describe() {
            $($crate::metrics::help::$kind($name, concat!($($doc),+));)+
        }
    };
}

/// What [`metric_families!`] expands to: the HELP text of a metric of each kind, made from
/// its doc comment (one line, backticks kept).
#[doc(hidden)]
pub mod help {
    pub(super) fn text(doc: &'static str) -> String {
        doc.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    /// Describes counter `name`.
    pub fn counter(name: &'static str, doc: &'static str) {
        ::metrics::describe_counter!(name, text(doc));
    }

    /// Describes gauge `name`.
    pub fn gauge(name: &'static str, doc: &'static str) {
        ::metrics::describe_gauge!(name, text(doc));
    }

    /// Describes histogram `name`.
    pub fn histogram(name: &'static str, doc: &'static str) {
        ::metrics::describe_histogram!(name, text(doc));
    }
}

metric_families! {
    /// Events a transform or sink received.
    counter RECEIVED_EVENTS = "sluice_component_received_events_total";
    /// Payload and metadata bytes a transform or sink received.
    counter RECEIVED_BYTES = "sluice_component_received_bytes_total";
    /// Events a source or transform passed on.
    counter SENT_EVENTS = "sluice_component_sent_events_total";
    /// Bytes a source emitted.
    counter SENT_BYTES = "sluice_component_sent_bytes_total";
    /// Events a transform dropped on purpose (filtered, duplicate).
    counter DROPPED_EVENTS = "sluice_component_dropped_events_total";
    /// Events a component sent to the quarantine.
    counter QUARANTINED_EVENTS = "sluice_component_quarantined_events_total";
    /// Run-time errors of a component, by `error_kind`.
    counter ERRORS = "sluice_component_errors_total";
    /// Whether a component is ready (1) or not (0).
    gauge READY = "sluice_component_ready";
    /// Sizes of the batches a transform or sink received.
    histogram BATCH_SIZE = "sluice_component_batch_size_events";
    /// A source's checkpoint position.
    gauge CHECKPOINT_POSITION = "sluice_source_checkpoint_position";
    /// Events a source emitted and has not yet seen acknowledged.
    gauge IN_FLIGHT_EVENTS = "sluice_source_in_flight_events";
    /// The most events a source ever had in flight at once.
    gauge IN_FLIGHT_EVENTS_PEAK = "sluice_source_in_flight_events_peak";
    /// Payload and metadata bytes a source emitted and has not yet seen acknowledged.
    gauge IN_FLIGHT_BYTES = "sluice_source_in_flight_bytes";
    /// The most events a source may have in flight (`[pipeline] max_in_flight_events`): beside
    /// `sluice_source_in_flight_events`, how much of its capacity it uses.
    gauge IN_FLIGHT_EVENTS_LIMIT = "sluice_source_in_flight_events_limit";
    /// The most bytes a source may have in flight (`[pipeline] max_in_flight_bytes`).
    gauge IN_FLIGHT_BYTES_LIMIT = "sluice_source_in_flight_bytes_limit";
    /// Events that failed and hold their source's checkpoint.
    gauge FAILED_EVENTS = "sluice_source_failed_events";
    /// Times the runtime restarted a component, by `reason` (`error`: it failed with a retryable
    /// error; `failed_events`: a source read again from its checkpoint after events failed).
    counter RESTARTS = "sluice_component_restarts_total";
    /// Config reloads, by `result`: `applied` (the new config runs), `invalid` (refused; the
    /// running pipeline kept running).
    counter CONFIG_RELOADS = "sluice_config_reloads_total";
    /// Whether this process leads election `election` (1) or is a standby (0).
    gauge LEADER = "sluice_leader";
    /// The fencing token of this process's latest term of `election`.
    gauge LEADER_TOKEN = "sluice_leader_fencing_token";
    /// Terms of `election` this process has won.
    counter LEADER_TERMS = "sluice_leader_terms_total";
    /// Always 1; its labels say what runs: `version` (of sluice), `profile` (`release` or
    /// `debug`) and `target` (architecture and operating system).
    gauge BUILD_INFO = "sluice_build_info";
}

/// Default bucket bounds (seconds) of every `*_seconds` histogram: from 0.1 ms to 30 s, so that
/// latencies of a gateway hop and of a slow broker confirm both land in a bucket of their own.
pub const SECONDS_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0, 30.0,
];

/// Default bucket bounds of every `*_events` histogram (batch sizes): 1 to 10,000 events.
pub const EVENTS_BUCKETS: [f64; 13] = [
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0,
];

/// The bucket bounds of the histograms, by unit (`[api] buckets`). Every histogram is a
/// Prometheus histogram, never a summary, so that it aggregates across processes and works with
/// `histogram_quantile`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Buckets {
    /// Upper bounds of every latency histogram (`*_seconds`), in seconds, ascending.
    pub seconds: Vec<f64>,
    /// Upper bounds of every size histogram in events (`*_events`), ascending.
    pub events: Vec<f64>,
}

impl Default for Buckets {
    fn default() -> Self {
        Buckets {
            seconds: SECONDS_BUCKETS.to_vec(),
            events: EVENTS_BUCKETS.to_vec(),
        }
    }
}

impl Buckets {
    /// Each list's problem, with the field it is in (`seconds`, `events`): empty, not finite
    /// and positive, or not strictly ascending.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        for (field, bounds) in [("seconds", &self.seconds), ("events", &self.events)] {
            if bounds.is_empty() {
                problems.push((field, "must list at least one bound".to_owned()));
            } else if let Some(bad) = bounds.iter().find(|b| !b.is_finite() || **b <= 0.0) {
                problems.push((field, format!("{bad} is not a positive number")));
            } else if let Some(pair) = bounds.windows(2).find(|pair| pair[0] >= pair[1]) {
                problems.push((
                    field,
                    format!(
                        "must be strictly ascending ({} is followed by {})",
                        pair[0], pair[1]
                    ),
                ));
            }
        }
        problems
    }
}

/// Sets `sluice_build_info` to 1 with the labels of this build.
pub(crate) fn build_info() {
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let target = format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS);
    gauge!(
        BUILD_INFO,
        "version" => env!("CARGO_PKG_VERSION"),
        "profile" => profile,
        "target" => target
    )
    .set(1.0);
}

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
    in_flight_bytes: Gauge,
    failed: Gauge,
    pub(crate) figures: Arc<SourceFigures>,
}

impl SourceMetrics {
    /// Registers the handles of source `id`, whose in-flight limits are `budget`.
    pub fn new(id: &str, budget: Budget) -> Self {
        let labels = labels("source", id);
        gauge!(IN_FLIGHT_EVENTS_LIMIT, &labels).set(budget.max_events as f64);
        gauge!(IN_FLIGHT_BYTES_LIMIT, &labels).set(budget.max_bytes as f64);
        SourceMetrics {
            sent_events: counter!(SENT_EVENTS, &labels),
            sent_bytes: counter!(SENT_BYTES, &labels),
            checkpoint: gauge!(CHECKPOINT_POSITION, &labels),
            in_flight: gauge!(IN_FLIGHT_EVENTS, &labels),
            in_flight_peak: gauge!(IN_FLIGHT_EVENTS_PEAK, &labels),
            in_flight_bytes: gauge!(IN_FLIGHT_BYTES, &labels),
            failed: gauge!(FAILED_EVENTS, &labels),
            figures: Arc::default(),
        }
    }

    pub(crate) fn emitted(&self, events: usize, bytes: usize) {
        self.sent_events.increment(events as u64);
        self.sent_bytes.increment(bytes as u64);
    }

    /// Records what `tracker` has in flight.
    pub(crate) fn in_flight(&self, tracker: &Tracker) {
        let events = tracker.in_flight_events();
        self.in_flight.set(events as f64);
        self.in_flight_peak
            .set(tracker.peak_in_flight_events() as f64);
        self.in_flight_bytes.set(tracker.in_flight_bytes() as f64);
        self.figures
            .in_flight
            .store(events as u64, Ordering::Relaxed);
    }

    /// Records the checkpoint `position` and what `tracker` has in flight and failed.
    pub(crate) fn checkpoint(&self, position: Option<Position>, tracker: &Tracker) {
        if let Some(position) = position {
            self.checkpoint.set(position.0 as f64);
            self.figures
                .checkpoint
                .store(position.0.saturating_add(1), Ordering::Relaxed);
        }
        self.in_flight(tracker);
        let failed = tracker.failed_events();
        self.failed.set(failed as f64);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_text_is_the_doc_comment_on_one_line() {
        assert_eq!(
            help::text(" Times the runtime restarted a component, by `reason`\n (`error`)."),
            "Times the runtime restarted a component, by `reason` (`error`)."
        );
    }

    #[test]
    fn bucket_lists_must_be_positive_and_ascending() {
        assert!(Buckets::default().problems().is_empty());
        let buckets = Buckets {
            seconds: vec![0.1, 0.1, 1.0],
            events: vec![],
        };
        assert_eq!(
            buckets.problems(),
            vec![
                (
                    "seconds",
                    "must be strictly ascending (0.1 is followed by 0.1)".to_owned()
                ),
                ("events", "must list at least one bound".to_owned()),
            ]
        );
        let buckets = Buckets {
            seconds: vec![-1.0, 1.0],
            events: vec![1.0, f64::INFINITY],
        };
        assert_eq!(
            buckets.problems(),
            vec![
                ("seconds", "-1 is not a positive number".to_owned()),
                ("events", "inf is not a positive number".to_owned()),
            ]
        );
    }
}
