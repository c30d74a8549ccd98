//! Decoding pgoutput messages from XLogData payloads. Values and names are slices of the
//! payload, never copies, and every length from the wire is checked before it is used, so no
//! input can make the decoder panic or allocate more than the input's size.

use bytes::{Buf, Bytes, TryGetError};

use super::{
    Column, Delete, Error, Insert, Lsn, Message, MessageKind, Name, OldTuple, Origin, Relation,
    RelationColumn, ReplicaIdentity, Truncate, TupleData, Type, Update,
};

/// Decodes one message: the whole payload of one XLogData message of a protocol 1 stream.
///
/// Every message stands alone in protocol 1, so decoding needs no state. Begin, Commit and
/// Logical Message have unknown tags here ([`Error::UnknownTag`]): the replication transport
/// decodes them itself and never hands them over (see the [module docs](super)).
pub fn decode(payload: Bytes) -> Result<Message, Error> {
    let tag = *payload.first().ok_or(Error::Empty)?;
    let kind = MessageKind::from_tag(tag).ok_or(Error::UnknownTag { tag })?;
    let mut reader = Reader {
        len: payload.len(),
        rest: payload.slice(1..),
        kind,
    };
    let message = reader.message()?;
    reader.finish()?;
    Ok(message)
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
    /// Reads the body of a `self.kind` message.
    fn message(&mut self) -> Result<Message, Error> {
        // Struct literal fields are evaluated in the order written, which is the wire order.
        Ok(match self.kind {
            MessageKind::Origin => Message::Origin(Origin {
                commit_lsn: self.lsn("origin commit LSN")?,
                name: self.name("origin name")?,
            }),
            MessageKind::Relation => Message::Relation(Relation {
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
                id: self.u32("type id")?,
                namespace: self.name("namespace")?,
                name: self.name("type name")?,
            }),
            MessageKind::Insert => Message::Insert(Insert {
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
                    relation_id,
                    old,
                    new: self.new_tuple()?,
                })
            }
            MessageKind::Delete => Message::Delete(Delete {
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
                    cascade,
                    restart_identity,
                    relation_ids: self.list_of(count, |r| r.u32("relation id"))?,
                })
            }
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

    /// Checks that `wire` decodes to `expected`, that encoding gives `wire` back and that every
    /// shorter prefix of `wire` is an error.
    pub(in super::super) fn assert_decodes(wire: &Bytes, expected: &Message) {
        let decoded = decode(wire.clone());
        assert_eq!(decoded.as_ref().ok(), Some(expected), "{decoded:?}");
        assert_eq!(&encode(expected), wire);
        for end in 0..wire.len() {
            let prefix = decode(wire.slice(..end));
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

    fn error(parts: &[&[u8]]) -> String {
        match decode(wire(parts)) {
            Ok(message) => panic!("decoded {message:?}"),
            Err(error) => error.to_string(),
        }
    }

    const LSN: [u8; 8] = 0x0000_0001_0153_4838_u64.to_be_bytes();
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
    fn origin() {
        let expected = Message::Origin(Origin {
            commit_lsn: Lsn(0x1_0153_4838),
            name: name("upstream"),
        });
        assert_decodes(&wire(&[b"O", &LSN, b"upstream\0"]), &expected);
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
        assert_decodes(&bytes, &expected);
    }

    #[test]
    fn relation_of_pg_catalog_has_an_empty_namespace() {
        let bytes = wire(&[b"R", &RELATION, b"\0t\0f", &0_u16.to_be_bytes()]);
        let expected = Message::Relation(Relation {
            id: 16_396,
            namespace: name(""),
            name: name("t"),
            replica_identity: ReplicaIdentity::Full,
            columns: vec![],
        });
        assert_decodes(&bytes, &expected);
    }

    #[test]
    fn type_message() {
        let bytes = wire(&[b"Y", &16_390_u32.to_be_bytes(), b"public\0mood\0"]);
        let expected = Message::Type(Type {
            id: 16_390,
            namespace: name("public"),
            name: name("mood"),
        });
        assert_decodes(&bytes, &expected);
    }

    #[test]
    fn insert_with_every_column_kind() {
        let (tuple_bytes, tuple) = four_columns();
        let expected = Message::Insert(Insert {
            relation_id: 16_396,
            new: tuple,
        });
        assert_decodes(&wire(&[b"I", &RELATION, b"N", &tuple_bytes]), &expected);
    }

    #[test]
    fn update_without_old_values() {
        let (tuple_bytes, tuple) = four_columns();
        let expected = Message::Update(Update {
            relation_id: 16_396,
            old: None,
            new: tuple,
        });
        assert_decodes(&wire(&[b"U", &RELATION, b"N", &tuple_bytes]), &expected);
    }

    #[test]
    fn update_with_old_key_and_with_old_row() {
        let (tuple_bytes, tuple) = four_columns();
        let key = wire(&[&1_u16.to_be_bytes(), b"t\x00\x00\x00\x017"]);
        let key_tuple = TupleData {
            columns: vec![text("7")],
        };
        let with_key = Message::Update(Update {
            relation_id: 16_396,
            old: Some(OldTuple::Key(key_tuple.clone())),
            new: tuple.clone(),
        });
        let bytes = wire(&[b"U", &RELATION, b"K", &key, b"N", &tuple_bytes]);
        assert_decodes(&bytes, &with_key);

        let with_row = Message::Update(Update {
            relation_id: 16_396,
            old: Some(OldTuple::Full(key_tuple)),
            new: tuple,
        });
        let bytes = wire(&[b"U", &RELATION, b"O", &key, b"N", &tuple_bytes]);
        assert_decodes(&bytes, &with_row);
    }

    #[test]
    fn delete_with_old_key_and_with_old_row() {
        let (tuple_bytes, tuple) = four_columns();
        for (marker, old) in [
            (b"K", OldTuple::Key(tuple.clone())),
            (b"O", OldTuple::Full(tuple.clone())),
        ] {
            let expected = Message::Delete(Delete {
                relation_id: 16_396,
                old,
            });
            assert_decodes(&wire(&[b"D", &RELATION, marker, &tuple_bytes]), &expected);
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
            cascade: true,
            restart_identity: true,
            relation_ids: vec![16_396, 16_400],
        });
        assert_decodes(&bytes, &expected);
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
        let Ok(Message::Insert(insert)) = decode(payload.clone()) else {
            panic!("not an insert");
        };
        let Some(Column::Text(value)) = insert.new.columns.first() else {
            panic!("not a text column");
        };
        assert_eq!(value.as_ptr(), payload[payload.len() - 3..].as_ptr());
    }

    #[test]
    fn errors_name_the_message_the_offset_and_the_expectation() {
        let cases: [(&[&[u8]], &str); 12] = [
            (&[], "empty pgoutput message: expected a tag byte"),
            (&[b"P"], "unknown pgoutput message tag 'P' at offset 0"),
            (
                &[b"\x00"],
                "unknown pgoutput message tag byte 0x00 at offset 0",
            ),
            // The transport decodes Begin, Commit and Logical Message; protocol 1 has no
            // streaming.
            (
                &[b"B", &LSN, &TIME, &XID],
                "unknown pgoutput message tag 'B' at offset 0",
            ),
            (
                &[b"S", &XID, b"\x01"],
                "unknown pgoutput message tag 'S' at offset 0",
            ),
            (
                &[b"I", &RELATION, b"N\x00"],
                "truncated Insert message at offset 6: expected 2 more bytes for column count, \
                 found 1",
            ),
            (
                &[b"I", &RELATION, b"N\x00\x01x"],
                "invalid column kind in Insert message at offset 8: \
                 expected 'n', 'u', 't' or 'b', found 'x'",
            ),
            (
                &[b"D", &RELATION, b"N\x00\x00"],
                "invalid tuple marker in Delete message at offset 5: expected 'K' or 'O', \
                 found 'N'",
            ),
            (
                &[b"R", &RELATION, b"pub\xfflic\0"],
                "invalid UTF-8 in namespace of Relation message at offset 5",
            ),
            (
                &[b"O", &LSN, b"upstream"],
                "truncated Origin message at offset 9: origin name has no NUL terminator",
            ),
            (
                &[b"R", &RELATION, b"\0t\0d", &1_u16.to_be_bytes(), b"\x02"],
                "invalid column flags in Relation message at offset 11: expected 0 or 1, \
                 found byte 0x02",
            ),
            (
                &[b"Y", &16_390_u32.to_be_bytes(), b"public\0mood\0x"],
                "trailing bytes in Type message at offset 17: expected the end, found 1 more",
            ),
        ];
        for (parts, message) in cases {
            assert_eq!(error(parts), message);
        }
    }

    #[test]
    fn huge_counts_and_lengths_fail_without_allocating() {
        let cases: [&[&[u8]]; 3] = [
            &[b"T", &u32::MAX.to_be_bytes(), b"\x00"],
            &[b"I", &RELATION, b"N", &u16::MAX.to_be_bytes(), b"n"],
            &[
                b"I",
                &RELATION,
                b"N",
                &1_u16.to_be_bytes(),
                b"t",
                &u32::MAX.to_be_bytes(),
            ],
        ];
        let expected = [
            "truncated Truncate message at offset 6: expected 4 more bytes for relation id, \
             found 0",
            "truncated Insert message at offset 9: expected 1 more bytes for column kind, \
             found 0",
            "truncated Insert message at offset 13: expected 4294967295 more bytes \
             for column value, found 0",
        ];
        for (parts, message) in cases.into_iter().zip(expected) {
            assert_eq!(error(parts), message);
        }
    }
}
