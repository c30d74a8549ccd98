//! The outbox relay end to end: PostgreSQL → `sluice run` (the release binary, a child
//! process) → RabbitMQ, side by side in the same run with what the servers can do without it.
//!
//! Run: `cargo bench --bench outbox` with PostgreSQL and RabbitMQ up (`scripts/services.sh up`;
//! `DATABASE_URL` and `AMQP_URL` name them) and `pg_recvlogical` and `rabbitmqctl` on the PATH.
//! Options (after `--`): `--events N` (backlog size, default 200,000), `--runs N` (rounds,
//! default 3), `--json PATH` (default `target/bench-outbox.json`), `--latency-secs S` (each
//! latency run, default 15), `--only NAME,...` (scenarios whose name starts with one of these),
//! `--ceiling N` (broker events/s to take half of when no `lapin` scenario runs). A quick look:
//! `cargo bench --bench outbox -- --events 50000 --runs 1`.
//!
//! The program owns everything it uses and drops it at the end: a RabbitMQ virtual host, and
//! databases `sluice_bench_*` (with their publications and replication slots). It prepares two
//! backlogs of N outbox rows ('order' aggregates over 1,000 ids, `OrderCreated`, a JSON payload
//! of about 200 bytes): `single`, committed one row per transaction, and `batched`, 1,000 rows
//! per transaction. Each backlog has a template slot created before it was written; every run
//! that reads it drains a copy of that slot (`pg_copy_logical_replication_slot`), so every
//! round reads the same WAL without writing it again.
//!
//! Scenarios, interleaved within each round and reported as medians over the rounds:
//! - `lapin-wW-Cch` (baseline, "broker ceiling"): a minimal lapin publisher (child process)
//!   sending N persistent messages, `message_id` only, bodies of the outbox payload's size, on
//!   C channels with W unconfirmed, to the exchange and queue sluice uses; the best is the
//!   ceiling;
//! - `lapin-shaped`: the same publisher sending messages shaped like the ones sluice sends by
//!   default (a UUID `message_id`, `type`, `correlation_id`, `content_type`, `timestamp`,
//!   `mandatory`): what the broker itself can take of such messages, shown against the ceiling;
//! - `recvlogical-B` (baseline, "decode ceiling"): `pg_recvlogical` reading backlog B through
//!   pgoutput to `/dev/null` up to the backlog's end;
//! - `cdc-rabbitmq-B`: sluice drains backlog B, `postgres_cdc` → `outbox` → `rabbitmq` (sink
//!   defaults: `message_id`, `type`, `correlation_id`; persistent and confirmed), against the
//!   broker ceiling;
//! - `cdc-rabbitmq-lean-B`: the same with the sink's `properties = []` (messages carry
//!   `message_id`, `type` and `delivery_mode` only); the default's row shows its ratio to this
//!   one (target ≥ 0.90);
//! - `cdc-rabbitmq-rich-B`: the same with every optional property (`content_type`,
//!   `correlation_id`, `timestamp`: the default before ADR 0016), against the lean row;
//! - `cdc-rabbitmq-tls-B`: `cdc-rabbitmq-B` with TLS on both sides (`DATABASE_TLS_URL`'s
//!   role with `sslmode=verify-full` for the SQL and replication connections, `amqps://` with
//!   full verification to the broker), against `cdc-rabbitmq-B` of the same round: what TLS
//!   costs. Every plain scenario connects with `sslmode=disable`;
//! - `cdc-rabbitmq-leader-B`: `cdc-rabbitmq-B` under leadership (`[pipeline] leader`, an
//!   etcd election with a 2 s TTL, `ETCD_ENDPOINTS`), against `cdc-rabbitmq-B` of the same
//!   round: what the leadership gate costs (target ≥ 0.97×);
//! - `cdc-blackhole-B`: the same into `blackhole`: decoding alone, against `recvlogical-B`;
//! - `poll-rabbitmq`: sluice drains N unpublished rows of a `postgres_poll` table (reloaded
//!   before each run) into RabbitMQ, against the broker ceiling;
//! - `latency-S-R` (S: `cdc`, `poll` or `poll-notify`; R: `2000` events/s, or `half` the broker
//!   ceiling of the first round): this program commits single-row outbox transactions at rate R on an
//!   absolute schedule for `--latency-secs`, while a consumer on the queue timestamps each
//!   message; commit→receive is the time from the COMMIT returning to the message arriving
//!   (same process, same clock, matched by `message_id` = the row's id), after a warm-up of
//!   two seconds. The `poll` source polls every 20 ms, with no trigger on the table;
//!   `latency-poll-notify-2000` listens on the table's NOTIFY trigger instead (PostgreSQL
//!   serializes the commits of notifying transactions, so the order service cannot reach the
//!   rate there: the run shows the cap). `latency-cdc-tls-2000` is `latency-cdc-2000` with TLS on
//!   both sides, as `cdc-rabbitmq-tls-B`.
//!
//! A drain is over when sluice's own counter (`sluice_rabbitmq_confirmed_messages_total`, or
//! the blackhole's received events) reaches N, scraped from its `/metrics` every 100 ms; then
//! its CPU time and peak RSS are read from /proc, it is stopped with SIGTERM (it must exit 0),
//! and the queue must hold exactly N messages. Ratios compare each median with its baseline's
//! median from the same run; the targets of the issue stand beside them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::BasicConsumeOptions;
use lapin::types::FieldTable;
use lapin::{BasicProperties, ExchangeKind};
use serde::Serialize;
use sluice_tests::rabbitmq::Vhost;
use sluice_tests::{
    Binary, Running, Scratch, TestDb, database_tls_url, free_port, metric, metrics, wait_for,
};
use support::broker::{self, Message, Route};
use support::{Args, Row, Sample};

/// The outbox table of the CDC backlogs and the live CDC runs, as the examples define it.
const OUTBOX_SQL: &str = include_str!("../examples/sql/outbox.sql");
/// The polled outbox table, with its indexes and NOTIFY trigger, as the examples define it.
const OUTBOX_POLL_SQL: &str = include_str!("../examples/sql/outbox-poll.sql");
/// The channel that trigger notifies.
const NOTIFY_CHANNEL: &str = "sluice_outbox";

/// What every database gets besides its table: an order's payload (about 200 bytes of JSON),
/// the insert of order `i` (with the given id, or a random one), and the procedure that
/// loads a backlog committing every `per_transaction` rows.
const ORDER_SQL: &str = r#"
CREATE FUNCTION bench_payload(i bigint) RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_build_object(
        'orderId', 'order-' || (i % 1000),
        'customerId', 'customer-' || (i % 5000),
        'lines', jsonb_build_array(jsonb_build_object(
            'sku', 'SKU-' || lpad((i % 300)::text, 5, '0'),
            'quantity', 1 + i % 5,
            'unitPrice', 19.99)),
        'total', round((1 + i % 5) * 19.99, 2),
        'currency', 'EUR',
        'shipTo', jsonb_build_object('city', 'Lyon', 'postcode', '69002', 'country', 'FR'),
        'placedAt', '2026-11-26T10:00:00Z')
$$;
CREATE FUNCTION bench_order(id uuid, i bigint) RETURNS void LANGUAGE sql AS $$
    INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload)
    VALUES (coalesce(id, gen_random_uuid()), 'order', 'order-' || (i % 1000), 'OrderCreated',
            bench_payload(i))
$$;
CREATE PROCEDURE bench_load(first bigint, last bigint, per_transaction bigint)
LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN first..last LOOP
        PERFORM bench_order(NULL, i);
        IF i % per_transaction = 0 THEN
            COMMIT;
        END IF;
    END LOOP;
    COMMIT;
END
$$;
"#;

/// The publication of the backlogs.
const PUBLICATION: &str = "bench";
/// Connections loading a single-row backlog in parallel.
const LOADERS: u64 = 2;
/// Connections of the order service in latency runs (commits wait for the WAL flush, so a
/// steady rate needs several in flight).
const ORDER_CONNECTIONS: usize = 16;
/// The steady rate of the latency targets.
const LIVE_RATE: f64 = 2000.0;
/// Events committed in the first seconds of a latency run are not counted.
const WARMUP: Duration = Duration::from_secs(2);
/// How long a drain, or the last messages of a latency run, may take before the run fails.
const PATIENCE: Duration = Duration::from_secs(900);
/// How often sluice's counters are scraped (a scrape costs sluice CPU: rendering summaries).
const POLL_EVERY: Duration = Duration::from_millis(100);
/// The polling interval of the `poll` latency runs: a poll costs PostgreSQL one index probe
/// of the unpublished rows, so 50 a second are cheap, and the wake-up is bounded by it.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// The broker baselines: (window, channels).
const LAPIN: [(usize, usize); 4] = [(1024, 1), (4096, 1), (1024, 2), (4096, 2)];
/// Window and channels of `lapin-shaped`.
const SHAPED: (usize, usize) = (4096, 1);

/// The issue's targets.
const CDC_DRAIN_RATIO: f64 = 0.90;
const CDC_DECODE_RATIO: f64 = 0.90;
const POLL_DRAIN_RATIO: f64 = 0.60;
/// The sink's default message shape drains at least this share of the lean one's rate.
const DEFAULT_VS_LEAN_RATIO: f64 = 0.90;
/// TLS on both sides costs at most 10% of the plain drain rate.
const TLS_RATIO: f64 = 0.90;
/// Under leadership the relay drains at least 97% as fast as without it.
const LEADER_RATIO: f64 = 0.97;
const CPU_S_PER_100K: f64 = 0.7;
const PEAK_RSS_MIB: f64 = 64.0;

/// How a backlog was committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// One row per transaction.
    Single,
    /// 1,000 rows per transaction.
    Batched,
}

impl Shape {
    fn name(self) -> &'static str {
        match self {
            Shape::Single => "single",
            Shape::Batched => "batched",
        }
    }

    fn rows_per_transaction(self) -> u64 {
        match self {
            Shape::Single => 1,
            Shape::Batched => 1000,
        }
    }
}

/// Where a latency run's events come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Live {
    Cdc,
    /// `postgres_poll` woken by its interval ([`POLL_INTERVAL`]); the table has no trigger.
    Poll,
    /// `postgres_poll` woken by the table's NOTIFY trigger: PostgreSQL serializes the commits
    /// of notifying transactions, which caps the order service's commit rate.
    PollNotify,
}

/// A latency run's commit rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rate {
    /// [`LIVE_RATE`].
    Fixed,
    /// Half the broker ceiling.
    HalfCeiling,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    Lapin {
        window: usize,
        channels: usize,
    },
    /// The lapin publisher sending messages shaped like sluice's (not a ceiling).
    LapinShaped,
    Recvlogical(Shape),
    CdcRabbitmq(Shape),
    /// `cdc-rabbitmq` with TLS to PostgreSQL and RabbitMQ.
    CdcRabbitmqTls(Shape),
    /// `cdc-rabbitmq` with the sink's `properties = []`.
    CdcRabbitmqLean(Shape),
    /// `cdc-rabbitmq` with every optional property (the default before ADR 0016).
    CdcRabbitmqRich(Shape),
    /// `CdcRabbitmq` under leadership (an etcd election).
    CdcRabbitmqLeader(Shape),
    CdcBlackhole(Shape),
    PollRabbitmq,
    Latency(Live, Rate),
    /// `latency-cdc-2000` with TLS to PostgreSQL and RabbitMQ.
    LatencyCdcTls,
}

impl Scenario {
    /// Every scenario, in the order a round runs them (the broker baselines first: a latency
    /// run at half the ceiling needs it).
    fn all() -> Vec<Scenario> {
        let mut all: Vec<Scenario> = LAPIN
            .iter()
            .map(|&(window, channels)| Scenario::Lapin { window, channels })
            .collect();
        all.push(Scenario::LapinShaped);
        for shape in [Shape::Single, Shape::Batched] {
            all.extend([
                Scenario::Recvlogical(shape),
                Scenario::CdcRabbitmq(shape),
                Scenario::CdcRabbitmqTls(shape),
                Scenario::CdcRabbitmqLean(shape),
                Scenario::CdcRabbitmqRich(shape),
                Scenario::CdcRabbitmqLeader(shape),
                Scenario::CdcBlackhole(shape),
            ]);
        }
        all.push(Scenario::PollRabbitmq);
        for live in [Live::Cdc, Live::Poll] {
            for rate in [Rate::Fixed, Rate::HalfCeiling] {
                all.push(Scenario::Latency(live, rate));
            }
            if live == Live::Cdc {
                all.push(Scenario::LatencyCdcTls);
            }
        }
        all.push(Scenario::Latency(Live::PollNotify, Rate::Fixed));
        all
    }

    fn name(self) -> String {
        match self {
            Scenario::Lapin { window, channels } => format!("lapin-w{window}-{channels}ch"),
            Scenario::LapinShaped => "lapin-shaped".into(),
            Scenario::Recvlogical(shape) => format!("recvlogical-{}", shape.name()),
            Scenario::CdcRabbitmq(shape) => format!("cdc-rabbitmq-{}", shape.name()),
            Scenario::CdcRabbitmqTls(shape) => format!("cdc-rabbitmq-tls-{}", shape.name()),
            Scenario::LatencyCdcTls => "latency-cdc-tls-2000".into(),
            Scenario::CdcRabbitmqLean(shape) => format!("cdc-rabbitmq-lean-{}", shape.name()),
            Scenario::CdcRabbitmqRich(shape) => format!("cdc-rabbitmq-rich-{}", shape.name()),
            Scenario::CdcRabbitmqLeader(shape) => format!("cdc-rabbitmq-leader-{}", shape.name()),
            Scenario::CdcBlackhole(shape) => format!("cdc-blackhole-{}", shape.name()),
            Scenario::PollRabbitmq => "poll-rabbitmq".into(),
            Scenario::Latency(live, rate) => format!(
                "latency-{}-{}",
                match live {
                    Live::Cdc => "cdc",
                    Live::Poll => "poll",
                    Live::PollNotify => "poll-notify",
                },
                match rate {
                    Rate::Fixed => "2000",
                    Rate::HalfCeiling => "half",
                }
            ),
        }
    }

    fn backlog(self) -> Option<Shape> {
        match self {
            Scenario::Recvlogical(s)
            | Scenario::CdcRabbitmq(s)
            | Scenario::CdcRabbitmqTls(s)
            | Scenario::CdcRabbitmqLean(s)
            | Scenario::CdcRabbitmqRich(s)
            | Scenario::CdcRabbitmqLeader(s)
            | Scenario::CdcBlackhole(s) => Some(s),
            _ => None,
        }
    }

    fn polls(self) -> bool {
        matches!(
            self,
            Scenario::PollRabbitmq | Scenario::Latency(Live::Poll | Live::PollNotify, _)
        )
    }
}

/// Where every message goes: the exchange sluice's template names for 'order' aggregates.
fn route() -> Route {
    Route {
        exchange: "outbox.order".into(),
        kind: ExchangeKind::Topic,
        queue: "orders".into(),
        binding_key: "#".into(),
        routing_key: "OrderCreated".into(),
    }
}

/// Commit→receive figures of a latency run.
#[derive(Debug, Clone, Copy, Default, Serialize)]
struct Latency {
    /// Commits per second the order service achieved.
    commits_per_sec: f64,
    /// Events counted (after the warm-up).
    events: u64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
}

/// One run of one scenario.
#[derive(Debug, Clone, Serialize)]
struct Record {
    round: usize,
    scenario: String,
    /// Events/s (for latency runs: the commit rate), and the measured process's CPU and peak
    /// RSS (sluice's, or the lapin publisher's; zero for `pg_recvlogical`, not measured).
    sample: Sample,
    latency: Option<Latency>,
}

fn main() {
    let args = Args::from_env();
    let events: u64 = args.number("--events", 200_000);
    if let (Some(scenario), Some(url)) = (args.option("--scenario"), args.option("--url")) {
        lapin_child(&scenario, &url, events, args.number("--body-bytes", 200));
        return;
    }
    if !args.is_bench_run() {
        return;
    }
    let runs: usize = args.number("--runs", 3);
    let latency_secs: u64 = args.number("--latency-secs", 15);
    let json_path = args
        .option("--json")
        .unwrap_or_else(|| "target/bench-outbox.json".into());
    let only: Vec<String> = args
        .option("--only")
        .map(|o| o.split(',').map(str::to_owned).collect())
        .unwrap_or_default();
    let scenarios: Vec<Scenario> = Scenario::all()
        .into_iter()
        .filter(|s| only.is_empty() || only.iter().any(|o| s.name().starts_with(o.as_str())))
        .collect();

    let began = Instant::now();
    let bench = Bench::prepare(&scenarios, events, latency_secs);
    eprintln!("prepared in {:.0} s", began.elapsed().as_secs_f64());
    let given_ceiling: Option<f64> = args.option("--ceiling").map(|c| c.parse().unwrap());
    let mut ceiling = given_ceiling;
    let mut records = Vec::new();
    for round in 0..runs {
        for &scenario in &scenarios {
            let rate = match scenario {
                Scenario::Latency(_, Rate::Fixed) => Some(LIVE_RATE),
                Scenario::Latency(_, Rate::HalfCeiling) => match ceiling {
                    Some(c) => Some(c / 2.0),
                    None => {
                        eprintln!(
                            "{}: skipped (no broker ceiling: run a lapin scenario or pass --ceiling)",
                            scenario.name()
                        );
                        continue;
                    }
                },
                _ => None,
            };
            let (sample, latency) = bench.run(scenario, rate);
            eprintln!(
                "round {round} {}: {:.0} events/s, {:.2} CPU-s per 100k, {:.1} MiB{}",
                scenario.name(),
                sample.events_per_sec,
                sample.cpu_s_per_100k,
                sample.peak_rss_kib as f64 / 1024.0,
                latency.map_or_else(String::new, |l| format!(
                    ", p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
                    l.p50_ms, l.p99_ms, l.p999_ms, l.max_ms
                ))
            );
            // Half the ceiling is the first round's, so that every round runs the same load.
            if round == 0 && given_ceiling.is_none() && matches!(scenario, Scenario::Lapin { .. }) {
                ceiling =
                    Some(ceiling.map_or(sample.events_per_sec, |c| c.max(sample.events_per_sec)));
            }
            records.push(Record {
                round,
                scenario: scenario.name(),
                sample,
                latency,
            });
        }
    }
    drop(bench);
    report(&scenarios, &records, events, runs, &json_path);
    eprintln!("done in {:.0} s", began.elapsed().as_secs_f64());
}

/// The servers' side of the benchmark: the binary, the virtual host, the databases.
struct Bench {
    sluice: Binary,
    runtime: tokio::runtime::Runtime,
    vhost: Vhost,
    events: u64,
    latency: Duration,
    /// Bytes of an outbox event's payload (the lapin baseline's body size).
    body_bytes: usize,
    backlogs: Vec<Backlog>,
    /// The polled table's database.
    poll: Option<TestDb>,
    /// The database of live CDC runs.
    live: Option<TestDb>,
    /// Order ids already used: each latency run commits new ones.
    next_order: AtomicU64,
}

/// A backlog: a database whose outbox table holds N rows written after its template slot.
struct Backlog {
    shape: Shape,
    db: TestDb,
    /// `pg_current_wal_lsn()` once it was written.
    end_lsn: String,
}

/// Slot names are the cluster's, so each is named after the database it reads.
fn slot_name(db: &TestDb, role: &str) -> String {
    format!("{}_{role}", db.name)
}

impl Bench {
    fn prepare(scenarios: &[Scenario], events: u64, latency_secs: u64) -> Bench {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let vhost = Vhost::create("bench-outbox").unwrap();
        let mut backlogs = Vec::new();
        for shape in [Shape::Single, Shape::Batched] {
            if scenarios.iter().any(|s| s.backlog() == Some(shape)) {
                let started = Instant::now();
                backlogs.push(Backlog::write(&runtime, shape, events));
                eprintln!(
                    "backlog {}: {events} rows in {:.1} s",
                    shape.name(),
                    started.elapsed().as_secs_f64()
                );
            }
        }
        let poll = scenarios.iter().any(|s| s.polls()).then(|| {
            let db = TestDb::create("bench_poll");
            db.execute(OUTBOX_POLL_SQL);
            db.execute(ORDER_SQL);
            db
        });
        let live = scenarios
            .iter()
            .any(|s| matches!(s, Scenario::Latency(Live::Cdc, _)))
            .then(|| {
                let db = TestDb::create("bench_live");
                db.execute(OUTBOX_SQL);
                db.execute(ORDER_SQL);
                db
            });
        let sample_db = backlogs
            .first()
            .map(|b| &b.db)
            .or(poll.as_ref())
            .or(live.as_ref());
        let body_bytes = sample_db.map_or(200, |db| {
            db.value("SELECT octet_length(bench_payload(1)::text)")
                .unwrap()
                .parse()
                .unwrap()
        });
        Bench {
            sluice: Binary(PathBuf::from(env!("CARGO_BIN_EXE_sluice"))),
            runtime,
            vhost,
            events,
            latency: Duration::from_secs(latency_secs),
            body_bytes,
            backlogs,
            poll,
            live,
            next_order: AtomicU64::new(1),
        }
    }

    fn backlog(&self, shape: Shape) -> &Backlog {
        self.backlogs.iter().find(|b| b.shape == shape).unwrap()
    }

    /// Runs one scenario on a fresh queue, which it leaves deleted.
    fn run(&self, scenario: Scenario, rate: Option<f64>) -> (Sample, Option<Latency>) {
        let route = route();
        let url = self.vhost.url();
        self.runtime.block_on(route.declare(url));
        let mut latency = None;
        let sample = match scenario {
            Scenario::Lapin { .. } | Scenario::LapinShaped => {
                let extra = [
                    "--url".into(),
                    url.to_owned(),
                    "--events".into(),
                    self.events.to_string(),
                    "--body-bytes".into(),
                    self.body_bytes.to_string(),
                ];
                support::child(&scenario.name(), &extra)
            }
            Scenario::Recvlogical(shape) => self.recvlogical(self.backlog(shape)),
            Scenario::CdcRabbitmq(shape)
            | Scenario::CdcRabbitmqTls(shape)
            | Scenario::CdcRabbitmqLean(shape)
            | Scenario::CdcRabbitmqRich(shape)
            | Scenario::CdcRabbitmqLeader(shape)
            | Scenario::CdcBlackhole(shape) => {
                let backlog = self.backlog(shape);
                let slot = backlog.copy_slot();
                let source = cdc_source(&plain(&backlog.db.url), &slot, PUBLICATION);
                let sample = match scenario {
                    Scenario::CdcRabbitmq(_) => {
                        self.drain(&source, &rabbitmq_sink(url, ""), CONFIRMED)
                    }
                    Scenario::CdcRabbitmqTls(_) => {
                        let source =
                            cdc_source(&database_tls_url(&backlog.db.name).0, &slot, PUBLICATION);
                        let sink = rabbitmq_sink(&amqps_url(self.vhost.name()), "");
                        self.drain(&source, &sink, CONFIRMED)
                    }
                    Scenario::CdcRabbitmqLean(_) => {
                        self.drain(&source, &rabbitmq_sink(url, LEAN), CONFIRMED)
                    }
                    Scenario::CdcRabbitmqRich(_) => {
                        self.drain(&source, &rabbitmq_sink(url, RICH), CONFIRMED)
                    }
                    Scenario::CdcRabbitmqLeader(_) => self.drain(
                        &under_leadership(&source),
                        &rabbitmq_sink(url, ""),
                        CONFIRMED,
                    ),
                    _ => self.drain(&source, BLACKHOLE_SINK, BLACKHOLE_RECEIVED),
                };
                drop_slot(&backlog.db, &slot);
                sample
            }
            Scenario::PollRabbitmq => {
                let db = self.poll.as_ref().unwrap();
                db.execute("TRUNCATE outbox");
                self.runtime
                    .block_on(load(&db.url, 1, self.events, self.events, 1));
                db.execute("VACUUM ANALYZE outbox");
                self.drain(
                    &poll_source(&plain(&db.url), None),
                    &rabbitmq_sink(url, ""),
                    CONFIRMED,
                )
            }
            Scenario::Latency(live, _) => {
                let rate = rate.expect("a latency run has a rate");
                let (sample, figures) = self.latency_run(live, rate, &route, false);
                latency = Some(figures);
                sample
            }
            Scenario::LatencyCdcTls => {
                let (sample, figures) = self.latency_run(Live::Cdc, LIVE_RATE, &route, true);
                latency = Some(figures);
                sample
            }
        };
        let held = self.runtime.block_on(route.delete_queue(url));
        let expected = match scenario {
            Scenario::CdcBlackhole(_)
            | Scenario::Recvlogical(_)
            | Scenario::Latency(..)
            | Scenario::LatencyCdcTls => 0,
            _ => self.events,
        };
        assert_eq!(
            held,
            expected,
            "{}: the queue holds every event once",
            scenario.name()
        );
        (sample, latency)
    }

    /// The decode ceiling: `pg_recvlogical` reading the backlog to its end, to /dev/null.
    fn recvlogical(&self, backlog: &Backlog) -> Sample {
        let slot = backlog.copy_slot();
        let started = Instant::now();
        let status = Command::new("pg_recvlogical")
            .args(["-d", &backlog.db.url, "--slot", &slot, "--start"])
            .args(["-o", "proto_version=1"])
            .args(["-o", &format!("publication_names={PUBLICATION}")])
            .args(["--endpos", &backlog.end_lsn, "--no-loop", "-f", "/dev/null"])
            .status()
            .expect("pg_recvlogical on the PATH");
        let elapsed = started.elapsed().as_secs_f64();
        assert!(status.success(), "pg_recvlogical failed: {status}");
        drop_slot(&backlog.db, &slot);
        Sample {
            events_per_sec: self.events as f64 / elapsed,
            ..Sample::default()
        }
    }

    /// Starts sluice with `source` → outbox → `sink` and measures it until `counter` reaches
    /// the backlog; stops it.
    fn drain(&self, source: &str, sink: &str, counter: Counter) -> Sample {
        let started = Instant::now();
        let sluice = Sluice::start(&self.sluice, source, sink);
        let deadline = started + PATIENCE;
        loop {
            if sluice.count(counter) >= self.events {
                break;
            }
            sluice.check_alive();
            assert!(
                Instant::now() < deadline,
                "the drain did not finish; log:\n{}",
                sluice.running.log()
            );
            std::thread::sleep(POLL_EVERY);
        }
        let sample = Sample::measure(self.events, started, sluice.running.pid(), 0);
        sluice.stop();
        sample
    }

    /// Commits orders at `rate` for the run's duration while sluice relays them and a
    /// consumer receives them; returns sluice's cost and the commit→receive figures. With
    /// `tls`, sluice talks TLS to both servers (the order service and the consumer do not).
    fn latency_run(&self, live: Live, rate: f64, route: &Route, tls: bool) -> (Sample, Latency) {
        let (db, source) = match live {
            Live::Cdc => {
                let db = self.live.as_ref().unwrap();
                let slot = slot_name(db, "live");
                let url = if tls {
                    database_tls_url(&db.name).0
                } else {
                    plain(&db.url)
                };
                (db, cdc_source(&url, &slot, &slot))
            }
            Live::Poll => {
                let db = self.poll.as_ref().unwrap();
                db.execute("DROP TRIGGER IF EXISTS outbox_notify ON outbox");
                (db, poll_source(&plain(&db.url), None))
            }
            Live::PollNotify => {
                let db = self.poll.as_ref().unwrap();
                db.execute(OUTBOX_POLL_SQL);
                (db, poll_source(&plain(&db.url), Some(NOTIFY_CHANNEL)))
            }
        };
        let broker = if tls {
            amqps_url(self.vhost.name())
        } else {
            self.vhost.url().to_owned()
        };
        db.execute("TRUNCATE outbox");
        let orders = (rate * self.latency.as_secs_f64()) as u64;
        let first = self.next_order.fetch_add(orders, Ordering::Relaxed);
        let expected = Arc::new(AtomicU64::new(u64::MAX));
        let consumer = self.runtime.spawn(consume(
            self.vhost.url().to_owned(),
            route.queue.clone(),
            first..first + orders,
            Arc::clone(&expected),
        ));
        let mut sluice = Sluice::start(&self.sluice, &source, &rabbitmq_sink(&broker, ""));
        sluice.running.wait_ready(sluice.api).unwrap();
        let cpu_before = support::cpu_time_ns(sluice.running.pid());
        let (scheduled_at, commits) =
            self.runtime
                .block_on(order_service(db.url.clone(), rate, first, orders));
        expected.store(commits.len() as u64, Ordering::Relaxed);
        let received = self
            .runtime
            .block_on(async { tokio::time::timeout(PATIENCE, consumer).await })
            .expect("every committed order received")
            .unwrap();
        let pid = sluice.running.pid();
        let cpu = support::cpu_time_ns(pid).saturating_sub(cpu_before);
        let sample = Sample {
            events_per_sec: 0.0,
            cpu_s_per_100k: cpu as f64 / 1e9 * 100_000.0 / commits.len() as f64,
            peak_rss_kib: support::peak_rss_kib(pid),
        };
        sluice.stop();
        if live == Live::Cdc {
            // sluice created both, and would take a marked publication without its slot
            // for a lost slot.
            let slot = slot_name(db, "live");
            drop_slot(db, &slot);
            db.execute(&format!("DROP PUBLICATION {slot}"));
        }
        let figures = latency(scheduled_at, &commits, &received);
        (
            Sample {
                events_per_sec: figures.commits_per_sec,
                ..sample
            },
            figures,
        )
    }
}

impl Backlog {
    /// Creates the database, the table, the publication and the template slot, then commits
    /// `events` orders in transactions of the shape's size.
    fn write(runtime: &tokio::runtime::Runtime, shape: Shape, events: u64) -> Backlog {
        let db = TestDb::create(&format!("bench_{}", shape.name()));
        db.execute(OUTBOX_SQL);
        db.execute(ORDER_SQL);
        db.execute(&format!(
            "CREATE PUBLICATION {PUBLICATION} FOR TABLE public.outbox"
        ));
        db.execute(&format!(
            "SELECT pg_create_logical_replication_slot('{}', 'pgoutput')",
            slot_name(&db, "template")
        ));
        let loaders = if shape == Shape::Single { LOADERS } else { 1 };
        runtime.block_on(load(
            &db.url,
            1,
            events,
            shape.rows_per_transaction(),
            loaders,
        ));
        let end_lsn = db.value("SELECT pg_current_wal_lsn()::text").unwrap();
        Backlog { shape, db, end_lsn }
    }

    /// Copies the template slot as the slot a run drains, and returns its name. It is the
    /// same name every time: sluice marks the publication with the slot it first read, and
    /// takes a marked slot that is missing for a lost one.
    fn copy_slot(&self) -> String {
        let run = slot_name(&self.db, "run");
        self.db.execute(&format!(
            "SELECT pg_copy_logical_replication_slot('{}', '{run}')",
            slot_name(&self.db, "template")
        ));
        run
    }
}

/// Drops `slot` once its reader has let go of it.
fn drop_slot(db: &TestDb, slot: &str) {
    let active = format!("SELECT active FROM pg_replication_slots WHERE slot_name = '{slot}'");
    wait_for("the slot to be released", || {
        (db.value(&active).as_deref() != Some("t")).then_some(())
    })
    .unwrap();
    db.execute(&format!(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '{slot}'"
    ));
}

/// Commits orders `first..=last` with `bench_load` over `loaders` connections (each a
/// contiguous, transaction-aligned share), without waiting for each commit's WAL flush.
async fn load(url: &str, first: u64, last: u64, per_transaction: u64, loaders: u64) {
    let share = (last - first + 1)
        .div_ceil(loaders)
        .div_ceil(per_transaction)
        * per_transaction;
    let mut tasks = Vec::new();
    for l in 0..loaders {
        let from = first + l * share;
        let to = (from + share - 1).min(last);
        if from > to {
            continue;
        }
        let url = url.to_owned();
        tasks.push(tokio::spawn(async move {
            let client = connect(&url).await;
            client
                .batch_execute("SET synchronous_commit = off")
                .await
                .unwrap();
            client
                .batch_execute(&format!("CALL bench_load({from}, {to}, {per_transaction})"))
                .await
                .unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

/// The id of order `k`: a UUID whose last 48 bits are `k`, so a consumer can tell which
/// order a message is.
fn order_id(k: u64) -> String {
    format!("00000000-0000-4000-8000-{k:012x}")
}

fn order_of(message_id: &str) -> Option<u64> {
    u64::from_str_radix(message_id.get(24..)?, 16).ok()
}

/// The order service: commits orders `first..first + orders`, one per transaction, order
/// `first + i` at `i / rate` seconds after the start (late ones go at once, until the
/// `orders / rate` seconds are over: a database slower than the rate commits fewer), over
/// [`ORDER_CONNECTIONS`] connections. Returns the start and each order's commit instant.
async fn order_service(
    url: String,
    rate: f64,
    first: u64,
    orders: u64,
) -> (Instant, Vec<(u64, Instant)>) {
    let mut clients = Vec::new();
    for _ in 0..ORDER_CONNECTIONS {
        clients.push(connect(&url).await);
    }
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(orders as f64 / rate);
    let mut workers = Vec::new();
    for client in clients {
        let next = Arc::clone(&next);
        workers.push(tokio::spawn(async move {
            let mut commits = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= orders || Instant::now() >= end {
                    return commits;
                }
                let at = start + Duration::from_secs_f64(i as f64 / rate);
                tokio::time::sleep_until(at.into()).await;
                let k = first + i;
                client
                    .batch_execute(&format!("SELECT bench_order('{}', {k})", order_id(k)))
                    .await
                    .unwrap();
                commits.push((k, Instant::now()));
            }
        }));
    }
    let mut commits = Vec::with_capacity(orders as usize);
    for worker in workers {
        commits.extend(worker.await.unwrap());
    }
    (start, commits)
}

/// Consumes the queue (auto-ack) and timestamps each message of the orders in `range`, until
/// `expected` of them arrived.
async fn consume(
    url: String,
    queue: String,
    range: std::ops::Range<u64>,
    expected: Arc<AtomicU64>,
) -> Vec<(u64, Instant)> {
    let connection = broker::connect(&url).await;
    let channel = connection.create_channel().await.unwrap();
    let options = BasicConsumeOptions {
        no_ack: true,
        ..BasicConsumeOptions::default()
    };
    let mut deliveries = channel
        .basic_consume(
            queue.as_str().into(),
            "bench".into(),
            options,
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut received = Vec::with_capacity((range.end - range.start) as usize);
    while (received.len() as u64) < expected.load(Ordering::Relaxed) {
        let Ok(delivery) = tokio::time::timeout(POLL_EVERY, deliveries.next()).await else {
            continue;
        };
        let delivery = delivery.expect("the consumer is not cancelled").unwrap();
        let at = Instant::now();
        let k = delivery
            .properties
            .message_id()
            .as_ref()
            .and_then(|id| order_of(id.as_str()))
            .expect("a message_id that is an order id");
        if range.contains(&k) {
            received.push((k, at));
        }
    }
    connection.close(200, "done".into()).await.unwrap();
    received
}

/// Commit→receive percentiles of the orders committed after the warm-up.
fn latency(start: Instant, commits: &[(u64, Instant)], received: &[(u64, Instant)]) -> Latency {
    let last_commit = commits.iter().map(|(_, at)| *at).max().unwrap_or(start);
    let commits_per_sec = commits.len() as f64 / (last_commit - start).as_secs_f64();
    let committed: BTreeMap<u64, Instant> = commits.iter().copied().collect();
    let mut millis: Vec<f64> = received
        .iter()
        .map(|(k, at)| (committed[k], *at))
        .filter(|(commit, _)| *commit >= start + WARMUP)
        .map(|(commit, at)| at.saturating_duration_since(commit).as_secs_f64() * 1000.0)
        .collect();
    millis.sort_by(f64::total_cmp);
    let percentile = |p: f64| {
        let rank = ((p * millis.len() as f64).ceil() as usize).max(1);
        millis.get(rank - 1).copied().unwrap_or(f64::NAN)
    };
    Latency {
        commits_per_sec,
        events: millis.len() as u64,
        p50_ms: percentile(0.50),
        p99_ms: percentile(0.99),
        p999_ms: percentile(0.999),
        max_ms: millis.last().copied().unwrap_or(f64::NAN),
    }
}

/// A counter of sluice's that says how many events a drain delivered.
#[derive(Debug, Clone, Copy)]
struct Counter {
    name: &'static str,
    component: &'static str,
}

/// Messages the broker confirmed to the `broker` sink.
const CONFIRMED: Counter = Counter {
    name: "sluice_rabbitmq_confirmed_messages_total",
    component: "broker",
};
/// Events the `void` sink received (and acknowledged at once).
const BLACKHOLE_RECEIVED: Counter = Counter {
    name: "sluice_component_received_events_total",
    component: "void",
};

fn cdc_source(url: &str, slot: &str, publication: &str) -> String {
    format!(
        r#"[sources.outbox]
type = "postgres_cdc"
url = "{url}"
slot = "{slot}"
publication = "{publication}"
tables = ["public.outbox"]
"#
    )
}

/// `url` with `sslmode=disable`: the plain scenarios stay plain although the server offers TLS.
fn plain(url: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}sslmode=disable")
}

/// The bench's virtual host over TLS: `AMQPS_URL` with `vhost`.
fn amqps_url(vhost: &str) -> String {
    let url =
        std::env::var("AMQPS_URL").expect("AMQPS_URL is set (eval \"$(scripts/services.sh up)\")");
    let (base, query) = url.split_once('?').unwrap_or((&url, ""));
    let server = base.rsplit_once('/').map_or(base, |(server, _)| server);
    format!("{server}/{vhost}?{query}")
}

/// The `postgres_poll` source: listening on `notify`, or polling every [`POLL_INTERVAL`].
fn poll_source(url: &str, notify: Option<&str>) -> String {
    let wake = match notify {
        Some(channel) => format!("notify_channel = \"{channel}\""),
        None => format!("interval = \"{}ms\"", POLL_INTERVAL.as_millis()),
    };
    format!(
        r#"[sources.outbox]
type = "postgres_poll"
url = "{url}"
table = "public.outbox"
{wake}
"#
    )
}

/// The `rabbitmq` sink with its defaults (and `extra` settings), routing as the outbox demo
/// does.
fn rabbitmq_sink(url: &str, extra: &str) -> String {
    format!(
        r#"[sinks.broker]
type = "rabbitmq"
inputs = ["events"]
url = "{url}"
exchange = "outbox.{{aggregatetype}}"
routing_key = "{{type}}"
{extra}
"#
    )
}

/// The sink settings of `cdc-rabbitmq-lean-B`: messages carry their identity only.
const LEAN: &str = "properties = []";
/// The sink settings of `cdc-rabbitmq-rich-B`: every optional property.
const RICH: &str = r#"properties = ["content_type", "correlation_id", "timestamp"]"#;

const BLACKHOLE_SINK: &str = r#"[sinks.void]
type = "blackhole"
inputs = ["events"]
"#;

/// `source` under leadership: election `bench-relay` on the etcd of `ETCD_ENDPOINTS`, in a
/// namespace of this run's own. [`Sluice::start`] writes the source right after the
/// `[pipeline]` table's keys, so the `leader` key leads the text.
fn under_leadership(source: &str) -> String {
    let endpoints = std::env::var("ETCD_ENDPOINTS").unwrap_or_else(|_| "127.0.0.1:2379".into());
    format!(
        "leader = \"bench-relay\"\n\n[coord]\nbackend = \"etcd\"\nendpoints = \"{endpoints}\"\nnamespace = \"bench-outbox-{}-{}\"\nttl = \"2s\"\n\n{source}",
        std::process::id(),
        free_port()
    )
}

/// `sluice run` of source → outbox → sink, with its API on a free port and a fresh data
/// directory.
struct Sluice {
    running: Running,
    api: SocketAddr,
    _scratch: Scratch,
}

impl Sluice {
    fn start(binary: &Binary, source: &str, sink: &str) -> Sluice {
        let scratch = Scratch::new("bench-outbox");
        let api = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let config = format!(
            r#"[api]
address = "{api}"

[pipeline]
data_dir = "{data}"

{source}
[transforms.events]
type = "outbox"
inputs = ["outbox"]

{sink}"#,
            data = scratch.join("data").display()
        );
        let path = scratch.write("sluice.toml", &config);
        let running = binary.spawn(&path);
        Sluice {
            running,
            api,
            _scratch: scratch,
        }
    }

    /// The counter's value (0 while the API does not answer yet).
    fn count(&self, counter: Counter) -> u64 {
        metrics(self.api)
            .ok()
            .and_then(|all| metric(&all, counter.name, &[("component_id", counter.component)]))
            .unwrap_or(0.0) as u64
    }

    /// Fails with the log if sluice has exited (its /proc entry is a zombie's).
    fn check_alive(&self) {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.running.pid()))
            .unwrap_or_default();
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next());
        assert!(
            !matches!(state, None | Some("Z")),
            "sluice exited; log:\n{}",
            self.running.log()
        );
    }

    /// SIGTERM; it must drain and exit 0.
    fn stop(mut self) {
        self.running.signal("TERM");
        let status = self.running.wait().unwrap();
        assert!(
            status.success(),
            "sluice exited with {status}; log:\n{}",
            self.running.log()
        );
    }
}

/// The child process of a `lapin-wW-Cch` scenario: publishes and reports its sample.
fn lapin_child(scenario: &str, url: &str, events: u64, body_bytes: usize) {
    let shaped = scenario == Scenario::LapinShaped.name();
    let (window, channels) = if shaped {
        SHAPED
    } else {
        LAPIN
            .iter()
            .copied()
            .find(|&(window, channels)| Scenario::Lapin { window, channels }.name() == scenario)
            .unwrap_or_else(|| panic!("unknown scenario {scenario}"))
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let pid = std::process::id();
    let cpu_before = support::cpu_time_ns(pid);
    let started = Instant::now();
    let body = vec![b'x'; body_bytes];
    runtime.block_on(broker::publish(
        url,
        &route(),
        events,
        window,
        channels,
        move |range| {
            range
                .map(|i| {
                    let minimal = BasicProperties::default().with_delivery_mode(2);
                    let properties = if shaped {
                        minimal
                            .with_message_id(format!("{i:08x}-0000-4000-8000-{i:012x}").into())
                            .with_type("OrderCreated".into())
                            .with_correlation_id(format!("order-{}", i % 1000).into())
                            .with_content_type("application/json".into())
                            .with_timestamp(now)
                    } else {
                        minimal.with_message_id(i.to_string().into())
                    };
                    Message {
                        properties,
                        body: body.clone(),
                        mandatory: shaped,
                    }
                })
                .collect()
        },
    ));
    Sample::measure(events, started, pid, cpu_before).report();
}

/// Median of figures.
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// `name value ≤/≥ limit ok|MISS`.
fn check(name: &str, value: f64, at_least: bool, limit: f64) -> String {
    let met = if at_least {
        value >= limit
    } else {
        value <= limit
    };
    format!(
        "{name}{}{limit} {}",
        if at_least { ">=" } else { "<=" },
        if met { "ok" } else { "MISS" }
    )
}

/// Prints the tables of medians and writes every record and the medians as JSON.
fn report(scenarios: &[Scenario], records: &[Record], events: u64, runs: usize, json_path: &str) {
    let median_of = |name: &str| -> Option<Sample> {
        let samples: Vec<Sample> = records
            .iter()
            .filter(|r| r.scenario == name)
            .map(|r| r.sample.clone())
            .collect();
        (!samples.is_empty()).then(|| support::median(&samples))
    };
    let medians: BTreeMap<String, Sample> = scenarios
        .iter()
        .filter_map(|s| Some((s.name(), median_of(&s.name())?)))
        .collect();
    let ceiling = scenarios
        .iter()
        .filter(|s| matches!(s, Scenario::Lapin { .. }))
        .filter_map(|s| medians.get(&s.name()))
        .map(|m| m.events_per_sec)
        .reduce(f64::max);
    let shaped = medians
        .get(&Scenario::LapinShaped.name())
        .map(|m| m.events_per_sec);
    let decode = |shape: Shape| {
        medians
            .get(&Scenario::Recvlogical(shape).name())
            .map(|m| m.events_per_sec)
    };

    let mut rows = Vec::new();
    let mut json_medians = Vec::new();
    for &scenario in scenarios {
        let name = scenario.name();
        let Some(sample) = medians.get(&name) else {
            continue;
        };
        if matches!(scenario, Scenario::Latency(..) | Scenario::LatencyCdcTls) {
            continue;
        }
        let rss = sample.peak_rss_kib as f64 / 1024.0;
        let (baseline, target) = match scenario {
            Scenario::Lapin { .. } | Scenario::LapinShaped => (ceiling, String::new()),
            Scenario::Recvlogical(_) => (None, String::new()),
            Scenario::CdcRabbitmq(_)
            | Scenario::CdcRabbitmqLean(_)
            | Scenario::CdcRabbitmqRich(_)
            | Scenario::PollRabbitmq => {
                let ratio = if scenario == Scenario::PollRabbitmq {
                    POLL_DRAIN_RATIO
                } else {
                    CDC_DRAIN_RATIO
                };
                let mut target = ceiling.map_or_else(String::new, |c| {
                    check("ratio", sample.events_per_sec / c, true, ratio) + "; "
                });
                if let Scenario::CdcRabbitmq(shape) | Scenario::CdcRabbitmqRich(shape) = scenario
                    && let Some(lean) = medians.get(&Scenario::CdcRabbitmqLean(shape).name())
                {
                    let ratio = sample.events_per_sec / lean.events_per_sec;
                    target += &if scenario == Scenario::CdcRabbitmq(shape) {
                        let met = check("", ratio, true, DEFAULT_VS_LEAN_RATIO);
                        format!("vs lean {ratio:.2} ({met})")
                    } else {
                        format!("vs lean {ratio:.2}")
                    };
                    target += "; ";
                }
                if !matches!(scenario, Scenario::CdcRabbitmqLean(_))
                    && let Some(shaped) = shaped
                {
                    target += &format!("vs lapin-shaped {:.2}; ", sample.events_per_sec / shaped);
                }
                (
                    ceiling,
                    target
                        + &check("CPU", sample.cpu_s_per_100k, false, CPU_S_PER_100K)
                        + "; "
                        + &check("RSS", rss, false, PEAK_RSS_MIB),
                )
            }
            Scenario::CdcBlackhole(shape) => {
                let baseline = decode(shape);
                let target = baseline.map_or_else(String::new, |b| {
                    check("ratio", sample.events_per_sec / b, true, CDC_DECODE_RATIO) + "; "
                });
                (baseline, target + &check("RSS", rss, false, PEAK_RSS_MIB))
            }
            Scenario::CdcRabbitmqLeader(shape) => {
                let free = medians
                    .get(&Scenario::CdcRabbitmq(shape).name())
                    .map(|m| m.events_per_sec);
                let target = free.map_or_else(String::new, |f| {
                    check("ratio", sample.events_per_sec / f, true, LEADER_RATIO) + "; "
                });
                (free, target + &check("RSS", rss, false, PEAK_RSS_MIB))
            }
            Scenario::CdcRabbitmqTls(shape) => {
                let plain = medians
                    .get(&Scenario::CdcRabbitmq(shape).name())
                    .map(|m| m.events_per_sec);
                let target = plain.map_or_else(String::new, |p| {
                    check("ratio", sample.events_per_sec / p, true, TLS_RATIO) + "; "
                });
                (plain, target + &check("RSS", rss, false, PEAK_RSS_MIB))
            }
            Scenario::Latency(..) | Scenario::LatencyCdcTls => {
                unreachable!("latency runs have a table of their own")
            }
        };
        json_medians.push(serde_json::json!({
            "scenario": name,
            "events_per_sec": sample.events_per_sec,
            "ratio_to_baseline": baseline.map(|b| sample.events_per_sec / b),
            "cpu_s_per_100k": sample.cpu_s_per_100k,
            "peak_rss_kib": sample.peak_rss_kib,
            "target": target,
        }));
        rows.push((name, sample.clone(), baseline, target));
    }
    let table: Vec<Row> = rows
        .iter()
        .map(|(scenario, sample, baseline, target)| Row {
            scenario,
            sample,
            baseline: *baseline,
            target: target.clone(),
        })
        .collect();
    support::print_table(
        &format!(
            "outbox drains: {events} events per run, median of {runs} rounds; baselines: lapin-wW-Cch rows vs the best of them (broker ceiling); lapin-shaped (sluice's message shape), cdc-rabbitmq* and poll-rabbitmq vs the broker ceiling; cdc-blackhole-B vs recvlogical-B (decode ceiling); cdc-rabbitmq-tls-B and cdc-rabbitmq-leader-B vs cdc-rabbitmq-B (the cost of TLS, of leadership)"
        ),
        &table,
    );

    println!(
        "\ncommit→receive latency at a steady rate (median over rounds of each figure; CPU and RSS are sluice's)"
    );
    println!(
        "{:<24} {:>10} {:>9} {:>9} {:>9} {:>9} {:>15} {:>13}  target",
        "scenario",
        "commits/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "CPU-s per 100k",
        "peak RSS MiB"
    );
    // latency-cdc-2000's p50 and p99, for latency-cdc-tls-2000 (which runs after it).
    let mut plain_cdc = None;
    for &scenario in scenarios {
        let (live, rate) = match scenario {
            Scenario::Latency(live, rate) => (live, Some(rate)),
            Scenario::LatencyCdcTls => (Live::Cdc, None),
            _ => continue,
        };
        let name = scenario.name();
        let runs: Vec<&Record> = records.iter().filter(|r| r.scenario == name).collect();
        if runs.is_empty() {
            continue;
        }
        let figure = |f: fn(&Record) -> f64| median(runs.iter().map(|r| f(r)).collect());
        let commits = figure(|r| r.sample.events_per_sec);
        let p50 = figure(|r| r.latency.unwrap_or_default().p50_ms);
        let p99 = figure(|r| r.latency.unwrap_or_default().p99_ms);
        let p999 = figure(|r| r.latency.unwrap_or_default().p999_ms);
        let max = figure(|r| r.latency.unwrap_or_default().max_ms);
        let cpu = figure(|r| r.sample.cpu_s_per_100k);
        let rss = figure(|r| r.sample.peak_rss_kib as f64) / 1024.0;
        let target = match (live, rate) {
            (Live::Cdc, Some(Rate::Fixed)) => {
                plain_cdc = Some((p50, p99));
                [
                    check("p50", p50, false, 2.0),
                    check("p99", p99, false, 8.0),
                    check("p99.9", p999, false, 20.0),
                ]
                .join("; ")
            }
            (Live::Cdc, None) => plain_cdc.map_or_else(String::new, |(plain50, plain99)| {
                format!(
                    "vs latency-cdc-2000: p50 x{:.2}, p99 x{:.2}",
                    p50 / plain50,
                    p99 / plain99
                )
            }),
            (Live::Poll | Live::PollNotify, Some(Rate::Fixed)) => check("p99", p99, false, 50.0),
            _ => String::new(),
        };
        println!(
            "{name:<24} {commits:>10.0} {p50:>9.2} {p99:>9.2} {p999:>9.2} {max:>9.2} {cpu:>15.2} {rss:>13.1}  {target}"
        );
        json_medians.push(serde_json::json!({
            "scenario": name,
            "commits_per_sec": commits,
            "p50_ms": p50,
            "p99_ms": p99,
            "p999_ms": p999,
            "max_ms": max,
            "cpu_s_per_100k": cpu,
            "peak_rss_mib": rss,
            "target": target,
        }));
    }
    support::write_json(
        json_path,
        &serde_json::json!({
            "events": events,
            "runs": runs,
            "broker_ceiling_events_per_sec": ceiling,
            "medians": json_medians,
            "samples": records,
        }),
    );
}
