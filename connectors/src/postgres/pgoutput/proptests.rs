//! Property tests of decoder and encoder together: every message survives encode → decode,
//! every prefix of an encoding is an error, and no input, random or a corrupted encoding,
//! makes the decoder panic; whatever it accepts encodes back to the same bytes.

use bytes::Bytes;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{Index, select};
use proptest::test_runner::TestCaseError;

use super::decode::tests::assert_decodes;
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
    (any::<u32>(), name(), name(), identity, columns).prop_map(
        |(id, namespace, name, replica_identity, columns)| {
            Message::Relation(Relation {
                id,
                namespace,
                name,
                replica_identity,
                columns,
            })
        },
    )
}

fn type_message() -> impl Strategy<Value = Message> {
    (any::<u32>(), name(), name()).prop_map(|(id, namespace, name)| {
        Message::Type(Type {
            id,
            namespace,
            name,
        })
    })
}

fn insert() -> impl Strategy<Value = Message> {
    (any::<u32>(), tuple())
        .prop_map(|(relation_id, new)| Message::Insert(Insert { relation_id, new }))
}

fn update() -> impl Strategy<Value = Message> {
    let old = proptest::option::of(old_tuple());
    (any::<u32>(), old, tuple()).prop_map(|(relation_id, old, new)| {
        Message::Update(Update {
            relation_id,
            old,
            new,
        })
    })
}

fn delete() -> impl Strategy<Value = Message> {
    (any::<u32>(), old_tuple())
        .prop_map(|(relation_id, old)| Message::Delete(Delete { relation_id, old }))
}

fn truncate() -> impl Strategy<Value = Message> {
    let ids = vec(any::<u32>(), 0..6);
    (any::<bool>(), any::<bool>(), ids).prop_map(|(cascade, restart_identity, relation_ids)| {
        Message::Truncate(Truncate {
            cascade,
            restart_identity,
            relation_ids,
        })
    })
}

fn any_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        origin(),
        relation(),
        type_message(),
        insert(),
        update(),
        delete(),
        truncate(),
    ]
}

fn round_trip(message: &Message) {
    assert_decodes(&encode(message), message);
}

/// Decodes `payload` and, if it is accepted, checks that it encodes back to the same bytes.
fn decode_without_panic(payload: Bytes) -> Result<(), TestCaseError> {
    if let Ok(message) = decode(payload.clone()) {
        prop_assert_eq!(encode(&message), payload);
    }
    Ok(())
}

proptest! {
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
    fn arbitrary_bytes_never_panic(
        tag in select(&b"BCORYIUDTMSEcAx"[..]),
        rest in vec(any::<u8>(), 0..64),
        bare in vec(any::<u8>(), 0..64),
    ) {
        let tagged = [&[tag][..], &rest].concat();
        decode_without_panic(Bytes::from(tagged))?;
        decode_without_panic(Bytes::from(bare))?;
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
        decode_without_panic(Bytes::from(corrupted))?;
    }
}
