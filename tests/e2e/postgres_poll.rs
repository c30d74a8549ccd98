//! The `postgres_poll` source through the binary, against a real PostgreSQL: rows written by
//! many concurrent transactions arrive once each, in order per aggregate, and are marked; two
//! relays share a table without duplicating or reordering; `kill -9` loses nothing; bad rows
//! are quarantined and counted; a notification wakes the relay before its interval; cleanup
//! deletes only rows delivered before the retention window. Each test owns its database
//! (`sluice_test_…`, dropped afterwards) with the table of `examples/sql/outbox-poll.sql`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::sluice;
use sluice_connectors::postgres::connect::{Database, Sessions};
use sluice_tests::{Running, Scratch, TestDb, free_port, json_lines, metric, metrics, wait_for};

const SCHEMA: &str = include_str!("../../examples/sql/outbox-poll.sql");
/// The channel the schema's trigger notifies.
const CHANNEL: &str = "sluice_outbox";

/// One sluice process polling the test's table into `out`.
struct Relay {
    api: SocketAddr,
    config: PathBuf,
    data: PathBuf,
}

impl Relay {
    /// Writes the config of relay `name`: `postgres_poll` with `settings` → file `out`.
    fn new(dir: &Scratch, db: &TestDb, name: &str, out: &Path, settings: &str) -> Relay {
        let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let data = dir.join(&format!("data-{name}"));
        let config = dir.write(
            &format!("{name}.toml"),
            &format!(
                r#"
                [api]
                address = "{api}"
                [pipeline]
                data_dir = "{data}"
                [sources.outbox]
                type = "postgres_poll"
                url = "{url}"
                {settings}
                [sinks.out]
                type = "file"
                inputs = ["outbox"]
                path = "{out}"
                "#,
                data = data.display(),
                url = db.url,
                out = out.display(),
            ),
        );
        Relay { api, config, data }
    }

    fn start(&self) -> Running {
        let mut running = sluice().spawn(&self.config);
        running.wait_ready(self.api).unwrap();
        running
    }

    fn metric(&self, name: &str) -> Option<f64> {
        metric(
            &metrics(self.api).ok()?,
            name,
            &[("component_id", "outbox")],
        )
    }
}

/// Stops a relay with SIGTERM and checks that it drained and exited cleanly.
fn stop(mut running: Running) {
    running.signal("TERM");
    let status = running.wait().unwrap();
    assert!(status.success(), "{status}: {}", running.log());
}

/// What a file sink received: (position column, aggregate) per line, in order.
fn delivered(out: &Path) -> Vec<(i64, String)> {
    json_lines(out)
        .iter()
        .map(|line| {
            let seq = line["id"].as_str().unwrap().parse().unwrap();
            let aggregate = line["fields"]["aggregateid"].as_str().unwrap().to_owned();
            (seq, aggregate)
        })
        .collect()
}

/// Checks that each aggregate's rows came in increasing position order.
fn assert_ordered_per_aggregate(rows: &[(i64, String)]) {
    let mut last: BTreeMap<&str, i64> = BTreeMap::new();
    for (seq, aggregate) in rows {
        if let Some(previous) = last.insert(aggregate, *seq) {
            assert!(
                previous < *seq,
                "aggregate {aggregate}: row {seq} arrived after row {previous}"
            );
        }
    }
}

/// The position column values of the rows matching `condition`.
fn positions(db: &TestDb, condition: &str) -> BTreeSet<i64> {
    db.query(&format!("SELECT seq FROM outbox WHERE {condition}"))
        .into_iter()
        .filter_map(|row| row.into_iter().next().flatten()?.parse().ok())
        .collect()
}

/// How many rows are not yet marked published.
fn unpublished(db: &TestDb) -> usize {
    db.value("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        .and_then(|n| n.parse().ok())
        .unwrap()
}

/// Inserts rows from `writers` concurrent connections, each running `transactions`
/// transactions of 1 to 3 rows for one of `aggregates` aggregates. Each transaction first
/// locks its aggregate, as an application updating the aggregate's row does, so an aggregate's
/// rows commit in the order they are numbered. Returns when all are committed.
fn write(url: &str, writers: usize, transactions: usize, aggregates: usize) {
    // Named apart from the relay's sessions, which a test cuts.
    let separator = if url.contains('?') { '&' } else { '?' };
    let database = Database::parse(&format!("{url}{separator}application_name=writer")).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async move {
        let mut tasks = tokio::task::JoinSet::new();
        for writer in 0..writers {
            let database = database.clone();
            tasks.spawn(async move {
                let client = database.connect().await?;
                for i in 0..transactions {
                    let aggregate = format!("agg-{}", (writer * 7 + i * 3) % aggregates);
                    let rows = 1 + (writer + i) % 3;
                    client
                        .batch_execute(&format!(
                            "BEGIN; \
                             SELECT pg_advisory_xact_lock(hashtext('{aggregate}')); \
                             INSERT INTO outbox (aggregatetype, aggregateid, type, payload) \
                             SELECT 'order', '{aggregate}', 'Created', '{{}}' \
                             FROM generate_series(1, {rows}); \
                             COMMIT"
                        ))
                        .await?;
                }
                anyhow::Ok(())
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap().unwrap();
        }
    });
}

/// Runs [`write`] on a thread of its own, for writing while relays poll.
fn write_in_background(
    db: &TestDb,
    writers: usize,
    transactions: usize,
    aggregates: usize,
) -> std::thread::JoinHandle<()> {
    let url = db.url.clone();
    std::thread::spawn(move || write(&url, writers, transactions, aggregates))
}

/// Waits until every row of the table is published and present in `out`.
fn wait_all_delivered(db: &TestDb, out: &Path) -> BTreeSet<i64> {
    wait_for("every row delivered and marked", || {
        if unpublished(db) > 0 {
            return None;
        }
        let all = positions(db, "true");
        let seen: BTreeSet<i64> = delivered(out).into_iter().map(|(seq, _)| seq).collect();
        (seen == all).then_some(all)
    })
    .unwrap()
}

#[test]
fn rows_from_many_transactions_arrive_once_in_order_and_are_marked() {
    let db = TestDb::create("test_poll_e2e_once");
    db.execute(SCHEMA);
    let dir = Scratch::new("poll-once");
    let out = dir.join("out.jsonl");
    let relay = Relay::new(&dir, &db, "a", &out, "batch_size = 50\ninterval = \"50ms\"");
    let running = relay.start();
    write(&db.url, 8, 40, 20);
    let all = wait_all_delivered(&db, &out);
    stop(running);
    let rows = delivered(&out);
    assert_eq!(rows.len(), all.len(), "every row exactly once");
    assert_ordered_per_aggregate(&rows);
}

#[test]
fn two_relays_share_a_table_without_duplicates_or_reordering() {
    let db = TestDb::create("test_poll_e2e_two");
    db.execute(SCHEMA);
    let dir = Scratch::new("poll-two");
    // Both relays append to one file, so its line order is the delivery order across both.
    let out = dir.join("out.jsonl");
    // Small batches over few aggregates: an aggregate's consecutive rows often land in
    // batches of different relays, which is where order is at stake.
    let settings = format!(
        "batch_size = 5\ninterval = \"50ms\"\nmax_batches_in_flight = 2\nnotify_channel = \"{CHANNEL}\""
    );
    let (a, b) = (
        Relay::new(&dir, &db, "a", &out, &settings),
        Relay::new(&dir, &db, "b", &out, &settings),
    );
    let (mut running_a, mut running_b) = (sluice().spawn(&a.config), sluice().spawn(&b.config));
    running_a.wait_ready(a.api).unwrap();
    running_b.wait_ready(b.api).unwrap();
    write(&db.url, 10, 40, 8);
    let all = wait_all_delivered(&db, &out);
    let marked_a = a.metric("sluice_postgres_poll_marked_rows_total").unwrap();
    let marked_b = b.metric("sluice_postgres_poll_marked_rows_total").unwrap();
    stop(running_a);
    stop(running_b);
    let rows = delivered(&out);
    let unique: BTreeSet<i64> = rows.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(unique, all);
    assert_eq!(rows.len(), all.len(), "no row delivered twice");
    assert_ordered_per_aggregate(&rows);
    assert!(
        marked_a > 0.0 && marked_b > 0.0,
        "both relays delivered rows ({marked_a} and {marked_b})"
    );
}

#[test]
fn kill_9_mid_stream_loses_nothing_and_marks_only_what_was_delivered() {
    let db = TestDb::create("test_poll_e2e_kill");
    db.execute(SCHEMA);
    let dir = Scratch::new("poll-kill");
    let out = dir.join("out.jsonl");
    let relay = Relay::new(&dir, &db, "a", &out, "batch_size = 20\ninterval = \"20ms\"");
    let mut running = relay.start();
    let writing = write_in_background(&db, 6, 80, 20);
    wait_for("some rows delivered", || {
        (delivered(&out).len() >= 200).then_some(())
    })
    .unwrap();
    running.signal("KILL");
    running.wait().unwrap();

    // Whatever the dead relay marked, the file holds: marking never ran ahead of delivery.
    let in_file: BTreeSet<i64> = delivered(&out).into_iter().map(|(seq, _)| seq).collect();
    let marked = positions(&db, "published_at IS NOT NULL");
    assert!(!marked.is_empty());
    assert!(
        marked.is_subset(&in_file),
        "rows marked but never delivered: {:?}",
        marked.difference(&in_file).collect::<Vec<_>>()
    );

    let running = relay.start();
    writing.join().unwrap();
    let all = wait_all_delivered(&db, &out);
    stop(running);
    let delivered: BTreeSet<i64> = delivered(&out).into_iter().map(|(seq, _)| seq).collect();
    assert_eq!(delivered, all, "every row delivered (some twice)");
}

#[test]
fn losing_every_connection_mid_stream_costs_duplicates_at_most() {
    let db = TestDb::create("test_poll_e2e_reconnect");
    db.execute(SCHEMA);
    let dir = Scratch::new("poll-reconnect");
    let out = dir.join("out.jsonl");
    let settings = format!("batch_size = 20\ninterval = \"50ms\"\nnotify_channel = \"{CHANNEL}\"");
    let relay = Relay::new(&dir, &db, "a", &out, &settings);
    let mut running = relay.start();
    let writing = write_in_background(&db, 4, 80, 10);
    wait_for("some rows delivered", || {
        (delivered(&out).len() >= 100).then_some(())
    })
    .unwrap();
    // Every session of the relay: idle, holding open batches, listening.
    let cut = db
        .value(&format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = '{}' AND application_name = 'sluice'",
            db.name
        ))
        .unwrap();
    assert_ne!(cut, "0", "the relay's sessions are named sluice");
    writing.join().unwrap();
    let all = wait_all_delivered(&db, &out);
    running.wait_ready(relay.api).unwrap();
    let errors = relay.metric("sluice_postgres_poll_errors_total").unwrap();
    assert!(errors >= 1.0, "the lost connections were counted");
    stop(running);
    let delivered: BTreeSet<i64> = delivered(&out).into_iter().map(|(seq, _)| seq).collect();
    assert_eq!(delivered, all);
}

#[test]
fn bad_rows_are_quarantined_with_a_reason_counted_and_marked() {
    let db = TestDb::create("test_poll_e2e_bad");
    db.execute(SCHEMA);
    db.execute(
        "ALTER TABLE outbox ALTER COLUMN seq DROP IDENTITY, ALTER COLUMN seq DROP NOT NULL;
         INSERT INTO outbox (seq, aggregatetype, aggregateid, type, payload)
             SELECT g, 'order', 'agg-' || g % 5, 'Created', '{}' FROM generate_series(1, 50) g;
         INSERT INTO outbox (seq, aggregatetype, aggregateid, type, payload) VALUES
             (NULL, 'order', 'agg-1', 'Created', '{}'),
             (NULL, 'order', 'agg-2', 'Created', '{}'),
             (-7, 'order', 'agg-3', 'Created', '{}');",
    );
    let dir = Scratch::new("poll-bad");
    let out = dir.join("out.jsonl");
    let relay = Relay::new(&dir, &db, "a", &out, "batch_size = 20");
    let running = relay.start();
    wait_for("every row marked", || (unpublished(&db) == 0).then_some(())).unwrap();
    let quarantined = wait_for("the quarantine counted", || {
        let n = relay.metric("sluice_component_quarantined_events_total")?;
        (n >= 3.0).then_some(n)
    })
    .unwrap();
    stop(running);
    assert_eq!(quarantined, 3.0);
    let seqs: Vec<i64> = delivered(&out).into_iter().map(|(seq, _)| seq).collect();
    assert_eq!(seqs, (1..=50).collect::<Vec<_>>(), "the rest flowed on");
    let mut reasons: Vec<String> = json_lines(&relay.data.join("quarantine.jsonl"))
        .iter()
        .map(|line| {
            assert_eq!(line["headers"]["sluice.quarantine.component"], "outbox");
            line["headers"]["sluice.quarantine.reason"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            "position column seq is not a non-negative integer",
            "position column seq is null",
            "position column seq is null",
        ]
    );
}

#[test]
fn a_notification_wakes_the_relay_long_before_its_interval() {
    let db = TestDb::create("test_poll_e2e_notify");
    db.execute(SCHEMA);
    let dir = Scratch::new("poll-notify");
    let out = dir.join("out.jsonl");
    let settings = format!("interval = \"10s\"\nnotify_channel = \"{CHANNEL}\"");
    let relay = Relay::new(&dir, &db, "a", &out, &settings);
    let running = relay.start();
    let insert = |aggregate: &str| {
        db.execute(&format!(
            "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) \
             VALUES ('order', '{aggregate}', 'Created', '{{}}')"
        ));
    };
    // The first row may be found by the poll at start; the second can only come by
    // notification, since the next interval is 10 s away.
    insert("first");
    wait_for("the first row", || {
        (delivered(&out).len() == 1).then_some(())
    })
    .unwrap();
    insert("second");
    let deadline = Instant::now() + Duration::from_secs(5);
    while delivered(&out).len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the row was not delivered within 5 s of its commit: no wake-up"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        relay
            .metric("sluice_postgres_poll_notifications_total")
            .unwrap()
            >= 1.0
    );
    stop(running);
}

#[test]
fn cleanup_deletes_only_rows_published_before_the_retention() {
    let db = TestDb::create("test_poll_e2e_cleanup");
    db.execute(SCHEMA);
    db.execute(
        "INSERT INTO outbox (aggregatetype, aggregateid, type, payload, created_at, published_at)
             SELECT 'order', 'old', 'Created', '{}', now() - interval '3 hours',
                    now() - interval '2 hours'
             FROM generate_series(1, 30);
         INSERT INTO outbox (aggregatetype, aggregateid, type, payload, created_at, published_at)
             SELECT 'order', 'recent', 'Created', '{}', now() - interval '3 hours',
                    now() - interval '10 minutes'
             FROM generate_series(1, 10);
         INSERT INTO outbox (aggregatetype, aggregateid, type, payload, created_at)
             SELECT 'order', 'new', 'Created', '{}', now() - interval '3 hours'
             FROM generate_series(1, 10);",
    );
    let dir = Scratch::new("poll-cleanup");
    let out = dir.join("out.jsonl");
    let settings =
        "[sources.outbox.cleanup]\nretention = \"1h\"\nbatch_size = 7\ninterval = \"100ms\"";
    let relay = Relay::new(&dir, &db, "a", &out, settings);
    let running = relay.start();
    let deleted = wait_for("the old rows deleted", || {
        let n = relay.metric("sluice_postgres_cleanup_deleted_rows_total")?;
        (n >= 30.0 && unpublished(&db) == 0).then_some(n)
    })
    .unwrap();
    assert_eq!(deleted, 30.0);
    let left = |aggregate: &str| {
        db.value(&format!(
            "SELECT count(*) FROM outbox WHERE aggregateid = '{aggregate}'"
        ))
        .unwrap()
    };
    assert_eq!(left("old"), "0");
    assert_eq!(left("recent"), "10", "published within the retention: kept");
    assert_eq!(left("new"), "10", "published just now by the relay: kept");
    stop(running);
    assert_eq!(
        delivered(&out).len(),
        10,
        "only unpublished rows are polled"
    );
}

#[test]
fn the_backlog_and_its_age_are_measured_while_the_relay_waits_and_reach_zero() {
    let db = TestDb::create("poll_backlog");
    db.execute(SCHEMA);
    db.execute(
        "INSERT INTO outbox (aggregatetype, aggregateid, type, payload)
         SELECT 'order', 'agg-' || (i % 10), 'OrderCreated', '{}' FROM generate_series(1, 100) i",
    );
    let dir = Scratch::new("poll-backlog");
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let out = dir.join("out.jsonl");
    let config = dir.write(
        "backlog.toml",
        &format!(
            r#"
            [api]
            address = "{api}"
            [pipeline]
            data_dir = "{data}"
            [sources.outbox]
            type = "postgres_poll"
            url = "{url}"
            batch_size = 5
            interval = "50ms"
            backlog_interval = "100ms"
            # Twenty events a second: the relay spends about five seconds waiting for room.
            [transforms.slow]
            type = "throttle"
            inputs = ["outbox"]
            rate = 20
            [sinks.out]
            type = "file"
            inputs = ["slow"]
            path = "{out}"
            "#,
            data = dir.join("data").display(),
            url = db.url,
            out = out.display(),
        ),
    );
    let mut running = sluice().spawn(&config);
    running.wait_ready(api).unwrap();
    let backlog = || {
        let m = metrics(api).ok()?;
        let of = |name| metric(&m, name, &[("component_id", "outbox")]);
        Some((
            of("sluice_postgres_poll_backlog_rows")?,
            of("sluice_postgres_poll_backlog_age_seconds")?,
        ))
    };
    let (rows, age) = wait_for("a backlog a second old", || {
        backlog().filter(|&(rows, age)| rows > 0.0 && age >= 1.0)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", running.log()));
    // Measured before this count, which only shrinks.
    let left = unpublished(&db);
    assert!(
        rows <= 100.0 && rows >= left as f64,
        "backlog {rows} rows ({age}s), {left} unpublished"
    );
    assert!(left > 0, "the relay drained before the backlog was seen");
    wait_for("every row delivered and the backlog empty", || {
        backlog().filter(|&(rows, age)| rows == 0.0 && age == 0.0)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", running.log()));
    assert_eq!(unpublished(&db), 0);
    assert_eq!(delivered(&out).len(), 100);
    stop(running);
}
