//! sluice's own decoder for pgoutput, PostgreSQL's logical replication output plugin.
//!
//! [`decode`] turns the payload of one XLogData message into a [`Message`], following the
//! PostgreSQL 15 "Logical Replication Message Formats" page for what the relay's replication
//! stream hands over: the messages of protocol version 1 that carry rows and their layout
//! (Relation, Type, Insert, Update, Delete, Truncate, and Origin). Begin, Commit and Logical
//! Message are decoded by the transport, `pgwire-replication`, which delivers them as events
//! of their own and never as XLogData; it asks for protocol 1, so the streaming messages of
//! protocol 2 never arrive either (see `docs/adr/0003-own-pgoutput-decoder.md`). Decoding is
//! zero-copy: names and column values are [`bytes::Bytes`] slices of the payload. It never
//! panics and reports malformed input as an [`Error`] naming the message, the byte offset and
//! what was expected. [`encode`] is the inverse, for tests. [`Lsn`] and [`PgTimestamp`]
//! convert the positions and times the stream carries.

mod decode;
mod encode;
mod error;
mod lsn;
mod message;
#[cfg(test)]
mod proptests;
mod timestamp;

pub use decode::decode;
pub use encode::encode;
pub use error::Error;
pub use lsn::Lsn;
pub use message::{
    Column, Delete, Insert, Message, MessageKind, Name, OldTuple, Origin, Relation, RelationColumn,
    ReplicaIdentity, Truncate, TupleData, Type, Update,
};
pub use timestamp::PgTimestamp;
