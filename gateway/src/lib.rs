//! The sluice API gateway (DESIGN.md §5): one entrance in front of a set of HTTP services that
//! routes, authenticates, limits, caches, transforms, protects, logs and counts their requests,
//! run by the same binary and config as the relay.
//!
//! The gateway is a tower stack, one per route, whose layers run in the order documented in
//! `docs/gateway.md` (see [`server`] for the entrance and [`stack`] for the layers). It joins
//! pipelines three ways:
//! - the [`gateway`](source) source serves the gateway; its events are the access-log records,
//!   so they flow to any sink, and a slow sink sheds records rather than slowing requests;
//! - the [`http_ingress`](ingress) source turns POSTs into events and answers each by its own
//!   event's delivery;
//! - the [`cache_invalidate`](invalidate) sink evicts response-cache keys rendered from events
//!   (a CDC event on `products` row 123 evicts `cache:products:123`).
//!
//! The shared Redis client is the [`[redis]`](redis) resource; upstreams may be discovered
//! from the coordination registry of the `[coord]` resource ([`discovery`]).

pub mod auth;
pub mod body;
pub mod breaker;
pub mod cache;
pub mod config;
pub mod connection;
pub mod context;
pub mod discovery;
pub mod ingress;
pub mod invalidate;
pub mod metrics;
pub mod phase;
pub mod proxy;
pub mod ratelimit;
pub mod redis;
pub mod route;
pub mod server;
pub mod source;
pub mod stack;
pub mod timeout;
pub mod transform;
pub mod worker;

pub use config::GatewayConfig;

pub use ingress::IngressConfig;
pub use invalidate::CacheInvalidateConfig;
pub use redis::{Redis, RedisConfig};
