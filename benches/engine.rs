//! Engine throughput: generator → filter → dedupe → blackhole, with end-to-end
//! acknowledgements, on one core, side by side with baselines measured in the same run.
//!
//! Run: `cargo bench --bench engine` (options: `-- --events N --runs N --json PATH`).
//!
//! Each scenario runs in a child process (this program re-executed) on a single-threaded
//! runtime, so that it uses one core and its peak RSS is its own. Scenarios are interleaved
//! over several rounds and reported as medians, because the machine is shared and noisy:
//! - `bare`: the generator's events built and dropped, no engine: the floor;
//! - `blackhole`: generator → blackhole through the engine (channels, acks, checkpoint);
//! - `pipeline`: generator → filter → dedupe → blackhole, the issue's target figure.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Instant;

use sluice_connectors::blackhole::BlackholeSinkConfig;
use sluice_connectors::generator::{Generator, GeneratorConfig};
use sluice_pipeline::{Config, Registry, ShutdownTrigger};
use support::{Args, Sample};

const SCENARIOS: [&str; 3] = ["bare", "blackhole", "pipeline"];
const BATCH: u64 = 1024;

fn main() {
    let args = Args::from_env();
    let events: u64 = args.number("--events", 2_000_000);
    if let Some(scenario) = args.option("--scenario") {
        child(&scenario, events);
        return;
    }
    if !args.is_bench_run() {
        return;
    }
    let runs = args.number("--runs", 5);
    let json_path = args
        .option("--json")
        .unwrap_or_else(|| "target/bench-engine.json".into());
    let medians = support::rounds(&SCENARIOS, runs, &["--events".into(), events.to_string()]);
    let title = format!(
        "engine benchmark: {events} events per run, median of {runs} runs, one core each; baseline: bare"
    );
    support::table(
        &title,
        &SCENARIOS,
        &medians,
        medians[0].events_per_sec,
        &json_path,
    );
}

fn child(scenario: &str, events: u64) {
    let data = std::env::temp_dir().join(format!("sluice-bench-{}", std::process::id()));
    let pid = std::process::id();
    let cpu_before = support::cpu_time_ns(pid);
    let started = Instant::now();
    match scenario {
        "bare" => bare(events),
        "blackhole" | "pipeline" => {
            let checkpoint = engine(scenario, events, &data);
            assert_eq!(
                checkpoint,
                Some(events),
                "{scenario}: every event acknowledged"
            );
        }
        other => panic!("unknown scenario {other}"),
    }
    let sample = Sample::measure(events, started, pid, cpu_before);
    let _ = std::fs::remove_dir_all(&data);
    sample.report();
}

fn generator_config() -> GeneratorConfig {
    sluice_pipeline::config::deserialize(toml::Value::Table(toml::Table::new())).unwrap()
}

/// The floor: the same events built in the same batches and dropped.
fn bare(events: u64) {
    let generator = Generator::new(generator_config(), "gen");
    let mut next = 1;
    let mut bytes = 0;
    while next <= events {
        let n = BATCH.min(events - next + 1);
        let batch = generator.events(next..next + n);
        bytes += batch.iter().map(|e| e.payload.len()).sum::<usize>();
        drop(std::hint::black_box(batch));
        next += n;
    }
    std::hint::black_box(bytes);
}

fn engine(scenario: &str, events: u64, data: &std::path::Path) -> Option<u64> {
    let transforms = if scenario == "pipeline" {
        r#"
        [transforms.filter]
        type = "filter"
        inputs = ["gen"]
        field = "type"
        equals = "generated"
        [transforms.dedupe]
        type = "dedupe"
        inputs = ["filter"]
        max_ids = 100000
        "#
    } else {
        ""
    };
    let input = if scenario == "pipeline" {
        "dedupe"
    } else {
        "gen"
    };
    let text = format!(
        r#"
        [pipeline]
        data_dir = "{data}"
        [sources.gen]
        type = "generator"
        count = {events}
        batch_size = {BATCH}
        {transforms}
        [sinks.void]
        type = "blackhole"
        inputs = ["{input}"]
        "#,
        data = data.display()
    );
    let mut registry = Registry::new();
    registry
        .source::<GeneratorConfig>("generator")
        .sink::<BlackholeSinkConfig>("blackhole");
    let config = Config::parse(&text, "bench.toml".as_ref(), &registry, &|_| None).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let trigger = ShutdownTrigger::new();
    runtime
        .block_on(sluice_pipeline::run(&config, trigger.subscribe()))
        .unwrap();
    sluice_pipeline::checkpoint::CheckpointStore::new(data, "gen")
        .load()
        .unwrap()
        .map(|p| p.0)
}
