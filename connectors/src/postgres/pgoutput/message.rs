//! The pgoutput messages as Rust values, one type per message of the PostgreSQL 15
//! "Logical Replication Message Formats" page; names and values share the decoded buffer.

use std::fmt;

use bytes::Bytes;

use super::{Lsn, PgTimestamp};

/// One pgoutput message: the payload of one XLogData message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// 'B': a transaction starts.
    Begin(Begin),
    /// 'C': the transaction started by the last [`Begin`] committed.
    Commit(Commit),
    /// 'O': the changes came from another origin (replicated from elsewhere).
    Origin(Origin),
    /// 'R': the layout of a relation that the following changes refer to.
    Relation(Relation),
    /// 'Y': the name of a non-built-in data type used by a relation.
    Type(Type),
    /// 'I': a row was inserted.
    Insert(Insert),
    /// 'U': a row was updated.
    Update(Update),
    /// 'D': a row was deleted.
    Delete(Delete),
    /// 'T': relations were truncated.
    Truncate(Truncate),
    /// 'M': a message from `pg_logical_emit_message`.
    LogicalMessage(LogicalMessage),
    /// 'S' (protocol 2): a block of a streamed in-progress transaction starts.
    StreamStart(StreamStart),
    /// 'E' (protocol 2): the current streamed block ends.
    StreamStop,
    /// 'c' (protocol 2): a streamed transaction committed.
    StreamCommit(StreamCommit),
    /// 'A' (protocol 2): a streamed transaction or one of its subtransactions aborted.
    StreamAbort(StreamAbort),
}

impl Message {
    /// Which kind of message this is.
    pub fn kind(&self) -> MessageKind {
        match self {
            Message::Begin(_) => MessageKind::Begin,
            Message::Commit(_) => MessageKind::Commit,
            Message::Origin(_) => MessageKind::Origin,
            Message::Relation(_) => MessageKind::Relation,
            Message::Type(_) => MessageKind::Type,
            Message::Insert(_) => MessageKind::Insert,
            Message::Update(_) => MessageKind::Update,
            Message::Delete(_) => MessageKind::Delete,
            Message::Truncate(_) => MessageKind::Truncate,
            Message::LogicalMessage(_) => MessageKind::LogicalMessage,
            Message::StreamStart(_) => MessageKind::StreamStart,
            Message::StreamStop => MessageKind::StreamStop,
            Message::StreamCommit(_) => MessageKind::StreamCommit,
            Message::StreamAbort(_) => MessageKind::StreamAbort,
        }
    }
}

/// The kind of a message, named by its tag byte; errors use it to say which message was bad.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageKind {
    /// 'B'
    Begin,
    /// 'C'
    Commit,
    /// 'O'
    Origin,
    /// 'R'
    Relation,
    /// 'Y'
    Type,
    /// 'I'
    Insert,
    /// 'U'
    Update,
    /// 'D'
    Delete,
    /// 'T'
    Truncate,
    /// 'M'
    LogicalMessage,
    /// 'S'
    StreamStart,
    /// 'E'
    StreamStop,
    /// 'c'
    StreamCommit,
    /// 'A'
    StreamAbort,
}

impl MessageKind {
    const ALL: [MessageKind; 14] = [
        MessageKind::Begin,
        MessageKind::Commit,
        MessageKind::Origin,
        MessageKind::Relation,
        MessageKind::Type,
        MessageKind::Insert,
        MessageKind::Update,
        MessageKind::Delete,
        MessageKind::Truncate,
        MessageKind::LogicalMessage,
        MessageKind::StreamStart,
        MessageKind::StreamStop,
        MessageKind::StreamCommit,
        MessageKind::StreamAbort,
    ];

    /// The tag byte that starts this kind of message on the wire.
    pub fn tag(self) -> u8 {
        match self {
            MessageKind::Begin => b'B',
            MessageKind::Commit => b'C',
            MessageKind::Origin => b'O',
            MessageKind::Relation => b'R',
            MessageKind::Type => b'Y',
            MessageKind::Insert => b'I',
            MessageKind::Update => b'U',
            MessageKind::Delete => b'D',
            MessageKind::Truncate => b'T',
            MessageKind::LogicalMessage => b'M',
            MessageKind::StreamStart => b'S',
            MessageKind::StreamStop => b'E',
            MessageKind::StreamCommit => b'c',
            MessageKind::StreamAbort => b'A',
        }
    }

    /// The kind a tag byte names, or `None` for tags this decoder does not know (such as the
    /// protocol 3 two-phase messages).
    pub fn from_tag(tag: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.tag() == tag)
    }

    /// Whether this kind carries a leading xid while a streamed block is open (protocol 2).
    pub(super) fn has_stream_xid(self) -> bool {
        matches!(
            self,
            MessageKind::Relation
                | MessageKind::Type
                | MessageKind::Insert
                | MessageKind::Update
                | MessageKind::Delete
                | MessageKind::Truncate
                | MessageKind::LogicalMessage
        )
    }
}

impl fmt::Display for MessageKind {
    /// The name the PostgreSQL docs give the message, e.g. `Stream Commit`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MessageKind::Begin => "Begin",
            MessageKind::Commit => "Commit",
            MessageKind::Origin => "Origin",
            MessageKind::Relation => "Relation",
            MessageKind::Type => "Type",
            MessageKind::Insert => "Insert",
            MessageKind::Update => "Update",
            MessageKind::Delete => "Delete",
            MessageKind::Truncate => "Truncate",
            MessageKind::LogicalMessage => "Logical Message",
            MessageKind::StreamStart => "Stream Start",
            MessageKind::StreamStop => "Stream Stop",
            MessageKind::StreamCommit => "Stream Commit",
            MessageKind::StreamAbort => "Stream Abort",
        })
    }
}

/// A name from the wire (relation, namespace, column, type, origin, message prefix): UTF-8
/// text sharing the buffer it was decoded from.
pub type Name = sluice_pipeline::Text;

/// Begin ('B'): the changes of one transaction follow, up to its [`Commit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Begin {
    /// The final LSN of the transaction (the LSN of its commit record).
    pub final_lsn: Lsn,
    /// When the transaction committed.
    pub commit_time: PgTimestamp,
    /// The transaction id.
    pub xid: u32,
}

/// Commit ('C'): the transaction started by the last [`Begin`] committed. Its flags byte is
/// unused and must be 0, as PostgreSQL's own reader demands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// The LSN of the commit record.
    pub commit_lsn: Lsn,
    /// The LSN just past the commit record: where a consumer that handled the transaction
    /// may confirm to.
    pub end_lsn: Lsn,
    /// When the transaction committed.
    pub commit_time: PgTimestamp,
}

/// Origin ('O'): the transaction's changes were replicated here from another origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The LSN of the commit on the origin server.
    pub commit_lsn: Lsn,
    /// The origin's name.
    pub name: Name,
}

/// Relation ('R'): the layout of a relation, sent before the first change to it in a session
/// and again after it changes; later changes refer to it by [`id`](Self::id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// The streamed transaction's xid, present only inside a streamed block.
    pub xid: Option<u32>,
    /// The relation's OID.
    pub id: u32,
    /// The schema name, empty for `pg_catalog`.
    pub namespace: Name,
    /// The relation name.
    pub name: Name,
    /// Which old values updates and deletes carry.
    pub replica_identity: ReplicaIdentity,
    /// The published columns in table order (generated columns are left out).
    pub columns: Vec<RelationColumn>,
}

/// The replica identity of a relation (`pg_class.relreplident`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplicaIdentity {
    /// 'd': the primary key, if any.
    Default,
    /// 'n': nothing; updates and deletes carry no old values.
    Nothing,
    /// 'f': all columns; updates and deletes carry the full old row.
    Full,
    /// 'i': the columns of a chosen unique index.
    Index,
}

impl ReplicaIdentity {
    const ALL: [ReplicaIdentity; 4] = [
        ReplicaIdentity::Default,
        ReplicaIdentity::Nothing,
        ReplicaIdentity::Full,
        ReplicaIdentity::Index,
    ];

    /// The `relreplident` byte.
    pub(super) fn byte(self) -> u8 {
        match self {
            ReplicaIdentity::Default => b'd',
            ReplicaIdentity::Nothing => b'n',
            ReplicaIdentity::Full => b'f',
            ReplicaIdentity::Index => b'i',
        }
    }

    /// The replica identity a `relreplident` byte names, if any.
    pub(super) fn from_byte(byte: u8) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|identity| identity.byte() == byte)
    }
}

/// One column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    /// Whether the column is part of the replica identity key (flag bit 1).
    pub key: bool,
    /// The column name.
    pub name: Name,
    /// The OID of the column's data type.
    pub type_id: u32,
    /// The type modifier (`atttypmod`), -1 when there is none.
    pub type_modifier: i32,
}

/// Type ('Y'): the name of a data type that is not built in, sent before a [`Relation`] that
/// uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Type {
    /// The streamed transaction's xid, present only inside a streamed block.
    pub xid: Option<u32>,
    /// The type's OID.
    pub id: u32,
    /// The schema name, empty for `pg_catalog`.
    pub namespace: Name,
    /// The type name.
    pub name: Name,
}

/// Insert ('I'): a new row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insert {
    /// The streamed transaction's (or subtransaction's) xid, present only inside a streamed
    /// block.
    pub xid: Option<u32>,
    /// The OID of the [`Relation`] the row belongs to.
    pub relation_id: u32,
    /// The new row ('N').
    pub new: TupleData,
}

/// Update ('U'): a changed row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// The streamed transaction's (or subtransaction's) xid, present only inside a streamed
    /// block.
    pub xid: Option<u32>,
    /// The OID of the [`Relation`] the row belongs to.
    pub relation_id: u32,
    /// The old key ('K', when the key changed) or old row ('O', with `REPLICA IDENTITY FULL`).
    pub old: Option<OldTuple>,
    /// The new row ('N'); TOASTed columns that did not change are
    /// [`Column::UnchangedToast`].
    pub new: TupleData,
}

/// Delete ('D'): a removed row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    /// The streamed transaction's (or subtransaction's) xid, present only inside a streamed
    /// block.
    pub xid: Option<u32>,
    /// The OID of the [`Relation`] the row belonged to.
    pub relation_id: u32,
    /// The old key or row.
    pub old: OldTuple,
}

/// The old values an [`Update`] or [`Delete`] carries, depending on the replica identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple {
    /// 'K': the replica identity key columns; the others are [`Column::Null`].
    Key(TupleData),
    /// 'O': the whole old row (`REPLICA IDENTITY FULL`).
    Full(TupleData),
}

/// Truncate ('T'): relations were emptied in one statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncate {
    /// The streamed transaction's (or subtransaction's) xid, present only inside a streamed
    /// block.
    pub xid: Option<u32>,
    /// `TRUNCATE … CASCADE` (option bit 1).
    pub cascade: bool,
    /// `TRUNCATE … RESTART IDENTITY` (option bit 2).
    pub restart_identity: bool,
    /// The OIDs of the truncated relations.
    pub relation_ids: Vec<u32>,
}

/// Logical Message ('M'): what `pg_logical_emit_message(transactional, prefix, content)` wrote.
/// Sent only when the `messages` option is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalMessage {
    /// The streamed transaction's (or subtransaction's) xid, present only inside a streamed
    /// block.
    pub xid: Option<u32>,
    /// Whether the message is part of a transaction (between [`Begin`] and [`Commit`]) rather
    /// than sent at once.
    pub transactional: bool,
    /// The LSN of the message.
    pub lsn: Lsn,
    /// The prefix given to `pg_logical_emit_message`.
    pub prefix: Name,
    /// The content, as raw bytes.
    pub content: Bytes,
}

/// Stream Start ('S'): a block of changes of an in-progress transaction follows, up to
/// [`Message::StreamStop`]; data messages inside carry an xid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamStart {
    /// The top-level transaction's xid.
    pub xid: u32,
    /// Whether this is the transaction's first block.
    pub first_segment: bool,
}

/// Stream Commit ('c'): a streamed transaction committed; its flags byte must be 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamCommit {
    /// The top-level transaction's xid.
    pub xid: u32,
    /// The LSN of the commit record.
    pub commit_lsn: Lsn,
    /// The LSN just past the commit record.
    pub end_lsn: Lsn,
    /// When the transaction committed.
    pub commit_time: PgTimestamp,
}

/// Stream Abort ('A'): a streamed transaction, or one of its subtransactions, aborted; drop
/// what was streamed for `subxid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamAbort {
    /// The top-level transaction's xid.
    pub xid: u32,
    /// The aborted subtransaction's xid, equal to `xid` when the whole transaction aborted.
    pub subxid: u32,
}

/// The columns of one row, in the order of the [`Relation`]'s columns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TupleData {
    /// One entry per column.
    pub columns: Vec<Column>,
}

/// One column value of a [`TupleData`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Column {
    /// 'n': SQL NULL.
    Null,
    /// 'u': a TOASTed value that did not change; the row carries no copy of it.
    UnchangedToast,
    /// 't': the value in the type's text output format, in the session's client encoding
    /// (not checked to be UTF-8).
    Text(Bytes),
    /// 'b': the value in the type's binary format (with the `binary` option).
    Binary(Bytes),
}
