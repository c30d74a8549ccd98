//! Each route's tower stack, in the order of the phases (`docs/gateway.md`):
//!
//! 1. authentication ([`crate::auth`]): 401, or the user id forwarded;
//! 2. rate limiting ([`crate::ratelimit`]): 429, counted per user by default;
//! 3. the response cache ([`crate::cache`]): a HIT answers here;
//! 4. transforms ([`crate::transform`]): headers, path rewrite, query — after the
//!    cache, so the cache key is the client's request and what is cached is the transformed
//!    response;
//! 5. the circuit breaker ([`crate::breaker`]): 503 while open;
//! 6. the timeout ([`crate::timeout`]): 504;
//! 7. the proxy ([`crate::proxy`]): one instance of the upstream.
//!
//! What comes before every route (absolute-form refusal, path normalisation, routing, body and
//! header limits, the client's `X-User-ID` removed) is the entrance, in [`crate::server`].

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;

use sluice_pipeline::{Error, ErrorKind, FieldError};
use tower::ServiceBuilder;

use crate::phase::PhaseLayer;
use tower::util::BoxCloneSyncService;

use crate::auth::{AuthPhase, Verifier};
use crate::body::{Request, Response};
use crate::breaker::{Breaker, BreakerPhase};
use crate::cache::{Cache, CachePhase};
use crate::config::GatewayConfig;
use crate::metrics;
use crate::proxy::{Proxy, Upstream};
use crate::ratelimit::{Limiter, RateLimitPhase};
use crate::redis::Redis;
use crate::route::{Match, Router};
use crate::timeout::TimeoutPhase;
use crate::transform::{TransformPhase, Transforms};

/// A route's whole stack.
pub type RouteService = BoxCloneSyncService<Request, Response, Infallible>;

/// A route, ready to serve.
pub struct Route {
    /// Its id.
    pub id: Arc<str>,
    /// Its stack.
    pub service: RouteService,
    /// Its metrics, registered once.
    pub metrics: RouteMetrics,
}

/// A route's metric handles, so that counting a request looks nothing up.
#[derive(Debug, Clone)]
pub struct RouteMetrics {
    /// Requests by status class (1xx … 5xx).
    requests: [::metrics::Counter; 5],
    duration: ::metrics::Histogram,
    upstream: ::metrics::Histogram,
}

impl RouteMetrics {
    /// The handles of route `route` (whose upstream is `upstream`).
    pub fn new(route: &str, upstream: &str) -> Self {
        let class = |c: &'static str| ::metrics::counter!(metrics::REQUESTS, "route" => route.to_owned(), "status" => c);
        RouteMetrics {
            requests: [
                class("1xx"),
                class("2xx"),
                class("3xx"),
                class("4xx"),
                class("5xx"),
            ],
            duration: ::metrics::histogram!(metrics::REQUEST_DURATION, "route" => route.to_owned()),
            upstream: ::metrics::histogram!(metrics::UPSTREAM_DURATION, "route" => route.to_owned(), "upstream" => upstream.to_owned()),
        }
    }

    /// Counts one request answered with `status` after `elapsed`, of which the upstream took
    /// `upstream`.
    pub fn record(
        &self,
        status: http::StatusCode,
        elapsed: std::time::Duration,
        upstream: Option<std::time::Duration>,
    ) {
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        self.requests[class].increment(1);
        self.duration.record(elapsed.as_secs_f64());
        if let Some(upstream) = upstream {
            self.upstream.record(upstream.as_secs_f64());
        }
    }
}

/// Everything a running gateway serves with.
pub struct Gateway {
    /// The routes.
    pub router: Router<Route>,
    /// The upstreams, by name (for discovery to replace their instances).
    pub upstreams: BTreeMap<String, Arc<Upstream>>,
    /// The token verifier, if `jwt` is configured.
    pub verifier: Option<Arc<Verifier>>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("upstreams", &self.upstreams.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn config_error(path: String) -> impl FnOnce(FieldError) -> Error {
    move |e| {
        let e = e.within(&path);
        Error::new(ErrorKind::Config, format!("{}: {}", e.path, e.message))
    }
}

/// Builds the routes of `config`. `redis` is needed by routes that limit or cache.
pub fn build(
    config: &GatewayConfig,
    redis: Option<Arc<Redis>>,
    needed_by: &str,
) -> Result<Gateway, Error> {
    let verifier = match &config.jwt {
        Some(jwt) => Some(Arc::new(
            Verifier::new(jwt).map_err(config_error("jwt".into()))?,
        )),
        None => None,
    };
    let mut upstreams = BTreeMap::new();
    let mut breakers = BTreeMap::new();
    for (name, upstream) in &config.upstreams {
        let built =
            Upstream::new(name, upstream).map_err(config_error(format!("upstreams.{name}")))?;
        upstreams.insert(name.clone(), Arc::new(built));
        breakers.insert(
            name.clone(),
            Arc::new(Breaker::new(name, upstream.breaker.clone())),
        );
    }
    let require_redis = || {
        redis.clone().ok_or_else(|| {
            Error::new(
                ErrorKind::Config,
                format!("{needed_by} has routes with rate_limit or cache, which need a [redis] section, and the config has none"),
            )
        })
    };
    let mut routes = Vec::new();
    for (i, route) in config.routes.iter().enumerate() {
        let at = format!("routes[{i}]");
        let (Some(upstream), Some(breaker)) = (
            upstreams.get(&route.upstream),
            breakers.get(&route.upstream),
        ) else {
            return Err(Error::new(
                ErrorKind::Config,
                format!("{at}.upstream: no upstream {:?}", route.upstream),
            ));
        };
        let limiter = match &route.rate_limit {
            Some(limit) => Some(Arc::new(
                Limiter::new(&route.id, limit.clone(), require_redis()?)
                    .map_err(config_error(format!("{at}.rate_limit")))?,
            )),
            None => None,
        };
        let cache = match &route.cache {
            Some(cache) => Some(Arc::new(
                Cache::new(
                    &route.id,
                    cache.clone(),
                    route.params.clone(),
                    require_redis()?,
                )
                .map_err(config_error(format!("{at}.cache")))?,
            )),
            None => None,
        };
        let transforms = Transforms {
            rewrite: route.rewrite_prefix.clone(),
            request: route
                .request_headers
                .compile()
                .map_err(config_error(format!("{at}.request_headers")))?,
            response: route
                .response_headers
                .compile()
                .map_err(config_error(format!("{at}.response_headers")))?,
            query: route.query.clone(),
        };
        let service = ServiceBuilder::new()
            .layer(PhaseLayer(AuthPhase::new(
                verifier.clone(),
                route.auth_mode(verifier.is_some()),
            )))
            .layer(PhaseLayer(RateLimitPhase::new(limiter)))
            .layer(PhaseLayer(CachePhase::new(cache)))
            .layer(PhaseLayer(TransformPhase::new(transforms)))
            .layer(PhaseLayer(BreakerPhase::new(Arc::clone(breaker))))
            .layer(PhaseLayer(TimeoutPhase::new(route.timeout.get())))
            .service(Proxy::new(Arc::clone(upstream)));
        let matcher = Match {
            prefix: route.normal_prefix().map_err(config_error(at.clone()))?,
            host: route.host.clone(),
            methods: route.parsed_methods().map_err(config_error(at.clone()))?,
        };
        routes.push((
            matcher,
            Route {
                id: Arc::from(route.id.as_str()),
                service: BoxCloneSyncService::new(service),
                metrics: RouteMetrics::new(&route.id, &route.upstream),
            },
        ));
    }
    Ok(Gateway {
        router: Router::new(routes),
        upstreams,
        verifier,
    })
}
