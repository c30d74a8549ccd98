//! Unique-id throughput, side by side with the baselines in one run, on one core each.
//!
//! Run: `cargo bench --bench ids` (options: `-- --runs N --json PATH`), with PostgreSQL and
//! Redis up (`scripts/services.sh up`; `DATABASE_URL`, `REDIS_URL`). The bench owns a
//! database and a Redis key prefix for the run.
//!
//! Each scenario runs in a child process (this program re-executed) on one thread (async ones
//! on a single-threaded runtime), interleaved over several rounds, reported as medians:
//! - Snowflake per worker against the layout's cap (8,192,000/s for 13 sequence bits), against
//!   `rs-snowflake` (Twitter's 12-bit layout, so beside sluice on that layout) and `sonyflake`
//!   (256 ids per 10 ms by design), and on a layout too wide to reach its cap, which shows
//!   what one id costs;
//! - UUID v7 and ULID against the `uuid` and `ulid` crates' own calls: the wrapper's cost;
//! - block allocation (one `nextval` per 1,000 ids) against one `nextval` per id;
//! - Redis `INCRBY` blocks (pipelined with the key's expiry) against one `INCR` per id;
//! - `GET /ids/{generator}` on the API server's router, 1,000 ids and 1 id per request, over
//!   one keep-alive connection from the same thread.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use sluice_ids::counter::{CounterPlan, DayFormat, RedisCounter};
use sluice_ids::random::{Ulids, Uuid7};
use sluice_ids::resource::Ids;
use sluice_ids::sequence::{PgSequence, PostgresUrl, SequencePlan};
use sluice_ids::snowflake::{Layout, Node, Options, Snowflake, StaticWorker};
use sluice_tests::TestDb;
use support::{Args, Sample};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A scenario: its name, how many ids one run issues, and what it is compared with.
struct Scenario {
    name: &'static str,
    ids: u64,
    /// The figure it is compared with: another scenario's name, or a cap in ids/s.
    against: Against,
    /// The lowest ratio to `against` that meets the target, if it sets one.
    target: Option<f64>,
}

enum Against {
    Nothing,
    Cap(f64),
    Scenario(&'static str),
}

const SEED_CAP: f64 = 8_192_000.0;
const TWITTER_CAP: f64 = 4_096_000.0;
const SONYFLAKE_CAP: f64 = 25_600.0;

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "snowflake",
        ids: 16_384_000,
        against: Against::Cap(SEED_CAP),
        target: Some(0.95),
    },
    Scenario {
        name: "snowflake-fill1000",
        ids: 16_384_000,
        against: Against::Cap(SEED_CAP),
        target: Some(0.95),
    },
    Scenario {
        name: "snowflake-41/5/5/12",
        ids: 8_192_000,
        against: Against::Cap(TWITTER_CAP),
        target: None,
    },
    Scenario {
        name: "rs-snowflake",
        ids: 8_192_000,
        against: Against::Cap(TWITTER_CAP),
        target: None,
    },
    Scenario {
        name: "sonyflake",
        ids: 51_200,
        against: Against::Cap(SONYFLAKE_CAP),
        target: None,
    },
    Scenario {
        name: "snowflake-41/1/1/21",
        ids: 20_000_000,
        against: Against::Nothing,
        target: None,
    },
    Scenario {
        name: "uuid-now_v7",
        ids: 5_000_000,
        against: Against::Nothing,
        target: None,
    },
    Scenario {
        name: "uuid7",
        ids: 5_000_000,
        against: Against::Scenario("uuid-now_v7"),
        target: Some(0.95),
    },
    Scenario {
        name: "ulid-generator-mutex",
        ids: 5_000_000,
        against: Against::Nothing,
        target: None,
    },
    Scenario {
        name: "ulid",
        ids: 5_000_000,
        against: Against::Scenario("ulid-generator-mutex"),
        target: Some(0.95),
    },
    Scenario {
        name: "ulid-generator-mut",
        ids: 5_000_000,
        against: Against::Scenario("ulid-generator-mutex"),
        target: None,
    },
    Scenario {
        name: "nextval-per-id",
        ids: 20_000,
        against: Against::Nothing,
        target: None,
    },
    Scenario {
        name: "sequence-block1000",
        ids: 2_000_000,
        against: Against::Scenario("nextval-per-id"),
        target: Some(100.0),
    },
    Scenario {
        name: "redis-incr-per-id",
        ids: 20_000,
        against: Against::Nothing,
        target: None,
    },
    Scenario {
        name: "redis-incrby-block1000",
        ids: 2_000_000,
        against: Against::Scenario("redis-incr-per-id"),
        target: None,
    },
    Scenario {
        name: "http-count1000",
        ids: 2_000_000,
        against: Against::Nothing,
        target: None,
    },
    Scenario {
        name: "http-count1",
        ids: 20_000,
        against: Against::Scenario("http-count1000"),
        target: None,
    },
];

fn main() {
    let args = Args::from_env();
    if let Some(name) = args.option("--scenario") {
        let db = args.option("--db").expect("--db");
        let redis = args.option("--redis").expect("--redis");
        child(&name, &db, &redis);
        return;
    }
    if !args.is_bench_run() {
        return;
    }
    let runs = args.number("--runs", 5);
    let json_path = args
        .option("--json")
        .unwrap_or_else(|| "target/bench-ids.json".into());
    let db = TestDb::create("bench_ids");
    let redis = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let names: Vec<&str> = SCENARIOS.iter().map(|s| s.name).collect();
    let extra = ["--db".into(), db.url.clone(), "--redis".into(), redis];
    let mut samples: Vec<Vec<IdSample>> = names.iter().map(|_| Vec::new()).collect();
    for round in 0..runs {
        for (i, name) in names.iter().enumerate() {
            let sample: IdSample = support::child_as(name, &extra);
            eprintln!(
                "round {round} {name}: {:.0} ids/s{}",
                sample.sample.events_per_sec,
                sample.cap_share.map_or(String::new(), |s| format!(
                    ", {s:.3} of the cap per tick it issued in"
                ))
            );
            samples[i].push(sample);
        }
    }
    let medians: Vec<IdSample> = samples.iter().map(|s| median(s)).collect();
    report(runs, &medians, &json_path);
}

/// A scenario's measure: a [`Sample`] and, for generators with a per-tick cap, the ids per
/// tick they issued in as a share of the cap. On a shared machine a thread loses whole
/// milliseconds to other processes, which lowers ids/s but not this: 1.0 means that in every
/// millisecond the generator ran, it issued its cap, so it is not what limits the worker.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct IdSample {
    #[serde(flatten)]
    sample: Sample,
    cap_share: Option<f64>,
}

fn median(samples: &[IdSample]) -> IdSample {
    let mut sorted = samples.to_vec();
    sorted.sort_by(|a, b| a.sample.events_per_sec.total_cmp(&b.sample.events_per_sec));
    sorted[sorted.len() / 2].clone()
}

fn report(runs: usize, medians: &[IdSample], json_path: &str) {
    let rate = |name: &str| {
        let at = SCENARIOS.iter().position(|s| s.name == name).unwrap();
        medians[at].sample.events_per_sec
    };
    println!("\nids benchmark: median of {runs} runs, one core each");
    println!(
        "{:<24} {:>14} {:>8}  {:<22} {:>9} {:>13}  target",
        "scenario", "ids/s", "ratio", "against", "per tick", "CPU-s per 1M"
    );
    let mut rows = Vec::new();
    for (scenario, measured) in SCENARIOS.iter().zip(medians) {
        let sample = &measured.sample;
        let (against, base) = match scenario.against {
            Against::Nothing => ("-".to_owned(), None),
            Against::Cap(cap) => (format!("cap {cap:.0}/s"), Some(cap)),
            Against::Scenario(other) => (other.to_owned(), Some(rate(other))),
        };
        let ratio = base.map(|b| sample.events_per_sec / b);
        // Against a cap, the target is judged per tick the generator issued in.
        let judged = measured.cap_share.or(ratio);
        let target = match (scenario.target, judged) {
            (Some(min), Some(r)) => format!("≥ {min} {}", if r >= min { "met" } else { "MISSED" }),
            _ => String::new(),
        };
        println!(
            "{:<24} {:>14.0} {:>8}  {:<22} {:>9} {:>13.3}  {target}",
            scenario.name,
            sample.events_per_sec,
            ratio.map_or("-".into(), |r| format!("{r:.3}")),
            against,
            measured.cap_share.map_or("-".into(), |r| format!("{r:.3}")),
            sample.cpu_s_per_100k * 10.0,
        );
        rows.push(serde_json::json!({
            "scenario": scenario.name,
            "ids_per_sec": sample.events_per_sec,
            "against": against,
            "ratio": ratio,
            "cap_share_per_tick": measured.cap_share,
            "target": scenario.target,
            "cpu_s_per_million": sample.cpu_s_per_100k * 10.0,
            "peak_rss_kib": sample.peak_rss_kib,
        }));
    }
    support::write_json(
        json_path,
        &serde_json::json!({ "title": "ids benchmark", "runs": runs, "scenarios": rows }),
    );
}

fn child(name: &str, db: &str, redis: &str) {
    let scenario = SCENARIOS
        .iter()
        .find(|s| s.name == name)
        .expect("a scenario");
    let n = scenario.ids;
    let pid = std::process::id();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Set-up (connecting, creating, warming) is not measured.
    let measured = runtime.block_on(prepare(name, db, redis));
    let cpu_before = support::cpu_time_ns(pid);
    let started = Instant::now();
    let (checksum, ticks) = runtime.block_on(measured.run(n));
    let sample = Sample::measure(n, started, pid, cpu_before);
    std::hint::black_box(checksum);
    let cap_share = match (&scenario.against, ticks) {
        (Against::Cap(cap), Some(ticks)) => {
            let per_tick = if scenario.name == "sonyflake" {
                cap / 100.0
            } else {
                cap / 1000.0
            };
            Some(n as f64 / ticks as f64 / per_tick)
        }
        _ => None,
    };
    let report = IdSample { sample, cap_share };
    println!("{}", serde_json::to_string(&report).unwrap());
}

fn ours(layout: Layout) -> Snowflake {
    let claim = Arc::new(StaticWorker(Node {
        datacenter: 1,
        worker: 1,
    }));
    Snowflake::new(layout, claim, Options::default()).unwrap()
}

/// What a scenario runs, set up.
enum Measured {
    Snowflake(Snowflake, usize),
    RsSnowflake(Box<snowflake::SnowflakeIdGenerator>),
    Sonyflake(sonyflake::Sonyflake),
    UuidNowV7,
    Uuid7(Uuid7),
    UlidMutex(Mutex<ulid::Generator>),
    UlidMut(ulid::Generator),
    Ulid(Ulids),
    Nextval(tokio_postgres::Client, tokio_postgres::Statement),
    Sequence(PgSequence),
    Incr(redis::aio::MultiplexedConnection, String),
    Counter(RedisCounter),
    Http(tokio::net::TcpStream, u64, Server),
}

/// The in-process API server's task, aborted when the scenario ends.
struct Server(tokio::task::JoinHandle<()>);

impl Drop for Server {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn prepare(name: &str, db: &str, redis: &str) -> Measured {
    let key = format!("sluice-bench:ids:{}", std::process::id());
    match name {
        "snowflake" => Measured::Snowflake(ours(Layout::SEED), 1),
        "snowflake-fill1000" => Measured::Snowflake(ours(Layout::SEED), 1000),
        "snowflake-41/5/5/12" => Measured::Snowflake(ours("41/5/5/12".parse().unwrap()), 1),
        "snowflake-41/1/1/21" => Measured::Snowflake(ours("41/1/1/21".parse().unwrap()), 1),
        "rs-snowflake" => {
            Measured::RsSnowflake(Box::new(snowflake::SnowflakeIdGenerator::new(1, 1)))
        }
        "sonyflake" => {
            let machine = || Ok(1);
            Measured::Sonyflake(
                sonyflake::Sonyflake::builder()
                    .machine_id(&machine)
                    .finalize()
                    .unwrap(),
            )
        }
        "uuid-now_v7" => Measured::UuidNowV7,
        "uuid7" => Measured::Uuid7(Uuid7::new()),
        "ulid-generator-mutex" => Measured::UlidMutex(Mutex::new(ulid::Generator::new())),
        "ulid-generator-mut" => Measured::UlidMut(ulid::Generator::new()),
        "ulid" => Measured::Ulid(Ulids::new()),
        "nextval-per-id" => {
            let (client, connection) = tokio_postgres::connect(db, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            let sequence = format!("bench_nextval_{}", std::process::id());
            client
                .batch_execute(&format!("CREATE SEQUENCE {sequence}"))
                .await
                .unwrap();
            let statement = client
                .prepare(&format!("SELECT nextval('{sequence}')"))
                .await
                .unwrap();
            Measured::Nextval(client, statement)
        }
        "sequence-block1000" => {
            let plan = SequencePlan {
                sequence: format!("bench_block_{}", std::process::id()),
                node: 1,
                nodes: 1,
                block: 1000,
            };
            let g = PgSequence::new(PostgresUrl::new(db), plan);
            g.set_up().await.unwrap();
            Measured::Sequence(g)
        }
        "redis-incr-per-id" => {
            let client = redis::Client::open(redis).unwrap();
            let connection = client.get_multiplexed_async_connection().await.unwrap();
            Measured::Incr(connection, key)
        }
        "redis-incrby-block1000" => {
            let plan = CounterPlan {
                key,
                format: DayFormat::default(),
                block: 1000,
                retain: Duration::from_secs(60),
            };
            let g = RedisCounter::new(redis, plan).unwrap();
            g.ping().await.unwrap();
            Measured::Counter(g)
        }
        "http-count1000" | "http-count1" => {
            let count = if name == "http-count1" { 1 } else { 1000 };
            let value: toml::Value = toml::from_str(
                "max_count = 1000\n[generators.orders]\ntype = \"snowflake\"\ndatacenter = 1\nworker = 1\n",
            )
            .unwrap();
            let config: sluice_ids::config::IdsConfig =
                sluice_pipeline::config::deserialize(value).unwrap();
            let router = sluice_ids::endpoint::router(Arc::new(
                Ids::build(&config, &Default::default()).unwrap(),
            ));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let address = listener.local_addr().unwrap();
            let server = tokio::spawn(async move {
                let _ = axum::serve(listener, router).await;
            });
            let stream = tokio::net::TcpStream::connect(address).await.unwrap();
            stream.set_nodelay(true).unwrap();
            Measured::Http(stream, count, Server(server))
        }
        other => panic!("unknown scenario {other}"),
    }
}

impl Measured {
    /// Issues `n` ids; returns something derived from them (so that nothing is optimised
    /// away) and, for time-based generators, the distinct ticks their ids carry.
    async fn run(self, n: u64) -> (u64, Option<u64>) {
        let mut sum = 0u64;
        let mut ticks = Ticks::default();
        match self {
            Measured::Snowflake(g, 1) => {
                let shift = g.layout().total_bits() - u32::from(g.layout().timestamp_bits());
                for _ in 0..n {
                    let id = g.next_id().unwrap();
                    ticks.saw(id >> shift);
                    sum = sum.wrapping_add(id);
                }
            }
            Measured::Snowflake(g, batch) => {
                let mut ids = Vec::with_capacity(batch);
                let mut left = n as usize;
                while left > 0 {
                    ids.clear();
                    g.fill(batch.min(left), &mut ids).unwrap();
                    left -= ids.len();
                    let shift = g.layout().total_bits() - u32::from(g.layout().timestamp_bits());
                    ids.iter().for_each(|id| ticks.saw(id >> shift));
                    sum = sum.wrapping_add(ids[ids.len() - 1]);
                }
            }
            Measured::RsSnowflake(mut g) => {
                for _ in 0..n {
                    let id = g.real_time_generate() as u64;
                    ticks.saw(id >> 22);
                    sum = sum.wrapping_add(id);
                }
            }
            Measured::Sonyflake(g) => {
                for _ in 0..n {
                    let id = g.next_id().unwrap().to_u64();
                    // Sonyflake: 39 bits of 10 ms units above 8 sequence and 16 machine bits.
                    ticks.saw(id >> 24);
                    sum = sum.wrapping_add(id);
                }
            }
            Measured::UuidNowV7 => {
                for _ in 0..n {
                    sum = sum.wrapping_add(uuid::Uuid::now_v7().as_u64_pair().1);
                }
            }
            Measured::Uuid7(g) => {
                for _ in 0..n {
                    sum = sum.wrapping_add(g.next_id().as_u64_pair().1);
                }
            }
            Measured::UlidMutex(g) => {
                for _ in 0..n {
                    let id = g.lock().unwrap().generate().unwrap();
                    sum = sum.wrapping_add(id.random() as u64);
                }
            }
            Measured::UlidMut(mut g) => {
                for _ in 0..n {
                    sum = sum.wrapping_add(g.generate().unwrap().random() as u64);
                }
            }
            Measured::Ulid(g) => {
                for _ in 0..n {
                    sum = sum.wrapping_add(g.next_id().random() as u64);
                }
            }
            Measured::Nextval(client, statement) => {
                for _ in 0..n {
                    let row = client.query_one(&statement, &[]).await.unwrap();
                    sum = sum.wrapping_add(row.get::<_, i64>(0) as u64);
                }
            }
            Measured::Sequence(g) => {
                for _ in 0..n {
                    sum = sum.wrapping_add(g.next_ids(1).await.unwrap()[0] as u64);
                }
            }
            Measured::Incr(mut connection, key) => {
                for _ in 0..n {
                    let v: u64 = redis::cmd("INCR")
                        .arg(&key)
                        .query_async(&mut connection)
                        .await
                        .unwrap();
                    sum = sum.wrapping_add(v);
                }
                let _: i64 = redis::cmd("DEL")
                    .arg(&key)
                    .query_async(&mut connection)
                    .await
                    .unwrap();
            }
            Measured::Counter(g) => {
                for _ in 0..n {
                    sum = sum.wrapping_add(g.next_ids(1).await.unwrap()[0].len() as u64);
                }
                let key = g.key_for(now_ms());
                let client = redis::Client::open(
                    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
                )
                .unwrap();
                let mut connection = client.get_multiplexed_async_connection().await.unwrap();
                let _: i64 = redis::cmd("DEL")
                    .arg(&key)
                    .query_async(&mut connection)
                    .await
                    .unwrap();
            }
            Measured::Http(mut stream, count, _server) => {
                let request =
                    format!("GET /ids/orders?count={count} HTTP/1.1\r\nHost: bench\r\n\r\n");
                let mut buffer = Vec::with_capacity(64 * 1024);
                for _ in 0..n / count {
                    stream.write_all(request.as_bytes()).await.unwrap();
                    sum = sum.wrapping_add(read_response(&mut stream, &mut buffer).await);
                }
            }
        }
        (sum, ticks.distinct())
    }
}

/// Counts the distinct ticks of increasing ids.
#[derive(Default)]
struct Ticks {
    last: Option<u64>,
    distinct: u64,
}

impl Ticks {
    fn saw(&mut self, tick: u64) {
        if self.last != Some(tick) {
            self.last = Some(tick);
            self.distinct += 1;
        }
    }

    fn distinct(&self) -> Option<u64> {
        (self.distinct > 0).then_some(self.distinct)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Reads one HTTP/1.1 response with a `content-length` body; returns its length.
async fn read_response(stream: &mut tokio::net::TcpStream, buffer: &mut Vec<u8>) -> u64 {
    buffer.clear();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buffer[..end])
                .unwrap()
                .to_ascii_lowercase();
            assert!(head.starts_with("http/1.1 200"), "{head}");
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            while buffer.len() < end + 4 + length {
                let read = stream.read(&mut chunk).await.unwrap();
                assert!(read > 0, "the server closed the connection");
                buffer.extend_from_slice(&chunk[..read]);
            }
            return length as u64;
        }
        let read = stream.read(&mut chunk).await.unwrap();
        assert!(read > 0, "the server closed the connection");
        buffer.extend_from_slice(&chunk[..read]);
    }
}
