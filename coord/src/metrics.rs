//! The names of the coordination metrics.

sluice_pipeline::metric_families! {
    /// Registry entries under a service that could not be read as an instance and were
    /// skipped, by `service`.
    counter REGISTRY_MALFORMED_TOTAL = "sluice_coord_registry_malformed_total";
    /// Times a `coord_watch` source found the history after its checkpoint compacted
    /// away and read its prefix again, by `component_id`.
    counter WATCH_RECOVERIES_TOTAL = "sluice_coord_watch_recoveries_total";
    /// `coord_kv` writes refused because this process no longer held the pipeline's
    /// leadership, by `component_id`.
    counter KV_FENCED_REFUSALS_TOTAL = "sluice_coord_kv_fenced_refusals_total";
}

/// The malformed entries counter of registry service `service`.
pub(crate) fn registry_malformed(service: &str) -> metrics::Counter {
    describe();
    metrics::counter!(REGISTRY_MALFORMED_TOTAL, "service" => service.to_owned())
}

/// The recoveries counter of `coord_watch` source `id`.
pub(crate) fn watch_recoveries(id: &str) -> metrics::Counter {
    describe();
    metrics::counter!(WATCH_RECOVERIES_TOTAL, "component_id" => id.to_owned())
}

/// The fenced refusals counter of `coord_kv` sink `id`.
pub(crate) fn kv_fenced_refusals(id: &str) -> metrics::Counter {
    describe();
    metrics::counter!(KV_FENCED_REFUSALS_TOTAL, "component_id" => id.to_owned())
}
