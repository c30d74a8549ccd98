//! The coordination benchmark: failover time of leader-gated `sluice` processes (kill -9 of
//! the leader, `--rounds` rounds) on etcd and on ZooKeeper against the TTL, and lock
//! acquire/release latency and rate through sluice's `Coord` against the same operations
//! made with the raw `etcd-client` calls, uncontended and with 10 contenders.
//!
//! `cargo bench --bench coord [-- --rounds 20 --locks 300]`, with the servers of
//! `scripts/services.sh` running.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_coord::Coord;
use sluice_coord::etcd::{Etcd, EtcdOptions};
use sluice_tests::free_port;
use support::Args;

const TTL: Duration = Duration::from_secs(2);

fn etcd_endpoints() -> Vec<String> {
    std::env::var("ETCD_ENDPOINTS")
        .unwrap_or_else(|_| "http://127.0.0.1:2379".into())
        .split(',')
        .map(str::to_owned)
        .collect()
}

fn zookeeper_endpoints() -> Vec<String> {
    std::env::var("ZOOKEEPER_ENDPOINTS")
        .unwrap_or_else(|_| "127.0.0.1:2181".into())
        .split(',')
        .map(str::to_owned)
        .collect()
}

/// A leader-gated generator → blackhole pipeline on `backend`, started.
fn candidate(
    dir: &std::path::Path,
    backend: &str,
    endpoints: &[String],
    election: &str,
    n: usize,
) -> (Child, SocketAddr) {
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let endpoints: Vec<String> = endpoints
        .iter()
        .map(|e| format!("{:?}", e.trim_start_matches("http://")))
        .collect();
    let config = dir.join(format!("{backend}-{n}.toml"));
    std::fs::write(
        &config,
        format!(
            "[api]\naddress = \"{api}\"\n[coord]\nbackend = \"{backend}\"\nendpoints = [{}]\nttl = \"2s\"\nnode = \"{backend}-{n}\"\n\
             [pipeline]\ndata_dir = \"{}\"\nleader = \"{election}\"\n\
             [sources.gen]\ntype = \"generator\"\nrate = 100\n[sinks.out]\ntype = \"blackhole\"\ninputs = [\"gen\"]\n",
            endpoints.join(", "),
            dir.join(format!("{backend}-{n}")).display()
        ),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("run")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    (child, api)
}

/// Whether the process at `api` says it leads.
fn leads(api: SocketAddr) -> bool {
    sluice_tests::http_get(api, "/ready").is_ok_and(|(_, body)| body.contains("leader of election"))
}

/// `rounds` kills of the leader among three candidates on `backend`: each failover's time,
/// from the kill to another candidate leading.
fn failovers(backend: &str, endpoints: &[String], rounds: usize) -> Vec<Duration> {
    let dir = std::env::temp_dir().join(format!(
        "sluice-bench-coord-{backend}-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let election = format!("bench-{backend}-{}", std::process::id());
    let mut started = 0;
    let mut start = || {
        started += 1;
        candidate(&dir, backend, endpoints, &election, started)
    };
    let mut candidates: Vec<(Child, SocketAddr)> = (0..3).map(|_| start()).collect();
    let leader = |candidates: &[(Child, SocketAddr)]| -> usize {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(i) = candidates.iter().position(|(_, api)| leads(*api)) {
                return i;
            }
            assert!(Instant::now() < deadline, "no leader on {backend}");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    let mut times = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let i = leader(&candidates);
        let (mut dead, _) = candidates.remove(i);
        let killed = Instant::now();
        dead.kill().unwrap();
        dead.wait().unwrap();
        leader(&candidates);
        let took = killed.elapsed();
        eprintln!("{backend} round {round}: failover {took:?}");
        times.push(took);
        candidates.push(start());
    }
    for (mut child, _) in candidates {
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = std::fs::remove_dir_all(&dir);
    times
}

/// Lock then unlock `n` times, each pair timed.
async fn sluice_locks(coord: &Coord, name: &str, n: usize) -> Vec<Duration> {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let at = Instant::now();
        let guard = coord.lock(name).await.unwrap();
        guard.unlock().await.unwrap();
        times.push(at.elapsed());
    }
    times
}

/// The same with the raw etcd-client calls, under a lease granted once (as etcdctl lock).
async fn raw_locks(client: &etcd_client::Client, name: &str, n: usize) -> Vec<Duration> {
    let mut client = client.clone();
    let lease = client.lease_grant(10, None).await.unwrap().id();
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let at = Instant::now();
        let key = client
            .lock(
                name,
                Some(etcd_client::LockOptions::new().with_lease(lease)),
            )
            .await
            .unwrap()
            .key()
            .to_vec();
        client.unlock(key).await.unwrap();
        times.push(at.elapsed());
    }
    let _ = client.lease_revoke(lease).await;
    times
}

struct LockFigures {
    p50: Duration,
    p99: Duration,
    per_sec: f64,
}

fn figures(mut times: Vec<Duration>, wall: Duration) -> LockFigures {
    times.sort();
    LockFigures {
        p50: times[times.len() / 2],
        p99: times[times.len() * 99 / 100],
        per_sec: times.len() as f64 / wall.as_secs_f64(),
    }
}

/// Uncontended and 10-contender lock figures for sluice and for the raw client.
async fn locks(n: usize) -> Vec<(&'static str, LockFigures)> {
    let endpoints = etcd_endpoints();
    let raw = etcd_client::Client::connect(&endpoints, None)
        .await
        .unwrap();
    let mut out = Vec::new();
    for contenders in [1, 10] {
        let name = format!("bench-lock-{contenders}-{}", std::process::id());
        let mut coords = Vec::new();
        for c in 0..contenders {
            let backend = Etcd::connect(EtcdOptions::new(endpoints.clone()))
                .await
                .unwrap();
            coords.push(Coord::with_backend(
                Arc::new(backend),
                TTL,
                format!("bench-{c}"),
            ));
        }
        // Interleaved runs, sluice then raw, three times: medians of the runs' figures.
        let mut sluice_runs = Vec::new();
        let mut raw_runs = Vec::new();
        for _ in 0..3 {
            let at = Instant::now();
            let all = futures::future::join_all(
                coords
                    .iter()
                    .map(|c| sluice_locks(c, &name, n / contenders)),
            )
            .await;
            sluice_runs.push(figures(all.concat(), at.elapsed()));
            let at = Instant::now();
            let all = futures::future::join_all(
                (0..contenders).map(|_| raw_locks(&raw, &name, n / contenders)),
            )
            .await;
            raw_runs.push(figures(all.concat(), at.elapsed()));
        }
        let median = |mut runs: Vec<LockFigures>| {
            runs.sort_by(|a, b| a.per_sec.total_cmp(&b.per_sec));
            runs.swap_remove(1)
        };
        let (s, r) = (median(sluice_runs), median(raw_runs));
        let label = |who| match (who, contenders) {
            ("sluice", 1) => "sluice Coord::lock, uncontended",
            ("sluice", _) => "sluice Coord::lock, 10 contenders",
            (_, 1) => "etcd-client lock, uncontended",
            _ => "etcd-client lock, 10 contenders",
        };
        out.push((label("sluice"), s));
        out.push((label("raw"), r));
        for coord in coords {
            coord.close().await;
        }
    }
    out
}

fn main() {
    let args = Args::from_env();
    if !args.is_bench_run() {
        return;
    }
    let rounds = args.number("--rounds", 20);
    let n_locks = args.number("--locks", 300);
    let mut rows = Vec::new();
    for (backend, endpoints) in [
        ("etcd", etcd_endpoints()),
        ("zookeeper", zookeeper_endpoints()),
    ] {
        let mut times = failovers(backend, &endpoints, rounds);
        times.sort();
        rows.push((backend, times[times.len() / 2], *times.last().unwrap()));
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let lock_rows = runtime.block_on(locks(n_locks));

    println!(
        "\nfailover: kill -9 of the leader of 3 leader-gated sluice processes, {rounds} rounds, TTL {TTL:?}"
    );
    println!(
        "{:<12} {:>10} {:>10} {:>14}",
        "backend", "p50", "max", "target"
    );
    for (backend, p50, max) in &rows {
        println!(
            "{backend:<12} {:>9.2}s {:>9.2}s {:>14}",
            p50.as_secs_f64(),
            max.as_secs_f64(),
            "p50 ≤ 2.5 s, max ≤ 3 s"
        );
    }
    println!(
        "\nlocks on the shared etcd ({n_locks} lock + unlock pairs per run, median of 3 interleaved runs)"
    );
    println!("{:<36} {:>10} {:>10} {:>10}", "", "p50", "p99", "pairs/s");
    for (label, f) in &lock_rows {
        println!(
            "{label:<36} {:>8.2}ms {:>8.2}ms {:>10.0}",
            f.p50.as_secs_f64() * 1e3,
            f.p99.as_secs_f64() * 1e3,
            f.per_sec
        );
    }
    for pair in lock_rows.chunks(2) {
        println!(
            "{}: sluice / raw rate {:.2}, p50 {:.2}",
            if pair[0].0.contains("uncontended") {
                "uncontended"
            } else {
                "10 contenders"
            },
            pair[0].1.per_sec / pair[1].1.per_sec,
            pair[0].1.p50.as_secs_f64() / pair[1].1.p50.as_secs_f64()
        );
    }
}
