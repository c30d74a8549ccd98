//! sluice's own decoder for pgoutput, PostgreSQL's logical replication output plugin.
//!
//! [`Decoder::decode`] turns the payload of one XLogData message into a [`Message`], following
//! the PostgreSQL 15 "Logical Replication Message Formats" page: protocol 1 (Begin, Commit,
//! Origin, Relation, Type, Insert, Update, Delete, Truncate, Logical Message) and the streaming
//! messages of protocol 2 (Stream Start, Stop, Commit, Abort). Decoding is zero-copy: names
//! and column values are [`bytes::Bytes`] slices of the payload. It never panics and reports
//! malformed input as an [`Error`] naming the message, the byte offset and what was expected.
//! [`encode`] is the inverse, for tests. [`Lsn`] and [`PgTimestamp`] convert the positions and
//! times the messages carry.

mod decode;
mod encode;
mod error;
mod lsn;
mod message;
#[cfg(test)]
mod proptests;
mod timestamp;

pub use decode::{Decoder, ProtocolVersion};
pub use encode::encode;
pub use error::Error;
pub use lsn::Lsn;
pub use message::{
    Begin, Column, Commit, Delete, Insert, LogicalMessage, Message, MessageKind, Name, OldTuple,
    Origin, Relation, RelationColumn, ReplicaIdentity, StreamAbort, StreamCommit, StreamStart,
    Truncate, TupleData, Type, Update,
};
pub use timestamp::PgTimestamp;
