//! Decodes what a real PostgreSQL (15, `wal_level=logical`) sends through pgoutput: protocol 1
//! with logical messages, the same with the `binary` option, and protocol 2 streaming large
//! in-progress transactions. The test owns a uniquely named database, publication and slot,
//! and drops them even when an assertion fails. `DATABASE_URL` overrides the default
//! connection, `host=127.0.0.1 port=5432 user=postgres`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use sluice_connectors::postgres::pgoutput::{
    Column, Decoder, Lsn, Message, OldTuple, ProtocolVersion, Relation, ReplicaIdentity, TupleData,
};
use tokio_postgres::{Client, Config, NoTls};

const DEFAULT_DSN: &str = "host=127.0.0.1 port=5432 user=postgres";

/// Rows in the transaction that gets streamed and committed, after its rolled-back savepoint.
const BULK_ROWS: usize = 5_001;

/// The workload: small transactions touching every message kind, then two transactions too
/// big for `logical_decoding_work_mem = 64kB`: one aborts, one commits after rolling back a
/// savepoint. A commit comes last because aborts do not flush the WAL, and decoding stops at
/// the flushed position.
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

/// One row of `pg_logical_slot_peek_binary_changes`, decoded.
struct Change {
    lsn: Lsn,
    xid: u32,
    message: Message,
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
    execute(&reader, "SET logical_decoding_work_mem = '64kB'").await;
    let v1 = peek(&reader, &names, ProtocolVersion::V1, &[]).await;
    check_protocol_1(&v1, &catalog);
    check_transactions(&v1);

    let binary = peek(&reader, &names, ProtocolVersion::V1, &["binary", "true"]).await;
    check_binary(&binary, &catalog);

    let streaming = ["streaming", "on"];
    let v2 = peek(&reader, &names, ProtocolVersion::V2, &streaming).await;
    check_streaming(&v2, &catalog);
    check_transactions(&v2);
    // Transactions that fit in logical_decoding_work_mem are not streamed, so both protocols
    // send them alike.
    let small = |changes: &[Change]| -> Vec<Message> {
        let small_tables = [catalog.items, catalog.audit];
        changes
            .iter()
            .map(|change| &change.message)
            .filter(|message| relation_id(message).is_some_and(|id| small_tables.contains(&id)))
            .cloned()
            .collect()
    };
    assert_eq!(small(&v1), small(&v2));
}

/// Checks everything the small transactions of [`WORKLOAD`] must produce in protocol 1.
fn check_protocol_1(changes: &[Change], catalog: &Catalog) {
    let messages: Vec<&Message> = changes.iter().map(|change| &change.message).collect();

    let Some(Message::Type(mood)) = messages.iter().find(|m| matches!(m, Message::Type(_))) else {
        panic!("no Type message for the enum column");
    };
    assert_eq!((mood.id, mood.xid), (catalog.mood, None));
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

    // The row's xid is 0 for a message sent outside any transaction.
    let logical: Vec<_> = changes
        .iter()
        .filter_map(|change| match &change.message {
            Message::LogicalMessage(m) => {
                assert_eq!(m.lsn, change.lsn, "a message's LSN is its row's LSN");
                let in_transaction = change.xid != 0;
                Some((
                    m.transactional,
                    m.prefix.as_str(),
                    &m.content[..],
                    in_transaction,
                ))
            }
            _ => None,
        })
        .collect();
    let expected = [
        (true, "prefix", &b"content"[..], true),
        (false, "sluice", &b"now"[..], false),
    ];
    assert_eq!(logical, expected);

    // Protocol 1 has the committed bulk rows only, all in one transaction.
    let bulk_inserts = messages
        .iter()
        .filter(|m| matches!(m, Message::Insert(i) if i.relation_id == catalog.bulk))
        .count();
    assert_eq!(bulk_inserts, BULK_ROWS);
}

/// Checks that transactions are framed and ordered: Begin and (Stream) Commit agree, data
/// messages sit inside a transaction or a streamed block, and commit LSNs only grow.
fn check_transactions(changes: &[Change]) {
    let now = SystemTime::now();
    let mut open: Option<Lsn> = None;
    let mut in_stream = false;
    let mut last_end = Lsn(0);
    let mut last_row = Lsn(0);
    for change in changes {
        assert!(change.lsn >= last_row, "rows come in LSN order");
        last_row = change.lsn;
        let commit = match &change.message {
            Message::Begin(begin) => {
                assert!(open.is_none() && !in_stream, "Begin inside a transaction");
                assert_eq!(begin.xid, change.xid);
                open = Some(begin.final_lsn);
                None
            }
            Message::Commit(commit) => {
                let final_lsn = open.take().expect("Commit without Begin");
                assert_eq!(
                    commit.commit_lsn, final_lsn,
                    "Begin's final LSN is the commit LSN"
                );
                assert_eq!(
                    change.lsn, commit.end_lsn,
                    "a Commit row's LSN is the end LSN"
                );
                Some((commit.commit_lsn, commit.end_lsn, commit.commit_time))
            }
            Message::StreamStart(start) => {
                assert_eq!(start.xid, change.xid);
                in_stream = true;
                None
            }
            Message::StreamStop => {
                in_stream = false;
                None
            }
            Message::StreamCommit(commit) => {
                assert_eq!(commit.xid, change.xid);
                Some((commit.commit_lsn, commit.end_lsn, commit.commit_time))
            }
            Message::StreamAbort(_) => None,
            Message::LogicalMessage(m) if !m.transactional => None,
            message => {
                assert!(
                    open.is_some() || in_stream,
                    "{message:?} outside a transaction"
                );
                None
            }
        };
        if let Some((commit_lsn, end_lsn, commit_time)) = commit {
            assert!(
                commit_lsn < end_lsn && end_lsn > last_end,
                "commit LSNs grow"
            );
            last_end = end_lsn;
            let committed = commit_time.to_system_time().expect("commit time fits");
            let age = now.duration_since(committed).unwrap_or_default();
            assert!(age < Duration::from_secs(600), "committed {age:?} ago");
        }
    }
    assert!(
        open.is_none() && !in_stream,
        "the last transaction is complete"
    );
}

/// With `binary 'true'` values come in each type's binary send format.
fn check_binary(changes: &[Change], catalog: &Catalog) {
    let messages: Vec<&Message> = changes.iter().map(|change| &change.message).collect();
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

/// Checks the streamed form of the two big transactions under protocol 2.
fn check_streaming(changes: &[Change], catalog: &Catalog) {
    let starts: Vec<_> = changes
        .iter()
        .filter_map(|change| match &change.message {
            Message::StreamStart(start) => Some((start.xid, start.first_segment)),
            _ => None,
        })
        .collect();
    let commits: Vec<_> = changes
        .iter()
        .filter_map(|change| match &change.message {
            Message::StreamCommit(commit) => Some(commit.xid),
            _ => None,
        })
        .collect();
    let aborts: Vec<_> = changes
        .iter()
        .filter_map(|change| match &change.message {
            Message::StreamAbort(abort) => Some((abort.xid, abort.subxid)),
            _ => None,
        })
        .collect();
    let [committed] = commits[..] else {
        panic!("expected one Stream Commit, got {commits:?}");
    };
    assert_eq!(
        aborts.len(),
        2,
        "the savepoint and the rolled-back transaction: {aborts:?}"
    );
    let abort_of = |whole: bool| {
        let abort = aborts
            .iter()
            .find(|&&(xid, subxid)| (xid == subxid) == whole);
        abort
            .copied()
            .unwrap_or_else(|| panic!("no abort with whole = {whole} in {aborts:?}"))
    };
    let (aborted, _) = abort_of(true);
    let (top, savepoint) = abort_of(false);
    assert_eq!(
        top, committed,
        "the savepoint belongs to the committed transaction"
    );
    for xid in [committed, aborted] {
        let first_segments = starts
            .iter()
            .filter(|&&(x, first)| x == xid && first)
            .count();
        assert_eq!(first_segments, 1, "one first segment for {xid}");
    }

    let streamed_inserts = |xid: u32| {
        changes
            .iter()
            .filter(|change| {
                matches!(&change.message, Message::Insert(i)
                    if i.relation_id == catalog.bulk && i.xid == Some(xid))
            })
            .count()
    };
    // Every row of the committed transaction is streamed, each tagged with the xid of its own
    // subtransaction, not the top-level one. Of rows that were rolled back, only those streamed
    // before the abort was noticed: decoding after the fact, PostgreSQL finds the whole
    // transaction aborted at its first catalog lookup and streams empty blocks for it.
    assert_eq!(streamed_inserts(committed), BULK_ROWS);
    assert!((1..=3_000).contains(&streamed_inserts(savepoint)));
    assert!(streamed_inserts(aborted) <= 5_000);
    let streamed_relation = changes.iter().any(|change| {
        matches!(&change.message, Message::Relation(r)
            if r.id == catalog.bulk && r.xid == Some(committed))
    });
    assert!(
        streamed_relation,
        "the Relation inside a stream carries the xid"
    );
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

/// Peeks at every change in the slot and decodes it, checking each row's LSN text on the way.
async fn peek(
    client: &Client,
    names: &Names,
    version: ProtocolVersion,
    options: &[&str],
) -> Vec<Change> {
    let proto_version = match version {
        ProtocolVersion::V1 => "1",
        _ => "2",
    };
    let mut sql = format!(
        "SELECT lsn::text, xid::text, data FROM pg_logical_slot_peek_binary_changes($1, NULL, \
         NULL, 'proto_version', '{proto_version}', 'publication_names', $2, 'messages', 'true'"
    );
    for option in options {
        sql.push_str(&format!(", '{option}'"));
    }
    sql.push(')');
    let rows = client
        .query(&sql, &[&names.slot, &names.publication])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let mut decoder = Decoder::new(version);
    rows.iter()
        .enumerate()
        .map(|(index, row)| {
            let lsn_text: String = row.get(0);
            let lsn: Lsn = lsn_text.parse().expect("the server's LSN text parses");
            assert_eq!(lsn.to_string(), lsn_text, "Lsn displays like the server");
            let xid: String = row.get(1);
            let data: Vec<u8> = row.get(2);
            let message = decoder
                .decode(Bytes::from(data))
                .unwrap_or_else(|e| panic!("{proto_version} {options:?} row {index}: {e}"));
            Change {
                lsn,
                xid: xid.parse().expect("xid is a number"),
                message,
            }
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
