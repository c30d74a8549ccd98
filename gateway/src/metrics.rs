//! The gateway's metric names, in one place. Every latency is a histogram with buckets
//! (`*_seconds`, see `sluice_pipeline::metrics::SECONDS_BUCKETS`).

sluice_pipeline::metric_families! {
    /// Requests answered, by `route` and `status` class (`2xx`…`5xx`).
    counter REQUESTS = "sluice_gateway_requests_total";
    /// Time from a request's head to its response's head, by `route`.
    histogram REQUEST_DURATION = "sluice_gateway_request_duration_seconds";
    /// Time the upstream took to answer, by `route` and `upstream`.
    histogram UPSTREAM_DURATION = "sluice_gateway_upstream_duration_seconds";
    /// Cache lookups, by `route` and `result` (`hit`, `miss`, `bypass`).
    counter CACHE = "sluice_gateway_cache_requests_total";
    /// Requests refused by the rate limiter (429), by `route`.
    counter RATE_LIMITED = "sluice_gateway_rate_limited_total";
    /// Rate-limit decisions made without Redis (it failed or timed out), by `route` and `mode`
    /// (`open`: the in-process fallback decided; `closed`: refused).
    counter RATE_LIMIT_STORE_ERRORS = "sluice_gateway_rate_limit_store_errors_total";
    /// Each upstream's circuit breaker: 0 closed, 1 open, 2 half-open, by `upstream`.
    gauge BREAKER_STATE = "sluice_gateway_breaker_state";
    /// Requests answered by an open breaker without calling the upstream, by `upstream`.
    counter BREAKER_REJECTED = "sluice_gateway_breaker_rejected_total";
    /// Requests answered 503 because their upstream had no instance, by `upstream`.
    counter NO_INSTANCE = "sluice_gateway_no_instance_total";
    /// The instances each upstream has now (static, or as discovered), by `upstream`.
    gauge UPSTREAM_INSTANCES = "sluice_gateway_upstream_instances";
    /// Requests refused before routing, by `reason` (`absolute_uri`, `bad_path`, `no_route`,
    /// `body_too_large`, `client_timeout`, `bad_body`).
    counter REFUSED = "sluice_gateway_refused_total";
    /// Access-log records dropped because the pipeline could not take them at once.
    counter ACCESS_LOG_SHED = "sluice_gateway_access_log_shed_total";
    /// `http_ingress` requests, by `source` and `status`.
    counter INGRESS_REQUESTS = "sluice_http_ingress_requests_total";
    /// Keys deleted by `cache_invalidate`, by `sink`.
    counter INVALIDATED = "sluice_cache_invalidate_keys_total";
}
