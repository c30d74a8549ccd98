//! Rows already in the outbox, through the binary against PostgreSQL and RabbitMQ:
//! `snapshot = "initial"` delivers them when the slot is created, before the stream and
//! consistent with it (a loader writing all along: every row exactly once), again after a
//! `kill -9` in the middle; an existing slot refuses it and names `sluice backfill`, which
//! republishes chosen rows and, killed with `kill -9` and run again, delivers every one.
//!
//! Each test owns a database, a slot and a RabbitMQ virtual host.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use sluice_tests::rabbitmq::{Reader, Received, Vhost};
use sluice_tests::{Running, Scratch, TestDb, free_port, wait_for};

use crate::sluice;

const OUTBOX: &str = "
    CREATE TABLE outbox (
        id            uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
        aggregatetype text        NOT NULL,
        aggregateid   text        NOT NULL,
        type          text        NOT NULL,
        payload       jsonb       NOT NULL,
        created_at    timestamptz NOT NULL DEFAULT clock_timestamp()
    )";
const QUEUE: &str = "events";

struct Outbox {
    db: TestDb,
    vhost: Vhost,
    dir: Scratch,
    api: SocketAddr,
    config: PathBuf,
    runtime: tokio::runtime::Runtime,
    reader: std::sync::Mutex<Reader>,
}

impl Outbox {
    /// A relay of the outbox with `source_extra` in its source, and a throttle of `rate`
    /// events a second before the sink when set (so that a kill comes mid-way).
    fn new(test: &str, source_extra: &str, rate: Option<u64>) -> Self {
        let db = TestDb::create(test);
        db.execute(OUTBOX);
        let vhost = Vhost::create(test).unwrap();
        let reader = std::sync::Mutex::new(Reader::new(vhost.url()));
        let outbox = Outbox {
            db,
            vhost,
            dir: Scratch::new(test),
            api: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            config: PathBuf::new(),
            runtime: tokio::runtime::Runtime::new().unwrap(),
            reader,
        };
        let config = outbox.write_config(source_extra, rate);
        Outbox { config, ..outbox }
    }

    fn write_config(&self, source_extra: &str, rate: Option<u64>) -> PathBuf {
        let (sink_input, throttle) = match rate {
            Some(rate) => (
                "slow",
                format!(
                    "[transforms.slow]\ntype = \"throttle\"\ninputs = [\"events\"]\nrate = {rate}"
                ),
            ),
            None => ("events", String::new()),
        };
        self.dir.write(
            "relay.toml",
            &format!(
                r##"
                [api]
                address = "{api}"
                [pipeline]
                data_dir = "{data}"
                [sources.outbox]
                type = "postgres_cdc"
                url = "{url}"
                slot = "{slot}"
                publication = "{slot}"
                status_interval = "100ms"
                max_batch_events = 256
                {source_extra}
                [transforms.events]
                type = "outbox"
                inputs = ["outbox"]
                {throttle}
                [sinks.broker]
                type = "rabbitmq"
                inputs = ["{sink_input}"]
                url = "{amqp}"
                exchange = "outbox.{{aggregatetype}}"
                exchange_type = "topic"
                routing_key = "{{type}}"
                [[sinks.broker.declare.queues]]
                name = "{QUEUE}"
                [[sinks.broker.declare.exchanges]]
                name = "outbox.order"
                type = "topic"
                [[sinks.broker.declare.bindings]]
                exchange = "outbox.order"
                queue = "{QUEUE}"
                routing_key = "#"
                "##,
                api = self.api,
                data = self.dir.join("data").display(),
                url = self.db.url,
                slot = self.db.name,
                amqp = self.vhost.url(),
            ),
        )
    }

    /// `sluice run`, without waiting for it to be ready (it is not while a snapshot runs).
    fn spawn(&self) -> Running {
        sluice().spawn(&self.config)
    }

    fn start(&self) -> Running {
        let mut running = self.spawn();
        running
            .wait_ready(self.api)
            .unwrap_or_else(|e| panic!("{e}"));
        running
    }

    /// `sluice backfill` of the outbox with `condition`, in the background.
    fn spawn_backfill(&self, condition: &str) -> Running {
        let args: Vec<&OsStr> = [
            OsStr::new("backfill"),
            self.config.as_os_str(),
            OsStr::new("--source"),
            OsStr::new("outbox"),
            OsStr::new("--where"),
            OsStr::new(condition),
        ]
        .to_vec();
        sluice().spawn_logged(&args, &self.dir.join("backfill.log"))
    }

    fn backfill(&self, source: &str, condition: &str) -> std::process::Output {
        sluice().output(&[
            "backfill",
            self.config.to_str().unwrap(),
            "--source",
            source,
            "--where",
            condition,
        ])
    }

    /// Rows `first..first + count` in one transaction, over 50 aggregates, with the sequence
    /// number in the payload: commit order (and `created_at` order) is sequence order.
    fn insert(&self, first: usize, count: usize) {
        let mut sql = String::new();
        for seq in first..first + count {
            sql.push_str(&format!(
                "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('order', 'agg-{}', 'OrderCreated', '{{\"seq\": {seq}}}');",
                seq % 50
            ));
        }
        self.db.execute(&sql);
    }

    fn rows(&self) -> usize {
        self.db
            .value("SELECT count(*) FROM outbox")
            .unwrap()
            .parse()
            .unwrap()
    }

    /// The outbox ids of the rows `condition` chooses.
    fn ids(&self, condition: &str) -> BTreeSet<String> {
        self.db
            .query(&format!("SELECT id::text FROM outbox WHERE {condition}"))
            .into_iter()
            .map(|r| r[0].clone().unwrap())
            .collect()
    }

    fn ready(&self) -> u32 {
        self.runtime
            .block_on(self.reader.lock().unwrap().ready(QUEUE))
            .unwrap()
    }

    fn take_at_least(&self, n: usize, running: &Running) -> Vec<Received> {
        self.runtime
            .block_on(self.reader.lock().unwrap().take_at_least(QUEUE, n as u32))
            .unwrap_or_else(|e| panic!("{e}\n{}", running.log()))
    }

    fn take_ready(&self) -> Vec<Received> {
        self.runtime
            .block_on(self.reader.lock().unwrap().take_ready(QUEUE))
            .unwrap()
    }
}

fn message_ids(messages: &[Received]) -> Vec<String> {
    messages
        .iter()
        .map(|m| m.message_id.clone().unwrap())
        .collect()
}

/// Checks that the first delivery of each event follows commit order within its aggregate.
fn in_order_per_aggregate(messages: &[Received]) {
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for message in messages {
        if !seen.insert(message.message_id.clone()) {
            continue;
        }
        let key = message.correlation_id.clone().unwrap();
        let seq = message.json()["seq"].as_u64().unwrap();
        if let Some(previous) = last.insert(key.clone(), seq) {
            assert!(previous < seq, "aggregate {key}: {seq} after {previous}");
        }
    }
}

#[test]
fn a_snapshot_delivers_every_row_once_while_a_loader_writes() {
    let outbox = Outbox::new("snap_load", "snapshot = \"initial\"", None);
    outbox.insert(0, 5000);
    let stop = AtomicBool::new(false);
    let (mut running, written) = std::thread::scope(|scope| {
        // The loader commits before, during and after the slot's creation and its snapshot.
        let loader = scope.spawn(|| {
            let mut next = 5000;
            while !stop.load(Ordering::Relaxed) {
                outbox.insert(next, 20);
                next += 20;
            }
            next
        });
        wait_for("the loader to write", || {
            (outbox.rows() > 5100).then_some(())
        })
        .unwrap();
        let running = outbox.start();
        let streamed_from = outbox.rows();
        wait_for("the loader to write after the snapshot", || {
            (outbox.rows() > streamed_from + 500).then_some(())
        })
        .unwrap();
        stop.store(true, Ordering::Relaxed);
        (running, loader.join().unwrap())
    });
    assert_eq!(outbox.rows(), written);
    let mut messages = outbox.take_at_least(written, &running);
    running.signal("TERM");
    assert!(running.wait().unwrap().success(), "{}", running.log());
    messages.extend(outbox.take_ready());
    let ids = message_ids(&messages);
    let unique: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(ids.len(), unique.len(), "no row twice");
    assert_eq!(unique, outbox.ids("true"), "every row, by its own id");
    in_order_per_aggregate(&messages);
    assert!(
        running
            .log()
            .contains("delivered the rows already in the outbox tables"),
        "{}",
        running.log()
    );

    // Delivered: a restart streams on, without a second snapshot.
    let mut again = outbox.start();
    outbox.insert(written, 10);
    let more = outbox.take_at_least(10, &again);
    assert_eq!(more.len(), 10, "{}", again.log());
    again.signal("TERM");
    assert!(again.wait().unwrap().success(), "{}", again.log());
    assert!(
        !again.log().contains("the outbox tables"),
        "no second snapshot: {}",
        again.log()
    );
}

#[test]
fn a_snapshot_killed_mid_way_is_read_again_and_nothing_is_lost() {
    let outbox = Outbox::new("snap_kill", "snapshot = \"initial\"", Some(1500));
    outbox.insert(0, 3000);
    let mut killed = outbox.spawn();
    wait_for("part of the snapshot delivered", || {
        (outbox.ready() >= 300).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", killed.log()));
    killed.signal("KILL");
    killed.wait().unwrap();
    outbox.insert(3000, 100); // committed after the slot's creation, while nothing ran

    let mut running = outbox.spawn();
    let all = outbox.ids("true");
    let mut messages = Vec::new();
    wait_for("every row delivered after the restart", || {
        messages.extend(outbox.take_ready());
        let seen: BTreeSet<String> = message_ids(&messages).into_iter().collect();
        (seen == all).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", running.log()));
    assert!(
        running.log().contains("reading the tables again"),
        "{}",
        running.log()
    );
    running.signal("TERM");
    assert!(running.wait().unwrap().success(), "{}", running.log());
}

#[test]
fn a_snapshot_on_an_existing_slot_is_refused_and_names_backfill() {
    let outbox = Outbox::new("snap_refused", "", None);
    let mut running = outbox.start();
    running.signal("TERM");
    assert!(running.wait().unwrap().success(), "{}", running.log());

    outbox.write_config("snapshot = \"initial\"", None);
    let check = sluice().output(&["check", outbox.config.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert_eq!(check.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("FAIL snapshot = \"initial\" applies when sluice creates the slot")
            && stdout.contains("sluice backfill"),
        "{stdout}"
    );
    let mut refused = outbox.spawn();
    assert_eq!(refused.wait().unwrap().code(), Some(1));
    assert!(
        refused.log().contains("sluice backfill"),
        "{}",
        refused.log()
    );
}

#[test]
fn a_backfill_killed_with_kill_dash_nine_delivers_every_chosen_row_when_run_again() {
    let outbox = Outbox::new("backfill_kill", "", Some(1000));
    outbox.insert(0, 4000);
    let even = "(payload->>'seq')::int % 2 = 0";
    let chosen = outbox.ids(even);
    assert_eq!(chosen.len(), 2000);

    let mut killed = outbox.spawn_backfill(even);
    wait_for("part of the backfill delivered", || {
        (outbox.ready() >= 200).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", killed.log()));
    killed.signal("KILL");
    killed.wait().unwrap();
    let first = outbox.take_ready();
    assert!(first.len() < chosen.len(), "killed mid-way");

    let rerun = outbox.backfill("outbox", even);
    let stdout = String::from_utf8_lossy(&rerun.stdout);
    assert!(
        rerun.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&rerun.stderr)
    );
    assert!(stdout.contains("published 2000 rows"), "{stdout}");
    let second = outbox.take_ready();
    let delivered: BTreeSet<String> = message_ids(&second).into_iter().collect();
    assert_eq!(delivered, chosen, "every chosen row, and only those");
    assert_eq!(second.len(), chosen.len(), "each once in the rerun");
    in_order_per_aggregate(&second);
}

#[test]
fn a_backfill_with_a_bad_condition_or_source_publishes_nothing() {
    let outbox = Outbox::new("backfill_bad", "", None);
    // The relay declares the queue, and publishes nothing of the rows there before it.
    let mut running = outbox.start();
    running.signal("TERM");
    assert!(running.wait().unwrap().success(), "{}", running.log());
    outbox.insert(0, 10);
    let bad = outbox.backfill("outbox", "payload->>'seq' =");
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the condition \"payload->>'seq' =\" cannot select rows of public.outbox")
            && stderr.contains("db error: ERROR: syntax error"),
        "{stderr}"
    );
    let unknown = outbox.backfill("orders", "true");
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert_eq!(unknown.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--source \"orders\": no such source"),
        "{stderr}"
    );
    assert_eq!(outbox.ready(), 0, "nothing published");
}
