//! The sluice API gateway (DESIGN.md §4), not yet built.
//!
//! This crate will hold a tower-based HTTP gateway: routing by path prefix to upstream services,
//! JWT (Bearer) verification forwarding the user id as `X-User-ID`, rate limits shared across
//! replicas through Redis, a Redis response cache (`X-Cache: HIT|MISS`), request and response
//! transforms, a circuit breaker with a 503 JSON fallback, timeouts, access logs and metrics.
//! It joins pipelines through an HTTP ingress source (requests become events), an access-log
//! source and a cache-invalidation sink (a CDC event on `products` row 123 evicts
//! `cache:products:123`), with upstreams discovered through `sluice-coord`.
//!
//! Today it only re-exports the engine it will build on.

pub use sluice_pipeline as pipeline;
