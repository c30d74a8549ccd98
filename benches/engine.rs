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

use std::process::Command;
use std::time::Instant;

use sluice_connectors::blackhole::BlackholeSinkConfig;
use sluice_connectors::generator::{Generator, GeneratorConfig};
use sluice_pipeline::{Config, Registry, ShutdownTrigger};

const SCENARIOS: [&str; 3] = ["bare", "blackhole", "pipeline"];
const BATCH: u64 = 1024;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let option = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let events: u64 = option("--events").map_or(2_000_000, |v| v.parse().unwrap());
    if let Some(scenario) = option("--scenario") {
        child(&scenario, events);
        return;
    }
    // `cargo bench` passes --bench; test runners that list or run every target do not, and a
    // benchmark is not a test.
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let runs: usize = option("--runs").map_or(5, |v| v.parse().unwrap());
    let json_path = option("--json").unwrap_or_else(|| "target/bench-engine.json".into());

    let exe = std::env::current_exe().unwrap();
    let mut results: Vec<Vec<Sample>> = vec![Vec::new(); SCENARIOS.len()];
    for round in 0..runs {
        for (i, scenario) in SCENARIOS.iter().enumerate() {
            let out = Command::new(&exe)
                .args(["--scenario", scenario, "--events", &events.to_string()])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{scenario}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let sample: Sample = serde_json::from_slice(&out.stdout).unwrap();
            eprintln!(
                "round {round} {scenario}: {:.0} events/s",
                sample.events_per_sec
            );
            results[i].push(sample);
        }
    }

    let medians: Vec<Sample> = results.iter().map(|s| median(s)).collect();
    let floor = medians[0].events_per_sec;
    println!("\nengine benchmark: {events} events per run, median of {runs} runs, one core each");
    println!(
        "{:<10} {:>14} {:>10} {:>14} {:>13} {:>10}",
        "scenario", "events/s", "vs bare", "cpu ns/event", "peak RSS MiB", "checkpoint"
    );
    for (name, m) in SCENARIOS.iter().zip(&medians) {
        println!(
            "{:<10} {:>14.0} {:>10.2} {:>14.0} {:>13.1} {:>10}",
            name,
            m.events_per_sec,
            m.events_per_sec / floor,
            m.cpu_ns_per_event,
            m.peak_rss_kib as f64 / 1024.0,
            m.checkpoint.map_or("-".into(), |c| c.to_string()),
        );
    }
    let json = serde_json::json!({
        "events": events,
        "runs": runs,
        "scenarios": SCENARIOS.iter().zip(&medians).map(|(name, m)| serde_json::json!({
            "scenario": name,
            "events_per_sec": m.events_per_sec,
            "ratio_to_bare": m.events_per_sec / floor,
            "cpu_ns_per_event": m.cpu_ns_per_event,
            "peak_rss_kib": m.peak_rss_kib,
        })).collect::<Vec<_>>(),
    });
    std::fs::write(&json_path, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
    println!("(written to {json_path})");
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Sample {
    events_per_sec: f64,
    cpu_ns_per_event: f64,
    peak_rss_kib: u64,
    checkpoint: Option<u64>,
}

fn median(samples: &[Sample]) -> Sample {
    let mut sorted = samples.to_vec();
    sorted.sort_by(|a, b| a.events_per_sec.total_cmp(&b.events_per_sec));
    sorted[sorted.len() / 2].clone()
}

fn child(scenario: &str, events: u64) {
    let data = std::env::temp_dir().join(format!("sluice-bench-{}", std::process::id()));
    let cpu_before = cpu_time_ns();
    let started = Instant::now();
    let checkpoint = match scenario {
        "bare" => bare(events),
        "blackhole" | "pipeline" => engine(scenario, events, &data),
        other => panic!("unknown scenario {other}"),
    };
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_time_ns() - cpu_before;
    let _ = std::fs::remove_dir_all(&data);
    let sample = Sample {
        events_per_sec: events as f64 / elapsed,
        cpu_ns_per_event: cpu as f64 / events as f64,
        peak_rss_kib: peak_rss_kib(),
        checkpoint,
    };
    println!("{}", serde_json::to_string(&sample).unwrap());
}

fn generator_config() -> GeneratorConfig {
    sluice_pipeline::config::deserialize(toml::Value::Table(toml::Table::new())).unwrap()
}

/// The floor: the same events built in the same batches and dropped.
fn bare(events: u64) -> Option<u64> {
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
    None
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
