//! Encoding messages into pgoutput bytes, the exact inverse of the decoder. sluice only reads
//! pgoutput; this exists for round-trip tests and for integration tests that stand in for a
//! server.

use bytes::{BufMut, Bytes, BytesMut};

use super::{Column, Message, Name, OldTuple, TupleData};

/// Encodes `message` as PostgreSQL would send it.
///
/// # Panics
///
/// If a tuple or relation has more than 65,535 columns, or a count or value length does not
/// fit in 32 bits: messages PostgreSQL cannot produce (a table has at most 1,600 columns).
pub fn encode(message: &Message) -> Bytes {
    let mut out = BytesMut::new();
    out.put_u8(message.kind().tag());
    match message {
        Message::Origin(origin) => {
            out.put_u64(origin.commit_lsn.0);
            put_name(&mut out, &origin.name);
        }
        Message::Relation(relation) => {
            out.put_u32(relation.id);
            put_name(&mut out, &relation.namespace);
            put_name(&mut out, &relation.name);
            out.put_u8(relation.replica_identity.byte());
            out.put_u16(column_count(relation.columns.len()));
            for column in &relation.columns {
                out.put_u8(column.key.into());
                put_name(&mut out, &column.name);
                out.put_u32(column.type_id);
                out.put_i32(column.type_modifier);
            }
        }
        Message::Type(ty) => {
            out.put_u32(ty.id);
            put_name(&mut out, &ty.namespace);
            put_name(&mut out, &ty.name);
        }
        Message::Insert(insert) => {
            out.put_u32(insert.relation_id);
            put_tuple(&mut out, b'N', &insert.new);
        }
        Message::Update(update) => {
            out.put_u32(update.relation_id);
            if let Some(old) = &update.old {
                put_old_tuple(&mut out, old);
            }
            put_tuple(&mut out, b'N', &update.new);
        }
        Message::Delete(delete) => {
            out.put_u32(delete.relation_id);
            put_old_tuple(&mut out, &delete.old);
        }
        Message::Truncate(truncate) => {
            out.put_u32(length(truncate.relation_ids.len()));
            out.put_u8(u8::from(truncate.cascade) | u8::from(truncate.restart_identity) << 1);
            for id in &truncate.relation_ids {
                out.put_u32(*id);
            }
        }
    }
    out.freeze()
}

fn put_name(out: &mut BytesMut, name: &Name) {
    out.put_slice(name.as_str().as_bytes());
    out.put_u8(0);
}

fn put_old_tuple(out: &mut BytesMut, old: &OldTuple) {
    match old {
        OldTuple::Key(tuple) => put_tuple(out, b'K', tuple),
        OldTuple::Full(tuple) => put_tuple(out, b'O', tuple),
    }
}

fn put_tuple(out: &mut BytesMut, marker: u8, tuple: &TupleData) {
    out.put_u8(marker);
    out.put_u16(column_count(tuple.columns.len()));
    for column in &tuple.columns {
        match column {
            Column::Null => out.put_u8(b'n'),
            Column::UnchangedToast => out.put_u8(b'u'),
            Column::Text(value) => {
                out.put_u8(b't');
                put_counted(out, value);
            }
            Column::Binary(value) => {
                out.put_u8(b'b');
                put_counted(out, value);
            }
        }
    }
}

fn put_counted(out: &mut BytesMut, bytes: &[u8]) {
    out.put_u32(length(bytes.len()));
    out.put_slice(bytes);
}

#[allow(
    clippy::expect_used,
    reason = "documented: encode panics on counts the protocol cannot carry"
)]
fn column_count(count: usize) -> u16 {
    u16::try_from(count).expect("pgoutput column counts are Int16: at most 65,535 columns")
}

#[allow(
    clippy::expect_used,
    reason = "documented: encode panics on lengths the protocol cannot carry"
)]
fn length(len: usize) -> u32 {
    u32::try_from(len).expect("pgoutput counts and lengths are Int32")
}
