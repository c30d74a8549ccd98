//! Property tests of decoder and encoder together: every message survives encode → decode,
//! every prefix of an encoding is an error, and no input, random or a corrupted encoding,
//! makes the decoder panic; whatever it accepts encodes back to the same bytes.

use bytes::Bytes;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{Index, select};
use proptest::test_runner::TestCaseError;

use super::decode::tests::{assert_decodes, decoder};
use super::*;

fn name() -> impl Strategy<Value = Name> {
    r"[^\x00]{0,12}".prop_map(Name::from)
}

fn bytes() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..24).prop_map(Bytes::from)
}

fn lsn() -> impl Strategy<Value = Lsn> {
    any::<u64>().prop_map(Lsn)
}

fn time() -> impl Strategy<Value = PgTimestamp> {
    any::<i64>().prop_map(PgTimestamp)
}

/// The xid prefix of a data message: present inside a streamed block only.
fn stream_xid() -> impl Strategy<Value = Option<u32>> {
    any::<Option<u32>>()
}

fn tuple() -> impl Strategy<Value = TupleData> {
    let column = prop_oneof![
        Just(Column::Null),
        Just(Column::UnchangedToast),
        bytes().prop_map(Column::Text),
        bytes().prop_map(Column::Binary),
    ];
    vec(column, 0..6).prop_map(|columns| TupleData { columns })
}

fn old_tuple() -> impl Strategy<Value = OldTuple> {
    prop_oneof![
        tuple().prop_map(OldTuple::Key),
        tuple().prop_map(OldTuple::Full)
    ]
}

fn begin() -> impl Strategy<Value = Message> {
    (lsn(), time(), any::<u32>()).prop_map(|(final_lsn, commit_time, xid)| {
        Message::Begin(Begin {
            final_lsn,
            commit_time,
            xid,
        })
    })
}

fn commit() -> impl Strategy<Value = Message> {
    (lsn(), lsn(), time()).prop_map(|(commit_lsn, end_lsn, commit_time)| {
        Message::Commit(Commit {
            commit_lsn,
            end_lsn,
            commit_time,
        })
    })
}

fn origin() -> impl Strategy<Value = Message> {
    (lsn(), name()).prop_map(|(commit_lsn, name)| Message::Origin(Origin { commit_lsn, name }))
}

fn relation() -> impl Strategy<Value = Message> {
    let identity = select(
        &[
            ReplicaIdentity::Default,
            ReplicaIdentity::Nothing,
            ReplicaIdentity::Full,
            ReplicaIdentity::Index,
        ][..],
    );
    let column = (any::<bool>(), name(), any::<u32>(), any::<i32>()).prop_map(
        |(key, name, type_id, type_modifier)| RelationColumn {
            key,
            name,
            type_id,
            type_modifier,
        },
    );
    let columns = vec(column, 0..6);
    (
        stream_xid(),
        any::<u32>(),
        name(),
        name(),
        identity,
        columns,
    )
        .prop_map(|(xid, id, namespace, name, replica_identity, columns)| {
            Message::Relation(Relation {
                xid,
                id,
                namespace,
                name,
                replica_identity,
                columns,
            })
        })
}

fn type_message() -> impl Strategy<Value = Message> {
    (stream_xid(), any::<u32>(), name(), name()).prop_map(|(xid, id, namespace, name)| {
        Message::Type(Type {
            xid,
            id,
            namespace,
            name,
        })
    })
}

fn insert() -> impl Strategy<Value = Message> {
    (stream_xid(), any::<u32>(), tuple()).prop_map(|(xid, relation_id, new)| {
        Message::Insert(Insert {
            xid,
            relation_id,
            new,
        })
    })
}

fn update() -> impl Strategy<Value = Message> {
    let old = proptest::option::of(old_tuple());
    (stream_xid(), any::<u32>(), old, tuple()).prop_map(|(xid, relation_id, old, new)| {
        Message::Update(Update {
            xid,
            relation_id,
            old,
            new,
        })
    })
}

fn delete() -> impl Strategy<Value = Message> {
    (stream_xid(), any::<u32>(), old_tuple()).prop_map(|(xid, relation_id, old)| {
        Message::Delete(Delete {
            xid,
            relation_id,
            old,
        })
    })
}

fn truncate() -> impl Strategy<Value = Message> {
    let ids = vec(any::<u32>(), 0..6);
    (stream_xid(), any::<bool>(), any::<bool>(), ids).prop_map(
        |(xid, cascade, restart_identity, relation_ids)| {
            Message::Truncate(Truncate {
                xid,
                cascade,
                restart_identity,
                relation_ids,
            })
        },
    )
}

fn logical_message() -> impl Strategy<Value = Message> {
    (stream_xid(), any::<bool>(), lsn(), name(), bytes()).prop_map(
        |(xid, transactional, lsn, prefix, content)| {
            Message::LogicalMessage(LogicalMessage {
                xid,
                transactional,
                lsn,
                prefix,
                content,
            })
        },
    )
}

fn stream_start() -> impl Strategy<Value = Message> {
    (any::<u32>(), any::<bool>())
        .prop_map(|(xid, first_segment)| Message::StreamStart(StreamStart { xid, first_segment }))
}

fn stream_commit() -> impl Strategy<Value = Message> {
    (any::<u32>(), lsn(), lsn(), time()).prop_map(|(xid, commit_lsn, end_lsn, commit_time)| {
        Message::StreamCommit(StreamCommit {
            xid,
            commit_lsn,
            end_lsn,
            commit_time,
        })
    })
}

fn stream_abort() -> impl Strategy<Value = Message> {
    (any::<u32>(), any::<u32>())
        .prop_map(|(xid, subxid)| Message::StreamAbort(StreamAbort { xid, subxid }))
}

fn any_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        begin(),
        commit(),
        origin(),
        relation(),
        type_message(),
        insert(),
        update(),
        delete(),
        truncate(),
        logical_message(),
        stream_start(),
        Just(Message::StreamStop),
        stream_commit(),
        stream_abort(),
    ]
}

/// Whether `message` can only be sent inside a streamed block.
fn needs_stream(message: &Message) -> bool {
    match message {
        Message::Relation(Relation { xid, .. })
        | Message::Type(Type { xid, .. })
        | Message::Insert(Insert { xid, .. })
        | Message::Update(Update { xid, .. })
        | Message::Delete(Delete { xid, .. })
        | Message::Truncate(Truncate { xid, .. })
        | Message::LogicalMessage(LogicalMessage { xid, .. }) => xid.is_some(),
        Message::StreamStop => true,
        _ => false,
    }
}

fn round_trip(message: &Message) {
    assert_decodes(needs_stream(message), &encode(message), message);
}

/// Decodes `payload` and, if it is accepted, checks that it encodes back to the same bytes.
fn decode_without_panic(mut decoder: Decoder, payload: Bytes) -> Result<(), TestCaseError> {
    if let Ok(message) = decoder.decode(payload.clone()) {
        prop_assert_eq!(encode(&message), payload);
    }
    Ok(())
}

proptest! {
    #[test]
    fn begin_round_trips(message in begin()) { round_trip(&message) }

    #[test]
    fn commit_round_trips(message in commit()) { round_trip(&message) }

    #[test]
    fn origin_round_trips(message in origin()) { round_trip(&message) }

    #[test]
    fn relation_round_trips(message in relation()) { round_trip(&message) }

    #[test]
    fn type_round_trips(message in type_message()) { round_trip(&message) }

    #[test]
    fn insert_round_trips(message in insert()) { round_trip(&message) }

    #[test]
    fn update_round_trips(message in update()) { round_trip(&message) }

    #[test]
    fn delete_round_trips(message in delete()) { round_trip(&message) }

    #[test]
    fn truncate_round_trips(message in truncate()) { round_trip(&message) }

    #[test]
    fn logical_message_round_trips(message in logical_message()) { round_trip(&message) }

    #[test]
    fn stream_start_round_trips(message in stream_start()) { round_trip(&message) }

    #[test]
    fn stream_commit_round_trips(message in stream_commit()) { round_trip(&message) }

    #[test]
    fn stream_abort_round_trips(message in stream_abort()) { round_trip(&message) }

    #[test]
    fn arbitrary_bytes_never_panic(
        state in 0..3_u8,
        tag in select(&b"BCORYIUDTMSEcAx"[..]),
        rest in vec(any::<u8>(), 0..64),
        bare in vec(any::<u8>(), 0..64),
    ) {
        let decoder = || match state {
            0 => Decoder::new(ProtocolVersion::V1),
            in_stream => decoder(in_stream == 2),
        };
        let tagged = [&[tag][..], &rest].concat();
        decode_without_panic(decoder(), Bytes::from(tagged))?;
        decode_without_panic(decoder(), Bytes::from(bare))?;
    }

    #[test]
    fn corrupted_messages_never_panic(
        message in any_message(),
        edits in vec((any::<Index>(), any::<u8>()), 1..4),
    ) {
        let mut corrupted = encode(&message).to_vec();
        for (at, byte) in edits {
            let at = at.index(corrupted.len());
            corrupted[at] = byte;
        }
        decode_without_panic(decoder(needs_stream(&message)), Bytes::from(corrupted))?;
    }
}
