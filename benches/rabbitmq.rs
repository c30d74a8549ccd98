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
//! - `lapin-W-sluice`: the same with the properties sluice sends, and `mandatory` (the same
//!   job on the broker's side);
//! - `sluice`: the generator and the sink with its defaults (1 channel, window 2048);
//! - `sluice-Nch`, `sluice-wW`: the same with `N` channels, or a window of `W`;
//! - `sluice-tls`: `sluice` over `amqps://` with full verification (`AMQPS_URL`'s listener and
//!   CA), against `sluice` of the same run: what TLS costs the sink.
//!
//! Every scenario checks at the end that its queue holds exactly the events sent.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Instant;

use lapin::{BasicProperties, ExchangeKind};
use sluice_connectors::generator::{Generator, GeneratorConfig};
use sluice_connectors::rabbitmq::{DEFAULT_CHANNELS, DEFAULT_CONFIRM_WINDOW, RabbitmqSinkConfig};
use sluice_pipeline::{Config, Registry, ShutdownTrigger};
use sluice_tests::rabbitmq::Vhost;
use support::broker::{self, BATCH, Message, Route};
use support::{Args, Sample};

const SCENARIOS: [&str; 7] = [
    "lapin-1024",
    "lapin-4096",
    "lapin-1024-sluice",
    "lapin-4096-sluice",
    "sluice",
    "sluice-tls",
    "sluice-2ch",
];
const EXCHANGE: &str = "bench";
const ROUTING_KEY: &str = "generated";

fn main() {
    let args = Args::from_env();
    let events: u64 = args.number("--events", 200_000);
    if let (Some(scenario), Some(url)) = (args.option("--scenario"), args.option("--url")) {
        child(&scenario, events, &url);
        return;
    }
    if !args.is_bench_run() {
        return;
    }
    let runs = args.number("--runs", 3);
    let json_path = args
        .option("--json")
        .unwrap_or_else(|| "target/bench-rabbitmq.json".into());

    let vhost = Vhost::create("bench-rabbitmq").unwrap();
    let extra = [
        "--events".into(),
        events.to_string(),
        "--url".into(),
        vhost.url().to_owned(),
    ];
    let medians = support::rounds(&SCENARIOS, runs, &extra);
    drop(vhost);

    let baseline = SCENARIOS
        .iter()
        .zip(&medians)
        .filter(|(name, _)| name.starts_with("lapin") && !name.ends_with("-sluice"))
        .map(|(_, m)| m.events_per_sec)
        .fold(0.0, f64::max);
    let title = format!(
        "rabbitmq benchmark: {events} persistent, confirmed events per run, median of {runs} runs; baseline: the best plain lapin publisher"
    );
    support::table(&title, &SCENARIOS, &medians, baseline, &json_path);
}

fn child(scenario: &str, events: u64, url: &str) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let route = Route {
        exchange: EXCHANGE.into(),
        kind: ExchangeKind::Direct,
        queue: format!("q-{}", std::process::id()),
        binding_key: ROUTING_KEY.into(),
        routing_key: ROUTING_KEY.into(),
    };
    runtime.block_on(route.declare(url));
    let data = std::env::temp_dir().join(format!("sluice-bench-{}", std::process::id()));
    let pid = std::process::id();
    let cpu_before = support::cpu_time_ns(pid);
    let started = Instant::now();
    match scenario {
        other if other.starts_with("lapin-") => {
            // lapin-<W>[-sluice]: window W; with `-sluice`, the properties sluice sends, and
            // `mandatory`.
            let mut parts = other["lapin-".len()..].split('-');
            let window = parts.next().unwrap().parse().unwrap();
            let same = parts.next() == Some("sluice");
            runtime.block_on(lapin_publisher(url, &route, events, window, same));
        }
        other => {
            // sluice[-<N>ch][-w<W>][-tls]: N channels, window W (the sink's defaults
            // otherwise), over TLS.
            let mut channels = DEFAULT_CHANNELS;
            let mut window = DEFAULT_CONFIRM_WINDOW;
            let mut sink_url = url.to_owned();
            for part in other.split('-').skip(1) {
                if part == "tls" {
                    sink_url = amqps(url);
                } else if let Some(n) = part.strip_suffix("ch") {
                    channels = n.parse().unwrap();
                } else if let Some(w) = part.strip_prefix('w') {
                    window = w.parse().unwrap();
                } else {
                    panic!("unknown scenario {other}");
                }
            }
            assert!(other.starts_with("sluice"), "unknown scenario {other}");
            sluice(&runtime, &sink_url, events, channels, window, &data);
        }
    }
    let sample = Sample::measure(events, started, pid, cpu_before);
    let _ = std::fs::remove_dir_all(&data);
    let held = runtime.block_on(route.delete_queue(url));
    assert_eq!(held, events, "{scenario}: the queue holds every event once");
    sample.report();
}

/// The virtual host of the plain `url` on the broker's TLS listener: `AMQPS_URL` (from
/// `scripts/services.sh`) with that vhost.
fn amqps(url: &str) -> String {
    let tls =
        std::env::var("AMQPS_URL").expect("AMQPS_URL is set (eval \"$(scripts/services.sh up)\")");
    let (base, query) = tls.split_once('?').unwrap_or((&tls, ""));
    let server = base.rsplit_once('/').map_or(base, |(server, _)| server);
    let vhost = url.rsplit_once('/').map_or("%2f", |(_, vhost)| vhost);
    format!("{server}/{vhost}?{query}")
}

fn generator_config() -> GeneratorConfig {
    sluice_pipeline::config::deserialize(toml::Value::Table(toml::Table::new())).unwrap()
}

/// The baseline: the generator's events published by the minimal lapin publisher (one
/// channel), plain or with what sluice sends.
async fn lapin_publisher(url: &str, route: &Route, events: u64, window: usize, as_sluice: bool) {
    let generator = Generator::new(generator_config(), "gen");
    broker::publish(url, route, events, window, 1, move |range| {
        generator
            .events(range)
            .into_iter()
            .map(|event| {
                let mut properties = BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_message_id(event.id.as_str().into());
                if as_sluice {
                    properties = properties
                        .with_type(event.event_type.as_str().into())
                        .with_correlation_id(event.key.as_deref().unwrap_or_default().into())
                        .with_content_type("application/json".into());
                }
                Message {
                    properties,
                    body: event.payload.to_vec(),
                    mandatory: as_sluice,
                }
            })
            .collect()
    })
    .await;
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
