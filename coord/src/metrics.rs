//! The names of the coordination metrics.

/// Counter: registry entries under a service that could not be read as an instance and were
/// skipped, by `service`.
pub const REGISTRY_MALFORMED_TOTAL: &str = "sluice_coord_registry_malformed_total";

/// Counter: times a `coord_watch` source found the history after its checkpoint compacted
/// away and read its prefix again, by `component_id`.
pub const WATCH_RECOVERIES_TOTAL: &str = "sluice_coord_watch_recoveries_total";

/// Counter: `coord_kv` writes refused because this process no longer held the pipeline's
/// leadership, by `component_id`.
pub const KV_FENCED_REFUSALS_TOTAL: &str = "sluice_coord_kv_fenced_refusals_total";

/// The recoveries counter of `coord_watch` source `id`.
pub(crate) fn watch_recoveries(id: &str) -> metrics::Counter {
    metrics::counter!(WATCH_RECOVERIES_TOTAL, "component_id" => id.to_owned())
}

/// The fenced refusals counter of `coord_kv` sink `id`.
pub(crate) fn kv_fenced_refusals(id: &str) -> metrics::Counter {
    metrics::counter!(KV_FENCED_REFUSALS_TOTAL, "component_id" => id.to_owned())
}
