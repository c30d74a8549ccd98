//! The highly available relay under failure: three `sluice run` nodes of one leader-gated
//! `postgres_cdc` → `outbox` → `rabbitmq` relay (etcd election, TTL 2 s) while an order
//! service commits outbox rows at a steady rate; the leader is killed with `kill -9`
//! `--kills` times and frozen with `SIGSTOP` `--freezes` times (resumed after 2 × TTL, when it
//! must say standby). For each failover: the time from the kill (or stop) to another node
//! leading, and to that node's first confirmed message (delivery resumed), against the target
//! TTL + 1 s. At the end every committed row must be in the queue (duplicates counted).
//!
//! The drain rate under leadership against the same relay without it is measured by
//! `cargo bench --bench outbox -- --only cdc-rabbitmq-B,cdc-rabbitmq-leader-B`.
//!
//! `cargo bench --bench ha [-- --kills 20 --freezes 5 --rate 200]`, with the servers of
//! `scripts/services.sh` running (`DATABASE_URL`, `AMQP_URL`, `ETCD_ENDPOINTS`).

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

/// One node of the relay: its process and API.
struct Node {
    name: String,
    child: Child,
    api: SocketAddr,
}

/// What every node runs, but for its name and API address.
struct Relay {
    scratch: Scratch,
    db_url: String,
    amqp_url: String,
    etcd: String,
    namespace: String,
    /// The slot and publication (slot names are the server's, not the database's).
    slot: String,
}

impl Relay {
    fn start(&self, name: &str) -> Node {
        let api = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let config = self.scratch.write(
            &format!("{name}.toml"),
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
leader = "bench-ha"
[sources.outbox]
type = "postgres_cdc"
url = "{db}"
slot = "{slot}"
publication = "{slot}"
tables = ["public.outbox"]
[transforms.events]
type = "outbox"
inputs = ["outbox"]
[sinks.broker]
type = "rabbitmq"
inputs = ["events"]
url = "{amqp}"
exchange = ""
routing_key = "orders"
[[sinks.broker.declare.queues]]
name = "orders"
"#,
                etcd = self.etcd,
                namespace = self.namespace,
                slot = self.slot,
                data = self.scratch.join(name).display(),
                db = self.db_url,
                amqp = self.amqp_url,
            ),
        );
        let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("run")
            .arg(&config)
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
}

impl Drop for Node {
    /// A node outlives no run, even one that failed.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn leads(node: &Node) -> bool {
    http_get(node.api, "/ready").is_ok_and(|(_, body)| body.contains("leader of election"))
}

fn confirmed(node: &Node) -> u64 {
    metrics(node.api)
        .ok()
        .and_then(|all| metric(&all, "sluice_rabbitmq_confirmed_messages_total", &[]))
        .unwrap_or(0.0) as u64
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

/// Commits one outbox row per transaction at `rate`, on an absolute schedule, until `stop`.
fn order_service(url: String, rate: f64, stop: Arc<AtomicBool>, committed: Arc<AtomicU64>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        let insert = client
            .prepare("INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('order', $1, 'OrderCreated', '{}')")
            .await
            .unwrap();
        let every = Duration::from_secs_f64(1.0 / rate);
        let mut next = tokio::time::Instant::now();
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            client
                .execute(&insert, &[&format!("agg-{}", n % 50)])
                .await
                .unwrap();
            n += 1;
            committed.store(n, Ordering::Relaxed);
            next += every;
            tokio::time::sleep_until(next).await;
        }
    });
}

/// The UTC time of day, as the database prints `created_at`.
fn wall_clock() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

/// p50 and max of `times`, in seconds.
fn p50_max(times: &mut [Duration]) -> (f64, f64) {
    times.sort();
    (
        times[times.len() / 2].as_secs_f64(),
        times.last().unwrap().as_secs_f64(),
    )
}

fn main() {
    let args = Args::from_env();
    if !args.is_bench_run() {
        return;
    }
    let kills: usize = args.number("kills", 20);
    let freezes: usize = args.number("freezes", 5);
    let rate: f64 = args.number("rate", 200.0);

    let db = TestDb::create("bench_ha");
    db.execute(include_str!("../examples/sql/outbox.sql"));
    let vhost = Vhost::create("bench-ha").unwrap();
    let relay = Relay {
        scratch: Scratch::new("bench-ha"),
        db_url: format!("{}?sslmode=disable", db.url),
        amqp_url: vhost.url().to_owned(),
        etcd: std::env::var("ETCD_ENDPOINTS").unwrap_or_else(|_| "127.0.0.1:2379".into()),
        namespace: format!("bench-ha-{}-{}", std::process::id(), free_port()),
        slot: format!("bench_ha_{}", std::process::id()),
    };
    let mut started = 0;
    let mut start = |relay: &Relay| {
        started += 1;
        relay.start(&format!("node-{started}"))
    };
    let mut nodes: Vec<Node> = (0..3).map(|_| start(&relay)).collect();
    // Rows committed before the slot exists are not in its stream: the order service starts
    // once a leader streams (ready), as the order service of a deployment would.
    until("a first leader streaming", Instant::now(), || {
        nodes.iter().any(|n| {
            http_get(n.api, "/ready")
                .is_ok_and(|(status, body)| status == 200 && body.contains("leader of election"))
        })
    });
    let stop = Arc::new(AtomicBool::new(false));
    let committed = Arc::new(AtomicU64::new(0));
    let service = {
        let (url, stop, committed) = (db.url.clone(), Arc::clone(&stop), Arc::clone(&committed));
        std::thread::spawn(move || order_service(url, rate, stop, committed))
    };
    until("the leader delivering", Instant::now(), || {
        nodes.iter().any(|n| leads(n) && confirmed(n) > 0)
    });

    // (kind, to another node leading, to its first confirmed message)
    let mut rounds: Vec<(&str, Duration, Duration)> = Vec::new();
    let plan = std::iter::repeat_n("kill", kills).chain(std::iter::repeat_n("freeze", freezes));
    for (round, kind) in plan.enumerate() {
        let at = nodes.iter().position(leads).expect("a leader");
        let before: Vec<u64> = nodes.iter().map(confirmed).collect();
        let signal = if kind == "kill" { "KILL" } else { "STOP" };
        let t0 = Instant::now();
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &nodes[at].child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let others = |nodes: &[Node]| (0..nodes.len()).filter(move |&i| i != at);
        let mut next = at;
        let elected = until("another node leading", t0, || {
            next = others(&nodes).find(|&i| leads(&nodes[i])).unwrap_or(at);
            next != at
        });
        let delivering = until("delivery resuming", t0, || {
            confirmed(&nodes[next]) > before[next]
        });
        eprintln!(
            "round {round} (at {}): {kind} {} → {} leads after {:.2} s, delivers after {:.2} s",
            wall_clock(),
            nodes[at].name,
            nodes[next].name,
            elected.as_secs_f64(),
            delivering.as_secs_f64()
        );
        rounds.push((kind, elected, delivering));
        if kind == "kill" {
            drop(nodes.remove(at));
            nodes.push(start(&relay));
        } else {
            // Resumed after 2 × TTL from the stop, the frozen node must find its term over.
            std::thread::sleep((t0 + 2 * TTL).saturating_duration_since(Instant::now()));
            let _ = Command::new("kill")
                .args(["-CONT", &nodes[at].child.id().to_string()])
                .status();
            until("the resumed node to say standby", Instant::now(), || {
                http_get(nodes[at].api, "/ready")
                    .is_ok_and(|(_, body)| body.contains("standby for election"))
            });
        }
    }
    stop.store(true, Ordering::Relaxed);
    service.join().unwrap();
    let total = committed.load(Ordering::Relaxed);

    // Every committed row in the queue, by message id.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut reader = Reader::new(vhost.url());
    let mut ids = BTreeSet::new();
    let mut messages = 0usize;
    let t0 = Instant::now();
    while (ids.len() as u64) < total {
        let got = runtime.block_on(reader.take_ready("orders")).unwrap();
        messages += got.len();
        ids.extend(got.into_iter().filter_map(|m| m.message_id));
        if t0.elapsed() > PATIENCE {
            let rows = db.query("SELECT id::text, to_char(created_at, 'HH24:MI:SS.MS') FROM outbox ORDER BY created_at");
            let missing: Vec<String> = rows
                .iter()
                .filter(|row| !ids.contains(row[0].as_deref().unwrap_or_default()))
                .map(|row| {
                    format!(
                        "{} committed {}",
                        row[0].as_deref().unwrap_or_default(),
                        row[1].as_deref().unwrap_or_default()
                    )
                })
                .collect();
            panic!(
                "{} of {total} rows reached the queue; missing: {missing:#?}",
                ids.len()
            );
        }
    }
    for node in &mut nodes {
        let _ = Command::new("kill")
            .args(["-TERM", &node.child.id().to_string()])
            .status();
        let _ = node.child.wait();
    }
    drop(nodes);

    println!(
        "\nHA relay failover: 3 nodes, etcd TTL {} s, {rate} commits/s; target: max ≤ TTL + 1 s = {} s",
        TTL.as_secs(),
        TARGET.as_secs()
    );
    println!(
        "{:<22} {:>7} {:>14} {:>14} {:>15} {:>15}  target",
        "failure", "rounds", "leads p50 s", "leads max s", "delivers p50 s", "delivers max s"
    );
    for kind in ["kill", "freeze"] {
        let mut elected: Vec<Duration> =
            rounds.iter().filter(|r| r.0 == kind).map(|r| r.1).collect();
        let mut delivering: Vec<Duration> =
            rounds.iter().filter(|r| r.0 == kind).map(|r| r.2).collect();
        if elected.is_empty() {
            continue;
        }
        let (e50, emax) = p50_max(&mut elected);
        let (d50, dmax) = p50_max(&mut delivering);
        let met = if dmax <= TARGET.as_secs_f64() {
            "met"
        } else {
            "NOT met"
        };
        let label = if kind == "kill" {
            "leader kill -9"
        } else {
            "leader SIGSTOP 2×TTL"
        };
        println!(
            "{label:<22} {:>7} {e50:>14.2} {emax:>14.2} {d50:>15.2} {dmax:>15.2}  {met}",
            elected.len()
        );
    }
    println!(
        "rows committed {total}, all in the queue; messages {messages} ({} repeated deliveries, dropped by consumers that dedupe by id)",
        messages - ids.len()
    );
}
