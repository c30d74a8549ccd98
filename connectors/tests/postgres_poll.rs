//! The polling relay's SQL against a real PostgreSQL: what a poll locks and admits when other
//! relays hold rows, what it emits, how marking ends a batch, what it refuses at start, and,
//! through a whole pipeline, that rows are marked only once their events are acknowledged.
//! Each test owns a database (`sluice_test_…`, dropped afterwards) with the table from
//! `examples/sql/outbox-poll.sql`; `DATABASE_URL` names the server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use sluice_connectors::postgres::connect::{Database, Sessions};
use sluice_connectors::postgres::error::DbError;
use sluice_connectors::postgres::poll::{Ctid, LockedBatch, PollConfig, Poller, Session};
use sluice_pipeline::component::{BuildContext, DynSink};
use sluice_pipeline::{
    Config, ErrorKind, Event, Finding, Level, Position, Registry, ShutdownTrigger, Sink,
    SinkConfig, SinkContext, SourceConfig, Validate,
};
use sluice_tests::TestDb;
use tokio_postgres::Client;

const SCHEMA: &str = include_str!("../../examples/sql/outbox-poll.sql");

fn config(db: &TestDb, extra: &str) -> PollConfig {
    let text = format!("url = {:?}\n{extra}", db.url);
    sluice_pipeline::config::deserialize(toml::from_str(&text).unwrap()).unwrap()
}

async fn connect(db: &TestDb) -> Client {
    Database::parse(&db.url).unwrap().connect().await.unwrap()
}

/// A relay with `extra` settings, and a connection of its own.
async fn relay(db: &TestDb, extra: &str) -> (Poller, Session) {
    let client = connect(db).await;
    let poller = Poller::resolve(&client, &config(db, extra)).await.unwrap();
    let session = poller.session(client).await.unwrap();
    (poller, session)
}

/// Inserts one row per aggregate named, in order, each in its own transaction.
async fn insert(client: &Client, aggregates: &[&str]) {
    for aggregate in aggregates {
        client
            .execute(
                "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) \
                 VALUES ('order', $1, 'Created', '{}')",
                &[aggregate],
            )
            .await
            .unwrap();
    }
}

fn ids(batch: &LockedBatch) -> Vec<String> {
    batch.rows.iter().map(|r| r.event.id.to_string()).collect()
}

fn ctids(batch: &LockedBatch) -> Vec<Ctid> {
    batch.rows.iter().map(|r| r.ctid).collect()
}

async fn published(client: &Client) -> Vec<i64> {
    client
        .query(
            "SELECT seq FROM outbox WHERE published_at IS NOT NULL ORDER BY seq",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Rows 1..=6 of aggregates a, b, a, b, a, c.
async fn six_rows(db: &TestDb) -> Client {
    db.execute(SCHEMA);
    let client = connect(db).await;
    insert(&client, &["a", "b", "a", "b", "a", "c"]).await;
    client
}

#[tokio::test]
async fn two_relays_get_disjoint_rows_and_an_aggregate_waits_for_its_earlier_rows() {
    let db = TestDb::create("test_poll_two_relays");
    let setup = six_rows(&db).await;
    let (relay_a, a) = relay(&db, "batch_size = 2").await;
    let (relay_b, b) = relay(&db, "batch_size = 10").await;

    let first = relay_a.lock_batch(&a, Position(1), []).await.unwrap();
    assert_eq!(ids(&first), ["1", "2"]);
    // Relay B skips rows 1 and 2 (locked by A). Rows 3 to 5 belong to aggregates whose earlier
    // rows A holds unpublished: B locks them but must not emit them before A delivers.
    let second = relay_b.lock_batch(&b, Position(1), []).await.unwrap();
    assert_eq!(ids(&second), ["6"]);
    assert_eq!(second.deferred, 3);
    assert_eq!(second.locked(), 4);

    assert_eq!(relay_a.mark(&a, &ctids(&first)).await.unwrap(), 2);
    assert_eq!(relay_b.mark(&b, &ctids(&second)).await.unwrap(), 1);
    assert_eq!(published(&setup).await, [1, 2, 6]);

    // Their predecessors are published now: the deferred rows come, in order.
    let third = relay_b.lock_batch(&b, Position(2), []).await.unwrap();
    assert_eq!(ids(&third), ["3", "4", "5"]);
    assert_eq!(third.deferred, 0);
    relay_b.release(&b).await.unwrap();
    assert_eq!(published(&setup).await, [1, 2, 6], "release marks nothing");
}

#[tokio::test]
async fn a_relays_own_open_batches_do_not_hold_back_its_next_batch() {
    let db = TestDb::create("test_poll_own_batches");
    let _setup = six_rows(&db).await;
    let (relay, one) = relay(&db, "batch_size = 2").await;
    let two = relay.session(connect(&db).await).await.unwrap();
    let first = relay.lock_batch(&one, Position(1), []).await.unwrap();
    assert_eq!(ids(&first), ["1", "2"]);

    // Not knowing the first batch is its own, the next poll would wait for it...
    let unaware = relay.lock_batch(&two, Position(2), []).await.unwrap();
    assert_eq!(ids(&unaware), Vec::<String>::new());
    assert_eq!(unaware.deferred, 2);
    relay.release(&two).await.unwrap();
    // ...but rows 3 and 4 follow rows the relay emitted before: they may go.
    let own = ctids(&first);
    let next = relay.lock_batch(&two, Position(2), &own).await.unwrap();
    assert_eq!(ids(&next), ["3", "4"]);
}

#[tokio::test]
async fn a_row_committed_late_with_a_lower_position_is_still_polled() {
    let db = TestDb::create("test_poll_late_commit");
    db.execute(SCHEMA);
    let (early, late) = (connect(&db).await, connect(&db).await);
    let (relay, poll) = relay(&db, "").await;
    early.batch_execute("BEGIN").await.unwrap();
    insert(&early, &["x"]).await; // takes seq 1, commits last
    insert(&late, &["y"]).await; // seq 2
    let batch = relay.lock_batch(&poll, Position(1), []).await.unwrap();
    assert_eq!(ids(&batch), ["2"]);
    relay.mark(&poll, &ctids(&batch)).await.unwrap();
    early.batch_execute("COMMIT").await.unwrap();
    let batch = relay.lock_batch(&poll, Position(2), []).await.unwrap();
    assert_eq!(
        ids(&batch),
        ["1"],
        "a row below the last one emitted is not left behind"
    );
    assert_eq!(batch.rows[0].event.meta.position, Position(2));
}

#[tokio::test]
async fn rows_become_row_events_with_every_column_as_text() {
    let db = TestDb::create("test_poll_row_events");
    db.execute(SCHEMA);
    let client = connect(&db).await;
    client
        .batch_execute(
            "INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload) VALUES \
             ('8d7a3c52-3f1e-4c4e-9d6a-2b1f1e0c9a01', 'order', 'o-1', 'Created', \
              '{\"total\": 12.5}')",
        )
        .await
        .unwrap();
    let (relay, session) = relay(&db, "").await;
    let batch = relay.lock_batch(&session, Position(7), []).await.unwrap();
    let row = &batch.rows[0];
    assert!(row.problem.is_none());
    let event = &row.event;
    assert_eq!(event.id, "1");
    assert_eq!(event.event_type, "insert");
    assert_eq!(event.meta.position, Position(7));
    assert_eq!(event.headers.text("sluice.table").unwrap(), "public.outbox");
    let names: Vec<_> = event.fields.iter().map(|(n, _)| n.to_string()).collect();
    assert_eq!(
        names,
        [
            "id",
            "seq",
            "aggregatetype",
            "aggregateid",
            "type",
            "payload",
            "created_at",
            "published_at"
        ]
    );
    let field = |name| event.fields.text(name).unwrap().to_string();
    assert_eq!(field("id"), "8d7a3c52-3f1e-4c4e-9d6a-2b1f1e0c9a01");
    assert_eq!(field("aggregateid"), "o-1");
    assert_eq!(field("payload"), r#"{"total": 12.5}"#);
    assert_eq!(event.fields.get("published_at"), Some(None), "NULL is None");
}

#[tokio::test]
async fn bad_rows_carry_the_reason_to_quarantine_them_and_are_marked_like_the_rest() {
    // SQL_ASCII stores any bytes, so a column can hold text that is not UTF-8.
    let db = TestDb::create_with(
        "test_poll_bad_rows",
        "ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0",
    );
    db.execute(SCHEMA);
    db.execute(
        "ALTER TABLE outbox ALTER COLUMN seq DROP IDENTITY, ALTER COLUMN seq DROP NOT NULL;
         INSERT INTO outbox (seq, aggregatetype, aggregateid, type, payload) VALUES
             (NULL, 'order', 'a', 'Created', '{}'),
             (-5, 'order', 'b', 'Created', '{}'),
             (3, E'\\xff\\xfe', 'c', 'Created', '{}'),
             (4, 'order', 'd', 'Created', '{}');",
    );
    let (relay, session) = relay(&db, "").await;
    let batch = relay.lock_batch(&session, Position(1), []).await.unwrap();
    let seen: Vec<_> = batch
        .rows
        .iter()
        .map(|r| {
            (
                r.event.id.to_string(),
                r.problem.as_deref().map(str::to_owned),
            )
        })
        .collect();
    assert_eq!(
        seen[0],
        (
            "-5".into(),
            Some("position column seq is not a non-negative integer".into())
        )
    );
    // The server refuses to send the value, failing the poll; the batch is read row by row,
    // and only the unreadable row is lost to the quarantine (with its position).
    assert_eq!(
        seen[1],
        (
            "3".into(),
            Some("the row cannot be read as text (SQLSTATE 22021)".into())
        )
    );
    assert_eq!(batch.rows[1].event.fields.len(), 1);
    assert_eq!(
        batch.rows[2].event.fields.len(),
        8,
        "readable rows are whole"
    );
    assert_eq!(seen[2], ("4".into(), None));
    assert!(seen[3].0.starts_with("ctid("), "{seen:?}");
    assert_eq!(seen[3].1.as_deref(), Some("position column seq is null"));
    assert_eq!(relay.mark(&session, &ctids(&batch)).await.unwrap(), 4);
    let unpublished = session
        .client()
        .query_one(
            "SELECT count(*) FROM outbox WHERE published_at IS NULL",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(unpublished, 0);
}

#[tokio::test]
async fn a_table_that_does_not_fit_is_a_config_error_naming_the_fix() {
    let db = TestDb::create("test_poll_misfit");
    db.execute(SCHEMA);
    db.execute(
        "CREATE TABLE wrong (seq text, aggregateid text, published_at timestamptz);
         CREATE VIEW outbox_view AS SELECT * FROM outbox;",
    );
    let client = connect(&db).await;
    let refused = async |extra: &str| -> DbError {
        Poller::resolve(&client, &config(&db, extra))
            .await
            .unwrap_err()
    };
    for (extra, expected) in [
        ("table = \"missing\"", "does not exist"),
        ("table = \"outbox_view\"", "is not a plain table"),
        (
            "position_column = \"Seq\"",
            "has no column \"Seq\" (set by position_column",
        ),
        (
            "published_column = \"created\"",
            "has no column \"created\"",
        ),
        (
            "aggregate_column = \"aggregate\"",
            "set by aggregate_column",
        ),
        (
            "table = \"wrong\"",
            "column \"seq\" (set by position_column) is text",
        ),
        (
            "published_column = \"type\"",
            "(set by published_column) is text",
        ),
    ] {
        let error = refused(extra).await;
        assert_eq!(error.kind(), ErrorKind::Config, "{extra}");
        assert!(error.to_string().contains(expected), "{extra}: {error}");
    }
}

#[tokio::test]
async fn the_live_check_names_what_is_missing_and_the_statement_that_adds_it() {
    let db = TestDb::create("test_poll_check");
    db.execute(SCHEMA);
    let config = config(&db, "notify_channel = \"sluice_outbox\"");
    let levels = |findings: Vec<Finding>| -> Vec<(Level, String)> {
        findings.into_iter().map(|f| (f.level, f.message)).collect()
    };
    let all_ok = levels(config.check().await);
    assert!(
        all_ok.iter().all(|(level, _)| *level == Level::Ok),
        "{all_ok:?}"
    );
    assert_eq!(all_ok.len(), 5, "{all_ok:?}");

    db.execute("DROP INDEX outbox_unpublished_by_aggregate; DROP TRIGGER outbox_notify ON outbox");
    let warned: Vec<_> = levels(config.check().await)
        .into_iter()
        .filter(|(level, _)| *level == Level::Warn)
        .map(|(_, message)| message)
        .collect();
    assert_eq!(warned.len(), 2, "{warned:?}");
    assert!(warned[0].contains(
        "run `CREATE INDEX ON \"public\".\"outbox\" (\"aggregateid\", \"seq\") WHERE \"published_at\" IS NULL`"
    ), "{warned:?}");
    assert!(warned[1].contains("no insert trigger"), "{warned:?}");

    db.execute("DROP TABLE outbox");
    let failed = levels(config.check().await);
    assert_eq!(failed.last().unwrap().0, Level::Fail, "{failed:?}");
    assert!(
        failed.last().unwrap().1.contains("does not exist"),
        "{failed:?}"
    );
}

#[tokio::test]
async fn a_missing_privilege_names_the_grant() {
    let db = TestDb::create("test_poll_privilege");
    db.execute(SCHEMA);
    let role = Role::create(&db, "SELECT");
    let server: tokio_postgres::Config = db.url.parse().unwrap();
    let host = match &server.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(host) => host.clone(),
        tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
    };
    let url = format!(
        "host={host} port={} user={} dbname={}",
        server.get_ports()[0],
        role.name,
        db.name
    );
    let database = Database::parse(&url).unwrap();
    let client = database.connect().await.unwrap();
    let config: PollConfig =
        sluice_pipeline::config::deserialize(toml::from_str(&format!("url = {url:?}")).unwrap())
            .unwrap();
    let error = Poller::resolve(&client, &config).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Config);
    assert!(
        error
            .to_string()
            .contains("GRANT UPDATE (\"published_at\") ON \"public\".\"outbox\""),
        "{error}"
    );
}

/// A login role with `grants` on the outbox, dropped (with its grants) when the test ends.
struct Role<'a> {
    db: &'a TestDb,
    name: String,
}

impl<'a> Role<'a> {
    fn create(db: &'a TestDb, grants: &str) -> Self {
        let name = db.name.replacen("sluice_", "sluice_role_", 1);
        db.execute(&format!(
            "CREATE ROLE {name} LOGIN; GRANT {grants} ON outbox TO {name};"
        ));
        Role { db, name }
    }
}

impl Drop for Role<'_> {
    fn drop(&mut self) {
        self.db.execute(&format!("DROP OWNED BY {}", self.name));
        self.db.admin_query(&format!("DROP ROLE {}", self.name));
    }
}

/// The events the `held` sink received, for the test to acknowledge when it chooses.
static HELD: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedSender<Vec<Event>>>> =
    std::sync::Mutex::new(None);

/// A sink that passes what it receives to the test and never acknowledges by itself.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct HeldSinkConfig {}

impl Validate for HeldSinkConfig {}

impl SinkConfig for HeldSinkConfig {
    fn build(&self, _cx: &BuildContext) -> Result<Box<dyn DynSink>, sluice_pipeline::Error> {
        Ok(Box::new(HeldSink))
    }
}

struct HeldSink;

impl Sink for HeldSink {
    async fn run(&mut self, cx: &mut SinkContext) -> Result<(), sluice_pipeline::Error> {
        let held = HELD.lock().unwrap().clone().unwrap();
        cx.set_ready(true);
        while let Some(batch) = cx.next().await {
            held.send(batch).unwrap();
        }
        Ok(())
    }
}

#[tokio::test]
async fn rows_are_marked_only_once_their_events_are_acknowledged_and_in_order() {
    let db = TestDb::create("test_poll_acks");
    let client = six_rows(&db).await;
    insert(&client, &["d", "e", "f", "g", "h", "i"]).await;
    let (held, mut received) = tokio::sync::mpsc::unbounded_channel();
    *HELD.lock().unwrap() = Some(held);
    let dir = sluice_tests::Scratch::new("poll-acks");
    let mut registry = Registry::new();
    registry
        .source::<PollConfig>("postgres_poll")
        .sink::<HeldSinkConfig>("held");
    let text = format!(
        r#"
        [pipeline]
        data_dir = "{data}"
        [sources.outbox]
        type = "postgres_poll"
        url = "{url}"
        batch_size = 4
        [sinks.held]
        type = "held"
        inputs = ["outbox"]
        "#,
        data = dir.path().display(),
        url = db.url
    );
    let config = Config::parse(&text, Path::new("acks.toml"), &registry, &|_| None).unwrap();
    let stop = ShutdownTrigger::new();
    let pipeline = tokio::spawn({
        let shutdown = stop.subscribe();
        async move { sluice_pipeline::run(&config, shutdown).await }
    });

    let mut batches = Vec::new();
    while batches.iter().map(Vec::len).sum::<usize>() < 12 {
        batches.push(received.recv().await.unwrap());
    }
    let ids = |batch: &[Event]| batch.iter().map(|e| e.id.to_string()).collect::<Vec<_>>();
    assert_eq!(ids(&batches[0]), ["1", "2", "3", "4"]);
    assert_eq!(ids(&batches[1]), ["5", "6", "7", "8"]);
    assert_eq!(ids(&batches[2]), ["9", "10", "11", "12"]);
    assert!(
        published(&client).await.is_empty(),
        "nothing acknowledged, nothing marked"
    );

    // The second batch alone is not enough: the first still holds the checkpoint.
    let mut batches = batches.into_iter();
    let (first, second, third) = (
        batches.next().unwrap(),
        batches.next().unwrap(),
        batches.next().unwrap(),
    );
    second.into_iter().for_each(Event::ack);
    first.into_iter().for_each(Event::ack);
    while published(&client).await.len() < 8 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(published(&client).await, (1..=8).collect::<Vec<_>>());

    // Shutdown waits for the last batch, marks it and ends.
    stop.trigger();
    third.into_iter().for_each(Event::ack);
    pipeline.await.unwrap().unwrap();
    assert_eq!(published(&client).await, (1..=12).collect::<Vec<_>>());
}
