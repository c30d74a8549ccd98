//! Decodes what a real PostgreSQL (15, `wal_level=logical`) sends through pgoutput in protocol
//! 1, as the relay's stream asks for it, and the same with the `binary` option. Like the relay,
//! the test leaves Begin, Commit and Logical Message to the transport: it peeks at every change
//! through SQL and decodes all the others. The test owns a uniquely named database,
//! publication and slot, and drops them even when an assertion fails. `DATABASE_URL` overrides
//! the default connection, `host=127.0.0.1 port=5432 user=postgres`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::SystemTime;

use bytes::Bytes;
use sluice_connectors::postgres::pgoutput::{
    self as pgoutput, Column, Lsn, Message, OldTuple, Relation, ReplicaIdentity, TupleData,
};
use tokio_postgres::{Client, Config, NoTls};

const DEFAULT_DSN: &str = "host=127.0.0.1 port=5432 user=postgres";

/// Rows in the big transaction that commits, after its rolled-back savepoint.
const BULK_ROWS: usize = 5_001;

/// The tags of the messages the transport decodes itself (Begin, Commit, Logical Message):
/// they never reach the decoder.
const TRANSPORT_TAGS: &[u8] = b"BCM";

/// The workload: small transactions touching every message kind, then two big transactions:
/// one aborts, one commits after rolling back a savepoint. A commit comes last because aborts
/// do not flush the WAL, and decoding stops at the flushed position.
const WORKLOAD: &[&str] = &[
    "INSERT INTO items VALUES \
     (1, 'first', '{\"k\": [1, 2]}', repeat('0123456789', 2000), 'calm')",
    "INSERT INTO items (id) VALUES (2)",
    "UPDATE items SET label = 'changed' WHERE id = 1",
    "UPDATE items SET id = 3 WHERE id = 2",
    "DELETE FROM items WHERE id = 3",
    "BEGIN; INSERT INTO audit VALUES (1, 'a'); UPDATE audit SET note = 'b'; \
     DELETE FROM audit; COMMIT",
    "SELECT pg_logical_emit_message(true, 'prefix', 'content')",
    "SELECT pg_logical_emit_message(false, 'sluice', 'now')",
    "TRUNCATE items, audit RESTART IDENTITY",
    "BEGIN; \
     INSERT INTO bulk SELECT g, repeat('w', 100) FROM generate_series(10001, 15000) g; \
     ROLLBACK",
    "BEGIN; \
     INSERT INTO bulk SELECT g, repeat('y', 100) FROM generate_series(1, 5000) g; \
     SAVEPOINT s; \
     INSERT INTO bulk SELECT g, 'z' FROM generate_series(5001, 8000) g; \
     ROLLBACK TO SAVEPOINT s; \
     RELEASE SAVEPOINT s; \
     INSERT INTO bulk VALUES (0, 'last'); \
     COMMIT",
];

#[derive(Clone)]
struct Names {
    database: String,
    publication: String,
    slot: String,
}

/// OIDs the decoded messages must refer to.
struct Catalog {
    items: u32,
    audit: u32,
    bulk: u32,
    mood: u32,
}

#[tokio::test]
async fn decodes_what_postgres_sends() {
    let dsn = std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_DSN.to_owned());
    let base: Config = dsn
        .parse()
        .expect("DATABASE_URL is a PostgreSQL connection string");
    let admin = connect(&base).await;
    let wal_level: String = admin
        .query_one("SHOW wal_level", &[])
        .await
        .expect("SHOW wal_level")
        .get(0);
    assert_eq!(wal_level, "logical", "pgoutput needs wal_level=logical");

    let unique = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_nanos();
    let suffix = format!("{}_{unique}", std::process::id());
    let names = Names {
        database: format!("pgoutput_it_{suffix}"),
        publication: format!("pgoutput_it_pub_{suffix}"),
        slot: format!("pgoutput_it_slot_{suffix}"),
    };
    execute(&admin, &format!("CREATE DATABASE {}", names.database)).await;

    let outcome = tokio::spawn(run(base.clone(), names.clone())).await;
    cleanup(&admin, &base, &names).await;
    if let Err(failure) = outcome {
        match failure.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(failure) => panic!("test task failed: {failure}"),
        }
    }
}

async fn run(base: Config, names: Names) {
    let mut config = base;
    config.dbname(&names.database);
    let db = connect(&config).await;
    execute(
        &db,
        "CREATE TYPE mood AS ENUM ('calm', 'busy');
         CREATE TABLE items (id int PRIMARY KEY, label text, doc jsonb, big text, mood mood);
         ALTER TABLE items ALTER COLUMN big SET STORAGE EXTERNAL;
         CREATE TABLE audit (id int, note text);
         ALTER TABLE audit REPLICA IDENTITY FULL;
         CREATE TABLE bulk (id int PRIMARY KEY, filler text);",
    )
    .await;
    let publication = &names.publication;
    let create = format!("CREATE PUBLICATION {publication} FOR TABLE items, audit, bulk");
    execute(&db, &create).await;
    db.execute(
        "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
        &[&names.slot],
    )
    .await
    .expect("create the slot");
    for statement in WORKLOAD {
        execute(&db, statement).await;
    }
    let catalog = catalog(&db).await;

    let reader = connect(&config).await;
    let v1 = peek(&reader, &names, &[]).await;
    check_protocol_1(&v1, &catalog);

    let binary = peek(&reader, &names, &["binary", "true"]).await;
    check_binary(&binary, &catalog);
}

/// Checks everything the small transactions of [`WORKLOAD`] must produce in protocol 1.
fn check_protocol_1(changes: &[Message], catalog: &Catalog) {
    let messages: Vec<&Message> = changes.iter().collect();

    let Some(Message::Type(mood)) = messages.iter().find(|m| matches!(m, Message::Type(_))) else {
        panic!("no Type message for the enum column");
    };
    assert_eq!(mood.id, catalog.mood);
    assert_eq!(
        (mood.namespace.as_str(), mood.name.as_str()),
        ("public", "mood")
    );

    let items = relation(&messages, catalog.items);
    assert_eq!(
        (items.namespace.as_str(), items.name.as_str()),
        ("public", "items")
    );
    assert_eq!(items.replica_identity, ReplicaIdentity::Default);
    let columns: Vec<_> = items
        .columns
        .iter()
        .map(|c| (c.name.as_str(), c.key, c.type_id, c.type_modifier))
        .collect();
    let expected = [
        ("id", true, 23, -1),
        ("label", false, 25, -1),
        ("doc", false, 3802, -1),
        ("big", false, 25, -1),
        ("mood", false, catalog.mood, -1),
    ];
    assert_eq!(columns, expected);
    let audit = relation(&messages, catalog.audit);
    assert_eq!(audit.replica_identity, ReplicaIdentity::Full);
    // With REPLICA IDENTITY FULL every column is flagged as part of the key.
    assert!(audit.columns.iter().all(|column| column.key));

    let big = "0123456789".repeat(2_000);
    let first = tuple(&["1", "first", r#"{"k": [1, 2]}"#, &big, "calm"]);
    let second = TupleData {
        columns: vec![
            text("2"),
            Column::Null,
            Column::Null,
            Column::Null,
            Column::Null,
        ],
    };
    let mut changed = first.clone();
    changed.columns[1] = text("changed");
    changed.columns[3] = Column::UnchangedToast;
    let mut moved = second.clone();
    moved.columns[0] = text("3");
    let expected_items = vec![
        ("I", None, first),
        ("I", None, second.clone()),
        ("U", None, changed),
        ("U", Some(OldTuple::Key(second)), moved.clone()),
        ("D", Some(OldTuple::Key(moved)), TupleData::default()),
    ];
    assert_eq!(row_changes(&messages, catalog.items), expected_items);
    let expected_audit = vec![
        ("I", None, tuple(&["1", "a"])),
        (
            "U",
            Some(OldTuple::Full(tuple(&["1", "a"]))),
            tuple(&["1", "b"]),
        ),
        (
            "D",
            Some(OldTuple::Full(tuple(&["1", "b"]))),
            TupleData::default(),
        ),
    ];
    assert_eq!(row_changes(&messages, catalog.audit), expected_audit);

    let truncates: Vec<_> = messages
        .iter()
        .filter_map(|m| match m {
            Message::Truncate(t) => Some((t.relation_ids.clone(), t.cascade, t.restart_identity)),
            _ => None,
        })
        .collect();
    assert_eq!(
        truncates,
        [(vec![catalog.items, catalog.audit], false, true)]
    );

    // Protocol 1 has the committed bulk rows only, all in one transaction.
    let bulk_inserts = messages
        .iter()
        .filter(|m| matches!(m, Message::Insert(i) if i.relation_id == catalog.bulk))
        .count();
    assert_eq!(bulk_inserts, BULK_ROWS);
}

/// With `binary 'true'` values come in each type's binary send format.
fn check_binary(changes: &[Message], catalog: &Catalog) {
    let messages: Vec<&Message> = changes.iter().collect();
    let (_, _, first) = row_changes(&messages, catalog.items)
        .into_iter()
        .next()
        .expect("an insert into items");
    let binary = |bytes: &[u8]| Column::Binary(Bytes::copy_from_slice(bytes));
    assert_eq!(first.columns[0], binary(&1_i32.to_be_bytes()));
    assert_eq!(first.columns[1], binary(b"first"));
    // jsonb's binary format is a version byte, then the text.
    assert_eq!(first.columns[2], binary(b"\x01{\"k\": [1, 2]}"));
    assert_eq!(first.columns[4], binary(b"calm"));
}

/// The Insert, Update and Delete messages for one relation, as (tag, old, new).
fn row_changes(
    messages: &[&Message],
    relation: u32,
) -> Vec<(&'static str, Option<OldTuple>, TupleData)> {
    messages
        .iter()
        .filter(|m| relation_id(m) == Some(relation))
        .filter_map(|message| match message {
            Message::Insert(i) => Some(("I", None, i.new.clone())),
            Message::Update(u) => Some(("U", u.old.clone(), u.new.clone())),
            Message::Delete(d) => Some(("D", Some(d.old.clone()), TupleData::default())),
            _ => None,
        })
        .collect()
}

/// The relation a data message is about; Truncate counts for its first relation.
fn relation_id(message: &Message) -> Option<u32> {
    match message {
        Message::Relation(r) => Some(r.id),
        Message::Insert(i) => Some(i.relation_id),
        Message::Update(u) => Some(u.relation_id),
        Message::Delete(d) => Some(d.relation_id),
        Message::Truncate(t) => t.relation_ids.first().copied(),
        _ => None,
    }
}

fn relation<'a>(messages: &[&'a Message], id: u32) -> &'a Relation {
    messages
        .iter()
        .find_map(|m| match m {
            Message::Relation(r) if r.id == id => Some(r),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no Relation message for {id}"))
}

fn text(value: &str) -> Column {
    Column::Text(Bytes::copy_from_slice(value.as_bytes()))
}

fn tuple(values: &[&str]) -> TupleData {
    TupleData {
        columns: values.iter().map(|value| text(value)).collect(),
    }
}

/// Peeks at every change in the slot and decodes those the transport hands over (all but
/// [`TRANSPORT_TAGS`]), checking each row's LSN text on the way.
async fn peek(client: &Client, names: &Names, options: &[&str]) -> Vec<Message> {
    let mut sql = "SELECT lsn::text, data FROM pg_logical_slot_peek_binary_changes($1, NULL, \
         NULL, 'proto_version', '1', 'publication_names', $2, 'messages', 'true'"
        .to_owned();
    for option in options {
        sql.push_str(&format!(", '{option}'"));
    }
    sql.push(')');
    let rows = client
        .query(&sql, &[&names.slot, &names.publication])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows.iter()
        .enumerate()
        .filter_map(|(index, row)| {
            let lsn_text: String = row.get(0);
            let lsn: Lsn = lsn_text.parse().expect("the server's LSN text parses");
            assert_eq!(lsn.to_string(), lsn_text, "Lsn displays like the server");
            let data: Vec<u8> = row.get(1);
            if data.first().is_some_and(|tag| TRANSPORT_TAGS.contains(tag)) {
                return None;
            }
            let message = pgoutput::decode(Bytes::from(data))
                .unwrap_or_else(|e| panic!("{options:?} row {index}: {e}"));
            Some(message)
        })
        .collect()
}

async fn catalog(db: &Client) -> Catalog {
    let oid = |sql: &'static str| async move {
        let row = db
            .query_one(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        row.get::<_, u32>(0)
    };
    Catalog {
        items: oid("SELECT 'items'::regclass::oid").await,
        audit: oid("SELECT 'audit'::regclass::oid").await,
        bulk: oid("SELECT 'bulk'::regclass::oid").await,
        mood: oid("SELECT 'mood'::regtype::oid").await,
    }
}

/// Drops what the test made, whatever state the test left it in.
async fn cleanup(admin: &Client, base: &Config, names: &Names) {
    let mut config = base.clone();
    config.dbname(&names.database);
    if let Ok((db, connection)) = config.connect(NoTls).await {
        tokio::spawn(connection);
        let drop = format!("DROP PUBLICATION IF EXISTS {}", names.publication);
        if let Err(e) = db.batch_execute(&drop).await {
            eprintln!("cleanup: {drop}: {e}");
        }
    }
    let statements = [
        (
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
            &names.database,
        ),
        (
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
             WHERE slot_name = $1",
            &names.slot,
        ),
    ];
    for (sql, name) in statements {
        if let Err(e) = admin.execute(sql, &[name]).await {
            eprintln!("cleanup: {sql}: {e}");
        }
    }
    let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", names.database);
    if let Err(e) = admin.batch_execute(&drop).await {
        eprintln!("cleanup: {drop}: {e}");
    }
}

async fn connect(config: &Config) -> Client {
    let (client, connection) = config.connect(NoTls).await.expect("connect to PostgreSQL");
    tokio::spawn(connection);
    client
}

async fn execute(client: &Client, sql: &str) {
    client
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}
