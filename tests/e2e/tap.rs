//! `sluice tap` against a running process: what leaves a component, sampled, with payloads on
//! request; sinks and unknown components refused with where to look; a watcher that does not
//! read never holds the pipeline back.

use std::net::SocketAddr;
use std::process::{Command, Stdio};

use crate::sluice;
use sluice_tests::{Scratch, free_port, metric, metrics, wait_for};

/// A generator (with `settings`) into `sink`, with its API on a free port.
fn generator_config(dir: &Scratch, settings: &str, sink: &str) -> (std::path::PathBuf, SocketAddr) {
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = dir.write(
        "pipeline.toml",
        &format!(
            r#"
            [api]
            address = "{api}"
            [pipeline]
            data_dir = "{data}"
            [sources.gen]
            type = "generator"
            {settings}
            [sinks.out]
            inputs = ["gen"]
            {sink}
            "#,
            data = dir.join("data").display()
        ),
    );
    (config, api)
}

fn lines(stdout: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn tap_shows_what_leaves_a_component_sampled_and_with_payloads_on_request() {
    let dir = Scratch::new("tap");
    let out = format!(
        "type = \"file\"\npath = \"{}\"",
        dir.join("out.jsonl").display()
    );
    let (config, api) = generator_config(&dir, "rate = 2000", &out);
    let mut running = sluice().spawn(&config);
    running.wait_ready(api).unwrap();
    let config = config.to_str().unwrap();

    let plain = sluice().output(&["tap", config, "gen", "--limit", "5"]);
    assert!(
        plain.status.success(),
        "{}",
        String::from_utf8_lossy(&plain.stderr)
    );
    let seen = lines(&plain.stdout);
    assert_eq!(seen.len(), 5);
    for (earlier, later) in seen.iter().zip(&seen[1..]) {
        assert_eq!(later["position"], earlier["position"].as_u64().unwrap() + 1);
    }
    assert!(
        seen.iter()
            .all(|e| e["component"] == "gen" && e.get("payload").is_none())
    );

    let api = api.to_string();
    let sampled = sluice().output(&[
        "tap",
        "--api",
        &api,
        "gen",
        "--every",
        "100",
        "--limit",
        "3",
        "--payload",
    ]);
    assert!(sampled.status.success());
    let seen = lines(&sampled.stdout);
    let positions: Vec<u64> = seen
        .iter()
        .map(|e| e["position"].as_u64().unwrap())
        .collect();
    assert_eq!(positions[1] - positions[0], 100, "{positions:?}");
    assert_eq!(positions[2] - positions[1], 100, "{positions:?}");
    assert!(seen.iter().all(|e| !e["payload"].is_null()), "{seen:?}");

    let sink = sluice().output(&["tap", "--api", &api, "out"]);
    let said = String::from_utf8_lossy(&sink.stderr);
    assert_eq!(sink.status.code(), Some(1), "{said}");
    assert!(
        said.contains("is a sink") && said.contains("tap what it reads (gen)"),
        "{said}"
    );
    let unknown = sluice().output(&["tap", "--api", &api, "nope"]);
    assert!(
        String::from_utf8_lossy(&unknown.stderr)
            .contains(r#"no running component is named "nope""#)
    );

    running.signal("TERM");
    assert!(running.wait().unwrap().success(), "{}", running.log());
}

#[test]
fn a_watcher_that_stops_reading_never_holds_the_pipeline_back() {
    let dir = Scratch::new("tap-stalled");
    let (config, api) = generator_config(&dir, "", "type = \"blackhole\"");
    let mut running = sluice().spawn(&config);
    running.wait_ready(api).unwrap();
    // Its standard output is a pipe nobody reads: once the pipe is full (some thousand lines)
    // the tap stops reading its connection, whose buffers then fill up too.
    let mut stalled = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["tap", "--api", &api.to_string(), "gen", "--payload"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let delivered = || {
        metric(
            &metrics(api).ok()?,
            "sluice_component_received_events_total",
            &[("component_id", "out")],
        )
    };
    let stalled_by_now = wait_for("200,000 events delivered with the tap attached", || {
        delivered().filter(|&n| n > 200_000.0)
    })
    .unwrap();
    wait_for("300,000 more delivered while the tap is stalled", || {
        (delivered()? > stalled_by_now + 300_000.0).then_some(())
    })
    .unwrap();
    assert!(
        stalled.try_wait().unwrap().is_none(),
        "the stalled tap is still connected"
    );
    stalled.kill().unwrap();
    stalled.wait().unwrap();
    running.signal("TERM");
    assert!(running.wait().unwrap().success(), "{}", running.log());
}
