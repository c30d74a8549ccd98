//! The event envelope that moves through a pipeline, and the cheap shared string it is made of.
//!
//! An [`Event`] is what a source reads (an outbox row, a generated record), what transforms
//! reshape and what sinks deliver. Every field that is text is a [`Text`]: validated UTF-8 over
//! `bytes::Bytes`, so a decoder can hand out slices of the buffer it read without copying, and a
//! fan-out clone costs a reference count rather than an allocation.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::time::SystemTime;

use bytes::Bytes;

use crate::ack::AckHandle;

/// Immutable UTF-8 text stored in [`Bytes`]: clones share the buffer, slices of a received
/// buffer need no copy.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Text(Bytes);

impl Text {
    /// Text over a static string, without allocating.
    pub const fn from_static(s: &'static str) -> Self {
        Text(Bytes::from_static(s.as_bytes()))
    }

    /// Wraps `bytes` after checking that they are UTF-8.
    pub fn from_utf8(bytes: Bytes) -> Result<Self, std::str::Utf8Error> {
        std::str::from_utf8(&bytes)?;
        Ok(Text(bytes))
    }

    /// The text as a string slice.
    pub fn as_str(&self) -> &str {
        // SAFETY: every constructor checks UTF-8 (`from_utf8`) or starts from a `str`/`String`,
        // and the buffer is immutable afterwards.
        #[allow(unsafe_code)]
        unsafe {
            std::str::from_utf8_unchecked(&self.0)
        }
    }

    /// The underlying bytes (a cheap clone).
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the text is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for Text {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Text {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

// Hash as `str` does, so that `Borrow<str>` lookups in hash maps agree.
impl Hash for Text {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl From<String> for Text {
    fn from(s: String) -> Self {
        Text(Bytes::from(s.into_bytes()))
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Self {
        Text(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl PartialEq<str> for Text {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An ordered list of named values: row columns, routing fields or message headers.
///
/// A value of `None` is an explicit null (an SQL `NULL` column). Lists are short, so lookups
/// scan; order is kept because it is the order a reader expects to see them in.
#[derive(Clone, Default, Debug, PartialEq, Eq)]
pub struct Fields(Vec<(Text, Option<Text>)>);

impl Fields {
    /// An empty list.
    pub const fn new() -> Self {
        Fields(Vec::new())
    }

    /// An empty list with room for `n` entries.
    pub fn with_capacity(n: usize) -> Self {
        Fields(Vec::with_capacity(n))
    }

    /// The value of `name`: `None` when absent, `Some(None)` when present and null.
    pub fn get(&self, name: &str) -> Option<Option<&Text>> {
        self.0
            .iter()
            .find(|(n, _)| n.as_str() == name)
            .map(|(_, v)| v.as_ref())
    }

    /// The non-null text value of `name`.
    pub fn text(&self, name: &str) -> Option<&Text> {
        self.get(name).flatten()
    }

    /// Sets `name` to `value`, replacing an existing entry in place or appending.
    pub fn set(&mut self, name: impl Into<Text>, value: Option<Text>) {
        let name = name.into();
        match self.0.iter_mut().find(|(n, _)| *n == name) {
            Some(entry) => entry.1 = value,
            None => self.0.push((name, value)),
        }
    }

    /// Appends an entry without looking for an existing one (for builders that know names are
    /// distinct, such as a decoder walking a row).
    pub fn push(&mut self, name: Text, value: Option<Text>) {
        self.0.push((name, value));
    }

    /// Removes `name` and returns its value.
    pub fn remove(&mut self, name: &str) -> Option<Option<Text>> {
        let index = self.0.iter().position(|(n, _)| n.as_str() == name)?;
        Some(self.0.remove(index).1)
    }

    /// The entries in order.
    pub fn iter(&self) -> impl Iterator<Item = (&Text, Option<&Text>)> {
        self.0.iter().map(|(n, v)| (n, v.as_ref()))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Bytes held by names and values (for the in-flight byte budget).
    pub fn byte_size(&self) -> usize {
        self.0
            .iter()
            .map(|(n, v)| n.len() + v.as_ref().map_or(0, Text::len))
            .sum()
    }
}

impl FromIterator<(Text, Option<Text>)> for Fields {
    fn from_iter<I: IntoIterator<Item = (Text, Option<Text>)>>(iter: I) -> Self {
        Fields(iter.into_iter().collect())
    }
}

/// A source's position: a point in its input that only moves forward (a WAL LSN, a sequence
/// number, a row id). Several events may share one position (the rows of one transaction share
/// its commit LSN); the checkpoint is expressed in positions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position(pub u64);

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Where an event came from: its source position and, for database sources, its transaction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceMeta {
    /// The event's position in its source.
    pub position: Position,
    /// When the source committed it, if the source knows (a transaction's commit time).
    pub commit_time: Option<SystemTime>,
    /// The source transaction id, if any.
    pub transaction: Option<u64>,
}

/// One event: an id, an ordering key, a type, fields, headers and a payload, with the
/// acknowledgement obligation it carries from its source.
///
/// Whoever holds an event owes its source an answer: deliver it and [`Event::ack`], drop it on
/// purpose with [`Event::ack_dropped`], or hand it on. Dropping an event without answering
/// counts as a failure, which holds the source's checkpoint before it forever: a forgotten
/// event can stall a pipeline, never lose data. Cloning an event creates a child that must be
/// answered too; the parent counts as delivered once every clone is.
#[derive(Clone, Debug, Default)]
pub struct Event {
    /// Stable id: the outbox id, the AMQP `message_id`, the dedupe key.
    pub id: Text,
    /// Ordering key (the aggregate id): events with one key stay in order.
    pub key: Option<Text>,
    /// Event type, such as `OrderCreated`.
    pub event_type: Text,
    /// Named values used for routing and templates (`aggregatetype`), or a row's columns
    /// before a transform turns them into an event.
    pub fields: Fields,
    /// Headers to deliver with the payload.
    pub headers: Fields,
    /// The body, as bytes.
    pub payload: Bytes,
    /// Source position, commit time and transaction.
    pub meta: SourceMeta,
    pub(crate) ack: Option<AckHandle>,
    /// The payload that [`Event::mark_payload_json`] recorded as checked. Holding it keeps its
    /// buffer alive, so a payload at the same address and length is the same bytes.
    json_payload: CheckedJson,
}

/// The payload an event recorded as checked JSON; shown by `Debug` only as whether there is one,
/// since it is the payload again.
#[derive(Clone, Default)]
struct CheckedJson(Option<Bytes>);

impl fmt::Debug for CheckedJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "checked"
        } else {
            "unchecked"
        })
    }
}

impl Event {
    /// A new event with an id, position and payload; the rest empty. It is not tracked until a
    /// source emits it.
    pub fn new(id: impl Into<Text>, position: Position, payload: Bytes) -> Self {
        Event {
            id: id.into(),
            meta: SourceMeta {
                position,
                ..SourceMeta::default()
            },
            payload,
            ..Event::default()
        }
    }

    /// Records that the payload, as it is now, was checked to be JSON, so that a later stage
    /// that needs JSON (a sink sending `application/json`) does not parse it again.
    pub fn mark_payload_json(&mut self) {
        self.json_payload = CheckedJson(Some(self.payload.clone()));
    }

    /// Whether the payload is still the one [`Event::mark_payload_json`] recorded: giving
    /// the event another payload forgets the check.
    pub fn payload_is_json(&self) -> bool {
        self.json_payload.0.as_ref().is_some_and(|checked| {
            checked.as_ptr() == self.payload.as_ptr() && checked.len() == self.payload.len()
        })
    }

    /// Approximate bytes this event holds, for the in-flight byte budget.
    pub fn byte_size(&self) -> usize {
        self.id.len()
            + self.key.as_ref().map_or(0, Text::len)
            + self.event_type.len()
            + self.fields.byte_size()
            + self.headers.byte_size()
            + self.payload.len()
    }

    /// Looks a name up the way templates and conditions do: `id`, `key` and `type` first,
    /// then `fields`, then `headers`.
    pub fn lookup(&self, name: &str) -> Option<&Text> {
        match name {
            "id" => Some(&self.id),
            "key" => self.key.as_ref(),
            "type" => Some(&self.event_type),
            _ => self.fields.text(name).or_else(|| self.headers.text(name)),
        }
    }

    /// Acknowledges the event as delivered: it is durable downstream.
    pub fn ack(mut self) {
        if let Some(ack) = self.ack.take() {
            ack.ack();
        }
    }

    /// Acknowledges the event as dropped on purpose (filtered out, a duplicate): for its
    /// source, a dropped event is done like a delivered one.
    pub fn ack_dropped(self) {
        if let Some(ack) = &self.ack {
            ack.note_dropped();
        }
        self.ack();
    }

    /// Notes, for the event's receipt (if it has one), that it goes to the quarantine.
    pub(crate) fn note_quarantined(&self, reason: &Text) {
        if let Some(ack) = &self.ack {
            ack.note_quarantined(reason);
        }
    }

    /// Marks the event as failed: its source's checkpoint will never pass it.
    pub fn fail(mut self) {
        if let Some(ack) = self.ack.take() {
            ack.fail();
        }
    }

    /// Separates the acknowledgement from the data, for sinks that release the event's memory
    /// while they wait for the destination to confirm it.
    pub fn take_ack(&mut self) -> Acker {
        Acker(self.ack.take())
    }
}

/// An event's acknowledgement obligation, separated from its data (see [`Event::take_ack`]).
/// Dropping it unanswered counts as a failure.
#[derive(Debug)]
pub struct Acker(Option<AckHandle>);

impl Acker {
    /// The destination has the event durably.
    pub fn ack(self) {
        if let Some(ack) = self.0 {
            ack.ack();
        }
    }

    /// The event could not be delivered.
    pub fn fail(self) {
        if let Some(ack) = self.0 {
            ack.fail();
        }
    }
}

/// Events move between stages in batches.
pub type Batch = Vec<Event>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn text_hashes_like_str() {
        let mut set = HashSet::new();
        set.insert(Text::from("order-1"));
        assert!(set.contains("order-1"));
        assert!(!set.contains("order-2"));
    }

    #[test]
    fn text_rejects_invalid_utf8() {
        assert!(Text::from_utf8(Bytes::from_static(&[0xff, 0xfe])).is_err());
        assert_eq!(Text::from_utf8(Bytes::from_static(b"ok")).unwrap(), "ok");
    }

    #[test]
    fn fields_set_replaces_in_place() {
        let mut f = Fields::new();
        f.set("a", Some("1".into()));
        f.set("b", None);
        f.set("a", Some("2".into()));
        assert_eq!(f.len(), 2);
        assert_eq!(f.text("a").unwrap(), "2");
        assert_eq!(f.get("b"), Some(None));
        assert_eq!(f.get("c"), None);
        assert_eq!(f.remove("a"), Some(Some("2".into())));
        assert_eq!(f.len(), 1);
    }

    #[test]
    fn a_payload_checked_as_json_stays_so_until_it_is_replaced() {
        let mut e = Event::new("e1", Position(1), Bytes::from_static(b"{\"a\":1}"));
        assert!(!e.payload_is_json());
        e.mark_payload_json();
        assert!(e.payload_is_json());
        assert!(e.clone().payload_is_json());
        e.payload = Bytes::from(b"{\"a\":1}".to_vec());
        assert!(
            !e.payload_is_json(),
            "another buffer, even with equal bytes"
        );
        e.mark_payload_json();
        e.payload = e.payload.slice(1..);
        assert!(!e.payload_is_json(), "a slice of the checked payload");
    }

    #[test]
    fn lookup_prefers_envelope_then_fields_then_headers() {
        let mut e = Event::new("e1", Position(1), Bytes::new());
        e.event_type = "Created".into();
        e.fields.set("aggregatetype", Some("order".into()));
        e.headers.set("aggregatetype", Some("shadowed".into()));
        e.headers.set("trace", Some("t".into()));
        assert_eq!(e.lookup("id").unwrap(), "e1");
        assert_eq!(e.lookup("type").unwrap(), "Created");
        assert_eq!(e.lookup("aggregatetype").unwrap(), "order");
        assert_eq!(e.lookup("trace").unwrap(), "t");
        assert!(e.lookup("key").is_none());
    }
}
