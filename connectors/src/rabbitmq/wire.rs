//! sluice's own AMQP 0-9-1 connection: the socket, the frames on it and the handshake.
//!
//! The connection runs over any async byte stream: a TCP socket for `amqp://`, a rustls
//! session on one for `amqps://`.
//!
//! The sink publishes thousands of messages a second and needs little of a general client:
//! a handful of channels in confirm mode, a few declarations, and the broker's answers. So the
//! frames of each publish are encoded straight into one write buffer that is flushed in as few
//! writes as the socket takes, and frames are parsed from one read buffer, all on the sink's own
//! task: no I/O thread, no per-message future, no lock (ADR 0009). The codec of methods,
//! properties and field tables is `amq-protocol`'s; only the publish, whose cost counts, is
//! encoded by hand.

use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use amq_protocol::frame::{AMQPFrame, WriteContext, gen_frame, parse_frame};
use amq_protocol::protocol::{AMQPClass, BasicProperties, basic, connection, constants};
use amq_protocol::types::generation::SerializeFn;
use amq_protocol::types::{AMQPValue, FieldTable, LongString, ShortString};
use amq_protocol::uri::{AMQPUri, SASLMechanism};
use rustls::pki_types::ServerName;
use sluice_pipeline::ErrorKind;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

use sluice_connect::amqp::{AmqpTls, Endpoint};

/// A channel number.
pub(crate) type ChannelId = u16;

/// Bytes read from the socket at a time (at least).
const READ_CHUNK: usize = 64 * 1024;
/// Every frame: type (1), channel (2), size (4), then the payload and the end octet.
const FRAME_OVERHEAD: usize = 8;
/// The frame size asked for when the broker allows any (RabbitMQ's default).
const DEFAULT_FRAME_MAX: u32 = 128 * 1024;

/// What the connection runs over: a TCP socket, or a TLS session on one.
pub(crate) trait Transport: AsyncRead + AsyncWrite + Unpin + Send {}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Transport for S {}

/// Why the connection cannot go on.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WireError {
    /// The socket failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The TLS handshake failed; the text says what to change when it is the certificate.
    #[error("TLS handshake with {server} failed{remedy}")]
    Tls {
        /// The name the broker's certificate was checked against.
        server: String,
        /// `: what to change`, or nothing.
        remedy: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The broker closed the TCP connection.
    #[error("the broker closed the connection without a word")]
    Eof,
    /// The broker closed the connection with a reason.
    #[error("the broker closed the connection: {code} {text}")]
    ConnectionClosed {
        /// The AMQP reply code.
        code: u16,
        /// The broker's explanation.
        text: String,
    },
    /// The broker closed a channel with a reason.
    #[error("the broker closed channel {channel}: {code} {text}")]
    ChannelClosed {
        /// Which channel.
        channel: ChannelId,
        /// The AMQP reply code.
        code: u16,
        /// The broker's explanation.
        text: String,
    },
    /// A frame that does not parse, or that makes no sense where it came.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// Nothing came from the broker for two heartbeat intervals.
    #[error("no frame from the broker for {0:?} (two heartbeat intervals)")]
    MissedHeartbeats(Duration),
    /// Connecting took too long.
    #[error("connecting took longer than {0:?}")]
    Timeout(Duration),
    /// Nothing to send on: the connection is gone.
    #[error("not connected")]
    NotConnected,
    /// The connection was refused because of its settings.
    #[error("{0}")]
    Refused(String),
    /// The node nacked one message this many times in a row: another node of the cluster
    /// may take it.
    #[error("the node nacked a message {0} times in a row")]
    Nacking(u32),
}

/// The AMQP reply code of "no such exchange or queue".
const NOT_FOUND: u16 = 404;
/// AMQP reply codes for which retrying cannot help: access refused, not found, precondition
/// failed, not allowed, invalid path, not implemented.
const CONFIG_CODES: [u16; 6] = [403, NOT_FOUND, 406, 530, 402, 540];
/// AMQP reply codes that mean one side broke the protocol: frame error, syntax error, command
/// invalid, channel error, unexpected frame.
const PROTOCOL_CODES: [u16; 5] = [501, 502, 503, 504, 505];

impl WireError {
    /// The one place that says which failures are worth retrying: refusals and mismatches in
    /// what was asked for are configuration errors, broken frames are protocol errors, and
    /// everything else (I/O, a forced close, missed heartbeats) is a connection error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            WireError::ConnectionClosed { code, .. } | WireError::ChannelClosed { code, .. } => {
                if CONFIG_CODES.contains(code) {
                    ErrorKind::Config
                } else if PROTOCOL_CODES.contains(code) {
                    ErrorKind::Protocol
                } else {
                    ErrorKind::Connect
                }
            }
            WireError::Protocol(_) => ErrorKind::Protocol,
            WireError::Refused(_) => ErrorKind::Config,
            WireError::Io(_)
            | WireError::Tls { .. }
            | WireError::Eof
            | WireError::MissedHeartbeats(_)
            | WireError::Timeout(_)
            | WireError::Nacking(_)
            | WireError::NotConnected => ErrorKind::Connect,
        }
    }

    /// Whether the broker said the thing asked for does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, WireError::ChannelClosed { code, .. } if *code == NOT_FOUND)
    }
}

/// Heartbeat bookkeeping: a frame goes out when nothing else has for half the interval, and
/// the connection is dead when nothing has come in for two.
struct Heartbeat {
    interval: Duration,
    timer: Pin<Box<Sleep>>,
    last_read: Instant,
    last_write: Instant,
}

/// An open AMQP connection (the handshake done).
pub(crate) struct Wire {
    stream: Box<dyn Transport>,
    /// Bytes read; only `..read_end` holds data (the rest is room to read into).
    read: Vec<u8>,
    /// Where the unparsed bytes of `read` start.
    read_at: usize,
    /// Where the bytes read end.
    read_end: usize,
    write: Vec<u8>,
    /// How much of `write` the socket has taken.
    written: usize,
    frame_max: usize,
    heartbeat: Option<Heartbeat>,
}

impl Wire {
    /// Connects to the broker at `uri` and opens the connection, in at most `timeout` (or the
    /// url's `connection_timeout`, in milliseconds). `name` is shown in the broker's management
    /// UI; `channels` is how many channels the connection must allow.
    pub async fn open(
        endpoint: &Endpoint,
        name: &str,
        timeout: Duration,
        channels: u16,
    ) -> Result<Wire, WireError> {
        let timeout = endpoint
            .uri
            .query
            .connection_timeout
            .map_or(timeout, Duration::from_millis);
        match tokio::time::timeout(timeout, Wire::handshake(endpoint, name, channels)).await {
            Ok(result) => result,
            Err(_) => Err(WireError::Timeout(timeout)),
        }
    }

    /// A connection on `stream` before the handshake: frames no larger than the protocol's
    /// minimum until the broker tunes it, and no heartbeat.
    fn new(stream: Box<dyn Transport>) -> Wire {
        Wire {
            stream,
            read: vec![0; READ_CHUNK],
            read_at: 0,
            read_end: 0,
            write: Vec::with_capacity(READ_CHUNK),
            written: 0,
            frame_max: constants::FRAME_MIN_SIZE as usize,
            heartbeat: None,
        }
    }

    async fn handshake(endpoint: &Endpoint, name: &str, channels: u16) -> Result<Wire, WireError> {
        let uri = &endpoint.uri;
        let authority = &uri.authority;
        let tcp = TcpStream::connect((authority.host.as_str(), authority.port)).await?;
        tcp.set_nodelay(true)?;
        let stream: Box<dyn Transport> = match &endpoint.tls {
            Some(tls) => Box::new(tls_session(tls, tcp).await?),
            None => Box::new(tcp),
        };
        let mut wire = Wire::new(stream);
        wire.write.extend_from_slice(b"AMQP\x00\x00\x09\x01");
        let start = match wire.next_method(0).await? {
            AMQPClass::Connection(connection::AMQPMethod::Start(start)) => start,
            other => return Err(unexpected("connection.start", &other)),
        };
        let mechanism = endpoint.mechanism();
        let mechanisms = String::from_utf8_lossy(start.mechanisms.as_bytes()).into_owned();
        if !mechanisms.split(' ').any(|m| m == mechanism.name()) {
            return Err(WireError::Refused(format!(
                "the broker does not offer {} authentication (it offers {mechanisms:?}){}",
                mechanism.name(),
                if mechanism == SASLMechanism::External {
                    ": enable the rabbitmq_auth_mechanism_ssl plugin and EXTERNAL in auth_mechanisms"
                } else {
                    ""
                }
            )));
        }
        // EXTERNAL: the broker takes the user from the client certificate.
        let response = match mechanism {
            SASLMechanism::External => String::new(),
            _ => format!(
                "\0{}\0{}",
                authority.userinfo.username, authority.userinfo.password
            ),
        };
        wire.send(0, start_ok(name, mechanism, response))?;
        let tune = match wire.next_method(0).await? {
            AMQPClass::Connection(connection::AMQPMethod::Tune(tune)) => tune,
            other => return Err(unexpected("connection.tune", &other)),
        };
        let tuned = negotiate(uri, &tune, channels)?;
        wire.frame_max = tuned.frame_max as usize;
        let heartbeat = Duration::from_secs(u64::from(tuned.heartbeat));
        wire.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(tuned)),
        )?;
        wire.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: short(&uri.vhost)?,
            })),
        )?;
        match wire.next_method(0).await? {
            AMQPClass::Connection(connection::AMQPMethod::OpenOk(_)) => {}
            other => return Err(unexpected("connection.open-ok", &other)),
        }
        let now = Instant::now();
        wire.heartbeat = (!heartbeat.is_zero()).then(|| Heartbeat {
            interval: heartbeat,
            timer: Box::pin(tokio::time::sleep(heartbeat / 2)),
            last_read: now,
            last_write: now,
        });
        Ok(wire)
    }

    /// Queues `method` on `channel`.
    pub fn send(&mut self, channel: ChannelId, method: AMQPClass) -> Result<(), WireError> {
        let frame = AMQPFrame::Method(channel, method);
        self.encode(gen_frame(&frame))
    }

    /// Queues the frames of one `basic.publish` on `channel`.
    pub fn publish(
        &mut self,
        channel: ChannelId,
        exchange: &str,
        routing_key: &str,
        mandatory: bool,
        properties: &BasicProperties,
        body: &[u8],
    ) -> Result<(), WireError> {
        let start = self.write.len();
        let b = &mut self.write;
        // basic.publish: class 60, method 40, reserved ticket, exchange, routing key, bits.
        b.push(constants::FRAME_METHOD);
        b.extend_from_slice(&channel.to_be_bytes());
        let size = 4 + 2 + 1 + exchange.len() + 1 + routing_key.len() + 1;
        b.extend_from_slice(&(size as u32).to_be_bytes());
        b.extend_from_slice(&60u16.to_be_bytes());
        b.extend_from_slice(&40u16.to_be_bytes());
        b.extend_from_slice(&0u16.to_be_bytes());
        // A name that does not fit leaves nothing of this publish behind in the buffer.
        if let Err(error) = put_short(b, exchange).and_then(|()| put_short(b, routing_key)) {
            self.write.truncate(start);
            return Err(error);
        }
        let b = &mut self.write;
        b.push(u8::from(mandatory));
        b.push(constants::FRAME_END);
        // The content header: class 60, weight 0, body size, then the properties.
        b.push(constants::FRAME_HEADER);
        b.extend_from_slice(&channel.to_be_bytes());
        let size_at = b.len();
        b.extend_from_slice(&[0; 4]);
        b.extend_from_slice(&60u16.to_be_bytes());
        b.extend_from_slice(&0u16.to_be_bytes());
        b.extend_from_slice(&(body.len() as u64).to_be_bytes());
        if let Err(error) = self.encode(basic::gen_properties(properties)) {
            self.write.truncate(start);
            return Err(error);
        }
        let b = &mut self.write;
        let size = b.len() - size_at - 4;
        b[size_at..size_at + 4].copy_from_slice(&(size as u32).to_be_bytes());
        b.push(constants::FRAME_END);
        for chunk in body.chunks(self.frame_max - FRAME_OVERHEAD) {
            b.push(constants::FRAME_BODY);
            b.extend_from_slice(&channel.to_be_bytes());
            b.extend_from_slice(&(chunk.len() as u32).to_be_bytes());
            b.extend_from_slice(chunk);
            b.push(constants::FRAME_END);
        }
        Ok(())
    }

    /// Writes what is queued, as far as the socket takes it, and parses every complete frame
    /// that has arrived into `frames`. Registers `cx` to be woken when more can be written or
    /// read or a heartbeat is due; fails when the connection cannot go on.
    pub fn poll_io(
        &mut self,
        cx: &mut Context<'_>,
        frames: &mut Vec<AMQPFrame>,
    ) -> Result<(), WireError> {
        self.poll_heartbeat(cx)?;
        self.poll_flush(cx)?;
        self.poll_read(cx, frames)
    }

    /// Queues a heartbeat when one is due; fails when the broker has gone quiet.
    fn poll_heartbeat(&mut self, cx: &mut Context<'_>) -> Result<(), WireError> {
        let Some(heartbeat) = &mut self.heartbeat else {
            return Ok(());
        };
        while heartbeat.timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            if now.duration_since(heartbeat.last_read) > heartbeat.interval * 2 {
                return Err(WireError::MissedHeartbeats(heartbeat.interval * 2));
            }
            if now.duration_since(heartbeat.last_write) >= heartbeat.interval / 2
                && self.write.len() == self.written
            {
                self.write.extend_from_slice(&[
                    constants::FRAME_HEARTBEAT,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    constants::FRAME_END,
                ]);
            }
            let next = tokio::time::Instant::from_std(now + heartbeat.interval / 2);
            heartbeat.timer.as_mut().reset(next);
        }
        Ok(())
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Result<(), WireError> {
        while self.written < self.write.len() {
            match Pin::new(&mut self.stream).poll_write(cx, &self.write[self.written..]) {
                Poll::Ready(Ok(0)) => return Err(WireError::Eof),
                Poll::Ready(Ok(n)) => self.written += n,
                Poll::Ready(Err(error)) => return Err(error.into()),
                Poll::Pending => break,
            }
        }
        if self.written > 0 {
            if let Some(heartbeat) = &mut self.heartbeat {
                heartbeat.last_write = Instant::now();
            }
            if self.written == self.write.len() {
                self.write.clear();
            } else {
                self.write.drain(..self.written);
            }
            self.written = 0;
        }
        // A TLS session keeps what the socket did not take yet (and registers `cx` for when it
        // can); a socket has nothing to flush.
        match Pin::new(&mut self.stream).poll_flush(cx) {
            Poll::Ready(Err(error)) => Err(error.into()),
            Poll::Ready(Ok(())) | Poll::Pending => Ok(()),
        }
    }

    fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        frames: &mut Vec<AMQPFrame>,
    ) -> Result<(), WireError> {
        loop {
            self.parse(frames)?;
            if self.read_at > 0 {
                self.read.copy_within(self.read_at..self.read_end, 0);
                self.read_end -= self.read_at;
                self.read_at = 0;
            }
            if self.read.len() - self.read_end < READ_CHUNK {
                self.read.resize(self.read_end + READ_CHUNK, 0);
            }
            let mut buf = ReadBuf::new(&mut self.read[self.read_end..]);
            match Pin::new(&mut self.stream).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) => {
                    let n = buf.filled().len();
                    if n == 0 {
                        return Err(WireError::Eof);
                    }
                    self.read_end += n;
                    if let Some(heartbeat) = &mut self.heartbeat {
                        heartbeat.last_read = Instant::now();
                    }
                }
                Poll::Ready(Err(error)) => return Err(error.into()),
                Poll::Pending => return Ok(()),
            }
        }
    }

    /// Moves every complete frame of the read buffer to `frames`.
    fn parse(&mut self, frames: &mut Vec<AMQPFrame>) -> Result<(), WireError> {
        loop {
            let rest = &self.read[self.read_at..self.read_end];
            if rest.len() < FRAME_OVERHEAD - 1 {
                return Ok(());
            }
            if rest.starts_with(b"AMQP") {
                // A broker answers a protocol version it does not speak with its own header.
                return Err(WireError::Protocol(format!(
                    "the broker does not speak AMQP 0-9-1 (it answered {:?})",
                    String::from_utf8_lossy(&rest[..rest.len().min(8)])
                )));
            }
            let size = u32::from_be_bytes([rest[3], rest[4], rest[5], rest[6]]) as usize;
            if size > self.frame_max.max(constants::FRAME_MIN_SIZE as usize) {
                return Err(WireError::Protocol(format!(
                    "a frame of {size} bytes, larger than the negotiated {}",
                    self.frame_max
                )));
            }
            let whole = size + FRAME_OVERHEAD;
            if rest.len() < whole {
                return Ok(());
            }
            let frame = match parse_frame(&rest[..whole]) {
                Ok((_, frame)) => frame,
                Err(error) => {
                    return Err(WireError::Protocol(format!("unparsable frame: {error}")));
                }
            };
            self.read_at += whole;
            if !matches!(frame, AMQPFrame::Heartbeat) {
                frames.push(frame);
            }
        }
    }

    /// Waits for the next method on `channel` (during the handshake, when nothing else is
    /// open). A `connection.close` becomes the error it reports.
    async fn next_method(&mut self, channel: ChannelId) -> Result<AMQPClass, WireError> {
        let mut frames = Vec::new();
        poll_fn(|cx| {
            self.poll_io(cx, &mut frames)?;
            if frames.is_empty() {
                Poll::Pending
            } else {
                Poll::Ready(Ok::<_, WireError>(()))
            }
        })
        .await?;
        let mut frames = frames.into_iter();
        let first = frames.next();
        if frames.next().is_some() {
            return Err(WireError::Protocol(
                "the broker sent more than one frame where one answer was due".to_owned(),
            ));
        }
        match first {
            Some(AMQPFrame::Method(
                _,
                AMQPClass::Connection(connection::AMQPMethod::Close(close)),
            )) => Err(WireError::ConnectionClosed {
                code: close.reply_code,
                text: close.reply_text.to_string(),
            }),
            Some(AMQPFrame::Method(on, method)) if on == channel => Ok(method),
            other => Err(WireError::Protocol(format!(
                "expected a method on channel {channel}, got {other:?}"
            ))),
        }
    }

    /// Runs a `cookie-factory` serializer into the write buffer.
    fn encode(&mut self, serialize: impl SerializeFn<Vec<u8>>) -> Result<(), WireError> {
        let buffer = std::mem::take(&mut self.write);
        match serialize(WriteContext::from(buffer)) {
            Ok(context) => {
                self.write = context.into_inner().0;
                Ok(())
            }
            Err(error) => Err(WireError::Protocol(format!(
                "cannot encode a frame: {error}"
            ))),
        }
    }
}

/// A TLS session with the broker on `tcp`, verified as `tls` says.
async fn tls_session(
    tls: &AmqpTls,
    tcp: TcpStream,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, WireError> {
    let config = tls.options.client_config().map_err(WireError::Refused)?;
    let server = ServerName::try_from(tls.server_name.clone()).map_err(|e| {
        WireError::Refused(format!(
            "{:?} is not a name a certificate can carry: {e} (set server_name_indication)",
            tls.server_name
        ))
    })?;
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(server, tcp)
        .await
        .map_err(|source| WireError::Tls {
            server: tls.server_name.clone(),
            remedy: sluice_connect::tls::remedy(&source, "cacertfile")
                .map(|r| format!(": {r}"))
                .unwrap_or_default(),
            source,
        })
}

fn start_ok(name: &str, mechanism: SASLMechanism, response: String) -> AMQPClass {
    let mut capabilities = FieldTable::default();
    for capability in [
        "publisher_confirms",
        "basic.nack",
        "connection.blocked",
        "authentication_failure_close",
    ] {
        capabilities.insert(capability.into(), AMQPValue::Boolean(true));
    }
    let mut properties = FieldTable::default();
    properties.insert("product".into(), AMQPValue::LongString("sluice".into()));
    properties.insert(
        "version".into(),
        AMQPValue::LongString(env!("CARGO_PKG_VERSION").into()),
    );
    properties.insert(
        "connection_name".into(),
        AMQPValue::LongString(format!("sluice {name}").as_str().into()),
    );
    properties.insert("capabilities".into(), AMQPValue::FieldTable(capabilities));
    AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
        client_properties: properties,
        mechanism: mechanism.name().into(),
        response: LongString::from(response.into_bytes()),
        locale: "en_US".into(),
    }))
}

/// The `connection.tune-ok`: `channels`, and the frame size and heartbeat (seconds, 0 for
/// none) the url sets, within what the broker allows.
fn negotiate(
    uri: &AMQPUri,
    tune: &connection::Tune,
    channels: u16,
) -> Result<connection::TuneOk, WireError> {
    let broker_channels = if tune.channel_max == 0 {
        u16::MAX
    } else {
        tune.channel_max
    };
    if broker_channels < channels {
        return Err(WireError::Refused(format!(
            "the broker allows {broker_channels} channels per connection and sluice needs {channels}"
        )));
    }
    let wanted = uri.query.frame_max.unwrap_or(DEFAULT_FRAME_MAX);
    let frame_max = match (wanted, tune.frame_max) {
        (0, 0) => DEFAULT_FRAME_MAX,
        (0, broker) => broker,
        (wanted, 0) => wanted,
        (wanted, broker) => wanted.min(broker),
    }
    .max(constants::FRAME_MIN_SIZE);
    Ok(connection::TuneOk {
        channel_max: channels,
        frame_max,
        heartbeat: uri.query.heartbeat.unwrap_or(tune.heartbeat),
    })
}

fn put_short(buffer: &mut Vec<u8>, s: &str) -> Result<(), WireError> {
    let len = u8::try_from(s.len())
        .map_err(|_| WireError::Protocol(format!("{s:?} is longer than 255 bytes")))?;
    buffer.push(len);
    buffer.extend_from_slice(s.as_bytes());
    Ok(())
}

/// `name` as a short string, or the error that says why it cannot be one.
pub(crate) fn short(name: &str) -> Result<ShortString, WireError> {
    ShortString::try_new(name)
        .map_err(|_| WireError::Refused(format!("{name:?} is longer than 255 bytes")))
}

pub(crate) fn unexpected(expected: &str, got: &AMQPClass) -> WireError {
    WireError::Protocol(format!("expected {expected}, got {got:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::protocol::BasicProperties;

    /// One frame as it goes on the socket: type, channel, payload.
    struct Frame<'a> {
        kind: u8,
        channel: ChannelId,
        payload: &'a [u8],
    }

    /// Splits `bytes` into frames, checking each one's size and end octet.
    fn frames(mut bytes: &[u8]) -> Vec<Frame<'_>> {
        let mut frames = Vec::new();
        while !bytes.is_empty() {
            let (head, rest) = bytes.split_at(7);
            let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]) as usize;
            assert!(rest.len() > size, "a frame of {size} bytes is cut short");
            assert_eq!(rest[size], constants::FRAME_END, "the frame's end octet");
            frames.push(Frame {
                kind: head[0],
                channel: u16::from_be_bytes([head[1], head[2]]),
                payload: &rest[..size],
            });
            bytes = &rest[size + 1..];
        }
        frames
    }

    fn u16_at(bytes: &[u8], at: usize) -> u16 {
        u16::from_be_bytes([bytes[at], bytes[at + 1]])
    }

    /// A short string at the front of `bytes`, and what follows it.
    fn short_string(bytes: &[u8]) -> (&str, &[u8]) {
        let len = bytes[0] as usize;
        let text = std::str::from_utf8(&bytes[1..=len]).expect("a short string is UTF-8");
        (text, &bytes[1 + len..])
    }

    /// A connection that writes into its buffer only (nothing is flushed in these tests).
    fn wire(frame_max: usize) -> Wire {
        let (stream, _peer) = tokio::io::duplex(64);
        let mut wire = Wire::new(Box::new(stream));
        wire.frame_max = frame_max;
        wire
    }

    fn properties() -> BasicProperties {
        let mut headers = FieldTable::default();
        headers.insert(
            "traceparent".into(),
            AMQPValue::LongString("00-ab-01".into()),
        );
        BasicProperties::default()
            .with_message_id("event-7".into())
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_timestamp(1_700_000_000)
            .with_headers(headers)
    }

    /// Publishes `body` and parses the frames back: the method's fields, the content header's
    /// class, weight, size and properties, and the body frames, each within `frame_max`.
    fn round_trip(frame_max: usize, mandatory: bool, body: &[u8]) -> Vec<usize> {
        let mut wire = wire(frame_max);
        wire.publish(
            5,
            "outbox.order",
            "OrderCreated",
            mandatory,
            &properties(),
            body,
        )
        .unwrap();
        let frames = frames(&wire.write);
        assert!(frames.len() >= 2, "a method and a content header at least");
        assert!(
            frames.iter().all(|f| f.channel == 5),
            "every frame on channel 5"
        );

        let method = &frames[0];
        assert_eq!(method.kind, constants::FRAME_METHOD);
        assert_eq!(
            (u16_at(method.payload, 0), u16_at(method.payload, 2)),
            (60, 40),
            "basic.publish"
        );
        assert_eq!(u16_at(method.payload, 4), 0, "the reserved ticket");
        let (exchange, rest) = short_string(&method.payload[6..]);
        let (routing_key, rest) = short_string(rest);
        assert_eq!((exchange, routing_key), ("outbox.order", "OrderCreated"));
        assert_eq!(rest, [u8::from(mandatory)], "mandatory, and not immediate");

        let header = &frames[1];
        assert_eq!(header.kind, constants::FRAME_HEADER);
        assert_eq!(u16_at(header.payload, 0), 60, "the content class");
        assert_eq!(u16_at(header.payload, 2), 0, "the weight");
        let size = u64::from_be_bytes(header.payload[4..12].try_into().unwrap());
        assert_eq!(size, body.len() as u64);
        let (rest, parsed) = basic::parse_properties(&header.payload[12..]).unwrap();
        assert!(rest.is_empty(), "{} bytes after the properties", rest.len());
        assert_eq!(parsed, properties());

        let mut received = Vec::new();
        let mut sizes = Vec::new();
        for frame in &frames[2..] {
            assert_eq!(frame.kind, constants::FRAME_BODY);
            assert!(frame.payload.len() + FRAME_OVERHEAD <= frame_max);
            received.extend_from_slice(frame.payload);
            sizes.push(frame.payload.len());
        }
        assert_eq!(received, body, "the body frames join into the body");
        sizes
    }

    #[test]
    fn a_publish_parses_back_with_its_body_split_at_frame_max() {
        let frame_max = constants::FRAME_MIN_SIZE as usize;
        let room = frame_max - FRAME_OVERHEAD;
        let body: Vec<u8> = (0..2 * room + 10).map(|i| (i % 251) as u8).collect();
        assert_eq!(round_trip(frame_max, true, &body), [room, room, 10]);
        assert_eq!(round_trip(frame_max, false, &body[..room]), [room]);
        assert_eq!(round_trip(frame_max, true, b"{}"), [2]);
        assert!(
            round_trip(frame_max, false, b"").is_empty(),
            "no body frame"
        );
    }

    #[test]
    fn publishes_follow_one_another_in_the_buffer() {
        let mut wire = wire(DEFAULT_FRAME_MAX as usize);
        for body in [&b"first"[..], b"second"] {
            wire.publish(1, "x", "r", false, &properties(), body)
                .unwrap();
        }
        let bodies: Vec<&[u8]> = frames(&wire.write)
            .iter()
            .filter(|f| f.kind == constants::FRAME_BODY)
            .map(|f| f.payload)
            .collect();
        assert_eq!(bodies, [&b"first"[..], b"second"]);
    }

    #[test]
    fn a_name_longer_than_a_short_string_is_refused_and_leaves_nothing_behind() {
        let mut wire = wire(DEFAULT_FRAME_MAX as usize);
        wire.publish(1, "e", "first", false, &properties(), b"body")
            .unwrap();
        let before = wire.write.clone();
        let long = "x".repeat(256);
        for (exchange, key) in [(long.as_str(), "r"), ("e", long.as_str())] {
            let error = wire
                .publish(1, exchange, key, false, &properties(), b"body")
                .unwrap_err();
            assert!(
                error.to_string().contains("longer than 255 bytes"),
                "{error}"
            );
            assert_eq!(wire.write, before, "the refused publish left bytes behind");
        }
    }
}
