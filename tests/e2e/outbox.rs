//! The main job end to end, through the binary: outbox rows committed in PostgreSQL arrive in
//! RabbitMQ (`postgres_cdc` → `outbox` → `dedupe` → `rabbitmq`), in order per aggregate, and a
//! consumer using the consumer kit applies each exactly once even when sluice is killed with
//! `kill -9` again and again mid-stream.
//!
//! Each test owns a database, a slot and a RabbitMQ virtual host.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use sluice_consumer::{BoxError, Consumer, ConsumerConfig, Handler, Message};
use sluice_tests::rabbitmq::{Reader, Received, Vhost};
use sluice_tests::{Running, Scratch, TestDb, free_port, wait_for};
use tokio_postgres::Transaction;

use crate::sluice;

/// The outbox table `table`.
fn outbox_table(table: &str) -> String {
    format!(
        "CREATE TABLE {table} (
            id            uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
            aggregatetype text        NOT NULL,
            aggregateid   text        NOT NULL,
            type          text        NOT NULL,
            payload       jsonb       NOT NULL,
            created_at    timestamptz NOT NULL DEFAULT now()
        )"
    )
}
const QUEUE: &str = "events";

/// One relay pipeline per outbox table, all into one queue; run by one process, or by several
/// nodes under elections on the shared etcd.
struct Relay {
    db: TestDb,
    vhost: Vhost,
    dir: Scratch,
    max_in_flight: usize,
    /// The outbox tables, one pipeline (and slot) each.
    tables: Vec<String>,
    /// The elections' coordination, if the pipelines run under elections.
    coordination: Option<Coordination>,
    api: SocketAddr,
    configs: Vec<PathBuf>,
}

/// The coordination service a relay's nodes elect their leaders on.
#[derive(Clone, Copy, Debug)]
enum Backend {
    Etcd,
    ZooKeeper,
}

impl Backend {
    /// Its `backend` in `[coord]`, and its scheme in `--coord`.
    fn name(self) -> &'static str {
        match self {
            Backend::Etcd => "etcd",
            Backend::ZooKeeper => "zookeeper",
        }
    }

    /// The shared server's endpoints as `scripts/services.sh env` exports them
    /// (`ETCD_ENDPOINTS`, `ZOOKEEPER_ENDPOINTS`), comma-separated.
    fn endpoints(self) -> String {
        let (variable, default) = match self {
            Backend::Etcd => ("ETCD_ENDPOINTS", "http://127.0.0.1:2379"),
            Backend::ZooKeeper => ("ZOOKEEPER_ENDPOINTS", "127.0.0.1:2181"),
        };
        std::env::var(variable).unwrap_or_else(|_| default.to_owned())
    }
}

/// Where the nodes of a relay elect their leaders: a namespace of their own on the shared
/// etcd or ZooKeeper.
struct Coordination {
    backend: Backend,
    namespace: String,
    ttl: std::time::Duration,
}

impl Coordination {
    /// `--coord` for the namespace.
    fn url(&self) -> String {
        let endpoints = self.backend.endpoints();
        let hosts: Vec<&str> = endpoints
            .split(',')
            .map(|e| e.trim_start_matches("http://"))
            .collect();
        format!(
            "{}://{}?namespace={}",
            self.backend.name(),
            hosts.join(","),
            self.namespace
        )
    }
}

impl Relay {
    fn new(test: &str, max_in_flight: usize) -> Self {
        Relay::create(test, max_in_flight, 1, None)
    }

    /// A relay whose nodes run under an election on `backend`, with sessions of 2 s (see
    /// [`Relay::node`]).
    fn highly_available(test: &str, max_in_flight: usize, backend: Backend) -> Self {
        let ttl = std::time::Duration::from_secs(2);
        Relay::cluster(test, max_in_flight, 1, backend, ttl)
    }

    /// `tables` relays, each under an election of its own on `backend`, with sessions of `ttl`.
    fn cluster(
        test: &str,
        max_in_flight: usize,
        tables: usize,
        backend: Backend,
        ttl: std::time::Duration,
    ) -> Self {
        let coordination = Coordination {
            backend,
            namespace: format!("e2e-{test}-{}-{}", std::process::id(), free_port()),
            ttl,
        };
        Relay::create(test, max_in_flight, tables, Some(coordination))
    }

    fn create(
        test: &str,
        max_in_flight: usize,
        tables: usize,
        coordination: Option<Coordination>,
    ) -> Self {
        let db = TestDb::create(test);
        let tables: Vec<String> = match tables {
            1 => vec!["outbox".to_owned()],
            n => (1..=n).map(|t| format!("outbox{t}")).collect(),
        };
        for table in &tables {
            db.execute(&outbox_table(table));
        }
        let vhost = Vhost::create(test).unwrap();
        let dir = Scratch::new(test);
        let mut relay = Relay {
            db,
            vhost,
            dir,
            max_in_flight,
            tables,
            coordination,
            api: "127.0.0.1:0".parse().unwrap(),
            configs: Vec::new(),
        };
        (relay.configs, relay.api) = relay.node("relay");
        relay
    }

    /// The election of `table`'s relay.
    fn election(&self, table: &str) -> String {
        format!("relay-{table}")
    }

    /// The replication slot (and publication) of `table`'s relay.
    fn slot(&self, table: &str) -> String {
        format!("{}_{table}", self.db.name)
    }

    /// The server process of the replication connection that holds `table`'s slot now.
    fn slot_holder(&self, table: &str) -> Option<String> {
        self.db.value(&format!(
            "SELECT active_pid::text FROM pg_replication_slots WHERE slot_name = '{}'",
            self.slot(table)
        ))
    }

    /// The configs of node `node` of the relay, one per table: its own API address (shared by
    /// its pipelines) and data directory.
    fn node(&self, node: &str) -> (Vec<PathBuf>, SocketAddr) {
        let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let configs = self
            .tables
            .iter()
            .map(|table| self.pipeline(node, table, api))
            .collect();
        (configs, api)
    }

    /// The config of `table`'s relay on node `node`.
    fn pipeline(&self, node: &str, table: &str, api: SocketAddr) -> PathBuf {
        let leadership = self.coordination.as_ref().map_or(String::new(), |c| {
            format!(
                "leader = \"{election}\"\n[coord]\nbackend = \"{backend}\"\nendpoints = \"{endpoints}\"\nnamespace = \"{namespace}\"\nttl = \"{ttl}s\"\nnode = \"{node}\"\n",
                election = self.election(table),
                backend = c.backend.name(),
                endpoints = c.backend.endpoints(),
                namespace = c.namespace,
                ttl = c.ttl.as_secs(),
            )
        });
        self.dir.write(
            &format!("{node}-{table}.toml"),
            &format!(
                r##"
                [api]
                address = "{api}"
                [pipeline]
                data_dir = "{data}"
                max_in_flight_events = {max_in_flight}
                {leadership}
                [sources.{table}]
                type = "postgres_cdc"
                url = "{url}"
                slot = "{slot}"
                publication = "{slot}"
                tables = ["public.{table}"]
                status_interval = "100ms"
                [transforms.{table}_events]
                type = "outbox"
                inputs = ["{table}"]
                [transforms.{table}_dedupe]
                type = "dedupe"
                inputs = ["{table}_events"]
                [sinks.{table}_broker]
                type = "rabbitmq"
                inputs = ["{table}_dedupe"]
                url = "{amqp}"
                exchange = "outbox.{{aggregatetype}}"
                exchange_type = "topic"
                routing_key = "{{type}}"
                channels = 4
                [[sinks.{table}_broker.declare.queues]]
                name = "{QUEUE}"
                [[sinks.{table}_broker.declare.exchanges]]
                name = "outbox.order"
                type = "topic"
                [[sinks.{table}_broker.declare.bindings]]
                exchange = "outbox.order"
                queue = "{QUEUE}"
                routing_key = "#"
                "##,
                data = self.dir.join(node).display(),
                max_in_flight = self.max_in_flight,
                url = self.db.url,
                slot = self.slot(table),
                amqp = self.vhost.url(),
            ),
        )
    }

    fn start(&self) -> Running {
        start_node(&self.configs, self.api)
    }

    /// `transactions` transactions of `per_transaction` rows over 50 aggregates, with a global
    /// sequence number in each payload; at most `per_second` transactions a second if set.
    fn insert(&self, transactions: usize, per_transaction: usize, per_second: Option<usize>) {
        let chunk = per_second.map_or(transactions, |r| (r / 10).max(1));
        let started = std::time::Instant::now();
        for first in (0..transactions).step_by(chunk) {
            let mut sql = String::new();
            for t in first..(first + chunk).min(transactions) {
                // Round-robin over the tables, each transaction in one.
                let table = &self.tables[t % self.tables.len()];
                sql.push_str("BEGIN;");
                for r in 0..per_transaction {
                    let seq = t * per_transaction + r;
                    sql.push_str(&format!(
                        "INSERT INTO {table} (aggregatetype, aggregateid, type, payload) VALUES ('order', 'agg-{}', 'OrderCreated', '{{\"seq\": {seq}}}');",
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

    /// Every outbox id written, over all tables.
    fn ids(&self) -> BTreeSet<String> {
        self.tables
            .iter()
            .flat_map(|table| self.db.query(&format!("SELECT id::text FROM {table}")))
            .map(|r| r[0].clone().unwrap())
            .collect()
    }
}

/// Starts `sluice run` on `configs` and waits until its API at `api` says ready.
fn start_node(configs: &[PathBuf], api: SocketAddr) -> Running {
    let configs: Vec<&std::path::Path> = configs.iter().map(PathBuf::as_path).collect();
    let mut running = sluice().spawn_all(&configs, &[]);
    running.wait_ready(api).unwrap_or_else(|e| panic!("{e}"));
    running
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

    /// Waits for every event written to the relay's tables, then checks each was applied
    /// once, none lost, and that repeats (only from events in flight at a failure) stayed
    /// within `bound`.
    fn check_every_event_applied_once(self, relay: &Relay, bound: u64) {
        let written = relay.ids().len();
        wait_for("every event applied", || {
            (self.applied() >= written as u64).then_some(())
        })
        .unwrap_or_else(|e| {
            let applied: BTreeSet<String> = self
                .db
                .query("SELECT message_id FROM applied")
                .into_iter()
                .map(|r| r[0].clone().unwrap())
                .collect();
            let missing: Vec<(&String, usize)> = relay
                .tables
                .iter()
                .map(|table| {
                    let ids = relay.db.query(&format!("SELECT id::text FROM {table}"));
                    let missing = ids
                        .iter()
                        .filter(|r| !applied.contains(r[0].as_ref().unwrap()))
                        .count();
                    (table, missing)
                })
                .collect();
            panic!(
                "{e}: {} of {written} applied; missing by table: {missing:?}",
                applied.len()
            )
        });
        let rows = self
            .db
            .query("SELECT count(*), count(DISTINCT message_id) FROM applied");
        let count = Some(written.to_string());
        assert_eq!(rows[0], [count.clone(), count], "each applied once");
        let applied_ids: BTreeSet<String> = self
            .db
            .query("SELECT message_id FROM applied")
            .into_iter()
            .map(|r| r[0].clone().unwrap())
            .collect();
        assert_eq!(applied_ids, relay.ids(), "no event lost");
        let duplicates = self.stats.duplicates.load(Ordering::Relaxed);
        eprintln!("{written} events applied once each; the inbox dropped {duplicates} repeats");
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

/// The elections the node at `api` leads, with their fencing tokens, as its `/ready` says;
/// `None` when it does not answer.
fn elections_led(api: SocketAddr) -> Option<BTreeMap<String, u64>> {
    let (_, body) = sluice_tests::http_get(api, "/ready").ok()?;
    let led = body
        .lines()
        .filter_map(|line| line.strip_prefix("leader of election "))
        .map(|rest| {
            let (election, token) = rest.split_once(" (fencing token ").unwrap();
            (
                election.to_owned(),
                token.trim_end_matches(')').parse().unwrap(),
            )
        })
        .collect();
    Some(led)
}

/// Whether the node at `api` leads an election.
fn leads(api: SocketAddr) -> bool {
    elections_led(api).is_some_and(|led| !led.is_empty())
}

/// Waits until each node at `apis` leads `share` of the relay's elections and every election
/// is led; what each leads, and how long it took.
fn spread(
    relay: &Relay,
    apis: &[SocketAddr],
    share: usize,
    logs: impl Fn() -> String,
) -> (Vec<BTreeMap<String, u64>>, std::time::Duration) {
    let started = std::time::Instant::now();
    let led = wait_for(&format!("{share} elections led by each node"), || {
        let led: Vec<BTreeMap<String, u64>> = apis
            .iter()
            .map(|api| elections_led(*api))
            .collect::<Option<_>>()?;
        let elections: BTreeSet<&String> = led.iter().flat_map(BTreeMap::keys).collect();
        (led.iter().all(|l| l.len() == share) && elections.len() == relay.tables.len())
            .then_some(led)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", logs()));
    (led, started.elapsed())
}

/// What a watch of a relay's replication connections saw.
struct Walsenders {
    /// The most replication connections the relay's database had at once.
    most_at_once: i64,
    /// The server processes that held the slot, in turn.
    holders: Vec<i32>,
}

/// A watch of a relay's replication connections, on a thread of its own; it ends when
/// finished or dropped (as when the test fails).
struct SlotWatch {
    watching: std::sync::Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Walsenders>>,
}

impl SlotWatch {
    /// Samples every 10 ms, on a connection of its own, how many replication connections the
    /// relay's database has and which of them holds `table`'s slot.
    fn start(relay: &Relay, table: &str) -> SlotWatch {
        let watching = std::sync::Arc::new(AtomicBool::new(true));
        let (url, slot) = (relay.db.url.clone(), relay.slot(table));
        let thread = std::thread::spawn({
            let watching = std::sync::Arc::clone(&watching);
            move || Self::sample(&url, &slot, &watching)
        });
        SlotWatch {
            watching,
            thread: Some(thread),
        }
    }

    fn sample(url: &str, slot: &str, watching: &AtomicBool) -> Walsenders {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            let sample = client
                .prepare(
                    "SELECT (SELECT count(*) FROM pg_stat_activity \
                             WHERE backend_type = 'walsender' AND datname = current_database()), \
                            (SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1)",
                )
                .await
                .unwrap();
            let mut seen = Walsenders {
                most_at_once: 0,
                holders: Vec::new(),
            };
            while watching.load(Ordering::Relaxed) {
                let row = client.query_one(&sample, &[&slot]).await.unwrap();
                seen.most_at_once = seen.most_at_once.max(row.get(0));
                if let Some(pid) = row.get::<_, Option<i32>>(1)
                    && seen.holders.last() != Some(&pid)
                {
                    seen.holders.push(pid);
                }
                // The sampling period, not a synchronization.
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            seen
        })
    }

    /// Ends the watch; what it saw.
    fn finish(mut self) -> Walsenders {
        self.watching.store(false, Ordering::Relaxed);
        let thread = self.thread.take().expect("a watch is finished once");
        thread.join().unwrap()
    }
}

impl Drop for SlotWatch {
    fn drop(&mut self) {
        self.watching.store(false, Ordering::Relaxed);
    }
}

/// Three nodes of one relay under an election on `backend` (sessions of 2 s), 20,000 events in
/// 2,000 transactions over 50 aggregates: during the stream the leader is killed with
/// `kill -9` five times and frozen with `SIGSTOP` for twice the TTL twice. Each failover takes
/// at most the TTL + 1 s, the inbox applies every event once, and at no time do two replication
/// connections use the slot.
fn one_relay_on_three_nodes_loses_nothing_when_its_leader_is_killed_or_frozen(backend: Backend) {
    const IN_FLIGHT: usize = 2000;
    const FAILURES: u64 = 7;
    let test = format!("outbox_ha_{}", backend.name());
    let relay = Relay::highly_available(&test, IN_FLIGHT, backend);
    let ttl = relay.coordination.as_ref().unwrap().ttl;
    let start = |name: &str| {
        let (configs, api) = relay.node(name);
        (start_node(&configs, api), api)
    };
    let mut nodes: Vec<(Running, SocketAddr)> = ["a", "b", "c"].map(start).into_iter().collect();
    // The nodes' sinks have declared the queue by now.
    let inbox = Applier::start(&relay, &format!("{test}_consumer"));
    let mut started = 3;
    let leader = |nodes: &[(Running, SocketAddr)]| {
        wait_for("a leader", || nodes.iter().position(|(_, api)| leads(*api)))
            .unwrap_or_else(|e| panic!("{e}\n{}", logs(nodes)))
    };
    let watch = SlotWatch::start(&relay, &relay.tables[0]);
    let mut failovers = Vec::new();
    let mut failed_holder = None;
    std::thread::scope(|scope| {
        let writer = scope.spawn(|| relay.insert(2000, 10, Some(100)));
        for round in 1..=FAILURES {
            wait_for(&format!("events applied before failure {round}"), || {
                (inbox.applied() >= round * 2200).then_some(())
            })
            .unwrap_or_else(|e| panic!("{e}\n{}", logs(&nodes)));
            // What the inbox applies may still come from the queue the previous leader filled:
            // the leader that fails now is one that streams, holding the slot itself.
            failed_holder = Some(streaming(&relay, failed_holder.as_deref(), &nodes));
            let at = leader(&nodes);
            let failed = std::time::Instant::now();
            let failure = if round % 3 == 0 {
                // Frozen for twice the TTL, then resumed: it finds itself a standby.
                nodes[at].0.signal("STOP");
                let others: Vec<usize> = (0..nodes.len()).filter(|i| *i != at).collect();
                wait_for("another leader", || {
                    others.iter().find(|i| leads(nodes[**i].1)).map(drop)
                })
                .unwrap_or_else(|e| panic!("{e}\n{}", logs(&nodes)));
                failovers.push(failed.elapsed());
                while failed.elapsed() < 2 * ttl {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                nodes[at].0.signal("CONT");
                "SIGSTOP"
            } else {
                let (mut dead, _) = nodes.remove(at);
                dead.signal("KILL");
                dead.wait().unwrap();
                leader(&nodes);
                failovers.push(failed.elapsed());
                started += 1;
                nodes.push(start(&format!("n{started}")));
                "kill -9"
            };
            eprintln!(
                "{} failover {round} ({failure} of the leader): {:?}",
                backend.name(),
                failovers[failovers.len() - 1]
            );
        }
        // The last leader too, before the watch of the slot ends.
        streaming(&relay, failed_holder.as_deref(), &nodes);
        writer.join().unwrap();
    });
    let walsenders = watch.finish();
    eprintln!(
        "{} failovers: {failovers:?}; the slot held by {} replication connections in turn, at most {} at once",
        backend.name(),
        walsenders.holders.len(),
        walsenders.most_at_once
    );
    assert!(
        failovers
            .iter()
            .all(|f| *f <= ttl + std::time::Duration::from_secs(1)),
        "a failover took longer than the TTL + 1 s: {failovers:?}"
    );
    assert!(
        walsenders.most_at_once <= 1,
        "{} replication connections used the relay's database at once",
        walsenders.most_at_once
    );
    assert!(
        walsenders.holders.len() > FAILURES as usize,
        "the slot changed hands {} times in {FAILURES} failovers: the watch missed some",
        walsenders.holders.len().saturating_sub(1)
    );
    inbox.check_every_event_applied_once(&relay, FAILURES * IN_FLIGHT as u64);
    for (mut running, _) in nodes {
        running.signal("TERM");
        assert!(running.wait().unwrap().success(), "{}", running.log());
    }
}

#[test]
fn three_nodes_one_relay_on_etcd_the_leader_killed_five_times_and_frozen_twice_loses_nothing() {
    one_relay_on_three_nodes_loses_nothing_when_its_leader_is_killed_or_frozen(Backend::Etcd);
}

#[test]
fn three_nodes_one_relay_on_zookeeper_the_leader_killed_five_times_and_frozen_twice_loses_nothing()
{
    one_relay_on_three_nodes_loses_nothing_when_its_leader_is_killed_or_frozen(Backend::ZooKeeper);
}

/// Waits until a replication connection other than `failed` holds the relay's slot (a new
/// leader streaming); returns its server process.
fn streaming(relay: &Relay, failed: Option<&str>, nodes: &[(Running, SocketAddr)]) -> String {
    wait_for("a new leader streaming", || {
        relay
            .slot_holder(&relay.tables[0])
            .filter(|pid| failed != Some(pid.as_str()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(nodes)))
}

/// The logs of `nodes`, for a failure message.
fn logs(nodes: &[(Running, SocketAddr)]) -> String {
    let logs: Vec<String> = nodes.iter().map(|(n, _)| n.log()).collect();
    logs.join("\n----\n")
}

#[test]
fn three_nodes_six_relays_two_each_three_each_after_a_kill_two_each_after_the_restart_nothing_lost()
{
    const IN_FLIGHT: usize = 1000;
    const TABLES: usize = 6;
    let ttl = std::time::Duration::from_secs(2);
    let relay = Relay::cluster("outbox_cluster", IN_FLIGHT, TABLES, Backend::Etcd, ttl);
    let start = |name: &str| {
        let (configs, api) = relay.node(name);
        (start_node(&configs, api), api)
    };
    let mut nodes: Vec<(Running, SocketAddr)> = ["a", "b", "c"].map(start).into_iter().collect();
    let apis =
        |nodes: &[(Running, SocketAddr)]| nodes.iter().map(|(_, api)| *api).collect::<Vec<_>>();
    let (_, started) = spread(&relay, &apis(&nodes), 2, || logs(&nodes));
    eprintln!("three fresh nodes led two relays each {started:?} after the last was ready");
    let inbox = Applier::start(&relay, "outbox_cluster_consumer");
    let loading = AtomicBool::new(true);
    std::thread::scope(|scope| {
        // Six tables written in turn, 50 transactions of 5 events a second, until told.
        let loader = scope.spawn(|| {
            while loading.load(Ordering::Relaxed) {
                relay.insert(20, 5, Some(50));
            }
        });
        wait_for("events applied before the kill", || {
            (inbox.applied() >= 1000).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(&nodes)));

        let (mut killed, _) = nodes.remove(0);
        killed.signal("KILL");
        let at = std::time::Instant::now();
        killed.wait().unwrap();
        let (led, _) = spread(&relay, &apis(&nodes), 3, || logs(&nodes));
        let taken = at.elapsed();
        eprintln!(
            "kill -9 of a node: its two relays led by the survivors after {taken:?}: {led:?}"
        );
        assert!(
            taken <= ttl + std::time::Duration::from_secs(1),
            "the dead node's relays were taken after {taken:?}, more than the TTL + 1 s"
        );
        let applied = inbox.applied();
        wait_for("events applied after the kill", || {
            (inbox.applied() >= applied + 1000).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(&nodes)));

        let restarting = std::time::Instant::now();
        let (configs, api) = relay.node("a");
        let running = start_node(&configs, api);
        let ready = restarting.elapsed();
        nodes.push((running, api));
        let (led, shared) = spread(&relay, &apis(&nodes), 2, || logs(&nodes));
        eprintln!(
            "the node restarted: ready after {ready:?}, two relays each {shared:?} later: {led:?}"
        );
        let applied = inbox.applied();
        wait_for("events applied after the restart", || {
            (inbox.applied() >= applied + 1000).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(&nodes)));
        loading.store(false, Ordering::Relaxed);
        loader.join().unwrap();
    });
    // Two relays moved at the kill and two at the restart.
    inbox.check_every_event_applied_once(&relay, 4 * IN_FLIGHT as u64);
    for (mut running, _) in nodes {
        running.signal("TERM");
        assert!(running.wait().unwrap().success(), "{}", running.log());
    }
}

#[test]
fn status_with_coord_shows_every_relay_with_its_leader_and_says_which_node_it_cannot_reach() {
    const TABLES: usize = 4;
    // Long enough that a killed node is still listed, and leading, when status asks.
    let ttl = std::time::Duration::from_secs(10);
    let relay = Relay::cluster("outbox_status", 100, TABLES, Backend::Etcd, ttl);
    let url = relay.coordination.as_ref().unwrap().url();
    let mut nodes: Vec<(Running, SocketAddr)> = ["a", "b"]
        .map(|name| {
            let (configs, api) = relay.node(name);
            (start_node(&configs, api), api)
        })
        .into_iter()
        .collect();
    let apis: Vec<SocketAddr> = nodes.iter().map(|(_, api)| *api).collect();
    let (led, _) = spread(&relay, &apis, 2, || logs(&nodes));
    let leader_of = |election: &str| {
        let at = led.iter().position(|l| l.contains_key(election)).unwrap();
        (["a", "b"][at], led[at][election])
    };
    let status = |json: bool| {
        let mut args = vec!["status", "--coord", url.as_str()];
        if json {
            args.push("--json");
        }
        let out = sluice().output(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };

    let table = status(false);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NODE",
            "PIPELINE",
            "ELECTION",
            "ROLE",
            "TOKEN",
            "SOURCE",
            "READY",
            "IN",
            "FLIGHT",
            "CHECKPOINT",
            "LAG"
        ]
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows.len(), TABLES, "{table}");
    for table_name in &relay.tables {
        let election = relay.election(table_name);
        let (node, token) = leader_of(&election);
        let row = rows
            .iter()
            .find(|r| r[2] == election)
            .unwrap_or_else(|| panic!("no row for {election}:\n{table}"));
        assert_eq!(row[0], node, "{table}");
        assert!(
            row[1].ends_with(&format!("{node}-{table_name}.toml")),
            "{table}"
        );
        assert_eq!(
            &row[3..6],
            ["leader", &token.to_string(), table_name.as_str()],
            "{table}"
        );
    }

    let view: serde_json::Value = serde_json::from_str(&status(true)).unwrap();
    let elections = view["elections"].as_array().unwrap();
    assert_eq!(elections.len(), TABLES, "{view:#}");
    for entry in elections {
        let (node, token) = leader_of(entry["name"].as_str().unwrap());
        assert_eq!(entry["leader"], node, "{view:#}");
        assert_eq!(entry["fencing_token"], token, "{view:#}");
        assert_eq!(entry["pipeline"]["election"]["role"], "leader", "{view:#}");
        assert!(
            entry["pipeline"]["components"][0]["in_flight_events"].is_number(),
            "{view:#}"
        );
    }
    assert_eq!(view["nodes"].as_array().unwrap().len(), 2, "{view:#}");

    // A node killed is listed until its lease expires; its API does not answer.
    let (mut killed, _) = nodes.remove(1);
    killed.signal("KILL");
    killed.wait().unwrap();
    let table = status(false);
    let unreachable: Vec<&str> = table.lines().filter(|l| l.starts_with("node b ")).collect();
    assert_eq!(unreachable.len(), 1, "{table}");
    assert!(unreachable[0].contains("unreachable"), "{table}");
    let b_rows: Vec<&str> = table.lines().filter(|l| l.starts_with("b ")).collect();
    assert_eq!(
        b_rows.len(),
        2,
        "b's relays, as their elections say:\n{table}"
    );
    assert!(b_rows.iter().all(|r| r.contains(" leader ")), "{table}");
    for (mut running, _) in nodes {
        running.signal("TERM");
        assert!(running.wait().unwrap().success(), "{}", running.log());
    }
}
