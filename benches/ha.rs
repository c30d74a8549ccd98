//! The highly available relay under failure, and a cluster taking in a node, through the
//! binary on the shared etcd (TTL 2 s), while an order service commits outbox rows at a steady
//! rate.
//!
//! - **Failover**: three `sluice run` nodes of one leader-gated `postgres_cdc` → `outbox` →
//!   `rabbitmq` relay; the leader is killed with `kill -9` `--kills` times and frozen with
//!   `SIGSTOP` `--freezes` times (resumed after 2 × TTL, when it must say standby). For each
//!   failover: the time from the kill (or stop) to another node leading, and to that node's
//!   first confirmed message (delivery resumed), against the target TTL + 1 s.
//! - **Join**: six such relays (six outbox tables and slots) on two nodes, three each; a third
//!   node starts, and the time from its start, and from its first `/ready`, until every node
//!   leads two is measured; it is stopped (SIGTERM), the two take three each again, and this
//!   repeats `--joins` times.
//!
//! At the end of each part every committed row must be in the queue (duplicates counted).
//!
//! The drain rate under leadership against the same relay without it is measured by
//! `cargo bench --bench outbox -- --only cdc-rabbitmq-B,cdc-rabbitmq-leader-B`.
//!
//! `cargo bench --bench ha [-- --kills 20 --freezes 5 --joins 5 --rate 200]`, with the servers
//! of `scripts/services.sh` running (`DATABASE_URL`, `AMQP_URL`, `ETCD_ENDPOINTS`).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sluice_tests::rabbitmq::{Reader, Vhost};
use sluice_tests::{Scratch, TestDb, free_port, http_get, metric, metrics};
use support::Args;

const TTL: Duration = Duration::from_secs(2);
const TARGET: Duration = Duration::from_secs(3);
const PATIENCE: Duration = Duration::from_secs(60);
/// The queue every relay delivers to.
const QUEUE: &str = "orders";

/// One node of the relay: its process and API.
struct Node {
    name: String,
    child: Child,
    api: SocketAddr,
}

impl Node {
    /// Sends `signal` (`KILL`, `STOP`, `CONT`, `TERM`) to the node's process.
    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {}", self.name);
    }

    /// Stops the node the graceful way (SIGTERM) and waits for it to exit.
    fn stop(mut self) {
        self.signal("TERM");
        self.child.wait().unwrap();
    }

    /// The elections it leads, as its `/ready` says; `None` when it does not answer.
    fn elections_led(&self) -> Option<BTreeSet<String>> {
        let (_, body) = http_get(self.api, "/ready").ok()?;
        let led = body
            .lines()
            .filter_map(|line| line.strip_prefix("leader of election "))
            .filter_map(|rest| rest.split_once(" (fencing token "))
            .map(|(election, _)| election.to_owned())
            .collect();
        Some(led)
    }

    fn leads(&self) -> bool {
        self.elections_led().is_some_and(|led| !led.is_empty())
    }

    /// Whether its `/ready` answers 200: every relay it leads streams.
    fn ready(&self) -> bool {
        http_get(self.api, "/ready").is_ok_and(|(status, _)| status == 200)
    }

    fn confirmed(&self) -> u64 {
        metrics(self.api)
            .ok()
            .and_then(|all| metric(&all, "sluice_rabbitmq_confirmed_messages_total", &[]))
            .unwrap_or(0.0) as u64
    }
}

impl Drop for Node {
    /// A node outlives no run, even one that failed.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What every node runs, but for its name and API address: one leader-gated relay per outbox
/// table, each under an election of its own, in a database, virtual host and etcd namespace of
/// their own.
struct Relay {
    db: TestDb,
    vhost: Vhost,
    scratch: Scratch,
    etcd: String,
    namespace: String,
    tables: Vec<String>,
}

impl Relay {
    /// A relay of `tables` outbox tables: `outbox` alone, or `outbox1`…
    fn create(name: &str, tables: usize) -> Relay {
        let db = TestDb::create(&name.replace('-', "_"));
        db.execute(include_str!("../examples/sql/outbox.sql"));
        let tables: Vec<String> = match tables {
            1 => vec!["outbox".to_owned()],
            n => (1..=n).map(|t| format!("outbox{t}")).collect(),
        };
        for table in tables.iter().filter(|t| *t != "outbox") {
            db.execute(&format!("CREATE TABLE {table} (LIKE outbox INCLUDING ALL)"));
        }
        Relay {
            db,
            vhost: Vhost::create(name).unwrap(),
            scratch: Scratch::new(name),
            etcd: std::env::var("ETCD_ENDPOINTS").unwrap_or_else(|_| "127.0.0.1:2379".into()),
            namespace: format!("{name}-{}-{}", std::process::id(), free_port()),
            tables,
        }
    }

    /// Starts node `name`: every relay in one `sluice run`.
    fn start(&self, name: &str) -> Node {
        let api = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let configs: Vec<_> = self
            .tables
            .iter()
            .map(|table| self.pipeline(name, table, api))
            .collect();
        let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("run")
            .args(&configs)
            .env("SLUICE_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Node {
            name: name.to_owned(),
            child,
            api,
        }
    }

    /// The config of `table`'s relay on node `name`, whose API is at `api`.
    fn pipeline(&self, name: &str, table: &str, api: SocketAddr) -> std::path::PathBuf {
        let slot = format!("{}_{table}", self.db.name);
        let db = format!("{}?sslmode=disable", self.db.url);
        self.scratch.write(
            &format!("{name}-{table}.toml"),
            &format!(
                r#"[api]
address = "{api}"
[coord]
backend = "etcd"
endpoints = "{etcd}"
namespace = "{namespace}"
ttl = "2s"
node = "{name}"
[pipeline]
data_dir = "{data}"
leader = "bench-ha-{table}"
[sources.{table}]
type = "postgres_cdc"
url = "{db}"
slot = "{slot}"
publication = "{slot}"
tables = ["public.{table}"]
[transforms.{table}_events]
type = "outbox"
inputs = ["{table}"]
[sinks.{table}_broker]
type = "rabbitmq"
inputs = ["{table}_events"]
url = "{amqp}"
exchange = ""
routing_key = "{QUEUE}"
[[sinks.{table}_broker.declare.queues]]
name = "{QUEUE}"
"#,
                etcd = self.etcd,
                namespace = self.namespace,
                data = self.scratch.join(name).display(),
                amqp = self.vhost.url(),
            ),
        )
    }

    /// Whether each of `nodes` leads `share` of the relays and every relay is led.
    fn spread(&self, nodes: &[Node], share: usize) -> bool {
        let Some(led) = nodes
            .iter()
            .map(Node::elections_led)
            .collect::<Option<Vec<_>>>()
        else {
            return false;
        };
        let elections: BTreeSet<&String> = led.iter().flatten().collect();
        led.iter().all(|l| l.len() == share) && elections.len() == self.tables.len()
    }

    /// Starts an order service committing one outbox row per transaction at `rate`, over the
    /// tables in turn, until the returned load is stopped.
    fn load(&self, rate: f64) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let committed = Arc::new(AtomicU64::new(0));
        let service = {
            let (url, tables) = (self.db.url.clone(), self.tables.clone());
            let (stop, committed) = (Arc::clone(&stop), Arc::clone(&committed));
            std::thread::spawn(move || order_service(url, tables, rate, stop, committed))
        };
        Load {
            stop,
            committed,
            service,
        }
    }

    /// Waits until every one of the `committed` rows is in the queue, by message id; the
    /// messages read, repeats included.
    fn read_back(&self, committed: u64) -> usize {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let mut reader = Reader::new(self.vhost.url());
        let mut ids = BTreeSet::new();
        let mut messages = 0usize;
        let t0 = Instant::now();
        while (ids.len() as u64) < committed {
            let got = runtime.block_on(reader.take_ready(QUEUE)).unwrap();
            messages += got.len();
            ids.extend(got.into_iter().filter_map(|m| m.message_id));
            assert!(
                t0.elapsed() < PATIENCE,
                "{} of {committed} rows reached the queue",
                ids.len()
            );
        }
        messages
    }
}

/// A running order service.
struct Load {
    stop: Arc<AtomicBool>,
    committed: Arc<AtomicU64>,
    service: std::thread::JoinHandle<()>,
}

impl Load {
    /// Stops it; the rows it committed.
    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.service.join().unwrap();
        self.committed.load(Ordering::Relaxed)
    }
}

/// Polls until `probe` holds, or panics naming `what`; the time it took from `since`.
fn until(what: &str, since: Instant, mut probe: impl FnMut() -> bool) -> Duration {
    loop {
        if probe() {
            return since.elapsed();
        }
        assert!(since.elapsed() < PATIENCE, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Commits one outbox row per transaction at `rate`, into `tables` in turn, on an absolute
/// schedule, until `stop`.
fn order_service(
    url: String,
    tables: Vec<String>,
    rate: f64,
    stop: Arc<AtomicBool>,
    committed: Arc<AtomicU64>,
) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        let mut inserts = Vec::new();
        for table in &tables {
            inserts.push(
                client
                    .prepare(&format!("INSERT INTO {table} (aggregatetype, aggregateid, type, payload) VALUES ('order', $1, 'OrderCreated', '{{}}')"))
                    .await
                    .unwrap(),
            );
        }
        let every = Duration::from_secs_f64(1.0 / rate);
        let mut next = tokio::time::Instant::now();
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let insert = &inserts[n as usize % inserts.len()];
            client
                .execute(insert, &[&format!("agg-{}", n % 50)])
                .await
                .unwrap();
            n += 1;
            committed.store(n, Ordering::Relaxed);
            next += every;
            tokio::time::sleep_until(next).await;
        }
    });
}

/// p50 and max of `times`, in seconds.
fn p50_max(times: &mut [Duration]) -> (f64, f64) {
    times.sort();
    (
        times[times.len() / 2].as_secs_f64(),
        times.last().unwrap().as_secs_f64(),
    )
}

/// One failure of the leader and its failover.
struct Failover {
    /// `kill` or `freeze`.
    kind: &'static str,
    /// From the failure to another node leading.
    elected: Duration,
    /// From the failure to that node's first confirmed message.
    delivering: Duration,
}

/// What a part measured, and what it read back from the queue.
struct Part<T> {
    rounds: Vec<T>,
    committed: u64,
    messages: usize,
}

/// Three nodes of one relay; the leader killed `kills` times, then frozen `freezes` times.
fn failovers(kills: usize, freezes: usize, rate: f64) -> Part<Failover> {
    let relay = Relay::create("bench-ha", 1);
    let mut started = 0;
    let mut start = |relay: &Relay| {
        started += 1;
        relay.start(&format!("node-{started}"))
    };
    let mut nodes: Vec<Node> = (0..3).map(|_| start(&relay)).collect();
    // Rows committed before a slot exists are not in its stream: the order service starts
    // once a leader streams, as the order service of a deployment would.
    until("a first leader streaming", Instant::now(), || {
        nodes.iter().any(|n| n.leads() && n.ready())
    });
    let load = relay.load(rate);
    until("the leader delivering", Instant::now(), || {
        nodes.iter().any(|n| n.leads() && n.confirmed() > 0)
    });

    let mut rounds = Vec::new();
    let plan = std::iter::repeat_n("kill", kills).chain(std::iter::repeat_n("freeze", freezes));
    for (round, kind) in plan.enumerate() {
        let at = nodes.iter().position(Node::leads).expect("a leader");
        let before: Vec<u64> = nodes.iter().map(Node::confirmed).collect();
        let t0 = Instant::now();
        nodes[at].signal(if kind == "kill" { "KILL" } else { "STOP" });
        let others = |nodes: &[Node]| (0..nodes.len()).filter(move |&i| i != at);
        let mut next = at;
        let elected = until("another node leading", t0, || {
            next = others(&nodes).find(|&i| nodes[i].leads()).unwrap_or(at);
            next != at
        });
        let delivering = until("delivery resuming", t0, || {
            nodes[next].confirmed() > before[next]
        });
        eprintln!(
            "round {round}: {kind} {} → {} leads after {:.2} s, delivers after {:.2} s",
            nodes[at].name,
            nodes[next].name,
            elected.as_secs_f64(),
            delivering.as_secs_f64()
        );
        rounds.push(Failover {
            kind,
            elected,
            delivering,
        });
        if kind == "kill" {
            let mut dead = nodes.remove(at);
            dead.child.wait().unwrap();
            nodes.push(start(&relay));
        } else {
            // Resumed after 2 × TTL from the stop, the frozen node must find its term over.
            std::thread::sleep((t0 + 2 * TTL).saturating_duration_since(Instant::now()));
            nodes[at].signal("CONT");
            until("the resumed node to say standby", Instant::now(), || {
                http_get(nodes[at].api, "/ready")
                    .is_ok_and(|(_, body)| body.contains("standby for election"))
            });
        }
    }
    let committed = load.stop();
    let messages = relay.read_back(committed);
    nodes.into_iter().for_each(Node::stop);
    Part {
        rounds,
        committed,
        messages,
    }
}

/// One join of a third node to two nodes leading three relays each.
struct Join {
    /// From its start to its first `/ready`.
    ready: Duration,
    /// From its start to every node leading two.
    spread: Duration,
}

/// Six relays on two nodes; a third node joins `joins` times, stopped after each.
fn joins(joins: usize, rate: f64) -> Part<Join> {
    let relay = Relay::create("bench-ha-join", 6);
    let mut nodes = vec![relay.start("a"), relay.start("b")];
    until("every relay streaming", Instant::now(), || {
        relay.spread(&nodes, 3) && nodes.iter().all(Node::ready)
    });
    let load = relay.load(rate);
    let mut rounds = Vec::new();
    for round in 0..joins {
        until(
            "three relays led by each of two nodes",
            Instant::now(),
            || relay.spread(&nodes, 3),
        );
        let t0 = Instant::now();
        nodes.push(relay.start("c"));
        let ready = until("the joining node ready", t0, || nodes[2].ready());
        let spread = until("two relays led by each node", t0, || {
            relay.spread(&nodes, 2)
        });
        eprintln!(
            "join {round}: c ready after {:.2} s, two relays each after {:.2} s ({:.2} s after ready)",
            ready.as_secs_f64(),
            spread.as_secs_f64(),
            (spread - ready).as_secs_f64()
        );
        rounds.push(Join { ready, spread });
        nodes.pop().unwrap().stop();
    }
    let committed = load.stop();
    let messages = relay.read_back(committed);
    nodes.into_iter().for_each(Node::stop);
    Part {
        rounds,
        committed,
        messages,
    }
}

/// The part's last line: every committed row in the queue, and the repeats.
fn read_back_line<T>(part: &Part<T>) -> String {
    format!(
        "rows committed {}, all in the queue; messages {} ({} repeated deliveries, dropped by consumers that dedupe by id)",
        part.committed,
        part.messages,
        part.messages as u64 - part.committed
    )
}

fn main() {
    let args = Args::from_env();
    if !args.is_bench_run() {
        return;
    }
    let rate: f64 = args.number("--rate", 200.0);
    let failed = failovers(
        args.number("--kills", 20),
        args.number("--freezes", 5),
        rate,
    );
    let joined = joins(args.number("--joins", 5), rate);

    println!(
        "\nHA relay failover: 3 nodes, etcd TTL {} s, {rate} commits/s; target: max ≤ TTL + 1 s = {} s",
        TTL.as_secs(),
        TARGET.as_secs()
    );
    println!(
        "{:<22} {:>7} {:>14} {:>14} {:>15} {:>15}  target",
        "failure", "rounds", "leads p50 s", "leads max s", "delivers p50 s", "delivers max s"
    );
    for (kind, label) in [
        ("kill", "leader kill -9"),
        ("freeze", "leader SIGSTOP 2×TTL"),
    ] {
        let rounds: Vec<&Failover> = failed.rounds.iter().filter(|r| r.kind == kind).collect();
        if rounds.is_empty() {
            continue;
        }
        let (e50, emax) = p50_max(&mut rounds.iter().map(|r| r.elected).collect::<Vec<_>>());
        let (d50, dmax) = p50_max(&mut rounds.iter().map(|r| r.delivering).collect::<Vec<_>>());
        let met = if dmax <= TARGET.as_secs_f64() {
            "met"
        } else {
            "NOT met"
        };
        println!(
            "{label:<22} {:>7} {e50:>14.2} {emax:>14.2} {d50:>15.2} {dmax:>15.2}  {met}",
            rounds.len()
        );
    }
    println!("{}", read_back_line(&failed));

    if joined.rounds.is_empty() {
        return;
    }
    println!(
        "\nHA cluster join: 6 relays on 2 nodes (3 each), a third node joins until each leads 2; etcd TTL {} s, {rate} commits/s over the 6 tables",
        TTL.as_secs()
    );
    println!(
        "{:<22} {:>7} {:>14} {:>14}",
        "from", "joins", "p50 s", "max s"
    );
    let from_start: Vec<Duration> = joined.rounds.iter().map(|j| j.spread).collect();
    let from_ready: Vec<Duration> = joined.rounds.iter().map(|j| j.spread - j.ready).collect();
    let ready: Vec<Duration> = joined.rounds.iter().map(|j| j.ready).collect();
    for (label, mut times) in [
        ("start → ready", ready),
        ("start → 2 each", from_start),
        ("ready → 2 each", from_ready),
    ] {
        let (p50, max) = p50_max(&mut times);
        println!("{label:<22} {:>7} {p50:>14.2} {max:>14.2}", times.len());
    }
    println!("{}", read_back_line(&joined));
}
