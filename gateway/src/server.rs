//! The entrance: the listener (plain or TLS, HTTP/1.1 and HTTP/2), and what every request
//! goes through before its route's stack.
//!
//! In order: an absolute-form request target is refused (400: the gateway is not an open
//! proxy); the path is normalised ([`route::path`](crate::route::path), 400 when it cannot be
//! safely); the route is chosen (404); a body larger than `max_body_bytes` is refused (413)
//! and one not received within `client_timeout` too (408); the client's own user header
//! (`X-User-ID`) is removed. Framing is hyper's: two different `Content-Length`s are refused
//! (400); `Transfer-Encoding: chunked` with a `Content-Length` is read as chunked, the length
//! ignored, and the connection closed after the answer (RFC 9112 §6.3), so nothing can ride
//! along after the body; bodies are forwarded re-framed, so an upstream never reads one
//! differently. A head larger than `max_header_bytes` gets 431. After the route's stack answers, the request is
//! counted and its access-log record handed to the pipeline.

use std::borrow::Cow;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderName, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use sluice_pipeline::Shutdown;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tower::Service;

use crate::body::{self, Response};
use crate::config::GatewayConfig;
use crate::context::{AnsweredFor, CacheStatus, Peer, RequestContext, UpstreamTiming};
use crate::metrics;
use crate::route::path;
use crate::stack::{Gateway, Route, RouteMetrics};
use crate::worker::PerWorker;

/// How long open connections may take to finish once shutdown is asked for.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// One request's access-log record.
#[derive(Debug, Clone)]
pub struct AccessRecord {
    /// When the request's head arrived, Unix milliseconds.
    pub time_unix_ms: u64,
    /// The client's address (`client_ip`).
    pub client: Arc<Peer>,
    /// The method.
    pub method: http::Method,
    /// The path as the client sent it (without the query).
    pub path: String,
    /// The HTTP version.
    pub version: &'static str,
    /// The route, if one matched.
    pub route: Option<Arc<str>>,
    /// The status answered.
    pub status: u16,
    /// Time to the response head, milliseconds.
    pub duration_ms: f64,
    /// The upstream instance that answered, if any.
    pub upstream: Option<Arc<str>>,
    /// The upstream's time to its response head, milliseconds.
    pub upstream_ms: Option<f64>,
    /// `HIT`, `MISS` or `BYPASS` on cached routes.
    pub cache: Option<&'static str>,
    /// The verified user.
    pub user: Option<Arc<str>>,
}

impl AccessRecord {
    /// Appends the record to `out` as one JSON object (the `gateway` source's event payload,
    /// `docs/gateway.md`). Written field by field: the keys are fixed, so only the values are
    /// encoded (by `serde_json`, strings escaped), which is most of what a request costs the
    /// access log.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        fn value<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, key: &str, value: &T) {
            out.extend_from_slice(key.as_bytes());
            // Writing a plain value into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut *out, value);
        }
        value(out, "{\"time_unix_ms\":", &self.time_unix_ms);
        value(out, ",\"client_ip\":", self.client.ip_text());
        value(out, ",\"method\":", self.method.as_str());
        value(out, ",\"path\":", &self.path);
        value(out, ",\"version\":", self.version);
        value(out, ",\"route\":", &self.route.as_deref());
        value(out, ",\"status\":", &self.status);
        value(out, ",\"duration_ms\":", &self.duration_ms);
        value(out, ",\"upstream\":", &self.upstream.as_deref());
        value(out, ",\"upstream_ms\":", &self.upstream_ms);
        value(out, ",\"cache\":", &self.cache);
        value(out, ",\"user\":", &self.user.as_deref());
        out.push(b'}');
    }
}

/// Records a serving thread gathers before handing them on together.
pub const ACCESS_LOG_BATCH: usize = 64;
/// The longest a record waits in its serving thread's batch.
pub const ACCESS_LOG_FLUSH: Duration = Duration::from_millis(10);

/// Where access-log records go: each serving thread gathers its records in a batch of its own,
/// handed to a bounded queue the source drains into the pipeline when full (or every
/// [`ACCESS_LOG_FLUSH`]), so that a request never wakes the pipeline's thread and a slow
/// pipeline sheds records (counted) instead of slowing requests.
#[derive(Clone)]
pub struct AccessLog {
    sender: mpsc::Sender<Vec<AccessRecord>>,
    batches: Arc<PerWorker<Mutex<Vec<AccessRecord>>>>,
    shed: ::metrics::Counter,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog").finish_non_exhaustive()
    }
}

impl AccessLog {
    /// A log holding about `capacity` records (in batches), and its receiving end.
    pub fn new(capacity: usize) -> (Self, mpsc::Receiver<Vec<AccessRecord>>) {
        let (sender, receiver) = mpsc::channel(capacity.div_ceil(ACCESS_LOG_BATCH).max(1));
        let log = AccessLog {
            sender,
            batches: Arc::default(),
            shed: ::metrics::counter!(metrics::ACCESS_LOG_SHED),
        };
        (log, receiver)
    }

    /// Adds `record` to the calling thread's batch, handing the batch on once full.
    pub fn record(&self, record: AccessRecord) {
        let full = {
            let mut batch = self.batch();
            batch.push(record);
            (batch.len() >= ACCESS_LOG_BATCH)
                .then(|| std::mem::replace(&mut *batch, Vec::with_capacity(ACCESS_LOG_BATCH)))
        };
        if let Some(full) = full {
            self.send(full);
        }
    }

    /// Hands on the calling thread's batch, however full.
    pub fn flush(&self) {
        let batch = std::mem::take(&mut *self.batch());
        if !batch.is_empty() {
            self.send(batch);
        }
    }

    /// Flushes the calling thread's batch every [`ACCESS_LOG_FLUSH`]; runs until dropped,
    /// beside the thread's listener.
    pub async fn flush_periodically(&self) {
        let mut ticks = tokio::time::interval(ACCESS_LOG_FLUSH);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            ticks.tick().await;
            self.flush();
        }
    }

    fn batch(&self) -> std::sync::MutexGuard<'_, Vec<AccessRecord>> {
        self.batches
            .get_or_init(|| Mutex::new(Vec::with_capacity(ACCESS_LOG_BATCH)))
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn send(&self, batch: Vec<AccessRecord>) {
        let count = batch.len() as u64;
        if self.sender.try_send(batch).is_err() {
            self.shed.increment(count);
        }
    }

    /// The counter of shed records, for records the pipeline refuses.
    pub fn shed_counter(&self) -> ::metrics::Counter {
        self.shed.clone()
    }
}

/// The entrance's settings and the routes.
pub struct Entrance {
    gateway: Gateway,
    max_body_bytes: usize,
    client_timeout: Duration,
    user_header: HeaderName,
    log: AccessLog,
    /// The metrics of requests no route matched.
    unrouted: RouteMetrics,
}

impl std::fmt::Debug for Entrance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entrance")
            .field("gateway", &self.gateway)
            .finish()
    }
}

/// The gateway's own refusal of a request, counted by `reason`.
pub fn refuse(status: StatusCode, reason: &'static str, message: &str) -> Response {
    ::metrics::counter!(metrics::REFUSED, "reason" => reason).increment(1);
    body::error(status, message)
}

fn version(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2",
        _ => "other",
    }
}

impl Entrance {
    /// The entrance of `gateway` as `config` sets it.
    pub fn new(gateway: Gateway, config: &GatewayConfig, log: AccessLog) -> Self {
        let user_header = gateway.verifier.as_ref().map_or_else(
            || HeaderName::from_static(crate::auth::DEFAULT_HEADER),
            |v| v.header.clone(),
        );
        Entrance {
            gateway,
            max_body_bytes: config.max_body_bytes,
            client_timeout: config.client_timeout.get(),
            user_header,
            log,
            unrouted: RouteMetrics::new("-", "-"),
        }
    }

    /// Answers one request from `peer`.
    pub async fn handle(
        &self,
        request: http::Request<Incoming>,
        peer: Arc<Peer>,
        tls: bool,
    ) -> Response {
        let started = Instant::now();
        let time_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0));
        let method = request.method().clone();
        let raw_path = request.uri().path().to_owned();
        let http_version = request.version();
        let client = Arc::clone(&peer);
        let (route, response) = self.answer(request, peer, tls).await;
        let elapsed = started.elapsed();
        let status = response.status();
        let timing = response.extensions().get::<UpstreamTiming>();
        route.map_or(&self.unrouted, |r| &r.metrics).record(
            status,
            elapsed,
            timing.map(|t| t.duration),
        );
        let route = route.map(|r| Arc::clone(&r.id));
        self.log.record(AccessRecord {
            time_unix_ms,
            client,
            method,
            path: raw_path,
            version: version(http_version),
            route,
            status: status.as_u16(),
            duration_ms: elapsed.as_secs_f64() * 1000.0,
            upstream: timing.map(|t| Arc::clone(&t.instance)),
            upstream_ms: timing.map(|t| t.duration.as_secs_f64() * 1000.0),
            cache: response
                .extensions()
                .get::<CacheStatus>()
                .map(|c| c.as_str()),
            user: response
                .extensions()
                .get::<AnsweredFor>()
                .map(|u| Arc::clone(&u.0)),
        });
        response
    }

    async fn answer(
        &self,
        request: http::Request<Incoming>,
        peer: Arc<Peer>,
        tls: bool,
    ) -> (Option<&Route>, Response) {
        // HTTP/2 requests always carry scheme and authority; in HTTP/1 they mean absolute
        // form, which only a forward proxy accepts.
        if request.version() < http::Version::HTTP_2 && request.uri().scheme().is_some() {
            return (
                None,
                refuse(
                    StatusCode::BAD_REQUEST,
                    "absolute_uri",
                    "Absolute-form request targets are not accepted",
                ),
            );
        }
        // `None` when the path is already normal, as nearly every one is.
        let changed = match path::normalize(request.uri().path()) {
            Ok(Cow::Borrowed(_)) => None,
            Ok(Cow::Owned(normal)) => Some(normal),
            Err(_) => {
                return (
                    None,
                    refuse(
                        StatusCode::BAD_REQUEST,
                        "bad_path",
                        "The request path is not acceptable",
                    ),
                );
            }
        };
        let normal = changed.as_deref().unwrap_or(request.uri().path());
        let host: Option<Arc<str>> = request
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(Arc::from)
            .or_else(|| request.uri().authority().map(|a| Arc::from(a.as_str())));
        let Some((matched, route)) =
            self.gateway
                .router
                .find(normal, host.as_deref(), request.method())
        else {
            return (None, refuse(StatusCode::NOT_FOUND, "no_route", "No route"));
        };
        let route_id = Some(route);
        let rest: Arc<str> = if matched.prefix == "/" {
            Arc::from(normal)
        } else {
            Arc::from(&normal[matched.prefix.len().min(normal.len())..])
        };
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_body_bytes as u64) {
            return (
                route_id,
                refuse(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    "Request body too large",
                ),
            );
        }
        let (mut parts, incoming) = request.into_parts();
        let body = match read_body(incoming, self.max_body_bytes, self.client_timeout).await {
            Ok(body) => body,
            Err(refusal) => return (route_id, refusal),
        };
        parts.headers.remove(&self.user_header);
        // The usual request is already in origin form with a normal path: its URI stays as
        // parsed, and only one that normalisation changed (or an HTTP/2 one, whose URI is
        // absolute) is made again.
        if parts.uri.scheme().is_some() || changed.is_some() {
            let normal = changed.unwrap_or_else(|| parts.uri.path().to_owned());
            let target = match parts.uri.query() {
                Some(query) => format!("{normal}?{query}"),
                None => normal,
            };
            parts.uri = match target.parse() {
                Ok(uri) => uri,
                Err(_) => {
                    return (
                        route_id,
                        refuse(
                            StatusCode::BAD_REQUEST,
                            "bad_path",
                            "The request path is not acceptable",
                        ),
                    );
                }
            };
        }
        parts.extensions.insert(RequestContext {
            route: Arc::clone(&route.id),
            client: peer,
            rest,
            user: None,
            scheme: if tls { "https" } else { "http" },
            host,
        });
        let request = http::Request::from_parts(parts, body_of(body));
        let mut service = route.service.clone();
        let response = match service.call(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        (route_id, response)
    }
}

/// Reads a whole request body of at most `max` bytes within `timeout`; the refusal (413, 408,
/// 400) otherwise.
pub async fn read_body(
    incoming: Incoming,
    max: usize,
    timeout: Duration,
) -> Result<Bytes, Response> {
    // Most requests have none: nothing to wait for.
    if http_body::Body::is_end_stream(&incoming) {
        return Ok(Bytes::new());
    }
    match tokio::time::timeout(
        timeout,
        http_body_util::Limited::new(incoming, max).collect(),
    )
    .await
    {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "Request body too large",
        )),
        Ok(Err(_)) => Err(refuse(
            StatusCode::BAD_REQUEST,
            "bad_body",
            "The request body could not be read",
        )),
        Err(_) => Err(refuse(
            StatusCode::REQUEST_TIMEOUT,
            "client_timeout",
            "The request body was not received in time",
        )),
    }
}

fn body_of(bytes: Bytes) -> body::Body {
    if bytes.is_empty() {
        body::empty()
    } else {
        body::full(bytes)
    }
}

/// Reads the TLS certificate and key of `config`.
pub fn tls_acceptor(
    config: &crate::config::TlsConfig,
) -> Result<tokio_rustls::TlsAcceptor, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(&config.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("tls.cert: cannot read {}: {e}", config.cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "tls.cert: {} holds no certificate",
            config.cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&config.key).map_err(|e| {
        format!(
            "tls.key: cannot read a private key from {}: {e}",
            config.key.display()
        )
    })?;
    let mut server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| format!("tls: the certificate and key do not work together: {e}"))?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(server)))
}

/// What answers the requests of a listener.
pub trait Handler: Send + Sync + 'static {
    /// Answers `request` from `peer` (over TLS if `tls`).
    fn handle(
        &self,
        request: http::Request<Incoming>,
        peer: Arc<Peer>,
        tls: bool,
    ) -> impl Future<Output = Response> + Send;
}

impl Handler for Entrance {
    fn handle(
        &self,
        request: http::Request<Incoming>,
        peer: Arc<Peer>,
        tls: bool,
    ) -> impl Future<Output = Response> + Send {
        Entrance::handle(self, request, peer, tls)
    }
}

/// A listener's limits on its clients.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How long a client may take to send a request head (and a TLS handshake).
    pub client_timeout: Duration,
    /// The largest request head.
    pub max_header_bytes: usize,
}

/// Serves `listener` with `handler` until `shutdown`, then lets open connections finish (up
/// to [`DRAIN_TIMEOUT`]).
pub async fn serve<H: Handler>(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    handler: Arc<H>,
    limits: Limits,
    shutdown: &Shutdown,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.client_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    let builder = Arc::new(builder);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let handshake_timeout = limits.client_timeout;
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
            () = shutdown.requested() => break,
        };
        let _ = stream.set_nodelay(true);
        let handler = Arc::clone(&handler);
        let builder = Arc::clone(&builder);
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            let secure = tls.is_some();
            let client = Arc::new(Peer::new(peer));
            let service = hyper::service::service_fn(move |request| {
                let handler = Arc::clone(&handler);
                let client = Arc::clone(&client);
                async move { Ok::<_, Infallible>(handler.handle(request, client, secure).await) }
            });
            let result = match tls {
                None => {
                    let connection =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    watcher.watch(connection.into_owned()).await
                }
                Some(acceptor) => {
                    let Ok(Ok(stream)) =
                        tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await
                    else {
                        return;
                    };
                    let connection =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    watcher.watch(connection.into_owned()).await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
        });
    }
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after {DRAIN_TIMEOUT:?}: closing them");
    }
}
