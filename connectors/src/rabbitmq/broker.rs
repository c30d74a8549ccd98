//! The connection to RabbitMQ as the sink uses it: connecting, declaring the configured
//! topology, opening the publishing channels, making sure exchanges exist before messages go to
//! them, publishing, and turning the broker's frames into answers for the lanes.

use std::collections::{HashMap, HashSet};
use std::future::poll_fn;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{AMQPClass, basic, channel, confirm, connection, exchange, queue};
use amq_protocol::types::{AMQPValue, FieldTable, ShortString};
use bytes::Bytes;

use super::config::{Argument, Declare};
use super::lane::{Lane, Returned};
use super::message::Message;
use super::wire::{ChannelId, Wire, WireError, short, unexpected};
use sluice_connect::amqp::Endpoint;

/// How long an exchange found missing is taken as missing before it is checked again.
const MISSING_EXCHANGE_RECHECK: Duration = Duration::from_secs(1);
/// How long closing the connection politely may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Most exchange names remembered as existing (templates could produce many).
const MAX_KNOWN_EXCHANGES: usize = 10_000;
/// The channel for declarations and existence checks; never for publishing.
const CONTROL: ChannelId = 1;
/// The channel of the first lane; lane `i` publishes on `FIRST_LANE + i`.
const FIRST_LANE: ChannelId = 2;

/// Whether an exchange can take messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExchangeState {
    /// It exists (or was just declared).
    Ready,
    /// It does not exist and may not be declared.
    Missing,
}

/// What the broker answered on a publishing channel.
#[derive(Debug)]
pub(crate) enum Answer {
    /// `basic.ack` (`ack`) or `basic.nack` of `tag`, and of every earlier tag if `multiple`.
    Confirm {
        lane: usize,
        tag: u64,
        multiple: bool,
        ack: bool,
    },
    /// `basic.return` with its content: a message no queue took.
    Return {
        lane: usize,
        returned: Box<Returned>,
    },
}

/// A `basic.return` whose content is still arriving.
struct Returning {
    channel: ChannelId,
    reason: String,
    exchange: ShortString,
    routing_key: ShortString,
    properties: Option<amq_protocol::protocol::BasicProperties>,
    size: u64,
    body: Vec<u8>,
}

/// A live connection with its control channel.
pub(crate) struct Broker {
    wire: Wire,
    /// Parsed, not yet handled (kept to reuse its allocation).
    frames: Vec<AMQPFrame>,
    answers: Vec<Answer>,
    returning: Vec<Returning>,
    lanes: usize,
    /// The channel a call waits on, and its reply once it comes.
    awaiting: Option<ChannelId>,
    reply: Option<Result<AMQPClass, WireError>>,
    known: HashSet<ShortString>,
    missing: HashMap<ShortString, Instant>,
    /// Why the broker blocks publishing (`connection.blocked`, a resource alarm), until it
    /// sends `connection.unblocked`.
    blocked: Option<String>,
}

impl Broker {
    /// Connects, declares `declare`, and attaches one confirm-mode channel to each lane.
    pub async fn connect(
        endpoint: &Endpoint,
        name: &str,
        timeout: Duration,
        declare: &Declare,
        lanes: &mut [Lane],
    ) -> Result<Broker, WireError> {
        let channels = FIRST_LANE - 1 + lanes.len() as ChannelId;
        let wire = Wire::open(endpoint, name, timeout, channels).await?;
        let mut known = HashSet::new();
        // The default exchange always exists and cannot be declared.
        known.insert(ShortString::default());
        let mut broker = Broker {
            wire,
            frames: Vec::new(),
            answers: Vec::new(),
            returning: Vec::new(),
            lanes: lanes.len(),
            awaiting: None,
            reply: None,
            known,
            missing: HashMap::new(),
            blocked: None,
        };
        broker.open_channel(CONTROL).await?;
        broker.declare_topology(declare).await?;
        for (i, lane) in lanes.iter_mut().enumerate() {
            let channel = FIRST_LANE + i as ChannelId;
            broker.open_channel(channel).await?;
            let select = confirm::AMQPMethod::Select(confirm::Select { nowait: false });
            broker.call(channel, AMQPClass::Confirm(select)).await?;
            lane.attach();
        }
        broker.known.extend(
            declare
                .exchanges
                .iter()
                .filter_map(|e| ShortString::try_new(e.name.as_str()).ok()),
        );
        Ok(broker)
    }

    async fn open_channel(&mut self, channel: ChannelId) -> Result<(), WireError> {
        let open = channel::AMQPMethod::Open(channel::Open {});
        match self.call(channel, AMQPClass::Channel(open)).await? {
            AMQPClass::Channel(channel::AMQPMethod::OpenOk(_)) => Ok(()),
            other => Err(unexpected("channel.open-ok", &other)),
        }
    }

    /// Makes sure `exchange` exists: declares it as `kind` when given (durable), otherwise
    /// checks it passively. An error here is a connection failure, not a missing exchange.
    pub async fn ensure_exchange(
        &mut self,
        exchange: &ShortString,
        kind: Option<&ShortString>,
    ) -> Result<ExchangeState, WireError> {
        if self.known.contains(exchange) {
            return Ok(ExchangeState::Ready);
        }
        if let Some(since) = self.missing.get(exchange) {
            if since.elapsed() < MISSING_EXCHANGE_RECHECK {
                return Ok(ExchangeState::Missing);
            }
            self.missing.remove(exchange);
        }
        let declare = exchange::Declare {
            exchange: exchange.clone(),
            kind: kind.cloned().unwrap_or_else(|| "direct".into()),
            passive: kind.is_none(),
            durable: true,
            auto_delete: false,
            internal: false,
            nowait: false,
            arguments: FieldTable::default(),
        };
        let declare = AMQPClass::Exchange(exchange::AMQPMethod::Declare(declare));
        match self.call(CONTROL, declare).await {
            Ok(_) => {
                if self.known.len() >= MAX_KNOWN_EXCHANGES {
                    self.known.clear();
                    self.known.insert(ShortString::default());
                }
                self.known.insert(exchange.clone());
                Ok(ExchangeState::Ready)
            }
            Err(error) if error.is_not_found() => {
                // The broker closes a channel whose passive declaration fails.
                self.open_channel(CONTROL).await?;
                self.missing.insert(exchange.clone(), Instant::now());
                Ok(ExchangeState::Missing)
            }
            Err(error) => Err(error),
        }
    }

    async fn declare_topology(&mut self, declare: &Declare) -> Result<(), WireError> {
        for e in &declare.exchanges {
            let method = exchange::AMQPMethod::Declare(exchange::Declare {
                exchange: short(&e.name)?,
                kind: short(&e.kind)?,
                passive: false,
                durable: e.durable,
                auto_delete: e.auto_delete,
                internal: e.internal,
                nowait: false,
                arguments: arguments(&e.arguments)?,
            });
            self.call(CONTROL, AMQPClass::Exchange(method)).await?;
        }
        for q in &declare.queues {
            let method = queue::AMQPMethod::Declare(queue::Declare {
                queue: short(&q.name)?,
                passive: false,
                durable: q.durable,
                exclusive: q.exclusive,
                auto_delete: q.auto_delete,
                nowait: false,
                arguments: arguments(&q.arguments)?,
            });
            self.call(CONTROL, AMQPClass::Queue(method)).await?;
        }
        for b in &declare.bindings {
            let method = queue::AMQPMethod::Bind(queue::Bind {
                queue: short(&b.queue)?,
                exchange: short(&b.exchange)?,
                routing_key: short(&b.routing_key)?,
                nowait: false,
                arguments: arguments(&b.arguments)?,
            });
            self.call(CONTROL, AMQPClass::Queue(method)).await?;
        }
        Ok(())
    }

    /// Sends `method` on `channel` and waits for the broker's reply there; a `channel.close`
    /// in reply becomes the error it reports. Answers to publishes that arrive meanwhile are
    /// kept for [`Broker::poll`].
    async fn call(
        &mut self,
        channel: ChannelId,
        method: AMQPClass,
    ) -> Result<AMQPClass, WireError> {
        self.awaiting = Some(channel);
        self.reply = None;
        let reply = match self.wire.send(channel, method) {
            Ok(()) => {
                poll_fn(|cx| {
                    if let Err(error) = self.poll(cx) {
                        return Poll::Ready(Err(error));
                    }
                    match self.reply.take() {
                        Some(reply) => Poll::Ready(reply),
                        None => Poll::Pending,
                    }
                })
                .await
            }
            Err(error) => Err(error),
        };
        self.awaiting = None;
        reply
    }

    /// Queues the frames of `message` on `lane`'s channel (`mandatory`, so that an unroutable
    /// message comes back); [`Broker::poll`] writes them.
    pub fn publish(&mut self, lane: usize, message: &Message) -> Result<(), WireError> {
        self.wire.publish(
            FIRST_LANE + lane as ChannelId,
            message.exchange.as_str(),
            message.routing_key.as_str(),
            true,
            &message.properties,
            &message.body,
        )
    }

    /// Writes what is queued and reads what arrived; registers `cx` to be woken when there is
    /// more to do. Fails when the connection cannot go on; answers that arrived before the
    /// failure are in [`Broker::answers`] all the same.
    pub fn poll(&mut self, cx: &mut Context<'_>) -> Result<(), WireError> {
        let mut frames = std::mem::take(&mut self.frames);
        let polled = self.wire.poll_io(cx, &mut frames);
        let mut handled = Ok(());
        for frame in frames.drain(..) {
            handled = self.on_frame(frame);
            if handled.is_err() {
                break;
            }
        }
        frames.clear();
        self.frames = frames;
        polled.and(handled)
    }

    /// Why the broker blocks publishing on this connection, while it does.
    pub fn blocked(&self) -> Option<&str> {
        self.blocked.as_deref()
    }

    /// The answers read so far, in the order they came.
    pub fn answers(&mut self) -> std::vec::Drain<'_, Answer> {
        self.answers.drain(..)
    }

    fn on_frame(&mut self, frame: AMQPFrame) -> Result<(), WireError> {
        match frame {
            AMQPFrame::Method(channel, method) => self.on_method(channel, method),
            AMQPFrame::Header(channel, header) => {
                let returning = self.returning_on(channel)?;
                returning.size = header.body_size;
                returning.properties = Some(header.properties);
                self.complete_return(channel);
                Ok(())
            }
            AMQPFrame::Body(channel, data) => {
                let returning = self.returning_on(channel)?;
                returning.body.extend_from_slice(&data);
                self.complete_return(channel);
                Ok(())
            }
            other => Err(WireError::Protocol(format!("unexpected frame {other:?}"))),
        }
    }

    fn on_method(&mut self, channel: ChannelId, method: AMQPClass) -> Result<(), WireError> {
        match method {
            AMQPClass::Basic(basic::AMQPMethod::Ack(ack)) => {
                let lane = self.lane_of(channel)?;
                self.answers.push(Answer::Confirm {
                    lane,
                    tag: ack.delivery_tag,
                    multiple: ack.multiple,
                    ack: true,
                });
            }
            AMQPClass::Basic(basic::AMQPMethod::Nack(nack)) => {
                let lane = self.lane_of(channel)?;
                self.answers.push(Answer::Confirm {
                    lane,
                    tag: nack.delivery_tag,
                    multiple: nack.multiple,
                    ack: false,
                });
            }
            AMQPClass::Basic(basic::AMQPMethod::Return(r)) => {
                self.lane_of(channel)?;
                let reason = format!(
                    "unroutable: exchange {:?} has no route for routing key {:?} ({} {})",
                    r.exchange.as_str(),
                    r.routing_key.as_str(),
                    r.reply_code,
                    r.reply_text.as_str(),
                );
                self.returning.push(Returning {
                    channel,
                    reason,
                    exchange: r.exchange,
                    routing_key: r.routing_key,
                    properties: None,
                    size: 0,
                    body: Vec::new(),
                });
            }
            AMQPClass::Connection(connection::AMQPMethod::Close(close)) => {
                let close_ok = connection::AMQPMethod::CloseOk(connection::CloseOk {});
                self.wire.send(0, AMQPClass::Connection(close_ok))?;
                return Err(WireError::ConnectionClosed {
                    code: close.reply_code,
                    text: close.reply_text.to_string(),
                });
            }
            AMQPClass::Connection(connection::AMQPMethod::Blocked(blocked)) => {
                self.blocked = Some(blocked.reason.to_string());
            }
            AMQPClass::Connection(connection::AMQPMethod::Unblocked(_)) => {
                self.blocked = None;
            }
            AMQPClass::Channel(channel::AMQPMethod::Close(close)) => {
                let close_ok = channel::AMQPMethod::CloseOk(channel::CloseOk {});
                self.wire.send(channel, AMQPClass::Channel(close_ok))?;
                let error = WireError::ChannelClosed {
                    channel,
                    code: close.reply_code,
                    text: close.reply_text.to_string(),
                };
                if self.awaiting == Some(channel) {
                    self.reply = Some(Err(error));
                } else {
                    return Err(error);
                }
            }
            other if self.awaiting == Some(channel) => self.reply = Some(Ok(other)),
            other => {
                return Err(WireError::Protocol(format!(
                    "unexpected {other:?} on channel {channel}"
                )));
            }
        }
        Ok(())
    }

    fn lane_of(&self, channel: ChannelId) -> Result<usize, WireError> {
        let lane = usize::from(channel.wrapping_sub(FIRST_LANE));
        if channel >= FIRST_LANE && lane < self.lanes {
            Ok(lane)
        } else {
            Err(WireError::Protocol(format!(
                "a publisher confirm or return on channel {channel}, which publishes nothing"
            )))
        }
    }

    fn returning_on(&mut self, channel: ChannelId) -> Result<&mut Returning, WireError> {
        self.returning
            .iter_mut()
            .find(|r| r.channel == channel)
            .ok_or_else(|| {
                WireError::Protocol(format!("content on channel {channel} without a method"))
            })
    }

    /// Turns the return on `channel` into an answer once its content is complete.
    fn complete_return(&mut self, channel: ChannelId) {
        let Some(at) = self.returning.iter().position(|r| {
            r.channel == channel && r.properties.is_some() && r.body.len() as u64 >= r.size
        }) else {
            return;
        };
        let r = self.returning.swap_remove(at);
        let returned = Returned {
            reason: r.reason,
            message: Message {
                exchange: r.exchange,
                routing_key: r.routing_key,
                properties: r.properties.unwrap_or_default(),
                body: Bytes::from(r.body),
            },
        };
        self.answers.push(Answer::Return {
            lane: usize::from(channel - FIRST_LANE),
            returned: Box::new(returned),
        });
    }

    /// Closes the connection, waiting a little for the broker to agree.
    pub async fn close(mut self) {
        let close = connection::AMQPMethod::Close(connection::Close {
            reply_code: 200,
            reply_text: "sluice is stopping".into(),
            class_id: 0,
            method_id: 0,
        });
        let closing = self.call(0, AMQPClass::Connection(close));
        if let Ok(Err(error)) = tokio::time::timeout(CLOSE_TIMEOUT, closing).await {
            tracing::debug!(%error, "closing the connection failed");
        }
    }
}

fn arguments(
    arguments: &std::collections::BTreeMap<String, Argument>,
) -> Result<FieldTable, WireError> {
    let mut table = FieldTable::default();
    for (name, value) in arguments {
        let value = match value {
            Argument::Bool(b) => AMQPValue::Boolean(*b),
            Argument::Int(i) => AMQPValue::LongLongInt(*i),
            Argument::Float(f) => AMQPValue::Double(*f),
            Argument::String(s) => AMQPValue::LongString(s.as_str().into()),
        };
        table.insert(short(name)?, value);
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_pipeline::ErrorKind;

    #[test]
    fn classifies_errors() {
        let closed = |code| WireError::ChannelClosed {
            channel: 1,
            code,
            text: "x".into(),
        };
        assert_eq!(closed(403).kind(), ErrorKind::Config);
        assert!(closed(404).is_not_found());
        assert!(!closed(406).is_not_found());
        let forced = WireError::ConnectionClosed {
            code: 320,
            text: "CONNECTION_FORCED".into(),
        };
        assert_eq!(forced.kind(), ErrorKind::Connect);
        let io = WireError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(io.kind(), ErrorKind::Connect);
        assert_eq!(WireError::Protocol("x".into()).kind(), ErrorKind::Protocol);
    }

    #[test]
    fn arguments_keep_their_types() {
        let mut given = std::collections::BTreeMap::new();
        given.insert("x-max-length".to_owned(), Argument::Int(5));
        given.insert("x-queue-type".to_owned(), Argument::String("quorum".into()));
        let table = arguments(&given).unwrap();
        assert_eq!(
            table.inner().get("x-max-length"),
            Some(&AMQPValue::LongLongInt(5))
        );
    }
}
