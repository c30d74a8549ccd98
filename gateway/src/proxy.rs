//! The innermost service: forwarding a request to one instance of its upstream, over
//! hyper-util's pooled client (HTTP/1.1 keep-alive, or HTTP/2 with `http2 = true`; `https://`
//! instances over rustls), with round-robin across instances, passive health (an instance that
//! fails `max_fails` times in a row is skipped for `fail_timeout`), retries on another instance
//! for idempotent methods when the request could not be sent, hop-by-hop headers removed both
//! ways, `X-Forwarded-For/Proto/Host` set, and WebSocket (HTTP/1.1 `Upgrade`) passed through.
//!
//! Instances are static (`instances = [...]`) or discovered from the coordination registry
//! (`discover = "SERVICE"`, see [`crate::discovery`]), which replaces them at run time through
//! [`Upstream::replace_instances`]. An upstream without any instance answers 503 (counted in
//! `sluice_gateway_no_instance_total`), which its breaker does not count as a failure.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Deserialize;
use sluice_pipeline::{FieldError, FieldErrors, HumanDuration, Validate};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::body::{self, Request, Response};
use crate::breaker::BreakerConfig;
use crate::context::{NoInstance, RequestContext, UpstreamTiming};
use crate::metrics;
use crate::worker::PerWorker;

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
            Instance::parse(url).map_err(|e| FieldError::new(format!("instances[{i}]"), e))?;
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
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    /// A path prefix, without a trailing slash (often empty).
    base_path: String,
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

impl Instance {
    /// Parses a base URL (`http://host:port[/path]`).
    pub fn parse(url: &str) -> Result<Self, String> {
        let uri: Uri = url
            .parse()
            .map_err(|_| format!("{url:?} is not a URL such as http://127.0.0.1:3000"))?;
        let scheme = uri
            .scheme()
            .filter(|s| **s == http::uri::Scheme::HTTP || **s == http::uri::Scheme::HTTPS)
            .ok_or_else(|| format!("{url:?} needs an http:// or https:// scheme"))?
            .clone();
        let authority = uri
            .authority()
            .ok_or_else(|| format!("{url:?} has no host"))?
            .clone();
        if uri.query().is_some() {
            return Err(format!("{url:?} must not have a query"));
        }
        Ok(Instance {
            url: Arc::from(url),
            scheme,
            authority,
            base_path: uri.path().trim_end_matches('/').to_owned(),
            fails: AtomicU32::new(0),
            down_until: AtomicU64::new(0),
        })
    }

    fn is_up(&self) -> bool {
        self.down_until.load(Ordering::Relaxed) <= now_ms()
    }

    fn target(&self, path_and_query: &PathAndQuery) -> Result<Uri, http::Error> {
        let builder = Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone());
        // Without a base path the request's own (already parsed) path and query are reused.
        if self.base_path.is_empty() {
            builder.path_and_query(path_and_query.clone()).build()
        } else {
            builder
                .path_and_query(format!("{}{path_and_query}", self.base_path))
                .build()
        }
    }
}

/// An upstream: its instances, its client and its passive health.
pub struct Upstream {
    /// Its name.
    pub name: Arc<str>,
    instances: RwLock<Arc<Vec<Arc<Instance>>>>,
    next: AtomicUsize,
    /// A client per serving thread, so a pooled connection is driven by the thread whose
    /// requests use it.
    clients: PerWorker<Client>,
    /// The authorities its `https://` instances are checked against.
    roots: Arc<rustls::RootCertStore>,
    connect_timeout: Duration,
    max_idle: usize,
    http2: bool,
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
        let instances = config
            .instances
            .iter()
            .enumerate()
            .map(|(i, url)| {
                Instance::parse(url)
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
            clients: PerWorker::default(),
            roots,
            connect_timeout: config.connect_timeout.get(),
            max_idle: config.max_idle_per_instance,
            http2: config.http2,
            max_fails: config.max_fails,
            fail_timeout: config.fail_timeout.get(),
            retries: config.retries,
            no_instance: ::metrics::counter!(metrics::NO_INSTANCE, &labels),
            instance_count,
        })
    }

    /// The client of the calling thread.
    fn client(&self) -> &Client {
        self.clients.get_or_init(|| {
            build_client(
                self.http2,
                self.connect_timeout,
                self.max_idle,
                Arc::clone(&self.roots),
            )
        })
    }

    /// Replaces the instances (what a discovery found); those that remain keep their health.
    pub fn replace_instances(&self, urls: &[String]) -> Result<(), String> {
        let current = self.current();
        let fresh = urls
            .iter()
            .map(|url| match current.iter().find(|i| &*i.url == url) {
                Some(kept) => Ok(Arc::clone(kept)),
                None => Instance::parse(url).map(Arc::new),
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

/// The upstream HTTP client.
pub type Client = hyper_util::client::legacy::Client<Connector, body::Body>;

/// A default client (HTTP/1.1, plain or TLS), for fetches the gateway makes itself (JWKS).
pub fn client() -> Client {
    build_client(false, DEFAULT_CONNECT_TIMEOUT.get(), 8, default_roots())
}

fn build_client(
    http2: bool,
    connect_timeout: Duration,
    max_idle: usize,
    roots: Arc<rustls::RootCertStore>,
) -> Client {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    let connector = Connector {
        http,
        tls: tls_connector(http2, roots),
    };
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http2_only(http2)
        .pool_max_idle_per_host(max_idle)
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .build(connector)
}

/// The public roots (webpki), and those of `SSL_CERT_FILE` if set.
fn default_roots() -> Arc<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Ok(path) = std::env::var("SSL_CERT_FILE")
        && let Ok(pem) = std::fs::read(path)
    {
        use rustls_pki_types::pem::PemObject;
        for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem).flatten() {
            let _ = roots.add(cert);
        }
    }
    Arc::new(roots)
}

/// The authorities of the PEM file at `path`.
fn roots_from(path: &Path) -> Result<rustls::RootCertStore, String> {
    use rustls_pki_types::pem::PemObject;
    let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!("{} holds no usable certificate", path.display()));
    }
    Ok(roots)
}

fn tls_connector(http2: bool, roots: Arc<rustls::RootCertStore>) -> tokio_rustls::TlsConnector {
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map(|b| b.with_root_certificates(roots).with_no_client_auth())
    .unwrap_or_else(|_| unreachable!("aws-lc-rs supports the default protocol versions"));
    config.alpn_protocols = if http2 {
        vec![b"h2".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// Opens TCP connections, wrapped in TLS for `https://` instances.
#[derive(Clone)]
pub struct Connector {
    http: HttpConnector,
    tls: tokio_rustls::TlsConnector,
}

/// A connection to an upstream instance.
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl tower::Service<Uri> for Connector {
    type Response = TokioIo<Stream>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.http.call(uri.clone());
        let tls = self.tls.clone();
        Box::pin(async move {
            let tcp = connecting.await?.into_inner();
            if uri.scheme() != Some(&http::uri::Scheme::HTTPS) {
                return Ok(TokioIo::new(Stream::Plain(tcp)));
            }
            let host = uri
                .host()
                .unwrap_or_default()
                .trim_matches(['[', ']'])
                .to_owned();
            let name = rustls_pki_types::ServerName::try_from(host)?;
            let stream = tls.connect(name, tcp).await?;
            Ok(TokioIo::new(Stream::Tls(Box::new(stream))))
        })
    }
}

impl Connection for Stream {
    fn connected(&self) -> Connected {
        match self {
            Stream::Plain(tcp) => tcp.connected(),
            Stream::Tls(tls) => {
                let connected = tls.get_ref().0.connected();
                if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                    connected.negotiated_h2()
                } else {
                    connected
                }
            }
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
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

/// Removes hop-by-hop headers, and those the `Connection` header names; `Upgrade` too unless
/// `upgrade` (then `Connection: upgrade` is kept).
pub fn remove_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        if upgrade && *name == header::UPGRADE {
            continue;
        }
        headers.remove(name);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
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
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

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
    // Only a request without a body can be sent twice; the entrance buffered it, so its size
    // is exact.
    let retryable = idempotent(request.method())
        && http_body::Body::size_hint(request.body()).exact() == Some(0);
    let retryable = retryable && upstream.retries > 0 && upstream.current().len() > 1;
    let (parts, body_in) = request.into_parts();
    let mut body_in = Some(body_in);
    // The head is kept for another attempt only when one may follow: cloning a header map
    // per request is a cost the common case need not pay.
    let mut parts = Some(parts);
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
        let head = match (&parts, retryable) {
            (Some(kept), true) => kept.clone(),
            _ => match parts.take() {
                Some(head) => head,
                None => return body::error(StatusCode::BAD_GATEWAY, "Bad gateway"),
            },
        };
        let mut outgoing =
            http::Request::from_parts(head, body_in.take().unwrap_or_else(body::empty));
        *outgoing.uri_mut() = uri;
        // The version must agree with what the client speaks to this upstream, whatever the
        // client of the gateway spoke.
        if upstream.http2 {
            *outgoing.version_mut() = http::Version::HTTP_2;
        } else {
            *outgoing.version_mut() = http::Version::HTTP_11;
        }
        let started = Instant::now();
        match upstream.client().request(outgoing).await {
            Ok(response) => {
                let status = response.status();
                upstream.record(&instance, matches!(status.as_u16(), 502..=504));
                let mut response =
                    response.map(|b| b.map_err(body::BodyError::from).boxed_unsync());
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
            Err(e) => {
                upstream.record(&instance, true);
                let unsent = e.is_connect();
                tracing::debug!(upstream = %upstream.name, instance = %instance.url, error = %e, "upstream request failed");
                let more = tried.len() <= upstream.retries as usize
                    && tried.len() < upstream.current().len();
                if !(unsent && retryable && more) {
                    return body::error(StatusCode::BAD_GATEWAY, "Bad gateway");
                }
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
        let ip = cx.client_ip.to_string();
        let forwarded_for = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(earlier) => format!("{earlier}, {ip}"),
            None => ip,
        };
        if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
            headers.insert("x-forwarded-for", value);
        }
        headers.insert("x-forwarded-proto", HeaderValue::from_static(cx.scheme));
    }
    if let Some(host) = original_host.or_else(|| {
        cx.and_then(|c| c.host.as_deref())
            .and_then(|h| HeaderValue::from_str(h).ok())
    }) {
        headers.insert("x-forwarded-host", host);
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
