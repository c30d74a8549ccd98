//! The main job end to end, through the binary: outbox rows committed in PostgreSQL arrive in
//! RabbitMQ (`postgres_cdc` → `outbox` → `dedupe` → `rabbitmq`), in order per aggregate, and a
//! consumer using the consumer kit applies each exactly once even when sluice is killed with
//! `kill -9` again and again mid-stream.
//!
//! Each test owns a database, a slot and a RabbitMQ virtual host.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;

use sluice_consumer::{BoxError, Consumer, ConsumerConfig, Handler, Message};
use sluice_tests::rabbitmq::{Reader, Received, Vhost};
use sluice_tests::{Running, Scratch, TestDb, free_port, wait_for};
use tokio_postgres::Transaction;

use crate::sluice;

const OUTBOX: &str = "
    CREATE TABLE outbox (
        id            uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
        aggregatetype text        NOT NULL,
        aggregateid   text        NOT NULL,
        type          text        NOT NULL,
        payload       jsonb       NOT NULL,
        created_at    timestamptz NOT NULL DEFAULT now()
    )";
const QUEUE: &str = "events";

struct Relay {
    db: TestDb,
    vhost: Vhost,
    dir: Scratch,
    max_in_flight: usize,
    /// The election the relay runs under, on the shared etcd, if any.
    leader: Option<String>,
    api: SocketAddr,
    config: PathBuf,
}

impl Relay {
    fn new(test: &str, max_in_flight: usize) -> Self {
        Relay::create(test, max_in_flight, None)
    }

    /// A relay whose nodes run under election `test` (see [`Relay::node`]).
    fn highly_available(test: &str, max_in_flight: usize) -> Self {
        Relay::create(test, max_in_flight, Some(test.to_owned()))
    }

    fn create(test: &str, max_in_flight: usize, leader: Option<String>) -> Self {
        let db = TestDb::create(test);
        db.execute(OUTBOX);
        let vhost = Vhost::create(test).unwrap();
        let dir = Scratch::new(test);
        let mut relay = Relay {
            db,
            vhost,
            dir,
            max_in_flight,
            leader,
            api: "127.0.0.1:0".parse().unwrap(),
            config: PathBuf::new(),
        };
        (relay.config, relay.api) = relay.node("relay");
        relay
    }

    /// The config of node `node` of the relay: its own API address and data directory.
    fn node(&self, node: &str) -> (PathBuf, SocketAddr) {
        let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let leadership = self.leader.as_ref().map_or(String::new(), |election| {
            let etcd = std::env::var("ETCD_ENDPOINTS")
                .unwrap_or_else(|_| "http://127.0.0.1:2379".to_owned());
            format!(
                "leader = \"{election}\"\n[coord]\nbackend = \"etcd\"\nendpoints = \"{etcd}\"\nttl = \"2s\"\nnode = \"{node}\"\n"
            )
        });
        let config = self.dir.write(
            &format!("{node}.toml"),
            &format!(
                r##"
                [api]
                address = "{api}"
                [pipeline]
                data_dir = "{data}"
                max_in_flight_events = {max_in_flight}
                {leadership}
                [sources.outbox]
                type = "postgres_cdc"
                url = "{url}"
                slot = "{slot}"
                publication = "{slot}"
                status_interval = "100ms"
                [transforms.events]
                type = "outbox"
                inputs = ["outbox"]
                [transforms.dedupe]
                type = "dedupe"
                inputs = ["events"]
                [sinks.broker]
                type = "rabbitmq"
                inputs = ["dedupe"]
                url = "{amqp}"
                exchange = "outbox.{{aggregatetype}}"
                exchange_type = "topic"
                routing_key = "{{type}}"
                channels = 4
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
                data = self.dir.join(node).display(),
                max_in_flight = self.max_in_flight,
                url = self.db.url,
                slot = self.db.name,
                amqp = self.vhost.url(),
            ),
        );
        (config, api)
    }

    fn start(&self) -> Running {
        let mut running = sluice().spawn(&self.config);
        running
            .wait_ready(self.api)
            .unwrap_or_else(|e| panic!("{e}"));
        running
    }

    /// `transactions` transactions of `per_transaction` rows over 50 aggregates, with a global
    /// sequence number in each payload; at most `per_second` transactions a second if set.
    fn insert(&self, transactions: usize, per_transaction: usize, per_second: Option<usize>) {
        let chunk = per_second.map_or(transactions, |r| (r / 10).max(1));
        let started = std::time::Instant::now();
        for first in (0..transactions).step_by(chunk) {
            let mut sql = String::new();
            for t in first..(first + chunk).min(transactions) {
                sql.push_str("BEGIN;");
                for r in 0..per_transaction {
                    let seq = t * per_transaction + r;
                    sql.push_str(&format!(
                        "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('order', 'agg-{}', 'OrderCreated', '{{\"seq\": {seq}}}');",
                        seq % 50
                    ));
                }
                sql.push_str("COMMIT;");
            }
            self.db.execute(&sql);
            if let Some(rate) = per_second {
                // Pace the writer: this is the load, not a synchronization.
                let due = started
                    + std::time::Duration::from_secs_f64((first + chunk) as f64 / rate as f64);
                std::thread::sleep(due.saturating_duration_since(std::time::Instant::now()));
            }
        }
    }

    fn ids(&self) -> BTreeSet<String> {
        self.db
            .query("SELECT id::text FROM outbox")
            .into_iter()
            .map(|r| r[0].clone().unwrap())
            .collect()
    }
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
fn twenty_thousand_events_arrive_once_in_commit_order_per_aggregate() {
    let relay = Relay::new("outbox_order", 100_000);
    let mut running = relay.start();
    relay.insert(2000, 10, None);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let messages = runtime
        .block_on(Reader::new(relay.vhost.url()).take_at_least(QUEUE, 20_000))
        .unwrap_or_else(|e| panic!("{e}\n{}", running.log()));
    assert_eq!(messages.len(), 20_000, "each event once");
    let ids: BTreeSet<String> = messages
        .iter()
        .map(|m| m.message_id.clone().unwrap())
        .collect();
    assert_eq!(ids, relay.ids(), "message_id = outbox id");
    for m in &messages {
        assert_eq!(m.delivery_mode, Some(2), "persistent");
        assert_eq!(m.exchange, "outbox.order");
        assert_eq!(m.routing_key, "OrderCreated");
        assert_eq!(m.kind.as_deref(), Some("OrderCreated"));
        assert!(m.correlation_id.is_some(), "the aggregate id");
        assert!(m.headers.is_empty(), "identity travels in properties");
    }
    in_order_per_aggregate(&messages);
    running.signal("TERM");
    assert!(running.wait().unwrap().success(), "{}", running.log());
}

/// Applies each message by recording it; the consumer kit's inbox must make repeats harmless.
struct Record;

impl Handler for Record {
    async fn handle(&mut self, tx: &Transaction<'_>, message: &Message) -> Result<(), BoxError> {
        tx.execute(
            "INSERT INTO applied (message_id) VALUES ($1)",
            &[&message.id],
        )
        .await?;
        Ok(())
    }
}

/// A consumer with an inbox in its own database, applying what the relay delivers.
struct Applier {
    db: TestDb,
    runtime: tokio::runtime::Runtime,
    stats: std::sync::Arc<sluice_consumer::Stats>,
    consuming: tokio::task::JoinHandle<Result<(), sluice_consumer::Error>>,
}

impl Applier {
    fn start(relay: &Relay, test: &str) -> Applier {
        let db = TestDb::create(test);
        db.execute("CREATE TABLE applied (message_id text NOT NULL)");
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let consumer = runtime
            .block_on(Consumer::connect(ConsumerConfig::new(
                relay.vhost.url(),
                QUEUE,
                &db.url,
            )))
            .unwrap();
        let stats = consumer.stats();
        let consuming = runtime.spawn(consumer.run(Record));
        Applier {
            db,
            runtime,
            stats,
            consuming,
        }
    }

    fn applied(&self) -> u64 {
        self.stats.handled.load(Ordering::Relaxed)
    }

    /// Waits for all 20,000 events, then checks each was applied once, none lost, and that
    /// repeats (only from events in flight at a failure) stayed within `bound`.
    fn check_every_event_applied_once(self, relay: &Relay, bound: u64) {
        wait_for("every event applied", || {
            (self.applied() >= 20_000).then_some(())
        })
        .unwrap();
        let rows = self
            .db
            .query("SELECT count(*), count(DISTINCT message_id) FROM applied");
        assert_eq!(
            rows[0],
            [Some("20000".into()), Some("20000".into())],
            "each applied once"
        );
        let applied_ids: BTreeSet<String> = self
            .db
            .query("SELECT message_id FROM applied")
            .into_iter()
            .map(|r| r[0].clone().unwrap())
            .collect();
        assert_eq!(applied_ids, relay.ids(), "no event lost");
        let duplicates = self.stats.duplicates.load(Ordering::Relaxed);
        assert!(
            duplicates <= bound,
            "{duplicates} duplicates, more than {bound}"
        );
        self.consuming.abort();
        drop(self.runtime);
    }
}

#[test]
fn kill_dash_nine_five_times_loses_nothing_and_the_inbox_applies_each_once() {
    const IN_FLIGHT: usize = 2000;
    let relay = Relay::new("outbox_kill", IN_FLIGHT);
    let mut running = relay.start();
    let inbox = Applier::start(&relay, "outbox_kill_consumer");
    std::thread::scope(|scope| {
        // 20,000 events in 2,000 transactions over about ten seconds.
        let writer = scope.spawn(|| relay.insert(2000, 10, Some(200)));
        for kill in 1..=5u64 {
            wait_for(&format!("events applied before kill {kill}"), || {
                (inbox.applied() >= kill * 2500).then_some(())
            })
            .unwrap_or_else(|e| panic!("{e}\n{}", running.log()));
            running.signal("KILL");
            running.wait().unwrap();
            running = relay.start();
        }
        writer.join().unwrap();
    });
    inbox.check_every_event_applied_once(&relay, 5 * IN_FLIGHT as u64);
    running.signal("TERM");
    assert!(running.wait().unwrap().success(), "{}", running.log());
}

/// Whether the node at `api` leads its election.
fn leads(api: SocketAddr) -> bool {
    sluice_tests::http_get(api, "/ready").is_ok_and(|(_, body)| body.contains("leader of election"))
}

#[test]
fn three_nodes_one_relay_the_leader_killed_five_times_and_frozen_twice_loses_nothing() {
    const IN_FLIGHT: usize = 2000;
    let relay = Relay::highly_available("outbox_ha", IN_FLIGHT);
    let start = |name: &str| {
        let (config, api) = relay.node(name);
        let mut running = sluice().spawn(&config);
        running.wait_ready(api).unwrap_or_else(|e| panic!("{e}"));
        (running, api)
    };
    let mut nodes: Vec<(Running, SocketAddr)> = ["a", "b", "c"].map(start).into_iter().collect();
    // The nodes' sinks have declared the queue by now.
    let inbox = Applier::start(&relay, "outbox_ha_consumer");
    let mut started = 3;
    let leader = |nodes: &[(Running, SocketAddr)]| {
        wait_for("a leader", || nodes.iter().position(|(_, api)| leads(*api))).unwrap()
    };
    let mut failovers = Vec::new();
    std::thread::scope(|scope| {
        let writer = scope.spawn(|| relay.insert(2000, 10, Some(100)));
        for round in 1..=7u64 {
            wait_for(&format!("events applied before failure {round}"), || {
                (inbox.applied() >= round * 2200).then_some(())
            })
            .unwrap_or_else(|e| {
                let logs: Vec<String> = nodes.iter().map(|(n, _)| n.log()).collect();
                panic!("{e}\n{}", logs.join("\n----\n"))
            });
            let at = leader(&nodes);
            let failed = std::time::Instant::now();
            if round % 3 == 0 {
                // Frozen for twice the TTL, then resumed: it finds itself a standby.
                nodes[at].0.signal("STOP");
                let others: Vec<usize> = (0..nodes.len()).filter(|i| *i != at).collect();
                wait_for("another leader", || {
                    others.iter().find(|i| leads(nodes[**i].1)).map(drop)
                })
                .unwrap();
                failovers.push(failed.elapsed());
                while failed.elapsed() < std::time::Duration::from_secs(4) {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                nodes[at].0.signal("CONT");
            } else {
                let (mut dead, _) = nodes.remove(at);
                dead.signal("KILL");
                dead.wait().unwrap();
                leader(&nodes);
                failovers.push(failed.elapsed());
                started += 1;
                nodes.push(start(&format!("n{started}")));
            }
        }
        writer.join().unwrap();
    });
    eprintln!("failovers: {failovers:?}");
    inbox.check_every_event_applied_once(&relay, 7 * IN_FLIGHT as u64);
    for (mut running, _) in nodes {
        running.signal("TERM");
        assert!(running.wait().unwrap().success(), "{}", running.log());
    }
}
