//! The gateway's metric names, in one place. Every latency is a histogram with buckets
//! (`*_seconds`, see `sluice_pipeline::api::SECONDS_BUCKETS`).

/// Requests answered, by `route` and `status` class (`2xx`…`5xx`).
pub const REQUESTS: &str = "sluice_gateway_requests_total";
/// Time from a request's head to its response's head, by `route`.
pub const REQUEST_DURATION: &str = "sluice_gateway_request_duration_seconds";
/// Time the upstream took to answer, by `route` and `upstream`.
pub const UPSTREAM_DURATION: &str = "sluice_gateway_upstream_duration_seconds";
/// Cache lookups, by `route` and `result` (`hit`, `miss`, `bypass`).
pub const CACHE: &str = "sluice_gateway_cache_requests_total";
/// Requests refused by the rate limiter (429), by `route`.
pub const RATE_LIMITED: &str = "sluice_gateway_rate_limited_total";
/// Rate-limit decisions made without Redis (it failed or timed out), by `route` and `mode`
/// (`open`: the in-process fallback decided; `closed`: refused).
pub const RATE_LIMIT_STORE_ERRORS: &str = "sluice_gateway_rate_limit_store_errors_total";
/// Each upstream's circuit breaker: 0 closed, 1 open, 2 half-open, by `upstream`.
pub const BREAKER_STATE: &str = "sluice_gateway_breaker_state";
/// Requests answered by an open breaker without calling the upstream, by `upstream`.
pub const BREAKER_REJECTED: &str = "sluice_gateway_breaker_rejected_total";
/// Requests answered 503 because their upstream had no instance, by `upstream`.
pub const NO_INSTANCE: &str = "sluice_gateway_no_instance_total";
/// The instances each upstream has now (static, or as discovered), by `upstream`.
pub const UPSTREAM_INSTANCES: &str = "sluice_gateway_upstream_instances";
/// Requests refused before routing, by `reason` (`absolute_uri`, `bad_path`, `no_route`,
/// `body_too_large`, `client_timeout`, `bad_body`).
pub const REFUSED: &str = "sluice_gateway_refused_total";
/// Access-log records dropped because the pipeline could not take them at once.
pub const ACCESS_LOG_SHED: &str = "sluice_gateway_access_log_shed_total";
/// `http_ingress` requests, by `source` and `status`.
pub const INGRESS_REQUESTS: &str = "sluice_http_ingress_requests_total";
/// Keys deleted by `cache_invalidate`, by `sink`.
pub const INVALIDATED: &str = "sluice_cache_invalidate_keys_total";
