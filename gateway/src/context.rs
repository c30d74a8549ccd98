//! What one request carries through the layers (in its extensions), and what the response
//! carries back for the access log.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;

/// The client of a connection, known once per connection rather than per request.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Its address.
    pub address: SocketAddr,
    /// Its IP address as text (`X-Forwarded-For`, rate-limit keys).
    pub ip: HeaderValue,
}

impl Peer {
    /// The client at `address`.
    pub fn new(address: SocketAddr) -> Self {
        let ip = HeaderValue::try_from(address.ip().to_string())
            .unwrap_or_else(|_| unreachable!("an IP address is a valid header value"));
        Peer { address, ip }
    }

    /// Its IP address as text.
    pub fn ip_text(&self) -> &str {
        self.ip.to_str().unwrap_or_default()
    }
}

/// Facts about a request, set at the entrance and by the layers that learn them.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// The route it matched.
    pub route: Arc<str>,
    /// The client.
    pub client: Arc<Peer>,
    /// The path after the route's prefix (`/123`), normalised.
    pub rest: Arc<str>,
    /// The verified user id (the JWT claim), once authentication ran.
    pub user: Option<Arc<str>>,
    /// The scheme the client used (`http` or `https`).
    pub scheme: &'static str,
    /// The `Host` the client sent.
    pub host: Option<Arc<str>>,
}

/// How the cache treated a request, as `X-Cache` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// Answered from the cache.
    Hit,
    /// Cacheable, not cached: forwarded (and stored if the response allows).
    Miss,
    /// Not cacheable (method, Cache-Control, Redis unavailable).
    Bypass,
}

impl CacheStatus {
    /// The header value and metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Miss => "MISS",
            CacheStatus::Bypass => "BYPASS",
        }
    }
}

/// Set on a response that came from an upstream: which one and how long it took.
#[derive(Debug, Clone)]
pub struct UpstreamTiming {
    /// The upstream's name.
    pub upstream: Arc<str>,
    /// The instance that answered (`http://127.0.0.1:3000`).
    pub instance: Arc<str>,
    /// Time to the response's head.
    pub duration: Duration,
}

/// Set on a response by the auth layer: the user it was served to, for the access log.
#[derive(Debug, Clone)]
pub struct AnsweredFor(pub Arc<str>);

/// Set on the proxy's 503 when the upstream has no instance at all (none registered yet, or
/// all deregistered): nothing was called, so the breaker counts it neither way.
#[derive(Debug, Clone, Copy)]
pub struct NoInstance;
