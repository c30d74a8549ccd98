//! The innermost service: forwarding a request to one instance of its upstream, over that
//! instance's connections ([`crate::connection`]: HTTP/1.1 keep-alive, or HTTP/2 with
//! `http2 = true`; `https://` instances over rustls), with round-robin across instances, passive health (an instance that
//! fails `max_fails` times in a row is skipped for `fail_timeout`), retries on another instance
//! for idempotent methods when the request could not be sent, hop-by-hop headers removed both
//! ways, `X-Forwarded-For/Proto/Host` set, and WebSocket (HTTP/1.1 `Upgrade`) passed through.
//!
//! Instances are static (`instances = [...]`) or discovered from the coordination registry
//! (`discover = "SERVICE"`, see [`crate::discovery`]), which replaces them at run time through
//! [`Upstream::replace_instances`]. An upstream without any instance answers 503 (counted in
//! `sluice_gateway_no_instance_total`), which its breaker does not count as a failure.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use sluice_pipeline::{FieldError, FieldErrors, HumanDuration, Validate};

use crate::body::{self, Request, Response};
use crate::breaker::BreakerConfig;
use crate::connection::{Address, Connector, Pool, SendError, default_roots, roots_from};
use crate::context::{NoInstance, RequestContext, UpstreamTiming};
use crate::metrics;
use crate::phase::PhaseFuture;

/// Default for [`UpstreamConfig::max_fails`].
pub const DEFAULT_MAX_FAILS: u32 = 3;
/// Default for [`UpstreamConfig::fail_timeout`] (nginx's).
pub const DEFAULT_FAIL_TIMEOUT: HumanDuration = HumanDuration::from_secs(10);
/// Default for [`UpstreamConfig::retries`].
pub const DEFAULT_RETRIES: u32 = 1;
/// Default for [`UpstreamConfig::connect_timeout`].
pub const DEFAULT_CONNECT_TIMEOUT: HumanDuration = HumanDuration::from_secs(2);
/// Default for [`UpstreamConfig::max_idle_per_instance`].
pub const DEFAULT_MAX_IDLE: usize = 256;

/// An upstream service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Its instances: base URLs (`http://127.0.0.1:3000`, `https://orders:8443/v1`); or none,
    /// with `discover`.
    #[serde(default)]
    pub instances: Vec<String>,
    /// The service of the coordination registry (`[coord]`) whose registered instances this
    /// upstream forwards to, followed as they come and go; instead of `instances`.
    pub discover: Option<String>,
    /// Speak HTTP/2 to it (prior knowledge over plain TCP, ALPN over TLS).
    #[serde(default)]
    pub http2: bool,
    /// Failures in a row (connect errors, 502/503/504) after which an instance is skipped.
    #[serde(default = "default_max_fails")]
    pub max_fails: u32,
    /// How long a failed instance is skipped.
    #[serde(default = "default_fail_timeout")]
    pub fail_timeout: HumanDuration,
    /// Other instances tried, for idempotent methods, when a request could not be sent.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// The longest a TCP (and TLS) connection may take to open.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: HumanDuration,
    /// Idle keep-alive connections kept per instance.
    #[serde(default = "default_max_idle")]
    pub max_idle_per_instance: usize,
    /// PEM file of the authorities that sign its `https://` instances' certificates, trusted
    /// instead of the public roots and `SSL_CERT_FILE` (a private CA).
    pub ca_file: Option<PathBuf>,
    /// The circuit breaker in front of it.
    #[serde(default)]
    pub breaker: BreakerConfig,
}

fn default_max_fails() -> u32 {
    DEFAULT_MAX_FAILS
}
fn default_fail_timeout() -> HumanDuration {
    DEFAULT_FAIL_TIMEOUT
}
fn default_retries() -> u32 {
    DEFAULT_RETRIES
}
fn default_connect_timeout() -> HumanDuration {
    DEFAULT_CONNECT_TIMEOUT
}
fn default_max_idle() -> usize {
    DEFAULT_MAX_IDLE
}

impl UpstreamConfig {
    /// The first rule the section breaks.
    pub(crate) fn check(&self) -> Result<(), FieldError> {
        match (&self.discover, self.instances.is_empty()) {
            (None, true) => {
                return Err(FieldError::new(
                    "instances",
                    "needs at least one URL, or discover = \"SERVICE\" to follow the registry",
                ));
            }
            (Some(_), false) => {
                return Err(FieldError::new(
                    "discover",
                    "instances and discover exclude each other: keep one",
                ));
            }
            (Some(service), true) => {
                if service.is_empty()
                    || service.contains('/')
                    || service.chars().any(char::is_control)
                {
                    return Err(FieldError::new(
                        "discover",
                        format!(
                            "{service:?} is not a service name: non-empty, without '/' or control characters"
                        ),
                    ));
                }
            }
            (None, false) => {}
        }
        for (i, url) in self.instances.iter().enumerate() {
            Instance::check(url).map_err(|e| FieldError::new(format!("instances[{i}]"), e))?;
        }
        if self.max_fails == 0 {
            return Err(FieldError::new("max_fails", "must be at least 1"));
        }
        self.breaker.check().map_err(|e| e.within("breaker"))
    }
}

/// One instance of an upstream.
#[derive(Debug)]
pub struct Instance {
    /// The base URL as configured.
    pub url: Arc<str>,
    address: Address,
    /// A path prefix, without a trailing slash (often empty).
    base_path: String,
    /// Its connections, kept per serving thread.
    pool: Arc<Pool>,
    fails: AtomicU32,
    /// Milliseconds since [`epoch`] until which it is skipped.
    down_until: AtomicU64,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The address and the base path of an instance's URL (`http://host:port[/path]`).
fn parse_base(url: &str) -> Result<(Address, String), String> {
    let uri: Uri = url
        .parse()
        .map_err(|_| format!("{url:?} is not a URL such as http://127.0.0.1:3000"))?;
    let address = Address::of(&uri).map_err(|e| format!("{url:?}: {e}"))?;
    if uri.query().is_some() {
        return Err(format!("{url:?} must not have a query"));
    }
    Ok((address, uri.path().trim_end_matches('/').to_owned()))
}

impl Instance {
    /// The instance at base URL `url` (`http://host:port[/path]`), keeping up to `max_idle`
    /// idle connections per serving thread.
    pub fn new(url: &str, max_idle: usize) -> Result<Self, String> {
        let (address, base_path) = parse_base(url)?;
        Ok(Instance {
            url: Arc::from(url),
            address,
            base_path,
            pool: Arc::new(Pool::new(max_idle)),
            fails: AtomicU32::new(0),
            down_until: AtomicU64::new(0),
        })
    }

    /// Whether `url` is a base URL an instance can have.
    pub fn check(url: &str) -> Result<(), String> {
        parse_base(url).map(drop)
    }

    fn is_up(&self) -> bool {
        self.down_until.load(Ordering::Relaxed) <= now_ms()
    }

    /// The origin-form target of a request for `path_and_query` on this instance.
    fn target(&self, path_and_query: &PathAndQuery) -> Result<Uri, http::Error> {
        // Without a base path the request's own (already parsed) path and query are reused.
        if self.base_path.is_empty() {
            Uri::builder()
                .path_and_query(path_and_query.clone())
                .build()
        } else {
            Uri::builder()
                .path_and_query(format!("{}{path_and_query}", self.base_path))
                .build()
        }
    }
}

/// An upstream: its instances, how they are connected to and their passive health.
pub struct Upstream {
    /// Its name.
    pub name: Arc<str>,
    instances: RwLock<Arc<Vec<Arc<Instance>>>>,
    next: AtomicUsize,
    connector: Connector,
    max_idle: usize,
    max_fails: u32,
    fail_timeout: Duration,
    retries: u32,
    /// Requests answered 503 because it had no instance.
    no_instance: ::metrics::Counter,
    /// How many instances it has.
    instance_count: ::metrics::Gauge,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .finish()
    }
}

impl Upstream {
    /// An upstream named `name` as `config` says.
    pub fn new(name: &str, config: &UpstreamConfig) -> Result<Self, FieldError> {
        let max_idle = config.max_idle_per_instance;
        let instances = config
            .instances
            .iter()
            .enumerate()
            .map(|(i, url)| {
                Instance::new(url, max_idle)
                    .map(Arc::new)
                    .map_err(|e| FieldError::new(format!("instances[{i}]"), e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let roots = match &config.ca_file {
            Some(path) => Arc::new(roots_from(path).map_err(|e| FieldError::new("ca_file", e))?),
            None => default_roots(),
        };
        let labels = [("upstream", name.to_owned())];
        let instance_count = ::metrics::gauge!(metrics::UPSTREAM_INSTANCES, &labels);
        instance_count.set(instances.len() as f64);
        Ok(Upstream {
            name: Arc::from(name),
            instances: RwLock::new(Arc::new(instances)),
            next: AtomicUsize::new(0),
            connector: Connector::new(config.http2, config.connect_timeout.get(), roots),
            max_idle,
            max_fails: config.max_fails,
            fail_timeout: config.fail_timeout.get(),
            retries: config.retries,
            no_instance: ::metrics::counter!(metrics::NO_INSTANCE, &labels),
            instance_count,
        })
    }

    /// Replaces the instances (what a discovery found); those that remain keep their health
    /// and their connections.
    pub fn replace_instances(&self, urls: &[String]) -> Result<(), String> {
        let current = self.current();
        let fresh = urls
            .iter()
            .map(|url| match current.iter().find(|i| &*i.url == url) {
                Some(kept) => Ok(Arc::clone(kept)),
                None => Instance::new(url, self.max_idle).map(Arc::new),
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.instance_count.set(fresh.len() as f64);
        *self
            .instances
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(fresh);
        Ok(())
    }

    /// The instances now.
    pub fn current(&self) -> Arc<Vec<Arc<Instance>>> {
        Arc::clone(
            &self
                .instances
                .read()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    /// The next instance by round-robin, skipping those down (unless all are) and `tried`.
    fn pick(&self, tried: &[usize]) -> Option<(usize, Arc<Instance>)> {
        let instances = self.current();
        let n = instances.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let candidates = (0..n)
            .map(|k| (start + k) % n)
            .filter(|i| !tried.contains(i));
        let mut fallback = None;
        for i in candidates {
            if instances[i].is_up() {
                return Some((i, Arc::clone(&instances[i])));
            }
            fallback.get_or_insert(i);
        }
        fallback.map(|i| (i, Arc::clone(&instances[i])))
    }

    fn record(&self, instance: &Instance, failed: bool) {
        if failed {
            let fails = instance.fails.fetch_add(1, Ordering::Relaxed) + 1;
            if fails >= self.max_fails {
                let until =
                    now_ms() + u64::try_from(self.fail_timeout.as_millis()).unwrap_or(u64::MAX / 2);
                instance.down_until.store(until, Ordering::Relaxed);
                instance.fails.store(0, Ordering::Relaxed);
                tracing::warn!(upstream = %self.name, instance = %instance.url, "instance failing: skipped for {:?}", self.fail_timeout);
            }
        } else if instance.fails.load(Ordering::Relaxed) != 0 {
            instance.fails.store(0, Ordering::Relaxed);
        }
    }
}

/// Headers that belong to one connection, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Removes hop-by-hop headers, and those the `Connection` header names; `Upgrade` too unless
/// `upgrade` (then `Connection: upgrade` is kept).
pub fn remove_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // One pass over the names finds those present (the usual message has none, or only
    // `Connection: keep-alive`), so that only they are looked up again to be removed.
    let mut present: Vec<HeaderName> = headers
        .keys()
        .filter(|name| HOP_BY_HOP.contains(name) || (!upgrade && *name == header::UPGRADE))
        .cloned()
        .collect();
    if present.contains(&header::CONNECTION) {
        present.extend(
            headers
                .get_all(header::CONNECTION)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
                .filter(|name| !(upgrade && *name == header::UPGRADE)),
        );
    }
    for name in &present {
        headers.remove(name);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// Forwards requests to `upstream`.
#[derive(Clone, Debug)]
pub struct Proxy {
    upstream: Arc<Upstream>,
}

impl Proxy {
    /// A proxy to `upstream`.
    pub fn new(upstream: Arc<Upstream>) -> Self {
        Proxy { upstream }
    }
}

impl tower::Service<Request> for Proxy {
    type Response = Response;
    type Error = Infallible;
    type Future = PhaseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let upstream = Arc::clone(&self.upstream);
        Box::pin(async move { Ok(forward(&upstream, request).await) })
    }
}

async fn forward(upstream: &Upstream, mut request: Request) -> Response {
    let upgrade = request.version() == http::Version::HTTP_11 && is_upgrade(request.headers());
    let client_upgrade = if upgrade {
        request
            .extensions_mut()
            .remove::<hyper::upgrade::OnUpgrade>()
    } else {
        None
    };
    let cx = request.extensions().get::<RequestContext>().cloned();
    prepare_headers(&mut request, cx.as_ref(), upgrade);
    let path_and_query = request
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    // The version must agree with what the gateway speaks to this upstream, whatever its
    // client spoke.
    *request.version_mut() = if upstream.connector.http2() {
        http::Version::HTTP_2
    } else {
        http::Version::HTTP_11
    };
    let retryable = idempotent(request.method()) && upstream.retries > 0;
    let mut tried = Vec::new();
    loop {
        let Some((index, instance)) = upstream.pick(&tried) else {
            if tried.is_empty() {
                return no_instance(upstream);
            }
            return body::error(StatusCode::BAD_GATEWAY, "Bad gateway");
        };
        tried.push(index);
        let Ok(uri) = instance.target(&path_and_query) else {
            return body::error(StatusCode::BAD_GATEWAY, "Bad upstream URL");
        };
        *request.uri_mut() = uri;
        let started = Instant::now();
        match upstream
            .connector
            .send(&instance.pool, &instance.address, request)
            .await
        {
            Ok(mut response) => {
                let status = response.status();
                upstream.record(&instance, matches!(status.as_u16(), 502..=504));
                if status == StatusCode::SWITCHING_PROTOCOLS {
                    tunnel(&mut response, client_upgrade);
                } else {
                    remove_hop_by_hop(response.headers_mut(), false);
                }
                response.extensions_mut().insert(UpstreamTiming {
                    upstream: Arc::clone(&upstream.name),
                    instance: Arc::clone(&instance.url),
                    duration: started.elapsed(),
                });
                return response;
            }
            // Never sent, so it may go to another instance as it is.
            Err(SendError::NotSent(unsent, e)) => {
                upstream.record(&instance, true);
                tracing::debug!(upstream = %upstream.name, instance = %instance.url, error = %e, "upstream connection failed");
                let more = tried.len() <= upstream.retries as usize
                    && tried.len() < upstream.current().len();
                if !(retryable && more) {
                    return body::error(StatusCode::BAD_GATEWAY, "Bad gateway");
                }
                request = *unsent;
            }
            Err(SendError::Failed(e)) => {
                upstream.record(&instance, true);
                tracing::debug!(upstream = %upstream.name, instance = %instance.url, error = %e, "upstream request failed");
                return body::error(StatusCode::BAD_GATEWAY, "Bad gateway");
            }
        }
    }
}

/// The answer of an upstream without any instance (none registered): 503, counted, and marked
/// so that the breaker does not take it for the upstream's failure.
fn no_instance(upstream: &Upstream) -> Response {
    upstream.no_instance.increment(1);
    let mut response = body::error(
        StatusCode::SERVICE_UNAVAILABLE,
        "No instance of the upstream service is available",
    );
    response.extensions_mut().insert(NoInstance);
    response
}

/// Joins the client's and the upstream's upgraded connections once both have switched.
fn tunnel(response: &mut Response, client: Option<hyper::upgrade::OnUpgrade>) {
    let upstream = hyper::upgrade::on(&mut *response);
    let Some(client) = client else { return };
    tokio::spawn(async move {
        let (Ok(client), Ok(upstream)) = (client.await, upstream.await) else {
            return;
        };
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    });
}

/// The headers the upstream gets: hop-by-hop removed, `Host` set by the client to the
/// instance's, `X-Forwarded-*` added.
fn prepare_headers(request: &mut Request, cx: Option<&RequestContext>, upgrade: bool) {
    let headers = request.headers_mut();
    remove_hop_by_hop(headers, upgrade);
    let original_host = headers.remove(header::HOST);
    if let Some(cx) = cx {
        let ip = &cx.client.ip;
        let forwarded_for = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            Some(earlier) => HeaderValue::from_str(&format!("{earlier}, {}", cx.client.ip_text()))
                .unwrap_or_else(|_| ip.clone()),
            None => ip.clone(),
        };
        headers.insert(X_FORWARDED_FOR, forwarded_for);
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(cx.scheme));
    }
    if let Some(host) = original_host.or_else(|| {
        cx.and_then(|c| c.host.as_deref())
            .and_then(|h| HeaderValue::from_str(h).ok())
    }) {
        headers.insert(X_FORWARDED_HOST, host);
    }
}

impl Validate for UpstreamConfig {
    fn validate(&self) -> Result<(), FieldErrors> {
        self.check().map_err(FieldErrors::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut headers, false);
        let names: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept"]);

        let mut upgrading = HeaderMap::new();
        upgrading.insert(
            header::CONNECTION,
            HeaderValue::from_static("Upgrade, x-secret"),
        );
        upgrading.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        upgrading.insert("x-secret", HeaderValue::from_static("1"));
        upgrading.insert(header::TE, HeaderValue::from_static("trailers"));
        remove_hop_by_hop(&mut upgrading, true);
        let mut kept: Vec<_> = upgrading
            .iter()
            .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap()))
            .collect();
        kept.sort();
        assert_eq!(kept, ["connection: upgrade", "upgrade: websocket"]);

        let mut plain = HeaderMap::new();
        plain.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        remove_hop_by_hop(&mut plain, false);
        assert_eq!(
            plain.len(),
            1,
            "nothing of a message without any is removed"
        );
    }

    #[test]
    fn round_robin_skips_instances_that_failed_until_their_timeout() {
        let config: UpstreamConfig = toml::from_str(
            r#"instances = ["http://127.0.0.1:1", "http://127.0.0.1:2"]
               max_fails = 1
               fail_timeout = "1h""#,
        )
        .unwrap();
        let upstream = Upstream::new("u", &config).unwrap();
        let picks: Vec<_> = (0..4).map(|_| upstream.pick(&[]).unwrap().0).collect();
        assert_eq!(picks, [0, 1, 0, 1]);
        let second = Arc::clone(&upstream.current()[1]);
        upstream.record(&second, true);
        let picks: Vec<_> = (0..4).map(|_| upstream.pick(&[]).unwrap().0).collect();
        assert_eq!(picks, [0, 0, 0, 0]);
        upstream
            .replace_instances(&["http://127.0.0.1:2".into(), "http://127.0.0.1:3".into()])
            .unwrap();
        let picks: Vec<_> = (0..4)
            .map(|_| upstream.pick(&[]).unwrap().1.url.to_string())
            .collect();
        assert!(
            picks.iter().all(|u| u == "http://127.0.0.1:3"),
            "the kept instance keeps its health: {picks:?}"
        );
        assert!(upstream.replace_instances(&["ftp://x".into()]).is_err());
    }
}
