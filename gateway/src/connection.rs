//! Connections to upstream instances: opened over TCP (and rustls for `https://`), spoken to
//! with hyper's HTTP/1.1 or HTTP/2 client connections, and kept idle per serving thread, so
//! that a request, its upstream connection and that connection's task stay on one thread and
//! no pool is shared between threads.
//!
//! An HTTP/1.1 connection goes back to its thread's idle list once the response it carried
//! has been read to its end (a connection still carrying a body cannot take another request)
//! and is reused most recently returned first; one that the instance closed in the meantime
//! is dropped when it is next taken, and one idle for [`IDLE_TIMEOUT`] when another comes
//! back. An HTTP/2 connection is shared by all of a thread's requests to the instance. A
//! request that could not be sent (the connection could not be opened, or every idle one was
//! closed before it could be written) is handed back untouched, so it may go elsewhere.

use std::collections::VecDeque;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Uri, header};
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::body::{Body, BodyError, Request};
use crate::worker::PerWorker;

/// How long an idle HTTP/1.1 connection is kept for reuse.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Where an instance is reached.
#[derive(Debug, Clone)]
pub struct Address {
    /// Host name or IP address, as the URL gives it (IPv6 without brackets).
    host: Arc<str>,
    port: u16,
    tls: bool,
    /// The `Host` header an HTTP/1.1 request carries.
    host_header: HeaderValue,
    scheme: Scheme,
    authority: Authority,
}

impl Address {
    /// The address of `scheme://authority`.
    pub fn new(scheme: Scheme, authority: Authority) -> Result<Self, String> {
        let tls = scheme == Scheme::HTTPS;
        let host_header = HeaderValue::from_str(authority.as_str())
            .map_err(|_| format!("{authority} cannot be a Host header"))?;
        Ok(Address {
            host: Arc::from(authority.host().trim_matches(['[', ']'])),
            port: authority.port_u16().unwrap_or(if tls { 443 } else { 80 }),
            tls,
            host_header,
            scheme,
            authority,
        })
    }

    /// The address of a URL's scheme and authority.
    pub fn of(uri: &Uri) -> Result<Self, String> {
        let scheme = uri
            .scheme()
            .filter(|s| **s == Scheme::HTTP || **s == Scheme::HTTPS)
            .ok_or_else(|| format!("{uri} needs an http:// or https:// scheme"))?;
        let authority = uri
            .authority()
            .ok_or_else(|| format!("{uri} has no host"))?;
        Address::new(scheme.clone(), authority.clone())
    }
}

/// Why a request got no response.
#[derive(Debug)]
pub enum SendError {
    /// It was not sent (no connection could be opened); here it is, untouched.
    NotSent(Box<Request>, io::Error),
    /// It was sent, or partly, and the exchange failed.
    Failed(hyper::Error),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::NotSent(_, e) => write!(f, "not sent: {e}"),
            SendError::Failed(e) => write!(f, "{e}"),
        }
    }
}

/// Opens connections to an upstream's instances and sends requests over them.
#[derive(Clone)]
pub struct Connector {
    tls: tokio_rustls::TlsConnector,
    connect_timeout: Duration,
    http2: bool,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("connect_timeout", &self.connect_timeout)
            .field("http2", &self.http2)
            .finish_non_exhaustive()
    }
}

impl Connector {
    /// Connections speaking HTTP/2 if `http2` (prior knowledge over TCP, ALPN over TLS), else
    /// HTTP/1.1, whose TLS trusts `roots`.
    pub fn new(http2: bool, connect_timeout: Duration, roots: Arc<rustls::RootCertStore>) -> Self {
        Connector {
            tls: tls_connector(http2, roots),
            connect_timeout,
            http2,
        }
    }

    /// Whether its connections speak HTTP/2.
    pub fn http2(&self) -> bool {
        self.http2
    }

    /// Sends `request` (whose URI is origin-form: path and query) to `address`, over a
    /// connection of `pool` or a new one.
    pub async fn send(
        &self,
        pool: &Arc<Pool>,
        address: &Address,
        mut request: Request,
    ) -> Result<http::Response<Body>, SendError> {
        if self.http2 {
            return self.send_http2(pool, address, request).await;
        }
        request
            .headers_mut()
            .insert(header::HOST, address.host_header.clone());
        while let Some(mut idle) = pool.take() {
            if idle.ready().await.is_err() {
                continue;
            }
            match idle.try_send_request(request).await {
                Ok(response) => return Ok(returning(response, idle, pool)),
                Err(mut e) => match e.take_message() {
                    // Closed before the request was written: the next one may do.
                    Some(unsent) => request = unsent,
                    None => return Err(SendError::Failed(e.into_error())),
                },
            }
        }
        let (mut sender, connection) = match self.open(address).await {
            Ok(stream) => match http1::handshake(TokioIo::new(stream)).await {
                Ok(opened) => opened,
                Err(e) => return Err(SendError::NotSent(Box::new(request), io::Error::other(e))),
            },
            Err(e) => return Err(SendError::NotSent(Box::new(request), e)),
        };
        tokio::spawn(async move {
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        match sender.send_request(request).await {
            Ok(response) => Ok(returning(response, sender, pool)),
            Err(e) => Err(SendError::Failed(e)),
        }
    }

    async fn send_http2(
        &self,
        pool: &Arc<Pool>,
        address: &Address,
        mut request: Request,
    ) -> Result<http::Response<Body>, SendError> {
        // HTTP/2 names the target in pseudo-headers: the URI is absolute.
        let mut target = request.uri().clone().into_parts();
        target.scheme = Some(address.scheme.clone());
        target.authority = Some(address.authority.clone());
        if let Ok(uri) = Uri::from_parts(target) {
            *request.uri_mut() = uri;
        }
        request.headers_mut().remove(header::HOST);
        let mut sender = match pool.shared() {
            Some(sender) => sender,
            None => {
                let stream = match self.open(address).await {
                    Ok(stream) => stream,
                    Err(e) => return Err(SendError::NotSent(Box::new(request), e)),
                };
                let (sender, connection) = match http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .handshake(TokioIo::new(stream))
                    .await
                {
                    Ok(opened) => opened,
                    Err(e) => {
                        return Err(SendError::NotSent(Box::new(request), io::Error::other(e)));
                    }
                };
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(error = %e, "upstream connection ended with an error");
                    }
                });
                pool.share(sender.clone());
                sender
            }
        };
        match sender.send_request(request).await {
            Ok(response) => Ok(response.map(|b| boxed(b, None))),
            Err(e) => Err(SendError::Failed(e)),
        }
    }

    /// A TCP connection to `address`, in TLS for `https://`, within the connect timeout.
    async fn open(&self, address: &Address) -> io::Result<Stream> {
        let opening = async {
            let tcp = TcpStream::connect((&*address.host, address.port)).await?;
            tcp.set_nodelay(true)?;
            if !address.tls {
                return Ok(Stream::Plain(tcp));
            }
            let name = rustls_pki_types::ServerName::try_from(address.host.to_string())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            let tls = self.tls.connect(name, tcp).await?;
            Ok(Stream::Tls(Box::new(tls)))
        };
        tokio::time::timeout(self.connect_timeout, opening)
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no connection within {:?}", self.connect_timeout),
                )
            })?
    }
}

/// The gateway's own requests to one server (a JWKS URL's): HTTP/1.1, trusting the public
/// roots and `SSL_CERT_FILE`.
#[derive(Debug)]
pub struct Client {
    connector: Connector,
    pool: Arc<Pool>,
    address: Address,
}

impl Client {
    /// A client of the server of `url`.
    pub fn new(url: &Uri) -> Result<Self, String> {
        Ok(Client {
            connector: Connector::new(
                false,
                crate::proxy::DEFAULT_CONNECT_TIMEOUT.get(),
                default_roots(),
            ),
            pool: Arc::new(Pool::new(1)),
            address: Address::of(url)?,
        })
    }

    /// `GET url` (on this client's server).
    pub async fn get(&self, url: &Uri) -> Result<http::Response<Body>, SendError> {
        let target = url.path_and_query().map_or("/", |p| p.as_str());
        let mut request = http::Request::new(crate::body::empty());
        *request.uri_mut() = Uri::try_from(target).unwrap_or_else(|_| Uri::from_static("/"));
        self.connector
            .send(&self.pool, &self.address, request)
            .await
    }
}

/// The reusable connections of one instance, per serving thread.
#[derive(Default)]
pub struct Pool {
    idle: PerWorker<Mutex<VecDeque<Idle>>>,
    shared: PerWorker<Mutex<Option<http2::SendRequest<Body>>>>,
    max_idle: usize,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("max_idle", &self.max_idle)
            .finish_non_exhaustive()
    }
}

struct Idle {
    sender: http1::SendRequest<Body>,
    since: Instant,
}

impl Pool {
    /// A pool keeping up to `max_idle` idle HTTP/1.1 connections per serving thread.
    pub fn new(max_idle: usize) -> Self {
        Pool {
            max_idle,
            ..Pool::default()
        }
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, VecDeque<Idle>> {
        self.idle
            .get_or_init(Mutex::default)
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently returned open connection of this thread.
    fn take(&self) -> Option<http1::SendRequest<Body>> {
        let mut idle = self.idle();
        while let Some(Idle { sender, .. }) = idle.pop_back() {
            if !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    /// Keeps `sender` for the next request; the longest idle go once over the limit or idle
    /// too long.
    fn give_back(&self, sender: http1::SendRequest<Body>) {
        if self.max_idle == 0 {
            return;
        }
        let now = Instant::now();
        let mut idle = self.idle();
        while idle
            .front()
            .is_some_and(|i| idle.len() >= self.max_idle || now - i.since > IDLE_TIMEOUT)
        {
            idle.pop_front();
        }
        idle.push_back(Idle { sender, since: now });
    }

    fn shared(&self) -> Option<http2::SendRequest<Body>> {
        let shared = self
            .shared
            .get_or_init(Mutex::default)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        shared.as_ref().filter(|s| !s.is_closed()).cloned()
    }

    fn share(&self, sender: http2::SendRequest<Body>) {
        *self
            .shared
            .get_or_init(Mutex::default)
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(sender);
    }
}

/// A response whose connection goes back to `pool` once its body has been read to the end.
fn returning(
    response: http::Response<Incoming>,
    sender: http1::SendRequest<Body>,
    pool: &Arc<Pool>,
) -> http::Response<Body> {
    // A switched connection belongs to the tunnel now.
    if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
        return response.map(|b| boxed(b, None));
    }
    let back = Some((sender, Arc::clone(pool)));
    response.map(|b| boxed(b, back))
}

fn boxed(incoming: Incoming, back: Option<(http1::SendRequest<Body>, Arc<Pool>)>) -> Body {
    use http_body_util::BodyExt;
    Returning {
        incoming,
        back,
        ended: false,
    }
    .boxed_unsync()
}

/// An upstream response body that returns its connection when dropped after its end.
struct Returning {
    incoming: Incoming,
    back: Option<(http1::SendRequest<Body>, Arc<Pool>)>,
    ended: bool,
}

impl http_body::Body for Returning {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let frame = ready!(Pin::new(&mut self.incoming).poll_frame(cx));
        if frame.is_none() {
            self.ended = true;
        }
        Poll::Ready(frame.map(|f| f.map_err(BodyError::from)))
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}

impl Drop for Returning {
    fn drop(&mut self) {
        if let Some((sender, pool)) = self.back.take()
            && (self.ended || self.incoming.is_end_stream())
        {
            pool.give_back(sender);
        }
    }
}

/// The public roots (webpki), and those of `SSL_CERT_FILE` if set.
pub fn default_roots() -> Arc<rustls::RootCertStore> {
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
pub fn roots_from(path: &Path) -> Result<rustls::RootCertStore, String> {
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

/// A connection to an upstream instance.
enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
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
