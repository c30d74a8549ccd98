//! What every benchmark program shares: options, running each scenario in a child process of
//! its own (so CPU time and peak RSS are its own), interleaved rounds, medians, the table and
//! the JSON file.

#![allow(dead_code)] // each benchmark uses the part it needs

pub mod broker;

use std::process::Command;
use std::time::Instant;

/// The program's arguments, read as `--name value` options and `--flag`s.
pub struct Args(Vec<String>);

impl Args {
    /// This process's arguments.
    pub fn from_env() -> Self {
        Args(std::env::args().collect())
    }

    /// The value after `--name`.
    pub fn option(&self, name: &str) -> Option<String> {
        let at = self.0.iter().position(|a| a == name)?;
        self.0.get(at + 1).cloned()
    }

    /// `--name`'s value parsed, or `default`.
    pub fn number<T: std::str::FromStr>(&self, name: &str, default: T) -> T {
        self.option(name)
            .map(|v| {
                v.parse()
                    .unwrap_or_else(|_| panic!("{name} {v}: not a number"))
            })
            .unwrap_or(default)
    }

    /// Whether `cargo bench` asked for a benchmark run: it passes `--bench`, while test runners
    /// listing or running every target do not, and a benchmark is not a test.
    pub fn is_bench_run(&self) -> bool {
        self.0.iter().any(|a| a == "--bench")
    }
}

/// One measured run of a scenario.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Sample {
    /// Throughput.
    pub events_per_sec: f64,
    /// CPU (user + system) seconds per 100,000 events, of the measured process.
    pub cpu_s_per_100k: f64,
    /// Peak resident memory of the measured process.
    pub peak_rss_kib: u64,
}

impl Sample {
    /// A sample of `events` processed since `started` by process `pid`, which had used
    /// `cpu_before_ns` of CPU at the start.
    pub fn measure(events: u64, started: Instant, pid: u32, cpu_before_ns: u64) -> Sample {
        let elapsed = started.elapsed().as_secs_f64();
        let cpu = cpu_time_ns(pid).saturating_sub(cpu_before_ns);
        Sample {
            events_per_sec: events as f64 / elapsed,
            cpu_s_per_100k: cpu as f64 / 1e9 * 100_000.0 / events as f64,
            peak_rss_kib: peak_rss_kib(pid),
        }
    }

    /// Prints the sample for the parent (a child's only output).
    pub fn report(&self) {
        println!("{}", serde_json::to_string(self).unwrap_or_default());
    }
}

/// Runs every scenario `runs` times, interleaved, each in a child process (this program with
/// `--scenario NAME` and `extra` arguments), and returns the median sample of each.
pub fn rounds(scenarios: &[&str], runs: usize, extra: &[String]) -> Vec<Sample> {
    let mut results: Vec<Vec<Sample>> = vec![Vec::new(); scenarios.len()];
    for round in 0..runs {
        for (i, scenario) in scenarios.iter().enumerate() {
            let sample = child(scenario, extra);
            eprintln!(
                "round {round} {scenario}: {:.0} events/s, {:.2} CPU-s per 100k",
                sample.events_per_sec, sample.cpu_s_per_100k
            );
            results[i].push(sample);
        }
    }
    results.iter().map(|s| median(s)).collect()
}

/// Runs one scenario in a child process (this program with `--scenario NAME` and `extra`
/// arguments) and returns the sample it reports.
pub fn child(scenario: &str, extra: &[String]) -> Sample {
    child_as(scenario, extra)
}

/// [`child`] for a scenario that reports more than a [`Sample`].
pub fn child_as<T: serde::de::DeserializeOwned>(scenario: &str, extra: &[String]) -> T {
    let exe = std::env::current_exe().expect("the benchmark's own path");
    let out = Command::new(&exe)
        .args(["--scenario", scenario])
        .args(extra)
        .output()
        .expect("run the scenario");
    assert!(
        out.status.success(),
        "{scenario}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("a sample")
}

/// The sample with the median throughput.
pub fn median(samples: &[Sample]) -> Sample {
    let mut sorted = samples.to_vec();
    sorted.sort_by(|a, b| a.events_per_sec.total_cmp(&b.events_per_sec));
    sorted[sorted.len() / 2].clone()
}

/// One line of a throughput table.
pub struct Row<'a> {
    /// The scenario's name.
    pub scenario: &'a str,
    /// Its median sample.
    pub sample: &'a Sample,
    /// The baseline's events/s it is compared with, if any.
    pub baseline: Option<f64>,
    /// What the figure should reach, with whether it does (empty: no target).
    pub target: String,
}

/// Prints a table of rows: events/s, ratio to the row's baseline, CPU and peak RSS, and the
/// target column when any row has one.
pub fn print_table(title: &str, rows: &[Row]) {
    let targets = rows.iter().any(|r| !r.target.is_empty());
    println!("\n{title}");
    println!(
        "{:<24} {:>12} {:>12} {:>15} {:>13}{}",
        "scenario",
        "events/s",
        "vs baseline",
        "CPU-s per 100k",
        "peak RSS MiB",
        if targets { "  target" } else { "" }
    );
    for row in rows {
        let ratio = row.baseline.map_or_else(
            || "-".to_owned(),
            |b| format!("{:.2}", row.sample.events_per_sec / b),
        );
        // A sample without a peak RSS measured no process (an external baseline).
        let measured = row.sample.peak_rss_kib > 0;
        let (cpu, rss) = if measured {
            (
                format!("{:.2}", row.sample.cpu_s_per_100k),
                format!("{:.1}", row.sample.peak_rss_kib as f64 / 1024.0),
            )
        } else {
            ("-".to_owned(), "-".to_owned())
        };
        println!(
            "{:<24} {:>12.0} {:>12} {:>15} {:>13}{}",
            row.scenario,
            row.sample.events_per_sec,
            ratio,
            cpu,
            rss,
            if targets {
                format!("  {}", row.target)
            } else {
                String::new()
            }
        );
    }
}

/// Writes `value` as pretty JSON to `path` and says so.
pub fn write_json(path: &str, value: &serde_json::Value) {
    std::fs::write(path, serde_json::to_vec_pretty(value).unwrap_or_default())
        .expect("write the JSON file");
    println!("(written to {path})");
}

/// Prints the table of `samples` with their ratio to `baseline` events/s, and writes it as JSON.
pub fn table(title: &str, scenarios: &[&str], samples: &[Sample], baseline: f64, json_path: &str) {
    let rows: Vec<Row> = scenarios
        .iter()
        .zip(samples)
        .map(|(scenario, sample)| Row {
            scenario,
            sample,
            baseline: Some(baseline),
            target: String::new(),
        })
        .collect();
    print_table(title, &rows);
    let json = serde_json::json!({
        "title": title,
        "scenarios": scenarios.iter().zip(samples).map(|(name, m)| serde_json::json!({
            "scenario": name,
            "events_per_sec": m.events_per_sec,
            "ratio_to_baseline": m.events_per_sec / baseline,
            "cpu_s_per_100k": m.cpu_s_per_100k,
            "peak_rss_kib": m.peak_rss_kib,
        })).collect::<Vec<_>>(),
    });
    write_json(json_path, &json);
}

/// User + system CPU time of process `pid`, from /proc (clock ticks of 10 ms).
pub fn cpu_time_ns(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (tick(11) + tick(12)) * 10_000_000
}

/// Peak resident memory (VmHWM) of process `pid`, in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
