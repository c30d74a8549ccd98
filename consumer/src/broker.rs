//! The connection to RabbitMQ: plain for `amqp://`; for `amqps://`, rustls with the client
//! settings `sluice-connect` builds from the URL (the CA file, how far to verify, the client
//! certificate, the server name) — the relay's own, so a URL that works for one works for the
//! other, and a refused certificate is explained the same way.
//!
//! lapin's own TLS (its `rustls` features) would bring a second TLS set-up and, through
//! `tcp-stream`, a PKCS#12 stack of some forty crates. Instead lapin runs on [`TlsTokio`]:
//! tokio as lapin's default runtime, whose TCP stream may also be a tokio-rustls session,
//! opened by the connect function lapin calls for every (re)connection.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_compat::{Compat, CompatExt};
use async_rs::traits::{Executor, Reactor, RuntimeKit};
use async_rs::util::Task;
use async_rs::{Runtime, Tokio};
use futures::Stream;
use futures::io::{AsyncRead, AsyncWrite};
use lapin::tcp::{AMQPUriTcpExt, AsyncTcpStream};
use lapin::uri::AMQPScheme;
use lapin::{Connection, ConnectionProperties};
use rustls::pki_types::ServerName;
use sluice_connect::amqp::{AmqpTls, Endpoint};

use crate::error::Error;

/// Connects to the broker `endpoint` names.
pub(crate) async fn connect(
    endpoint: &Endpoint,
    properties: ConnectionProperties,
) -> Result<Connection, Error> {
    let connected = match &endpoint.tls {
        None => Connection::connect_uri(endpoint.uri.clone(), properties).await,
        Some(tls) => {
            let (connector, server_name) = session_settings(tls).map_err(|problem| Error::Url {
                field: "amqp_url",
                problem,
            })?;
            Connection::connector(
                endpoint.uri.clone(),
                Runtime::new(TlsTokio(Tokio::current())),
                async move |mut uri, runtime| {
                    // TCP as lapin opens it for amqp://, then the handshake.
                    uri.scheme = AMQPScheme::AMQP;
                    let tcp = match uri.connect_async(&runtime).await? {
                        AsyncTcpStream::Plain(Socket::Plain(tcp)) => tcp.into_inner(),
                        _ => unreachable!("an amqp:// URI opens a plain socket"),
                    };
                    let session = connector.connect(server_name.clone(), tcp).await?;
                    Ok(AsyncTcpStream::Plain(Socket::Tls(Box::new(
                        session.compat(),
                    ))))
                },
                properties,
            )
            .await
        }
    };
    connected.map_err(|source| Error::BrokerConnect {
        broker: endpoint.to_string(),
        remedy: sluice_connect::tls::remedy(&source, "cacertfile"),
        source,
    })
}

/// The TLS connector and the name the broker's certificate must carry; the files are read
/// here, so a missing one fails before anything is sent.
fn session_settings(
    tls: &AmqpTls,
) -> Result<(tokio_rustls::TlsConnector, ServerName<'static>), String> {
    let config = tls.options.client_config()?;
    let name = ServerName::try_from(tls.server_name.clone()).map_err(|e| {
        format!(
            "{:?} is not a server name TLS can verify ({e}): set server_name_indication",
            tls.server_name
        )
    })?;
    Ok((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
}

/// lapin's tokio runtime, with sockets that may be TLS sessions.
#[derive(Debug, Clone)]
struct TlsTokio(Tokio);

impl RuntimeKit for TlsTokio {}

impl Executor for TlsTokio {
    type Task<T: Send + 'static> = <Tokio as Executor>::Task<T>;

    fn block_on<T, F: Future<Output = T>>(&self, f: F) -> T {
        self.0.block_on(f)
    }

    fn spawn<T: Send + 'static, F: Future<Output = T> + Send + 'static>(
        &self,
        f: F,
    ) -> Task<Self::Task<T>> {
        self.0.spawn(f)
    }

    fn spawn_blocking<T: Send + 'static, F: FnOnce() -> T + Send + 'static>(
        &self,
        f: F,
    ) -> Task<Self::Task<T>> {
        self.0.spawn_blocking(f)
    }
}

impl Reactor for TlsTokio {
    type TcpStream = Socket;
    type Sleep = <Tokio as Reactor>::Sleep;

    // The trait bounds `H` by async-rs's own `AsSysFd`, which it does not export: this names
    // what that trait stands for on each platform.
    #[cfg(unix)]
    fn register<H>(
        &self,
        socket: H,
    ) -> io::Result<impl AsyncRead + AsyncWrite + Send + Unpin + 'static>
    where
        H: io::Read + io::Write + std::os::fd::AsFd + std::os::fd::AsRawFd + Send + 'static,
    {
        self.0.register(socket)
    }

    #[cfg(windows)]
    fn register<H>(
        &self,
        socket: H,
    ) -> io::Result<impl AsyncRead + AsyncWrite + Send + Unpin + 'static>
    where
        H: io::Read
            + io::Write
            + std::os::windows::io::AsSocket
            + std::os::windows::io::AsRawSocket
            + Send
            + 'static,
    {
        self.0.register(socket)
    }

    fn sleep(&self, dur: Duration) -> Self::Sleep {
        self.0.sleep(dur)
    }

    fn interval(&self, dur: Duration) -> impl Stream<Item = Instant> + Send + 'static {
        self.0.interval(dur)
    }

    fn tcp_connect_addr(
        &self,
        addr: SocketAddr,
    ) -> impl Future<Output = io::Result<Self::TcpStream>> + Send + 'static {
        let connecting = self.0.tcp_connect_addr(addr);
        async move { connecting.await.map(Socket::Plain) }
    }
}

/// A socket of [`TlsTokio`]: plain TCP, or a TLS session over it.
enum Socket {
    Plain(Compat<tokio::net::TcpStream>),
    Tls(Box<Compat<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>>),
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Plain(s) => Pin::new(s).poll_flush(cx),
            Socket::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Plain(s) => Pin::new(s).poll_close(cx),
            Socket::Tls(s) => Pin::new(&mut **s).poll_close(cx),
        }
    }
}
