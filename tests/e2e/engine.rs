//! The engine through the binary: finite runs drain and exit, restarts resume from the
//! checkpoint, signals drain (or not, the second time), slow sinks bound memory, bad events are
//! quarantined and failures hold the checkpoint.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use crate::sluice;
use sluice_tests::{Scratch, free_port, json_lines, metric, metrics, saved_checkpoint, wait_for};

fn ids(path: &std::path::Path) -> Vec<u64> {
    json_lines(path)
        .iter()
        .map(|l| {
            l["id"]
                .as_str()
                .unwrap()
                .strip_prefix("gen-")
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect()
}

fn generator_to_file(dir: &Scratch, source: &str, api: Option<SocketAddr>) -> std::path::PathBuf {
    let api = api.map_or(String::new(), |a| format!("[api]\naddress = \"{a}\"\n"));
    dir.write(
        "pipeline.toml",
        &format!(
            r#"
            {api}
            [pipeline]
            data_dir = "{data}"
            [sources.gen]
            type = "generator"
            {source}
            [sinks.out]
            type = "file"
            inputs = ["gen"]
            path = "{data}/out.jsonl"
            "#,
            data = dir.join("data").display()
        ),
    )
}

#[test]
fn a_finite_run_delivers_everything_once_and_records_the_checkpoint() {
    let dir = Scratch::new("finite");
    let config = generator_to_file(&dir, "count = 5000\nbatch_size = 100", None);
    let mut running = sluice().spawn(&config);
    assert!(running.wait().unwrap().success(), "{}", running.log());
    let ids = ids(&dir.join("data/out.jsonl"));
    assert_eq!(
        ids,
        (1..=5000).collect::<Vec<_>>(),
        "every id once, in order"
    );
    assert_eq!(saved_checkpoint(&dir.join("data"), "gen"), Some(5000));
}

#[test]
fn a_restart_resumes_after_the_checkpoint() {
    let dir = Scratch::new("resume");
    let config = generator_to_file(&dir, "count = 1000", None);
    assert!(sluice().spawn(&config).wait().unwrap().success());
    let config = generator_to_file(&dir, "count = 2500", None);
    let mut running = sluice().spawn(&config);
    assert!(running.wait().unwrap().success());
    assert!(
        running
            .log()
            .contains("resuming after the saved checkpoint")
    );
    assert_eq!(
        ids(&dir.join("data/out.jsonl")),
        (1..=2500).collect::<Vec<_>>()
    );
    assert_eq!(saved_checkpoint(&dir.join("data"), "gen"), Some(2500));
}

#[test]
fn sigterm_drains_in_flight_events_and_records_the_checkpoint() {
    let dir = Scratch::new("sigterm");
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = generator_to_file(&dir, "rate = 5000\nbatch_size = 50", Some(api));
    let mut running = sluice().spawn(&config);
    running.wait_ready(api).unwrap();
    wait_for("some events delivered", || {
        let m = metrics(api).ok()?;
        let n = metric(
            &m,
            "sluice_component_received_events_total",
            &[("component_id", "out")],
        )?;
        (n >= 2000.0).then_some(())
    })
    .unwrap();
    running.signal("TERM");
    let status = running.wait().unwrap();
    assert!(status.success(), "{status}: {}", running.log());
    let log = running.log();
    assert!(log.contains("stopping: draining"), "{log}");
    let ids = ids(&dir.join("data/out.jsonl"));
    let checkpoint = saved_checkpoint(&dir.join("data"), "gen").unwrap();
    // Everything emitted was drained: the file ends exactly at the checkpoint, with no gap.
    assert_eq!(ids, (1..=checkpoint).collect::<Vec<_>>());
    assert!(checkpoint >= 2000);
}

#[test]
fn a_second_signal_exits_at_once_without_passing_delivery() {
    let dir = Scratch::new("twice");
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = dir.write(
        "pipeline.toml",
        &format!(
            r#"
            [api]
            address = "{api}"
            [pipeline]
            data_dir = "{data}"
            max_in_flight_events = 1000
            [sources.gen]
            type = "generator"
            batch_size = 100
            checkpoint_interval = "100ms"
            [sinks.slow]
            type = "blackhole"
            inputs = ["gen"]
            rate = 20
            "#,
            data = dir.join("data").display()
        ),
    );
    let mut running = sluice().spawn(&config);
    running.wait_ready(api).unwrap();
    wait_for("the budget to fill", || {
        let m = metrics(api).ok()?;
        (metric(
            &m,
            "sluice_source_in_flight_events",
            &[("component_id", "gen")],
        )? >= 900.0)
            .then_some(())
    })
    .unwrap();
    let data = dir.join("data");
    wait_for("a checkpoint saved while held back", || {
        saved_checkpoint(&data, "gen")
    })
    .unwrap();
    running.signal("TERM");
    wait_for("draining to start", || {
        running.log().contains("stopping: draining").then_some(())
    })
    .unwrap();
    // Draining 1000 events at 20/s would take 50 s; the second signal must not wait for it.
    let started = std::time::Instant::now();
    running.signal("TERM");
    let status = running.wait().unwrap();
    assert_eq!(status.code(), Some(128 + 15), "{}", running.log());
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    // The checkpoint was saved while running and covers only what the slow sink acknowledged,
    // never the ~1000 events in flight.
    let checkpoint = saved_checkpoint(&data, "gen").unwrap();
    assert!(
        checkpoint < 900,
        "checkpoint {checkpoint} ran ahead of delivery"
    );
}

#[test]
fn a_slow_sink_bounds_events_in_flight_and_memory() {
    // The generator makes events far faster than the sink takes them (1,000/s). Without
    // backpressure all 10,000 events of 8 KiB (80 MiB) would pile up in memory; with it, at
    // most `max_in_flight_events` are ever emitted and not yet acknowledged.
    let dir = Scratch::new("backpressure");
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = dir.write(
        "pipeline.toml",
        &format!(
            r#"
            [api]
            address = "{api}"
            [pipeline]
            data_dir = "{data}"
            max_in_flight_events = 500
            [sources.gen]
            type = "generator"
            count = 10000
            batch_size = 100
            payload_bytes = 8192
            [sinks.slow]
            type = "blackhole"
            inputs = ["gen"]
            rate = 1000
            "#,
            data = dir.join("data").display()
        ),
    );
    let mut running = sluice().spawn(&config);
    running.wait_ready(api).unwrap();
    let (peak, acked) = wait_for("most events acknowledged", || {
        let m = metrics(api).ok()?;
        let received = metric(
            &m,
            "sluice_component_received_events_total",
            &[("component_id", "slow")],
        )?;
        let peak = metric(
            &m,
            "sluice_source_in_flight_events_peak",
            &[("component_id", "gen")],
        )?;
        (received >= 9000.0).then_some((peak, received))
    })
    .unwrap();
    let rss_kib = running.peak_rss_kib().unwrap();
    assert!(running.wait().unwrap().success(), "{}", running.log());
    assert!(acked >= 9000.0);
    assert!(
        peak <= 500.0,
        "peak in flight {peak} exceeds the budget of 500"
    );
    assert!(
        peak >= 400.0,
        "the budget should have been used ({peak}): is the sink slow?"
    );
    assert!(
        rss_kib < 64 * 1024,
        "peak RSS {rss_kib} KiB: memory did not stay bounded"
    );
    assert_eq!(saved_checkpoint(&dir.join("data"), "gen"), Some(10000));
}

#[test]
fn rejected_events_go_to_the_quarantine_file_with_a_reason() {
    let dir = Scratch::new("quarantine");
    let data = dir.join("data");
    let config = dir.write(
        "pipeline.toml",
        &format!(
            r#"
            [pipeline]
            data_dir = "{data}"
            [sources.gen]
            type = "generator"
            count = 1000
            keys = 10
            [transforms.validate]
            type = "filter"
            inputs = ["gen"]
            field = "key"
            equals = "key-3"
            action = "quarantine"
            [sinks.out]
            type = "file"
            inputs = ["validate"]
            path = "{data}/out.jsonl"
            "#,
            data = data.display()
        ),
    );
    let mut running = sluice().spawn(&config);
    assert!(running.wait().unwrap().success(), "{}", running.log());
    let delivered: BTreeSet<u64> = ids(&data.join("out.jsonl")).into_iter().collect();
    let quarantined = json_lines(&data.join("quarantine.jsonl"));
    assert_eq!(delivered.len(), 900);
    assert_eq!(quarantined.len(), 100);
    for line in &quarantined {
        assert_eq!(line["key"], "key-3");
        assert_eq!(
            line["headers"]["sluice.quarantine.reason"],
            "filter validate: field key equals \"key-3\""
        );
        assert_eq!(line["headers"]["sluice.quarantine.component"], "validate");
    }
    // Quarantined events count as delivered: the checkpoint reaches the end.
    assert_eq!(saved_checkpoint(&data, "gen"), Some(1000));
}

#[test]
fn a_named_quarantine_sink_receives_rejects() {
    let dir = Scratch::new("dlq");
    let data = dir.join("data");
    let config = dir.write(
        "pipeline.toml",
        &format!(
            r#"
            [pipeline]
            data_dir = "{data}"
            [quarantine]
            sink = "dlq"
            [sources.gen]
            type = "generator"
            count = 100
            keys = 4
            [transforms.validate]
            type = "filter"
            inputs = ["gen"]
            field = "key"
            one_of = ["key-1", "key-2"]
            action = "quarantine"
            [sinks.out]
            type = "blackhole"
            inputs = ["validate"]
            [sinks.dlq]
            type = "file"
            path = "{data}/dlq.jsonl"
            "#,
            data = data.display()
        ),
    );
    let mut running = sluice().spawn(&config);
    assert!(running.wait().unwrap().success(), "{}", running.log());
    assert_eq!(json_lines(&data.join("dlq.jsonl")).len(), 50);
    assert!(!data.join("quarantine.jsonl").exists());
    assert_eq!(saved_checkpoint(&data, "gen"), Some(100));
}

#[test]
fn a_failing_component_stops_the_pipeline_and_holds_the_checkpoint() {
    let dir = Scratch::new("failure");
    let blocker = dir.write("not-a-directory", "");
    let config = dir.write(
        "pipeline.toml",
        &format!(
            r#"
            [pipeline]
            data_dir = "{data}"
            [sources.gen]
            type = "generator"
            count = 1000
            [sinks.out]
            type = "file"
            inputs = ["gen"]
            path = "{blocker}/out.jsonl"
            "#,
            data = dir.join("data").display(),
            blocker = blocker.display()
        ),
    );
    let mut running = sluice().spawn(&config);
    let status = running.wait().unwrap();
    let log = running.log();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("component failed") && log.contains("component_id=out"),
        "{log}"
    );
    assert!(log.contains("opening"), "the cause is named: {log}");
    assert_eq!(
        saved_checkpoint(&dir.join("data"), "gen"),
        None,
        "nothing was delivered"
    );
}

#[test]
fn sighup_reloads_a_valid_config_losing_nothing_and_refuses_an_invalid_one() {
    let dir = Scratch::new("reload");
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let source = "rate = 2000\nbatch_size = 50";
    let config = generator_to_file(&dir, source, Some(api));
    let mut running = sluice().spawn(&config);
    running.wait_ready(api).unwrap();
    let out = dir.join("data/out.jsonl");
    let delivered = |at_least: usize| {
        wait_for(&format!("{at_least} events delivered"), || {
            let n = json_lines(&out).len();
            (n >= at_least).then_some(n)
        })
        .unwrap()
    };
    let before = delivered(500);

    // An invalid config is refused; the running pipeline keeps delivering.
    let valid = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, valid.replace("type = \"file\"", "type = \"fiel\"")).unwrap();
    running.signal("HUP");
    wait_for("the refusal logged", || {
        running
            .log()
            .contains("the new config is invalid")
            .then_some(())
    })
    .unwrap();
    assert!(
        running.log().contains(r#"unknown sink type "fiel""#),
        "{}",
        running.log()
    );
    delivered(before + 500);
    let refused = wait_for("the refusal counted", || {
        metric(
            &metrics(api).ok()?,
            "sluice_config_reloads_total",
            &[("result", "invalid")],
        )
    })
    .unwrap();
    assert_eq!(refused, 1.0);

    // A valid one (a dedupe stage added) replaces the pipeline after it drained.
    let with_dedupe = valid
        .replace("inputs = [\"gen\"]", "inputs = [\"dedupe\"]")
        .replace(
            "[sinks.out]",
            "[transforms.dedupe]\ntype = \"dedupe\"\ninputs = [\"gen\"]\n[sinks.out]",
        );
    std::fs::write(&config, with_dedupe).unwrap();
    let at_reload = json_lines(&out).len();
    running.signal("HUP");
    wait_for("the reload", || {
        running.log().contains("reloaded").then_some(())
    })
    .unwrap();
    delivered(at_reload + 1000);
    let applied = metric(
        &metrics(api).unwrap(),
        "sluice_config_reloads_total",
        &[("result", "applied")],
    );
    assert_eq!(applied, Some(1.0));
    assert_eq!(
        metric(
            &metrics(api).unwrap(),
            "sluice_component_received_events_total",
            &[("component_id", "dedupe")]
        )
        .map(|n| n > 0.0),
        Some(true),
        "the new stage runs"
    );

    running.signal("TERM");
    assert!(running.wait().unwrap().success(), "{}", running.log());
    let ids = ids(&out);
    let last = saved_checkpoint(&dir.join("data"), "gen").unwrap();
    assert_eq!(
        ids,
        (1..=last).collect::<Vec<_>>(),
        "every id once, in order, across the reload"
    );
}

#[test]
fn several_pipelines_run_in_one_process_and_share_its_api() {
    let dir = Scratch::new("several");
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let pipeline = |name: &str| {
        dir.write(
            &format!("{name}.toml"),
            &format!(
                r#"
                [api]
                address = "{api}"
                [pipeline]
                data_dir = "{data}"
                [sources.{name}_gen]
                type = "generator"
                rate = 1000
                [sinks.{name}_out]
                type = "file"
                inputs = ["{name}_gen"]
                path = "{data}/{name}.jsonl"
                "#,
                data = dir.join(name).display()
            ),
        )
    };
    let (a, b) = (pipeline("a"), pipeline("b"));
    let mut running = sluice().spawn_all(&[&a, &b], &[]);
    running.wait_ready(api).unwrap();
    for name in ["a_out", "b_out"] {
        wait_for(&format!("events through {name}"), || {
            let received = metric(
                &metrics(api).ok()?,
                "sluice_component_received_events_total",
                &[("component_id", name)],
            )?;
            (received > 100.0).then_some(())
        })
        .unwrap();
    }
    let status = sluice().output(&["status", "--api", &api.to_string()]);
    let table = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{table}");
    for name in ["a", "b"] {
        let line = table
            .lines()
            .find(|l| l.contains(&format!("{name}_gen")))
            .unwrap_or_else(|| panic!("sluice status shows {name}_gen: {table}"));
        assert!(
            line.contains(&format!("{name}.toml"))
                && line.contains("always")
                && line.contains("true"),
            "{line}"
        );
    }
    running.signal("TERM");
    assert!(running.wait().unwrap().success(), "{}", running.log());
    for name in ["a", "b"] {
        let out = json_lines(&dir.join(name).join(format!("{name}.jsonl")));
        let last = saved_checkpoint(&dir.join(name), &format!("{name}_gen")).unwrap();
        assert_eq!(
            out.len() as u64,
            last,
            "{name}: every event once, up to the checkpoint"
        );
    }
}

#[test]
fn pipelines_that_clash_are_refused_together() {
    let dir = Scratch::new("clash");
    let a = generator_to_file(&dir, "count = 10", None);
    let b = dir.write("b.toml", &std::fs::read_to_string(&a).unwrap());
    let out = sluice().output(&["run", a.to_str().unwrap(), b.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(r#"both have a component "gen""#) && stderr.contains("rename one"),
        "{stderr}"
    );
}
