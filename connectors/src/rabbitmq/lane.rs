//! One publishing channel ("lane") and the messages in flight on it, in publish order.
//!
//! RabbitMQ keeps the order of the messages one channel publishes, so everything that must stay
//! in order (the events of one key) is published on one lane, and a lane publishes strictly in
//! the order it is asked to. Publishing never waits: a message's frames are queued for lapin's
//! I/O thread at once, and its confirm is awaited later, with thousands in flight.
//!
//! Confirms are read in publish order from the front of the lane, so reading costs one poll per
//! message however many are in flight. Before a confirm is taken as final, the lane makes sure it
//! has also seen every `basic.return` of the same acknowledgement (see [`Lane::poll_settled`]).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::Bytes;
use lapin::message::BasicReturnMessage;
use lapin::options::BasicPublishOptions;
use lapin::{Channel, Confirmation, PublisherConfirm};
use sluice_pipeline::{Event, Text};

use super::message::{self, Message};

/// What a publish attempt comes to.
type Confirm = lapin::Result<Confirmation>;
/// A `basic_publish` whose frames lapin has not written yet (a large future, so boxed and
/// kept only until then).
type Sending = Pin<Box<dyn Future<Output = lapin::Result<PublisherConfirm>> + Send>>;

/// Why a record is published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// Delivering the event where the config routes it.
    Deliver,
    /// Delivering the event to the quarantine exchange, for `reason`; `returned`: the broker
    /// returned the delivery, so the quarantined copy keeps its body and properties.
    Quarantine { reason: String, returned: bool },
}

/// An event on its way to the broker. It holds no message: the message is built from the event
/// for the first attempt and built again for any later one, which keeps what stays in flight
/// small.
#[derive(Debug)]
pub(crate) struct Record {
    /// Order of acceptance by the sink; a lane republishes in this order.
    pub seq: u64,
    /// The event, with its acknowledgement.
    pub event: Event,
    /// The ordering key: the event's key, or its id for events without one.
    pub key: Text,
    /// The lane the key hashes to.
    pub lane: usize,
    pub purpose: Purpose,
    /// Nacks so far.
    pub nacks: u32,
    /// Set when the broker returned the message as unroutable (boxed: rare and large).
    pub returned: Option<Box<Returned>>,
}

/// A message the broker returned, as it came back.
#[derive(Debug)]
pub(crate) struct Returned {
    /// For a person: why.
    pub reason: String,
    /// The message (exchange, routing key, properties, body) as published.
    pub message: Message,
}

/// How the broker answered one publish.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// `basic.ack`, and not returned: the broker holds the message.
    Confirmed,
    /// `basic.nack`: the broker could not take it; it may succeed later.
    Nacked,
    /// `basic.return` (then `basic.ack`): no queue took it.
    Returned(Box<Returned>),
    /// The channel or connection failed before an answer: the message may or may not be on
    /// the broker.
    Failed(lapin::Error),
}

/// A record the broker has answered.
#[derive(Debug)]
pub(crate) struct Settled {
    pub record: Record,
    pub published_at: Instant,
    pub outcome: Outcome,
}

enum State {
    /// Frames queued, not yet written.
    Sending(Sending),
    /// Frames written, answer pending.
    Confirming(PublisherConfirm),
    /// Failed before an answer (boxed: an answer can hold a whole returned message).
    Done(Box<Confirm>),
}

struct InFlight {
    record: Record,
    published_at: Instant,
    state: State,
}

/// One channel and its messages in flight.
#[derive(Default)]
pub(crate) struct Lane {
    channel: Option<Arc<Channel>>,
    in_flight: VecDeque<InFlight>,
    /// How many of `in_flight`, from the front, are past [`State::Sending`].
    sent: usize,
    /// Answered, awaiting the return barrier.
    observed: Vec<(Record, Instant, Confirm)>,
}

impl Lane {
    /// Starts publishing on `channel` (in confirm mode).
    pub fn attach(&mut self, channel: Channel) {
        self.channel = Some(Arc::new(channel));
    }

    /// Publishes `record` as `message` after everything published on this lane before.
    /// Returns at once: the frames are queued for lapin's I/O thread in this call, the answer
    /// comes through [`Lane::poll_settled`].
    pub fn publish(&mut self, record: Record, message: Message, now: Instant) {
        let state = match &self.channel {
            Some(channel) => {
                let channel = Arc::clone(channel);
                let Message {
                    exchange,
                    routing_key,
                    properties,
                    body,
                } = message;
                let mut sending: Sending = Box::pin(async move {
                    let options = BasicPublishOptions {
                        mandatory: true,
                        immediate: false,
                    };
                    channel
                        .basic_publish(exchange, routing_key, options, &body, properties)
                        .await
                });
                // The first poll queues the frames and takes the delivery tag, so publishes
                // reach the wire in the order of these calls. Nothing needs waking yet: the
                // lane is polled with the task's waker in `poll_settled`.
                sending_state(
                    sending
                        .as_mut()
                        .poll(&mut Context::from_waker(Waker::noop())),
                    sending,
                )
            }
            None => State::Done(Box::new(Err(lapin::ErrorKind::InvalidConnectionState(
                lapin::ConnectionState::Closed,
            )
            .into()))),
        };
        self.in_flight.push_back(InFlight {
            record,
            published_at: now,
            state,
        });
    }

    /// Moves every message the broker has answered to `out`, in publish order, and returns
    /// whether it moved any; registers `cx` to be woken when the next answer arrives.
    ///
    /// lapin hands a `basic.return` to whichever confirm of the same acknowledgement frame it
    /// resolves next, and resolves the confirms of a multiple-ack frame in no particular order
    /// on its I/O thread. So a return is matched to its message by `message_id`, and a message
    /// is settled only after a barrier: lapin resolves one frame's confirms while holding the
    /// channel's acknowledgement lock, and [`Lane::barrier`] takes that lock, so once it
    /// returns, every frame whose confirms were seen before it is fully resolved, its returns
    /// included. Reading until a barrier brings nothing new settles exactly the messages whose
    /// returns are known.
    pub fn poll_settled(&mut self, cx: &mut Context<'_>, out: &mut Vec<Settled>) -> bool {
        self.advance(cx);
        while self.read_front(cx) {
            self.barrier();
        }
        let moved = !self.observed.is_empty();
        for (mut record, published_at, answer) in self.observed.drain(..) {
            let outcome = match (answer, record.returned.take()) {
                (Err(error), _) => Outcome::Failed(error),
                (Ok(Confirmation::Ack(_) | Confirmation::Nack(_)), Some(returned)) => {
                    Outcome::Returned(returned)
                }
                (Ok(Confirmation::Ack(_)), None) => Outcome::Confirmed,
                (Ok(Confirmation::Nack(_)), None) => Outcome::Nacked,
                (Ok(Confirmation::NotRequested), _) => Outcome::Failed(
                    lapin::ErrorKind::InvalidChannelState(
                        lapin::ChannelState::Connected,
                        "publisher confirms are off on a publishing channel",
                    )
                    .into(),
                ),
            };
            out.push(Settled {
                record,
                published_at,
                outcome,
            });
        }
        moved
    }

    /// Moves messages whose frames are written from [`State::Sending`] to
    /// [`State::Confirming`], in order (lapin writes them in order), freeing their futures.
    fn advance(&mut self, cx: &mut Context<'_>) {
        while let Some(flight) = self.in_flight.get_mut(self.sent) {
            if let State::Sending(sending) = &mut flight.state {
                match sending.as_mut().poll(cx) {
                    Poll::Ready(result) => flight.state = sent_state(result),
                    Poll::Pending => break,
                }
            }
            self.sent += 1;
        }
    }

    /// Reads answered messages off the front; whether there were any.
    fn read_front(&mut self, cx: &mut Context<'_>) -> bool {
        let mut read = false;
        while let Some(front) = self.in_flight.front_mut() {
            let answer = loop {
                match &mut front.state {
                    State::Sending(sending) => match sending.as_mut().poll(cx) {
                        Poll::Ready(result) => front.state = sent_state(result),
                        Poll::Pending => break None,
                    },
                    State::Confirming(confirm) => match Pin::new(confirm).poll(cx) {
                        Poll::Ready(answer) => break Some(answer),
                        Poll::Pending => break None,
                    },
                    State::Done(answer) => {
                        break Some(std::mem::replace(
                            &mut **answer,
                            Ok(Confirmation::NotRequested),
                        ));
                    }
                }
            };
            let Some(mut answer) = answer else { break };
            let Some(InFlight {
                mut record,
                published_at,
                ..
            }) = self.in_flight.pop_front()
            else {
                break;
            };
            self.sent = self.sent.saturating_sub(1);
            if let Ok(Confirmation::Ack(returned) | Confirmation::Nack(returned)) = &mut answer
                && let Some(message) = returned.take()
            {
                self.mark_returned(&mut record, message);
            }
            self.observed.push((record, published_at, answer));
            read = true;
        }
        read
    }

    /// Finds the message `returned` is about among the unsettled ones (by the event id it
    /// carries, see [`message::event_id`]) and marks it.
    fn mark_returned(&mut self, carrier: &mut Record, returned: BasicReturnMessage) {
        let BasicReturnMessage {
            delivery,
            reply_code,
            reply_text,
        } = returned;
        let reason = format!(
            "unroutable: exchange {:?} has no route for routing key {:?} ({reply_code} {reply_text})",
            delivery.exchange.as_str(),
            delivery.routing_key.as_str(),
        );
        let id = message::event_id(&delivery.properties);
        let target = std::iter::once(carrier)
            .chain(self.observed.iter_mut().map(|(r, _, _)| r))
            .chain(self.in_flight.iter_mut().map(|f| &mut f.record))
            .filter(|r| r.returned.is_none() && r.event.id.as_bytes()[..] == id[..])
            .min_by_key(|r| r.seq);
        match target {
            Some(record) => {
                record.returned = Some(Box::new(Returned {
                    reason,
                    message: Message {
                        exchange: delivery.exchange,
                        routing_key: delivery.routing_key,
                        properties: delivery.properties,
                        body: Bytes::from(delivery.data),
                    },
                }));
            }
            None => tracing::error!(
                event_id = %String::from_utf8_lossy(&id),
                "the broker returned a message that is no longer in flight; it may have been counted as delivered"
            ),
        }
    }

    /// Waits for lapin to finish resolving the acknowledgement frame it may be in the middle
    /// of on this channel (see [`Lane::poll_settled`]). `wait_for_confirms` takes the lock on
    /// its first poll; polled once and dropped, it waits for nothing else.
    fn barrier(&self) {
        if let Some(channel) = &self.channel {
            let waiting = pin!(channel.wait_for_confirms());
            let _ = waiting.poll(&mut Context::from_waker(Waker::noop()));
        }
    }

    /// Detaches from the channel and gives back every record not yet settled, in publish
    /// order: after a failure, none of them is known to be on the broker.
    pub fn detach(&mut self) -> Vec<Record> {
        self.channel = None;
        self.sent = 0;
        self.observed
            .drain(..)
            .map(|(r, _, _)| r)
            .chain(self.in_flight.drain(..).map(|f| f.record))
            .collect()
    }
}

/// The state of a message after its first poll.
fn sending_state(poll: Poll<lapin::Result<PublisherConfirm>>, sending: Sending) -> State {
    match poll {
        Poll::Ready(result) => sent_state(result),
        Poll::Pending => State::Sending(sending),
    }
}

/// The state of a message whose frames lapin has written (or failed to).
fn sent_state(result: lapin::Result<PublisherConfirm>) -> State {
    match result {
        Ok(confirm) => State::Confirming(confirm),
        Err(error) => State::Done(Box::new(Err(error))),
    }
}
