//! One publishing channel ("lane") and the messages in flight on it, in publish order.
//!
//! RabbitMQ keeps the order of the messages one channel publishes, so everything that must stay
//! in order (the events of one key) is published on one lane, and a lane publishes strictly in
//! the order it is asked to. Publishing never waits: a message's frames go to the connection's
//! write buffer at once, and its answer is matched later, with thousands in flight.
//!
//! The broker numbers a channel's publishes 1, 2, 3… (delivery tags), so the record a
//! confirm is about is found by arithmetic on the tag, and a confirm of several tags at once
//! (`multiple`) marks a prefix. The broker sends a `basic.return` before the confirm of the
//! message it returns, and the connection hands frames over in the order they came, so a
//! message is settled only with everything about it known.

use std::collections::VecDeque;
use std::time::Instant;

use sluice_pipeline::{Event, Text};

use super::message::{self, Message};
use super::wire::WireError;

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
}

/// A record the broker has answered.
#[derive(Debug)]
pub(crate) struct Settled {
    pub record: Record,
    pub published_at: Instant,
    pub outcome: Outcome,
}

struct InFlight {
    record: Record,
    published_at: Instant,
    /// `Some(ack)` once confirmed (`true`) or nacked (`false`).
    confirmed: Option<bool>,
}

/// One channel and its messages in flight.
#[derive(Default)]
pub(crate) struct Lane {
    /// The delivery tag the next publish gets.
    next_tag: u64,
    in_flight: VecDeque<InFlight>,
}

impl Lane {
    /// Starts publishing on a fresh channel (in confirm mode), whose first delivery tag is 1.
    pub fn attach(&mut self) {
        self.next_tag = 1;
    }

    /// Records that `record` was just published on this lane's channel, after everything
    /// published on it before.
    pub fn push(&mut self, record: Record, now: Instant) {
        self.next_tag += 1;
        self.in_flight.push_back(InFlight {
            record,
            published_at: now,
            confirmed: None,
        });
    }

    /// Applies a `basic.ack` (`ack`) or `basic.nack` of `tag` (and of every earlier one if
    /// `multiple`). A tag that was never published is a protocol error.
    pub fn confirm(&mut self, tag: u64, multiple: bool, ack: bool) -> Result<(), WireError> {
        let first = self.next_tag - self.in_flight.len() as u64;
        let index = tag
            .checked_sub(first)
            .filter(|&i| i < self.in_flight.len() as u64)
            .ok_or_else(|| {
                WireError::Protocol(format!(
                    "a publisher confirm for delivery tag {tag}, which is not in flight (tags {first}..{})",
                    self.next_tag
                ))
            })? as usize;
        let from = if multiple { 0 } else { index };
        for flight in self.in_flight.range_mut(from..=index) {
            flight.confirmed.get_or_insert(ack);
        }
        Ok(())
    }

    /// Marks the message `returned` is about: the earliest unanswered one carrying its event
    /// id (see [`message::event_id`]).
    pub fn returned(&mut self, returned: Box<Returned>) {
        let id = message::event_id(&returned.message.properties);
        let target = self.in_flight.iter_mut().find(|f| {
            f.confirmed.is_none()
                && f.record.returned.is_none()
                && f.record.event.id.as_bytes()[..] == id[..]
        });
        match target {
            Some(flight) => flight.record.returned = Some(returned),
            None => tracing::error!(
                event_id = %String::from_utf8_lossy(&id),
                "the broker returned a message that is not in flight"
            ),
        }
    }

    /// Moves every answered message at the front to `out`, in publish order, and returns
    /// whether it moved any.
    pub fn settle(&mut self, out: &mut Vec<Settled>) -> bool {
        let mut moved = false;
        while let Some(ack) = self.in_flight.front().and_then(|f| f.confirmed) {
            let Some(InFlight {
                mut record,
                published_at,
                ..
            }) = self.in_flight.pop_front()
            else {
                break;
            };
            let outcome = match (record.returned.take(), ack) {
                (Some(returned), _) => Outcome::Returned(returned),
                (None, true) => Outcome::Confirmed,
                (None, false) => Outcome::Nacked,
            };
            out.push(Settled {
                record,
                published_at,
                outcome,
            });
            moved = true;
        }
        moved
    }

    /// Detaches from the channel and gives back every record not yet settled, in publish
    /// order: after a failure, none of them is known to be on the broker.
    pub fn detach(&mut self) -> Vec<Record> {
        self.in_flight.drain(..).map(|f| f.record).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::protocol::BasicProperties;
    use bytes::Bytes;
    use sluice_pipeline::Position;

    fn record(seq: u64) -> Record {
        Record {
            seq,
            event: Event::new(format!("e{seq}"), Position(seq), Bytes::new()),
            key: "k".into(),
            lane: 0,
            purpose: Purpose::Deliver,
            nacks: 0,
            returned: None,
        }
    }

    /// A lane on a fresh channel with records `seqs` published, in that order.
    fn lane(seqs: &[u64]) -> Lane {
        let mut lane = Lane::default();
        lane.attach();
        let now = Instant::now();
        for &seq in seqs {
            lane.push(record(seq), now);
        }
        lane
    }

    fn settle(lane: &mut Lane) -> Vec<(u64, String)> {
        let mut out = Vec::new();
        lane.settle(&mut out);
        out.into_iter()
            .map(|s| {
                let outcome = match s.outcome {
                    Outcome::Confirmed => "confirmed".to_owned(),
                    Outcome::Nacked => "nacked".to_owned(),
                    Outcome::Returned(returned) => format!("returned: {}", returned.reason),
                };
                (s.record.seq, outcome)
            })
            .collect()
    }

    fn returned(event_id: &str, reason: &str) -> Box<Returned> {
        Box::new(Returned {
            reason: reason.to_owned(),
            message: Message {
                exchange: "x".into(),
                routing_key: "r".into(),
                properties: BasicProperties::default().with_message_id(event_id.into()),
                body: Bytes::new(),
            },
        })
    }

    #[test]
    fn settles_in_publish_order_and_only_a_confirmed_prefix() {
        let mut lane = lane(&[10, 11, 12]);
        lane.confirm(2, false, true).unwrap();
        assert!(!lane.settle(&mut Vec::new()), "tag 1 is not answered yet");
        lane.confirm(1, false, false).unwrap();
        assert_eq!(
            settle(&mut lane),
            [(10, "nacked".to_owned()), (11, "confirmed".to_owned())]
        );
        lane.confirm(3, false, true).unwrap();
        assert_eq!(settle(&mut lane), [(12, "confirmed".to_owned())]);
        assert!(lane.detach().is_empty());
    }

    #[test]
    fn a_multiple_confirm_answers_every_earlier_tag_but_not_one_already_answered() {
        let mut lane = lane(&[0, 1, 2, 3]);
        lane.confirm(2, false, false).unwrap();
        lane.confirm(3, true, true).unwrap();
        assert_eq!(
            settle(&mut lane),
            [
                (0, "confirmed".to_owned()),
                (1, "nacked".to_owned()),
                (2, "confirmed".to_owned())
            ]
        );
        // Tags keep counting after a settle: the 4th publish is still tag 4.
        lane.confirm(4, true, true).unwrap();
        assert_eq!(settle(&mut lane), [(3, "confirmed".to_owned())]);
    }

    #[test]
    fn a_confirm_of_a_tag_not_in_flight_is_a_protocol_error() {
        let mut lane = lane(&[0, 1]);
        lane.confirm(1, false, true).unwrap();
        settle(&mut lane);
        for tag in [0, 1, 3] {
            let error = lane.confirm(tag, false, true).unwrap_err();
            assert!(
                matches!(&error, WireError::Protocol(text) if text.contains(&format!("delivery tag {tag},")) && text.contains("tags 2..3")),
                "{error}"
            );
        }
        lane.confirm(2, false, true).unwrap();
    }

    #[test]
    fn a_return_marks_the_earliest_unanswered_message_of_its_event() {
        let mut lane = Lane::default();
        lane.attach();
        let now = Instant::now();
        // The same event twice (published again after a nack), and another after it.
        lane.push(record(7), now);
        lane.push(record(7), now);
        lane.push(record(8), now);
        lane.confirm(1, false, true).unwrap();
        lane.returned(returned("e7", "NO_ROUTE"));
        lane.returned(returned("e9", "not in flight: ignored"));
        lane.confirm(3, true, true).unwrap();
        assert_eq!(
            settle(&mut lane),
            [
                (7, "confirmed".to_owned()),
                (7, "returned: NO_ROUTE".to_owned()),
                (8, "confirmed".to_owned())
            ]
        );
    }

    #[test]
    fn detach_gives_back_every_unsettled_record_in_order_and_a_new_channel_counts_from_one() {
        let mut lane = lane(&[4, 5, 6]);
        lane.confirm(2, false, true).unwrap();
        let seqs: Vec<u64> = lane.detach().into_iter().map(|r| r.seq).collect();
        assert_eq!(
            seqs,
            [4, 5, 6],
            "a confirm not yet settled is not known to hold"
        );
        lane.attach();
        lane.push(record(4), Instant::now());
        lane.confirm(1, false, true).unwrap();
        assert_eq!(settle(&mut lane), [(4, "confirmed".to_owned())]);
    }
}
