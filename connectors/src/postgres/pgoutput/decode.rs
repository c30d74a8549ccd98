//! Decoding pgoutput messages from XLogData payloads. Values and names are slices of the
//! payload, never copies, and every length from the wire is checked before it is used, so no
//! input can make the decoder panic or allocate more than the input's size.

use bytes::{Buf, Bytes, TryGetError};

use super::{
    Begin, Column, Commit, Delete, Error, Insert, LogicalMessage, Lsn, Message, MessageKind, Name,
    OldTuple, Origin, PgTimestamp, Relation, RelationColumn, ReplicaIdentity, StreamAbort,
    StreamCommit, StreamStart, Truncate, TupleData, Type, Update,
};

/// The pgoutput protocol version, as asked for with the `proto_version` option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProtocolVersion {
    /// Version 1: whole transactions, sent when they commit.
    V1,
    /// Version 2 (PostgreSQL 14+): also streams large in-progress transactions when the
    /// `streaming` option is on.
    V2,
}

/// Decodes the messages of one replication stream, in the order the server sent them.
///
/// The decoder is a small state machine rather than a free function because in protocol 2 the
/// layout of a data message depends on the stream: between Stream Start and Stream Stop,
/// Relation, Type, Insert, Update, Delete, Truncate and Logical Message carry a leading xid,
/// and elsewhere they do not. The decoder follows Stream Start and Stop itself, so a caller
/// only has to feed it every message of the stream, starting outside a streamed block (where
/// `START_REPLICATION` and the `pg_logical_slot_*_changes` functions always start). Messages
/// that cannot occur in the current state (Begin inside a streamed block, Stream Stop outside
/// one, any stream message in protocol 1) are refused with [`Error::Unexpected`], which catches
/// a caller that skipped a message before it turns into misread data.
#[derive(Debug, Clone)]
pub struct Decoder {
    version: ProtocolVersion,
    in_stream: bool,
}

impl Decoder {
    /// A decoder for a stream opened with `version`, outside any streamed block.
    pub fn new(version: ProtocolVersion) -> Self {
        Self {
            version,
            in_stream: false,
        }
    }

    /// Whether a streamed block is open: a Stream Start was decoded and its Stream Stop not yet.
    pub fn in_stream(&self) -> bool {
        self.in_stream
    }

    /// Decodes one message: the whole payload of one XLogData message.
    ///
    /// The stream state changes only when a Stream Start or Stream Stop decodes successfully.
    pub fn decode(&mut self, payload: Bytes) -> Result<Message, Error> {
        let tag = *payload.first().ok_or(Error::Empty)?;
        let kind = MessageKind::from_tag(tag).ok_or(Error::UnknownTag { tag })?;
        if let Some(reason) = self.refusal(kind) {
            return Err(Error::Unexpected {
                message: kind,
                reason,
            });
        }
        let mut reader = Reader {
            len: payload.len(),
            rest: payload.slice(1..),
            kind,
        };
        let xid = if self.in_stream && kind.has_stream_xid() {
            Some(reader.u32("xid")?)
        } else {
            None
        };
        let message = reader.message(xid)?;
        reader.finish()?;
        match kind {
            MessageKind::StreamStart => self.in_stream = true,
            MessageKind::StreamStop => self.in_stream = false,
            _ => {}
        }
        Ok(message)
    }

    /// Why `kind` cannot come next, if it cannot.
    fn refusal(&self, kind: MessageKind) -> Option<&'static str> {
        use MessageKind as Kind;
        match kind {
            Kind::StreamStart | Kind::StreamStop | Kind::StreamCommit | Kind::StreamAbort
                if self.version == ProtocolVersion::V1 =>
            {
                Some("protocol version 1 has no streaming")
            }
            Kind::Begin
            | Kind::Commit
            | Kind::StreamStart
            | Kind::StreamCommit
            | Kind::StreamAbort
                if self.in_stream =>
            {
                Some("a streamed block is open")
            }
            Kind::StreamStop if !self.in_stream => Some("no streamed block is open"),
            _ => None,
        }
    }
}

/// A cursor over one message after its tag byte; its errors name the message and the offset.
struct Reader {
    /// The bytes not read yet.
    rest: Bytes,
    /// The length of the whole message, tag included, to turn `rest` into an offset.
    len: usize,
    kind: MessageKind,
}

impl Reader {
    /// Reads the body of a `self.kind` message whose stream xid (if any) was read already.
    fn message(&mut self, xid: Option<u32>) -> Result<Message, Error> {
        // Struct literal fields are evaluated in the order written, which is the wire order.
        Ok(match self.kind {
            MessageKind::Begin => Message::Begin(Begin {
                final_lsn: self.lsn("final LSN")?,
                commit_time: self.timestamp("commit timestamp")?,
                xid: self.u32("xid")?,
            }),
            MessageKind::Commit => {
                self.zero_flags()?;
                Message::Commit(Commit {
                    commit_lsn: self.lsn("commit LSN")?,
                    end_lsn: self.lsn("end LSN")?,
                    commit_time: self.timestamp("commit timestamp")?,
                })
            }
            MessageKind::Origin => Message::Origin(Origin {
                commit_lsn: self.lsn("origin commit LSN")?,
                name: self.name("origin name")?,
            }),
            MessageKind::Relation => Message::Relation(Relation {
                xid,
                id: self.u32("relation id")?,
                namespace: self.name("namespace")?,
                name: self.name("relation name")?,
                replica_identity: self.byte(
                    "replica identity",
                    "'d', 'n', 'f' or 'i'",
                    ReplicaIdentity::from_byte,
                )?,
                columns: self.list("column count", |r| {
                    Ok(RelationColumn {
                        key: r.flag("column flags")?,
                        name: r.name("column name")?,
                        type_id: r.u32("column type id")?,
                        type_modifier: r.number("column type modifier", Bytes::try_get_i32)?,
                    })
                })?,
            }),
            MessageKind::Type => Message::Type(Type {
                xid,
                id: self.u32("type id")?,
                namespace: self.name("namespace")?,
                name: self.name("type name")?,
            }),
            MessageKind::Insert => Message::Insert(Insert {
                xid,
                relation_id: self.u32("relation id")?,
                new: self.new_tuple()?,
            }),
            MessageKind::Update => {
                let relation_id = self.u32("relation id")?;
                let old = match self.rest.first() {
                    Some(b'N') => None,
                    _ => Some(self.old_tuple("'K', 'O' or 'N'")?),
                };
                Message::Update(Update {
                    xid,
                    relation_id,
                    old,
                    new: self.new_tuple()?,
                })
            }
            MessageKind::Delete => Message::Delete(Delete {
                xid,
                relation_id: self.u32("relation id")?,
                old: self.old_tuple("'K' or 'O'")?,
            }),
            MessageKind::Truncate => {
                let count = self.u32("relation count")?;
                let (cascade, restart_identity) =
                    self.byte("options", "a combination of bits 1 and 2", |options| {
                        (options & !0b11 == 0).then_some((options & 1 != 0, options & 2 != 0))
                    })?;
                Message::Truncate(Truncate {
                    xid,
                    cascade,
                    restart_identity,
                    relation_ids: self.list_of(count, |r| r.u32("relation id"))?,
                })
            }
            MessageKind::LogicalMessage => Message::LogicalMessage(LogicalMessage {
                xid,
                transactional: self.flag("flags")?,
                lsn: self.lsn("message LSN")?,
                prefix: self.name("prefix")?,
                content: self.counted("content")?,
            }),
            MessageKind::StreamStart => Message::StreamStart(StreamStart {
                xid: self.u32("xid")?,
                first_segment: self.flag("first segment flag")?,
            }),
            MessageKind::StreamStop => Message::StreamStop,
            MessageKind::StreamCommit => {
                let xid = self.u32("xid")?;
                self.zero_flags()?;
                Message::StreamCommit(StreamCommit {
                    xid,
                    commit_lsn: self.lsn("commit LSN")?,
                    end_lsn: self.lsn("end LSN")?,
                    commit_time: self.timestamp("commit timestamp")?,
                })
            }
            MessageKind::StreamAbort => Message::StreamAbort(StreamAbort {
                xid: self.u32("xid")?,
                subxid: self.u32("subtransaction xid")?,
            }),
        })
    }

    /// 'N' and the new tuple after it.
    fn new_tuple(&mut self) -> Result<TupleData, Error> {
        self.byte("tuple marker", "'N'", |marker| {
            (marker == b'N').then_some(())
        })?;
        self.tuple()
    }

    /// 'K' or 'O' and the old tuple after it; `expected` lists the markers allowed here.
    fn old_tuple(&mut self, expected: &'static str) -> Result<OldTuple, Error> {
        let marker = self.byte("tuple marker", expected, |marker| {
            matches!(marker, b'K' | b'O').then_some(marker)
        })?;
        let tuple = self.tuple()?;
        Ok(match marker {
            b'K' => OldTuple::Key(tuple),
            _ => OldTuple::Full(tuple),
        })
    }

    /// TupleData: an Int16 column count, then per column a kind byte and maybe a value.
    fn tuple(&mut self) -> Result<TupleData, Error> {
        let columns = self.list("column count", |r| {
            let kind = r.byte("column kind", "'n', 'u', 't' or 'b'", |kind| {
                matches!(kind, b'n' | b'u' | b't' | b'b').then_some(kind)
            })?;
            Ok(match kind {
                b'n' => Column::Null,
                b'u' => Column::UnchangedToast,
                b't' => Column::Text(r.counted("column value")?),
                _ => Column::Binary(r.counted("column value")?),
            })
        })?;
        Ok(TupleData { columns })
    }

    /// An Int16 count, then that many items read by `item`.
    fn list<T>(
        &mut self,
        field: &'static str,
        item: impl FnMut(&mut Self) -> Result<T, Error>,
    ) -> Result<Vec<T>, Error> {
        let count = self.number(field, Bytes::try_get_u16)?;
        self.list_of(u32::from(count), item)
    }

    /// `count` items read by `item`. Every item takes at least one byte, so the bytes left
    /// bound both the allocation and the loop, whatever count the wire claims.
    fn list_of<T>(
        &mut self,
        count: u32,
        mut item: impl FnMut(&mut Self) -> Result<T, Error>,
    ) -> Result<Vec<T>, Error> {
        let capacity = usize::try_from(count).map_or(self.rest.len(), |n| n.min(self.rest.len()));
        let mut items = Vec::with_capacity(capacity);
        for _ in 0..count {
            items.push(item(self)?);
        }
        Ok(items)
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, Error> {
        self.number(field, Bytes::try_get_u32)
    }

    fn lsn(&mut self, field: &'static str) -> Result<Lsn, Error> {
        self.number(field, Bytes::try_get_u64).map(Lsn)
    }

    fn timestamp(&mut self, field: &'static str) -> Result<PgTimestamp, Error> {
        self.number(field, Bytes::try_get_i64).map(PgTimestamp)
    }

    /// A big-endian number; `get` leaves `rest` untouched when too few bytes are left.
    fn number<T>(
        &mut self,
        field: &'static str,
        get: fn(&mut Bytes) -> Result<T, TryGetError>,
    ) -> Result<T, Error> {
        get(&mut self.rest).map_err(|short| self.truncated(field, short.requested))
    }

    /// One byte, mapped by `meaning`; a byte without one is an [`Error::InvalidByte`].
    fn byte<T>(
        &mut self,
        field: &'static str,
        expected: &'static str,
        meaning: impl FnOnce(u8) -> Option<T>,
    ) -> Result<T, Error> {
        let offset = self.offset();
        let found = self.number(field, Bytes::try_get_u8)?;
        meaning(found).ok_or(Error::InvalidByte {
            message: self.kind,
            offset,
            field,
            expected,
            found,
        })
    }

    /// An Int8 that must be 0 or 1.
    fn flag(&mut self, field: &'static str) -> Result<bool, Error> {
        self.byte(field, "0 or 1", |flag| match flag {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        })
    }

    /// The unused flags byte of (Stream) Commit, which PostgreSQL's reader requires to be 0.
    fn zero_flags(&mut self) -> Result<(), Error> {
        self.byte("flags", "0", |flags| (flags == 0).then_some(()))
    }

    /// An Int32 length, then that many bytes, sliced from the payload.
    fn counted(&mut self, field: &'static str) -> Result<Bytes, Error> {
        let len = self.u32(field)?;
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len > self.rest.len() {
            return Err(self.truncated(field, len));
        }
        Ok(self.rest.split_to(len))
    }

    /// A NUL-terminated string, sliced from the payload and checked to be UTF-8.
    fn name(&mut self, field: &'static str) -> Result<Name, Error> {
        let offset = self.offset();
        let Some(len) = self.rest.iter().position(|&b| b == 0) else {
            return Err(Error::Unterminated {
                message: self.kind,
                offset,
                field,
            });
        };
        let bytes = self.rest.split_to(len);
        self.rest.advance(1);
        Name::from_utf8(bytes).map_err(|source| Error::InvalidUtf8 {
            message: self.kind,
            offset,
            field,
            source,
        })
    }

    fn finish(self) -> Result<(), Error> {
        match self.rest.len() {
            0 => Ok(()),
            count => Err(Error::TrailingBytes {
                message: self.kind,
                offset: self.offset(),
                count,
            }),
        }
    }

    fn truncated(&self, field: &'static str, needed: usize) -> Error {
        Error::Truncated {
            message: self.kind,
            offset: self.offset(),
            field,
            needed,
            available: self.rest.len(),
        }
    }

    fn offset(&self) -> usize {
        self.len - self.rest.len()
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::encode;
    use super::*;

    /// A protocol 2 decoder, inside a streamed block if `in_stream`.
    pub(in super::super) fn decoder(in_stream: bool) -> Decoder {
        let mut decoder = Decoder::new(ProtocolVersion::V2);
        if in_stream {
            let start = decoder.decode(Bytes::from_static(b"S\x00\x00\x00\x07\x01"));
            assert!(start.is_ok(), "{start:?}");
        }
        decoder
    }

    /// Checks that `wire` decodes to `expected` (inside a streamed block if `in_stream`), that
    /// encoding gives `wire` back and that every shorter prefix of `wire` is an error.
    pub(in super::super) fn assert_decodes(in_stream: bool, wire: &Bytes, expected: &Message) {
        let decoded = decoder(in_stream).decode(wire.clone());
        assert_eq!(decoded.as_ref().ok(), Some(expected), "{decoded:?}");
        assert_eq!(&encode(expected), wire);
        for end in 0..wire.len() {
            let prefix = decoder(in_stream).decode(wire.slice(..end));
            assert!(prefix.is_err(), "prefix of {end} bytes decoded: {prefix:?}");
        }
    }

    fn wire(parts: &[&[u8]]) -> Bytes {
        Bytes::from(parts.concat())
    }

    fn name(text: &'static str) -> Name {
        Name::from_static(text)
    }

    fn text(value: &'static str) -> Column {
        Column::Text(Bytes::from_static(value.as_bytes()))
    }

    fn error(in_stream: bool, parts: &[&[u8]]) -> String {
        match decoder(in_stream).decode(wire(parts)) {
            Ok(message) => panic!("decoded {message:?}"),
            Err(error) => error.to_string(),
        }
    }

    const LSN: [u8; 8] = 0x0000_0001_0153_4838_u64.to_be_bytes();
    const END_LSN: [u8; 8] = 0x0000_0001_0153_4870_u64.to_be_bytes();
    const TIME: [u8; 8] = 817_000_000_123_456_i64.to_be_bytes();
    const XID: [u8; 4] = 727_u32.to_be_bytes();
    const RELATION: [u8; 4] = 16_396_u32.to_be_bytes();

    /// id = '1', name NULL, doc unchanged TOAST, raw = binary 0xdead.
    fn four_columns() -> (Vec<u8>, TupleData) {
        let bytes = wire(&[
            &4_u16.to_be_bytes(),
            b"t\x00\x00\x00\x011",
            b"n",
            b"u",
            b"b",
        ])
        .iter()
        .copied()
        .chain([0, 0, 0, 2, 0xde, 0xad])
        .collect();
        let columns = vec![
            text("1"),
            Column::Null,
            Column::UnchangedToast,
            Column::Binary(Bytes::from_static(&[0xde, 0xad])),
        ];
        (bytes, TupleData { columns })
    }

    #[test]
    fn begin() {
        let expected = Message::Begin(Begin {
            final_lsn: Lsn(0x1_0153_4838),
            commit_time: PgTimestamp(817_000_000_123_456),
            xid: 727,
        });
        assert_decodes(false, &wire(&[b"B", &LSN, &TIME, &XID]), &expected);
    }

    #[test]
    fn commit() {
        let expected = Message::Commit(Commit {
            commit_lsn: Lsn(0x1_0153_4838),
            end_lsn: Lsn(0x1_0153_4870),
            commit_time: PgTimestamp(817_000_000_123_456),
        });
        assert_decodes(false, &wire(&[b"C\x00", &LSN, &END_LSN, &TIME]), &expected);
    }

    #[test]
    fn origin_inside_and_outside_streams() {
        let expected = Message::Origin(Origin {
            commit_lsn: Lsn(0x1_0153_4838),
            name: name("upstream"),
        });
        for in_stream in [false, true] {
            assert_decodes(in_stream, &wire(&[b"O", &LSN, b"upstream\0"]), &expected);
        }
    }

    #[test]
    fn relation() {
        let bytes = wire(&[
            b"R",
            &RELATION,
            b"public\0outbox\0d",
            &2_u16.to_be_bytes(),
            b"\x01id\0",
            &20_u32.to_be_bytes(),
            &(-1_i32).to_be_bytes(),
            b"\x00payload\0",
            &1043_u32.to_be_bytes(),
            &68_i32.to_be_bytes(),
        ]);
        let expected = Message::Relation(Relation {
            xid: None,
            id: 16_396,
            namespace: name("public"),
            name: name("outbox"),
            replica_identity: ReplicaIdentity::Default,
            columns: vec![
                RelationColumn {
                    key: true,
                    name: name("id"),
                    type_id: 20,
                    type_modifier: -1,
                },
                RelationColumn {
                    key: false,
                    name: name("payload"),
                    type_id: 1043,
                    type_modifier: 68,
                },
            ],
        });
        assert_decodes(false, &bytes, &expected);
    }

    #[test]
    fn relation_in_a_stream_has_an_xid_and_pg_catalog_an_empty_namespace() {
        let bytes = wire(&[b"R", &XID, &RELATION, b"\0t\0f", &0_u16.to_be_bytes()]);
        let expected = Message::Relation(Relation {
            xid: Some(727),
            id: 16_396,
            namespace: name(""),
            name: name("t"),
            replica_identity: ReplicaIdentity::Full,
            columns: vec![],
        });
        assert_decodes(true, &bytes, &expected);
    }

    #[test]
    fn type_message() {
        let bytes = wire(&[b"Y", &16_390_u32.to_be_bytes(), b"public\0mood\0"]);
        let expected = Message::Type(Type {
            xid: None,
            id: 16_390,
            namespace: name("public"),
            name: name("mood"),
        });
        assert_decodes(false, &bytes, &expected);
    }

    #[test]
    fn insert_with_every_column_kind() {
        let (tuple_bytes, tuple) = four_columns();
        let expected = Message::Insert(Insert {
            xid: None,
            relation_id: 16_396,
            new: tuple,
        });
        assert_decodes(
            false,
            &wire(&[b"I", &RELATION, b"N", &tuple_bytes]),
            &expected,
        );
    }

    #[test]
    fn insert_in_a_stream() {
        let bytes = wire(&[b"I", &XID, &RELATION, b"N", &0_u16.to_be_bytes()]);
        let expected = Message::Insert(Insert {
            xid: Some(727),
            relation_id: 16_396,
            new: TupleData::default(),
        });
        assert_decodes(true, &bytes, &expected);
    }

    #[test]
    fn update_without_old_values() {
        let (tuple_bytes, tuple) = four_columns();
        let expected = Message::Update(Update {
            xid: None,
            relation_id: 16_396,
            old: None,
            new: tuple,
        });
        assert_decodes(
            false,
            &wire(&[b"U", &RELATION, b"N", &tuple_bytes]),
            &expected,
        );
    }

    #[test]
    fn update_with_old_key_and_with_old_row() {
        let (tuple_bytes, tuple) = four_columns();
        let key = wire(&[&1_u16.to_be_bytes(), b"t\x00\x00\x00\x017"]);
        let key_tuple = TupleData {
            columns: vec![text("7")],
        };
        let with_key = Message::Update(Update {
            xid: None,
            relation_id: 16_396,
            old: Some(OldTuple::Key(key_tuple.clone())),
            new: tuple.clone(),
        });
        let bytes = wire(&[b"U", &RELATION, b"K", &key, b"N", &tuple_bytes]);
        assert_decodes(false, &bytes, &with_key);

        let with_row = Message::Update(Update {
            xid: Some(727),
            relation_id: 16_396,
            old: Some(OldTuple::Full(key_tuple)),
            new: tuple,
        });
        let bytes = wire(&[b"U", &XID, &RELATION, b"O", &key, b"N", &tuple_bytes]);
        assert_decodes(true, &bytes, &with_row);
    }

    #[test]
    fn delete_with_old_key_and_with_old_row() {
        let (tuple_bytes, tuple) = four_columns();
        for (marker, old) in [
            (b"K", OldTuple::Key(tuple.clone())),
            (b"O", OldTuple::Full(tuple.clone())),
        ] {
            let expected = Message::Delete(Delete {
                xid: None,
                relation_id: 16_396,
                old,
            });
            assert_decodes(
                false,
                &wire(&[b"D", &RELATION, marker, &tuple_bytes]),
                &expected,
            );
        }
    }

    #[test]
    fn truncate() {
        let bytes = wire(&[
            b"T",
            &2_u32.to_be_bytes(),
            &[0b11],
            &RELATION,
            &16_400_u32.to_be_bytes(),
        ]);
        let expected = Message::Truncate(Truncate {
            xid: None,
            cascade: true,
            restart_identity: true,
            relation_ids: vec![16_396, 16_400],
        });
        assert_decodes(false, &bytes, &expected);
    }

    #[test]
    fn logical_message() {
        let bytes = wire(&[
            b"M\x01",
            &LSN,
            b"sluice\0",
            &7_u32.to_be_bytes(),
            b"content",
        ]);
        let expected = Message::LogicalMessage(LogicalMessage {
            xid: None,
            transactional: true,
            lsn: Lsn(0x1_0153_4838),
            prefix: name("sluice"),
            content: Bytes::from_static(b"content"),
        });
        assert_decodes(false, &bytes, &expected);

        let bytes = wire(&[b"M", &XID, b"\x00", &LSN, b"p\0", &0_u32.to_be_bytes()]);
        let expected = Message::LogicalMessage(LogicalMessage {
            xid: Some(727),
            transactional: false,
            lsn: Lsn(0x1_0153_4838),
            prefix: name("p"),
            content: Bytes::new(),
        });
        assert_decodes(true, &bytes, &expected);
    }

    #[test]
    fn stream_start_and_stop_track_the_block() {
        let mut decoder = decoder(false);
        let start = decoder.decode(wire(&[b"S", &XID, b"\x01"]));
        let expected = StreamStart {
            xid: 727,
            first_segment: true,
        };
        assert_eq!(start.ok(), Some(Message::StreamStart(expected)));
        assert!(decoder.in_stream());
        assert_eq!(
            decoder.decode(wire(&[b"E"])).ok(),
            Some(Message::StreamStop)
        );
        assert!(!decoder.in_stream());

        let later = Message::StreamStart(StreamStart {
            xid: 727,
            first_segment: false,
        });
        assert_decodes(false, &wire(&[b"S", &XID, b"\x00"]), &later);
        assert_decodes(true, &wire(&[b"E"]), &Message::StreamStop);
    }

    #[test]
    fn stream_commit() {
        let expected = Message::StreamCommit(StreamCommit {
            xid: 727,
            commit_lsn: Lsn(0x1_0153_4838),
            end_lsn: Lsn(0x1_0153_4870),
            commit_time: PgTimestamp(817_000_000_123_456),
        });
        let bytes = wire(&[b"c", &XID, b"\x00", &LSN, &END_LSN, &TIME]);
        assert_decodes(false, &bytes, &expected);
    }

    #[test]
    fn stream_abort() {
        let expected = Message::StreamAbort(StreamAbort {
            xid: 727,
            subxid: 731,
        });
        let bytes = wire(&[b"A", &XID, &731_u32.to_be_bytes()]);
        assert_decodes(false, &bytes, &expected);
    }

    #[test]
    fn column_values_are_slices_of_the_payload() {
        let payload = wire(&[
            b"I",
            &RELATION,
            b"N",
            &1_u16.to_be_bytes(),
            b"t\0\0\0\x03abc",
        ]);
        let Ok(Message::Insert(insert)) = decoder(false).decode(payload.clone()) else {
            panic!("not an insert");
        };
        let Some(Column::Text(value)) = insert.new.columns.first() else {
            panic!("not a text column");
        };
        assert_eq!(value.as_ptr(), payload[payload.len() - 3..].as_ptr());
    }

    #[test]
    fn errors_name_the_message_the_offset_and_the_expectation() {
        let cases: [(bool, &[&[u8]], &str); 12] = [
            (false, &[], "empty pgoutput message: expected a tag byte"),
            (
                false,
                &[b"P"],
                "unknown pgoutput message tag 'P' at offset 0",
            ),
            (
                false,
                &[b"\x00"],
                "unknown pgoutput message tag byte 0x00 at offset 0",
            ),
            (
                false,
                &[b"I", &RELATION, b"N\x00"],
                "truncated Insert message at offset 6: expected 2 more bytes for column count, \
                 found 1",
            ),
            (
                false,
                &[b"I", &RELATION, b"N\x00\x01x"],
                "invalid column kind in Insert message at offset 8: \
                 expected 'n', 'u', 't' or 'b', found 'x'",
            ),
            (
                false,
                &[b"D", &RELATION, b"N\x00\x00"],
                "invalid tuple marker in Delete message at offset 5: expected 'K' or 'O', \
                 found 'N'",
            ),
            (
                false,
                &[b"R", &RELATION, b"pub\xfflic\0"],
                "invalid UTF-8 in namespace of Relation message at offset 5",
            ),
            (
                false,
                &[b"O", &LSN, b"upstream"],
                "truncated Origin message at offset 9: origin name has no NUL terminator",
            ),
            (
                false,
                &[b"C\x01", &LSN, &END_LSN, &TIME],
                "invalid flags in Commit message at offset 1: expected 0, found byte 0x01",
            ),
            (
                true,
                &[b"E\x00"],
                "trailing bytes in Stream Stop message at offset 1: expected the end, found 1 more",
            ),
            (
                false,
                &[b"E"],
                "unexpected Stream Stop message: no streamed block is open",
            ),
            (
                true,
                &[b"B", &LSN, &TIME, &XID],
                "unexpected Begin message: a streamed block is open",
            ),
        ];
        for (in_stream, parts, message) in cases {
            assert_eq!(error(in_stream, parts), message);
        }
    }

    #[test]
    fn protocol_1_has_no_stream_messages() {
        let mut decoder = Decoder::new(ProtocolVersion::V1);
        let start = decoder.decode(wire(&[b"S", &XID, b"\x01"]));
        let error = start.map_err(|error| error.to_string());
        let expected = "unexpected Stream Start message: protocol version 1 has no streaming";
        assert_eq!(error, Err(expected.to_owned()));
        assert!(!decoder.in_stream());
    }

    #[test]
    fn a_failed_stream_start_leaves_the_state_alone() {
        let mut decoder = decoder(false);
        assert!(decoder.decode(wire(&[b"S", &XID, b"\x02"])).is_err());
        assert!(!decoder.in_stream());
    }

    #[test]
    fn huge_counts_and_lengths_fail_without_allocating() {
        let cases: [&[&[u8]]; 3] = [
            &[b"T", &u32::MAX.to_be_bytes(), b"\x00"],
            &[b"I", &RELATION, b"N", &u16::MAX.to_be_bytes(), b"n"],
            &[b"M\x00", &LSN, b"p\0", &u32::MAX.to_be_bytes()],
        ];
        let expected = [
            "truncated Truncate message at offset 6: expected 4 more bytes for relation id, \
             found 0",
            "truncated Insert message at offset 9: expected 1 more bytes for column kind, \
             found 0",
            "truncated Logical Message message at offset 16: expected 4294967295 more bytes \
             for content, found 0",
        ];
        for (parts, message) in cases.into_iter().zip(expected) {
            assert_eq!(error(false, parts), message);
        }
    }
}
