//! The names of the coordination metrics.

/// Counter: registry entries under a service that could not be read as an instance and were
/// skipped, by `service`.
pub const REGISTRY_MALFORMED_TOTAL: &str = "sluice_coord_registry_malformed_total";
