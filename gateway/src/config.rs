//! The `gateway` source's config: listener, limits, JWT keys, upstreams and routes.
//!
//! ```toml
//! [sources.gateway]
//! type = "gateway"
//! address = "${GATEWAY_ADDR:-127.0.0.1:8080}"
//!
//! [sources.gateway.jwt]
//! secret = "${JWT_SECRET}"
//!
//! [sources.gateway.upstreams.products]
//! instances = ["${PRODUCTS_URL}"]
//!
//! [[sources.gateway.routes]]
//! id = "products"
//! prefix = "/api/products"
//! rewrite_prefix = "/products"
//! upstream = "products"
//! ```
//!
//! Every option is described in `docs/gateway.md`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use http::Method;
use serde::Deserialize;
use sluice_pipeline::{FieldError, FieldErrors, HumanDuration, Validate};

use crate::auth::{AuthMode, JwtConfig};
use crate::cache::CacheConfig;
use crate::proxy::UpstreamConfig;
use crate::ratelimit::RateLimitConfig;
use crate::route::path;
use crate::transform::{HeaderOps, QueryOps};

/// Default for [`GatewayConfig::max_body_bytes`]: 1 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// Default for [`GatewayConfig::max_header_bytes`]: 16 KiB.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 16 * 1024;
/// Default for [`GatewayConfig::client_timeout`].
pub const DEFAULT_CLIENT_TIMEOUT: HumanDuration = HumanDuration::from_secs(30);
/// Default for [`RouteConfig::timeout`] (Envoy's route timeout).
pub const DEFAULT_ROUTE_TIMEOUT: HumanDuration = HumanDuration::from_secs(15);
/// Default for [`GatewayConfig::access_log_buffer`].
pub const DEFAULT_ACCESS_LOG_BUFFER: usize = 8192;

/// Config of the `gateway` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// The address to listen on (`127.0.0.1:8080`).
    pub address: String,
    /// TLS termination: serve HTTPS (HTTP/2 and HTTP/1.1 by ALPN) with this certificate.
    pub tls: Option<TlsConfig>,
    /// The largest request body accepted; larger gets 413.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// The largest request head (request line and headers) accepted; larger gets 431.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// How long a client may take to send a request's head, and its body; slower gets 408
    /// (or, for the head, the connection closed), so slow clients cannot hold connections.
    #[serde(default = "default_client_timeout")]
    pub client_timeout: HumanDuration,
    /// Threads serving requests, each its own single-threaded runtime accepting on the same
    /// socket; unset, one per core.
    pub threads: Option<usize>,
    /// Access-log records held for the pipeline when it is slow; more are shed (counted).
    #[serde(default = "default_access_log_buffer")]
    pub access_log_buffer: usize,
    /// How JWT Bearer tokens are verified; without it, routes cannot require auth.
    pub jwt: Option<JwtConfig>,
    /// The upstream services, by name.
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// The routes.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
}

fn default_max_body_bytes() -> usize {
    DEFAULT_MAX_BODY_BYTES
}
fn default_max_header_bytes() -> usize {
    DEFAULT_MAX_HEADER_BYTES
}
fn default_client_timeout() -> HumanDuration {
    DEFAULT_CLIENT_TIMEOUT
}
fn default_access_log_buffer() -> usize {
    DEFAULT_ACCESS_LOG_BUFFER
}

/// `tls`: the listener's certificate chain and key, PEM files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// One route.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The route's name, in metrics, logs and rate-limit keys.
    pub id: String,
    /// The path prefix it serves (`/api/products`), matched on the normalised path.
    pub prefix: String,
    /// What replaces the matched prefix before forwarding: `"/products"` sends
    /// `/api/products/123` as `/products/123`, `""` strips it; unset keeps the path as is.
    pub rewrite_prefix: Option<String>,
    /// Only requests for this host (`api.example.com`, or `*.example.com`).
    pub host: Option<String>,
    /// Only these methods (`["GET", "HEAD"]`); unset, any.
    #[serde(default)]
    pub methods: Vec<String>,
    /// The upstream it forwards to (a name under `upstreams`).
    pub upstream: String,
    /// Names for the path segments after the prefix, in order, usable in the cache key
    /// (`params = ["id"]` binds `123` in `/api/products/123` to `{id}`).
    #[serde(default)]
    pub params: Vec<String>,
    /// `required` (401 without a valid token), `optional` (verified when present) or `off`;
    /// unset, `required` when `jwt` is configured and `off` otherwise.
    pub auth: Option<AuthMode>,
    /// The longest the upstream may take to answer (all retries included); longer gets 504.
    #[serde(default = "default_route_timeout")]
    pub timeout: HumanDuration,
    /// Rate limit, shared by every gateway using the same Redis.
    pub rate_limit: Option<RateLimitConfig>,
    /// Response cache in Redis.
    pub cache: Option<CacheConfig>,
    /// Changes to the request's headers before it is forwarded.
    #[serde(default)]
    pub request_headers: HeaderOps,
    /// Changes to the response's headers before it is returned (and cached).
    #[serde(default)]
    pub response_headers: HeaderOps,
    /// Changes to the request's query parameters.
    #[serde(default)]
    pub query: QueryOps,
}

fn default_route_timeout() -> HumanDuration {
    DEFAULT_ROUTE_TIMEOUT
}

impl GatewayConfig {
    /// The listen address, parsed.
    pub fn socket_address(&self) -> Result<SocketAddr, FieldError> {
        self.address.parse().map_err(|_| {
            FieldError::new(
                "address",
                format!(
                    "{:?} is not an address such as 127.0.0.1:8080",
                    self.address
                ),
            )
        })
    }
}

impl RouteConfig {
    /// The normalised prefix, without a trailing slash.
    pub fn normal_prefix(&self) -> Result<String, FieldError> {
        let normal = path::normalize(&self.prefix)
            .map_err(|e| FieldError::new("prefix", format!("{:?}: {e}", self.prefix)))?;
        Ok(match normal.strip_suffix('/') {
            Some(trimmed) if !trimmed.is_empty() => trimmed.to_owned(),
            _ => normal.into_owned(),
        })
    }

    /// The methods, parsed.
    pub fn parsed_methods(&self) -> Result<Vec<Method>, FieldError> {
        self.methods
            .iter()
            .map(|m| {
                Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                    .map_err(|_| FieldError::new("methods", format!("{m:?} is not a method")))
            })
            .collect()
    }

    /// How the route authenticates, given whether the gateway has `jwt`.
    pub fn auth_mode(&self, has_jwt: bool) -> AuthMode {
        self.auth.unwrap_or(if has_jwt {
            AuthMode::Required
        } else {
            AuthMode::Off
        })
    }
}

impl GatewayConfig {
    /// The first rule the section breaks.
    pub(crate) fn check(&self) -> Result<(), FieldError> {
        self.socket_address()?;
        if self.max_body_bytes == 0 {
            return Err(FieldError::new("max_body_bytes", "must be at least 1"));
        }
        if self.max_header_bytes < 1024 {
            return Err(FieldError::new("max_header_bytes", "must be at least 1024"));
        }
        if self.threads == Some(0) {
            return Err(FieldError::new(
                "threads",
                "must be at least 1 (omit it for one per core)",
            ));
        }
        if self.access_log_buffer == 0 {
            return Err(FieldError::new("access_log_buffer", "must be at least 1"));
        }
        if let Some(jwt) = &self.jwt {
            jwt.check().map_err(|e| e.within("jwt"))?;
        }
        for (name, upstream) in &self.upstreams {
            upstream
                .check()
                .map_err(|e| e.within(&format!("upstreams.{name}")))?;
        }
        if self.routes.is_empty() {
            return Err(FieldError::new("routes", "needs at least one route"));
        }
        let mut ids = std::collections::BTreeSet::new();
        for (i, route) in self.routes.iter().enumerate() {
            let at = format!("routes[{i}]");
            if !ids.insert(route.id.as_str()) {
                return Err(FieldError::new(
                    format!("{at}.id"),
                    format!("{:?} names two routes", route.id),
                ));
            }
            route.check().map_err(|e| e.within(&at))?;
            if !self.upstreams.contains_key(&route.upstream) {
                let known: Vec<_> = self.upstreams.keys().map(String::as_str).collect();
                return Err(FieldError::new(
                    format!("{at}.upstream"),
                    format!(
                        "no upstream {:?} (known: {})",
                        route.upstream,
                        known.join(", ")
                    ),
                ));
            }
            if self.jwt.is_none()
                && matches!(route.auth, Some(AuthMode::Required | AuthMode::Optional))
            {
                return Err(FieldError::new(
                    format!("{at}.auth"),
                    "verifying tokens needs a [jwt] table in the gateway",
                ));
            }
        }
        Ok(())
    }
}

impl RouteConfig {
    /// The first rule the section breaks.
    pub(crate) fn check(&self) -> Result<(), FieldError> {
        if self.id.is_empty() {
            return Err(FieldError::new("id", "must not be empty"));
        }
        self.normal_prefix()?;
        if let Some(rewrite) = &self.rewrite_prefix
            && !rewrite.is_empty()
            && path::normalize(rewrite).as_deref() != Ok(rewrite.as_str())
        {
            return Err(FieldError::new(
                "rewrite_prefix",
                format!("{rewrite:?} must be empty or a normalised path such as /products"),
            ));
        }
        self.parsed_methods()?;
        if self.timeout.get().is_zero() {
            return Err(FieldError::new("timeout", "must be more than 0"));
        }
        if let Some(limit) = &self.rate_limit {
            limit.check().map_err(|e| e.within("rate_limit"))?;
        }
        if let Some(cache) = &self.cache {
            cache.check().map_err(|e| e.within("cache"))?;
            for name in cache.template().map_err(|e| e.within("cache"))?.names() {
                if !self.params.iter().any(|p| p == name)
                    && !crate::cache::BUILTIN_NAMES.contains(&name)
                {
                    return Err(FieldError::new(
                        "cache.key",
                        format!(
                            "{{{name}}} is neither one of params nor one of {}",
                            crate::cache::BUILTIN_NAMES.join(", ")
                        ),
                    ));
                }
            }
        }
        self.request_headers
            .check()
            .map_err(|e| e.within("request_headers"))?;
        self.response_headers
            .check()
            .map_err(|e| e.within("response_headers"))?;
        Ok(())
    }
}

impl Validate for GatewayConfig {
    fn validate(&self) -> Result<(), FieldErrors> {
        self.check().map_err(FieldErrors::from)
    }
}

impl Validate for RouteConfig {
    fn validate(&self) -> Result<(), FieldErrors> {
        self.check().map_err(FieldErrors::from)
    }
}
