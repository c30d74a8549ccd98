//! RabbitMQ drain throughput: generator → `rabbitmq` sink through the engine (persistent,
//! confirmed), side by side in the same run with a minimal lapin publisher doing the same job.
//!
//! Run: `cargo bench --bench rabbitmq` (options: `-- --events N --runs N --json PATH`), with
//! RabbitMQ up (`scripts/services.sh up`) and `rabbitmqctl` on the PATH; `AMQP_URL` names the
//! broker. The bench owns a virtual host for the run.
//!
//! Each scenario runs in a child process (this program re-executed) on the runtime the binary
//! uses, so that its CPU time and peak RSS are its own (lapin's I/O thread included); scenarios
//! are interleaved over several rounds and reported as medians, since the machine is shared:
//! - `lapin-W`: one channel in confirm mode, persistent messages with a `message_id`, up to `W`
//!   unconfirmed, the generator's payloads; the best plain one is the baseline;
//! - `lapin-W-sluice`: the same with the properties and headers sluice sends, and `mandatory`
//!   (the same job on the broker's side: its persistence cost grows with the message);
//! - `sluice`: the generator and the sink with its defaults (2 channels, window 1024);
//! - `sluice-Nch`, `sluice-wW`: the same with `N` channels, or a window of `W`.
//!
//! Every scenario checks at the end that its queue holds exactly the events sent.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::process::Command;
use std::time::Instant;

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties, ExchangeKind};
use sluice_connectors::generator::{Generator, GeneratorConfig};
use sluice_connectors::rabbitmq::RabbitmqSinkConfig;
use sluice_pipeline::{Config, Registry, ShutdownTrigger};

const SCENARIOS: [&str; 6] = [
    "lapin-1024",
    "lapin-4096",
    "lapin-1024-sluice",
    "lapin-4096-sluice",
    "sluice",
    "sluice-1ch",
];
const BATCH: u64 = 1024;
const EXCHANGE: &str = "bench";
const ROUTING_KEY: &str = "generated";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let option = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let events: u64 = option("--events").map_or(200_000, |v| v.parse().unwrap());
    if let (Some(scenario), Some(url)) = (option("--scenario"), option("--url")) {
        child(&scenario, events, &url);
        return;
    }
    let runs: usize = option("--runs").map_or(3, |v| v.parse().unwrap());
    let json_path = option("--json").unwrap_or_else(|| "target/bench-rabbitmq.json".into());

    let vhost = format!("sluice-bench-{}", std::process::id());
    rabbitmqctl(&["add_vhost", &vhost]);
    rabbitmqctl(&["set_permissions", "-p", &vhost, "guest", ".*", ".*", ".*"]);
    let base = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let authority = base.rsplit_once('/').map_or(base.as_str(), |(a, _)| a);
    let url = format!("{authority}/{vhost}");

    let exe = std::env::current_exe().unwrap();
    let mut results: Vec<Vec<Sample>> = vec![Vec::new(); SCENARIOS.len()];
    for round in 0..runs {
        for (i, scenario) in SCENARIOS.iter().enumerate() {
            let out = Command::new(&exe)
                .args(["--scenario", scenario, "--events", &events.to_string()])
                .args(["--url", &url])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{scenario}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let sample: Sample = serde_json::from_slice(&out.stdout).unwrap();
            eprintln!(
                "round {round} {scenario}: {:.0} events/s, {:.2} CPU-s per 100k",
                sample.events_per_sec, sample.cpu_s_per_100k
            );
            results[i].push(sample);
        }
    }
    rabbitmqctl(&["delete_vhost", &vhost]);

    let medians: Vec<Sample> = results.iter().map(|s| median(s)).collect();
    let baseline = SCENARIOS
        .iter()
        .zip(&medians)
        .filter(|(name, _)| name.starts_with("lapin") && !name.ends_with("-sluice"))
        .map(|(_, m)| m.events_per_sec)
        .fold(0.0, f64::max);
    println!(
        "\nrabbitmq benchmark: {events} persistent, confirmed events per run, median of {runs} runs"
    );
    println!(
        "{:<18} {:>12} {:>14} {:>15} {:>13}",
        "scenario", "events/s", "vs best lapin", "CPU-s per 100k", "peak RSS MiB"
    );
    for (name, m) in SCENARIOS.iter().zip(&medians) {
        println!(
            "{:<18} {:>12.0} {:>14.2} {:>15.2} {:>13.1}",
            name,
            m.events_per_sec,
            m.events_per_sec / baseline,
            m.cpu_s_per_100k,
            m.peak_rss_kib as f64 / 1024.0,
        );
    }
    let json = serde_json::json!({
        "events": events,
        "runs": runs,
        "scenarios": SCENARIOS.iter().zip(&medians).map(|(name, m)| serde_json::json!({
            "scenario": name,
            "events_per_sec": m.events_per_sec,
            "ratio_to_best_lapin": m.events_per_sec / baseline,
            "cpu_s_per_100k": m.cpu_s_per_100k,
            "peak_rss_kib": m.peak_rss_kib,
        })).collect::<Vec<_>>(),
    });
    std::fs::write(&json_path, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
    println!("(written to {json_path})");
}

fn rabbitmqctl(args: &[&str]) {
    let status = Command::new("rabbitmqctl")
        .arg("-q")
        .args(args)
        .status()
        .unwrap();
    assert!(status.success(), "rabbitmqctl {args:?} failed");
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Sample {
    events_per_sec: f64,
    cpu_s_per_100k: f64,
    peak_rss_kib: u64,
}

fn median(samples: &[Sample]) -> Sample {
    let mut sorted = samples.to_vec();
    sorted.sort_by(|a, b| a.events_per_sec.total_cmp(&b.events_per_sec));
    sorted[sorted.len() / 2].clone()
}

fn child(scenario: &str, events: u64, url: &str) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let queue = format!("q-{}", std::process::id());
    runtime.block_on(declare(url, &queue));
    let data = std::env::temp_dir().join(format!("sluice-bench-{}", std::process::id()));
    let cpu_before = cpu_time_ns();
    let started = Instant::now();
    match scenario {
        other if other.starts_with("lapin-") => {
            // lapin-<W>[-sluice]: window W; with `-sluice`, the properties and headers sluice
            // sends, and `mandatory`.
            let mut parts = other["lapin-".len()..].split('-');
            let window = parts.next().unwrap().parse().unwrap();
            let same = parts.next() == Some("sluice");
            runtime.block_on(lapin_publisher(url, events, window, same));
        }
        other => {
            // sluice[-<N>ch][-w<W>]: N channels (default 2), window W (default 1024).
            let mut channels = 2;
            let mut window = 1024;
            for part in other.split('-').skip(1) {
                if let Some(n) = part.strip_suffix("ch") {
                    channels = n.parse().unwrap();
                } else if let Some(w) = part.strip_prefix('w') {
                    window = w.parse().unwrap();
                } else {
                    panic!("unknown scenario {other}");
                }
            }
            assert!(other.starts_with("sluice"), "unknown scenario {other}");
            sluice(&runtime, url, events, channels, window, &data);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_time_ns() - cpu_before;
    let _ = std::fs::remove_dir_all(&data);
    let held = runtime.block_on(delete(url, &queue));
    assert_eq!(held, events, "{scenario}: the queue holds every event once");
    let sample = Sample {
        events_per_sec: events as f64 / elapsed,
        cpu_s_per_100k: cpu as f64 / 1e9 * 100_000.0 / events as f64,
        peak_rss_kib: peak_rss_kib(),
    };
    println!("{}", serde_json::to_string(&sample).unwrap());
}

async fn declare(url: &str, queue: &str) {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            EXCHANGE.into(),
            ExchangeKind::Direct,
            durable,
            FieldTable::default(),
        )
        .await
        .unwrap();
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue.into(), durable, FieldTable::default())
        .await
        .unwrap();
    channel
        .queue_bind(
            queue.into(),
            EXCHANGE.into(),
            ROUTING_KEY.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
}

/// Deletes the queue and returns how many messages it held.
async fn delete(url: &str, queue: &str) -> u64 {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    u64::from(
        channel
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await
            .unwrap(),
    )
}

fn generator_config() -> GeneratorConfig {
    sluice_pipeline::config::deserialize(toml::Value::Table(toml::Table::new())).unwrap()
}

/// The baseline: the generator's events published the way lapin's documentation does it,
/// with a window of confirms.
async fn lapin_publisher(url: &str, events: u64, window: usize, as_sluice: bool) {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let generator = Generator::new(generator_config(), "gen");
    let mut pending = VecDeque::with_capacity(window);
    let mut next = 1;
    while next <= events {
        let n = BATCH.min(events - next + 1);
        for event in generator.events(next..next + n) {
            let mut properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_message_id(event.id.as_str().into());
            if as_sluice {
                let mut headers = FieldTable::default();
                for (name, value) in [
                    ("id", event.id.as_str()),
                    ("type", event.event_type.as_str()),
                    ("aggregateid", event.key.as_deref().unwrap_or_default()),
                ] {
                    headers.insert(name.into(), AMQPValue::LongString(value.into()));
                }
                properties = properties
                    .with_type(event.event_type.as_str().into())
                    .with_app_id("sluice".into())
                    .with_content_type("application/json".into())
                    .with_headers(headers);
            }
            let confirm = channel
                .basic_publish(
                    EXCHANGE.into(),
                    ROUTING_KEY.into(),
                    BasicPublishOptions {
                        mandatory: as_sluice,
                        immediate: false,
                    },
                    &event.payload,
                    properties,
                )
                .await
                .unwrap();
            pending.push_back(confirm);
            while pending.len() >= window {
                let confirmation = pending.pop_front().unwrap().await.unwrap();
                assert!(matches!(confirmation, Confirmation::Ack(None)));
            }
        }
        next += n;
    }
    for confirm in pending {
        assert!(matches!(confirm.await.unwrap(), Confirmation::Ack(None)));
    }
    connection.close(200, "done".into()).await.unwrap();
}

fn sluice(
    runtime: &tokio::runtime::Runtime,
    url: &str,
    events: u64,
    channels: usize,
    window: usize,
    data: &std::path::Path,
) {
    let text = format!(
        r#"
        [pipeline]
        data_dir = "{data}"
        [sources.gen]
        type = "generator"
        count = {events}
        batch_size = {BATCH}
        [sinks.broker]
        type = "rabbitmq"
        inputs = ["gen"]
        url = "{url}"
        exchange = "{EXCHANGE}"
        channels = {channels}
        confirm_window = {window}
        "#,
        data = data.display()
    );
    let mut registry = Registry::new();
    registry
        .source::<GeneratorConfig>("generator")
        .sink::<RabbitmqSinkConfig>("rabbitmq");
    let config = Config::parse(&text, "bench.toml".as_ref(), &registry, &|_| None).unwrap();
    let trigger = ShutdownTrigger::new();
    runtime
        .block_on(sluice_pipeline::run(&config, trigger.subscribe()))
        .unwrap();
}

/// User + system CPU time of this process, from /proc/self/stat (clock ticks of 10 ms).
fn cpu_time_ns() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks * 10_000_000
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}
