//! The pgoutput messages the decoder reads as Rust values, one type per message of the
//! PostgreSQL 15 "Logical Replication Message Formats" page; names and values share the
//! decoded buffer. Begin, Commit and Logical Message are not among them: the replication
//! transport decodes those itself (see the [module docs](super)).

use std::fmt;

use bytes::Bytes;

use super::Lsn;

/// One pgoutput message: the payload of one XLogData message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
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
}

impl Message {
    /// Which kind of message this is.
    pub fn kind(&self) -> MessageKind {
        match self {
            Message::Origin(_) => MessageKind::Origin,
            Message::Relation(_) => MessageKind::Relation,
            Message::Type(_) => MessageKind::Type,
            Message::Insert(_) => MessageKind::Insert,
            Message::Update(_) => MessageKind::Update,
            Message::Delete(_) => MessageKind::Delete,
            Message::Truncate(_) => MessageKind::Truncate,
        }
    }
}

/// The kind of a message, named by its tag byte; errors use it to say which message was bad.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageKind {
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
}

impl MessageKind {
    const ALL: [MessageKind; 7] = [
        MessageKind::Origin,
        MessageKind::Relation,
        MessageKind::Type,
        MessageKind::Insert,
        MessageKind::Update,
        MessageKind::Delete,
        MessageKind::Truncate,
    ];

    /// The tag byte that starts this kind of message on the wire.
    pub fn tag(self) -> u8 {
        match self {
            MessageKind::Origin => b'O',
            MessageKind::Relation => b'R',
            MessageKind::Type => b'Y',
            MessageKind::Insert => b'I',
            MessageKind::Update => b'U',
            MessageKind::Delete => b'D',
            MessageKind::Truncate => b'T',
        }
    }

    /// The kind a tag byte names, or `None` for tags this decoder does not read: the messages
    /// the transport decodes (Begin, Commit, Logical Message), and those of protocol versions
    /// sluice does not ask for (streaming, two-phase).
    pub fn from_tag(tag: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.tag() == tag)
    }
}

impl fmt::Display for MessageKind {
    /// The name the PostgreSQL docs give the message, e.g. `Relation`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MessageKind::Origin => "Origin",
            MessageKind::Relation => "Relation",
            MessageKind::Type => "Type",
            MessageKind::Insert => "Insert",
            MessageKind::Update => "Update",
            MessageKind::Delete => "Delete",
            MessageKind::Truncate => "Truncate",
        })
    }
}

/// A name from the wire (relation, namespace, column, type, origin): UTF-8
/// text sharing the buffer it was decoded from.
pub type Name = sluice_pipeline::Text;

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
    /// The OID of the [`Relation`] the row belongs to.
    pub relation_id: u32,
    /// The new row ('N').
    pub new: TupleData,
}

/// Update ('U'): a changed row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
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
    /// `TRUNCATE … CASCADE` (option bit 1).
    pub cascade: bool,
    /// `TRUNCATE … RESTART IDENTITY` (option bit 2).
    pub restart_identity: bool,
    /// The OIDs of the truncated relations.
    pub relation_ids: Vec<u32>,
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
