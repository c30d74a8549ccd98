//! The HTTP API: `/health`, `/ready` and `/metrics` with the engine's series.

use std::net::SocketAddr;

use crate::sluice;
use sluice_tests::{Scratch, free_port, http_get, metric, metrics, wait_for};

#[test]
fn health_ready_and_metrics_are_served() {
    let dir = Scratch::new("api");
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
            rate = 2000
            [transforms.dedupe]
            type = "dedupe"
            inputs = ["gen"]
            [sinks.out]
            type = "blackhole"
            inputs = ["dedupe"]
            "#,
            data = dir.join("data").display()
        ),
    );
    let mut running = sluice().spawn(&config);
    running.wait_ready(api).unwrap();
    assert_eq!(http_get(api, "/health").unwrap(), (200, "ok\n".to_owned()));
    let m = wait_for("events through every stage", || {
        let m = metrics(api).ok()?;
        let out = metric(
            &m,
            "sluice_component_received_events_total",
            &[("component_id", "out")],
        )?;
        let checkpoint = metric(
            &m,
            "sluice_source_checkpoint_position",
            &[("component_id", "gen")],
        )?;
        (out >= 100.0 && checkpoint >= 100.0).then_some(m)
    })
    .unwrap();
    for (name, id) in [
        ("sluice_component_sent_events_total", "gen"),
        ("sluice_component_sent_bytes_total", "gen"),
        ("sluice_component_received_events_total", "dedupe"),
        ("sluice_component_sent_events_total", "dedupe"),
        ("sluice_component_ready", "out"),
        ("sluice_source_in_flight_events", "gen"),
        ("sluice_component_batch_size_events_count", "out"),
    ] {
        assert!(
            metric(&m, name, &[("component_id", id)]).is_some(),
            "{name}{{component_id={id}}} missing"
        );
    }
    running.signal("TERM");
    assert!(running.wait().unwrap().success(), "{}", running.log());
}
