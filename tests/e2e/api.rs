//! The HTTP API: `/health`, `/ready` and `/metrics` with the engine's series, and HELP text on
//! every metric family of every kind of component.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::gateway::send_raw;
use crate::sluice;
use sluice_tests::rabbitmq::Vhost;
use sluice_tests::{Scratch, TestDb, free_port, http_get, metric, metrics, wait_for};

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

/// Every metric family a process with every kind of component exposes has HELP text, and every
/// histogram has buckets: a family registered without a description fails here.
#[test]
fn every_metric_family_of_every_component_kind_has_help() {
    let db = TestDb::create("api_help");
    db.execute(include_str!("../../examples/sql/outbox-poll.sql"));
    db.execute(
        "CREATE TABLE cdc_outbox (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            aggregatetype text NOT NULL,
            aggregateid text NOT NULL,
            type text NOT NULL,
            payload jsonb NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now())",
    );
    let vhost = Vhost::create("api_help").unwrap();
    let dir = Scratch::new("api-help");
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let gateway: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let ingress: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let etcd =
        std::env::var("ETCD_ENDPOINTS").unwrap_or_else(|_| "http://127.0.0.1:2379".to_owned());
    let redis = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = format!("e2e-api-help-{}-{}/", std::process::id(), free_port());
    let config = dir.write(
        "all.toml",
        &format!(
            r#"
            [api]
            address = "{api}"
            [pipeline]
            data_dir = "{data}"
            [coord]
            backend = "etcd"
            endpoints = "{etcd}"
            ttl = "2s"
            node = "help"
            [redis]
            url = "{redis}"
            [ids.generators.numbers]
            type = "uuid7"
            [sources.gen]
            type = "generator"
            rate = 100
            [sources.cdc]
            type = "postgres_cdc"
            url = "{url}"
            slot = "{slot}"
            publication = "{slot}"
            tables = ["public.cdc_outbox"]
            status_interval = "100ms"
            heartbeat = "200ms"
            lag_interval = "200ms"
            [sources.cdc.cleanup]
            retention = "1h"
            interval = "200ms"
            [sources.poll]
            type = "postgres_poll"
            url = "{url}"
            interval = "50ms"
            backlog_interval = "200ms"
            [sources.gateway]
            type = "gateway"
            address = "{gateway}"
            [sources.gateway.upstreams.nowhere]
            instances = ["http://127.0.0.1:1"]
            [[sources.gateway.routes]]
            id = "nowhere"
            prefix = "/"
            upstream = "nowhere"
            [sources.ingress]
            type = "http_ingress"
            address = "{ingress}"
            path = "/events"
            content_types = ["application/json"]
            [sources.watch]
            type = "coord_watch"
            prefix = "{prefix}watched/"
            [transforms.events]
            type = "outbox"
            inputs = ["cdc", "poll"]
            [transforms.dedupe]
            type = "dedupe"
            inputs = ["events"]
            [transforms.numbered]
            type = "id"
            inputs = ["gen"]
            generator = "numbers"
            [transforms.some]
            type = "filter"
            inputs = ["numbered"]
            field = "key"
            equals = "key-3"
            [sinks.broker]
            type = "rabbitmq"
            inputs = ["dedupe"]
            url = "{amqp}"
            routing_key = "help"
            [[sinks.broker.declare.queues]]
            name = "help"
            [sinks.file]
            type = "file"
            inputs = ["some"]
            path = "{out}"
            [sinks.stdout]
            type = "stdout"
            inputs = ["watch"]
            [sinks.hole]
            type = "blackhole"
            inputs = ["gateway", "ingress"]
            [sinks.kv]
            type = "coord_kv"
            inputs = ["gen"]
            key = "{prefix}kv/{{id}}"
            [sinks.evict]
            type = "cache_invalidate"
            inputs = ["cdc"]
            keys = ["{prefix}cache/{{id}}"]
            "#,
            data = dir.join("data").display(),
            url = db.url,
            slot = db.name,
            amqp = vhost.url(),
            out = dir.join("out.jsonl").display(),
        ),
    );
    let mut running = sluice().spawn(&config);
    running
        .wait_ready(api)
        .unwrap_or_else(|e| panic!("{e}; log:\n{}", running.log()));
    db.execute(
        "INSERT INTO cdc_outbox (aggregatetype, aggregateid, type, payload)
             VALUES ('order', '1', 'OrderCreated', '{}');
         INSERT INTO outbox (aggregatetype, aggregateid, type, payload)
             VALUES ('order', '2', 'OrderCreated', '{}')",
    );
    send_raw(
        gateway,
        "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    let body = r#"{"hello":"world"}"#;
    send_raw(
        ingress,
        &format!(
            "POST /events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    );
    let expected = [
        "sluice_build_info",
        "sluice_component_batch_size_events",
        "sluice_source_in_flight_events_limit",
        "sluice_postgres_cdc_replication_lag_seconds",
        "sluice_postgres_poll_backlog_rows",
        "sluice_postgres_poll_open_batches_limit",
        "sluice_postgres_cleanup_deleted_rows_total",
        "sluice_rabbitmq_confirm_latency_seconds",
        "sluice_rabbitmq_in_flight_messages_limit",
        "sluice_gateway_requests_total",
        "sluice_gateway_request_duration_seconds",
        "sluice_http_ingress_requests_total",
        "sluice_ids_issued_total",
    ];
    let text = wait_for("a series of every expected family", || {
        let (_, text) = http_get(api, "/metrics").ok()?;
        let confirmed = metric(
            &metrics(api).ok()?,
            "sluice_rabbitmq_confirmed_messages_total",
            &[("component_id", "broker")],
        )?;
        let families = families(&text);
        (confirmed >= 2.0 && expected.iter().all(|f| families.contains_key(*f))).then_some(text)
    })
    .unwrap_or_else(|e| {
        let text = http_get(api, "/metrics")
            .map(|(_, t)| t)
            .unwrap_or_default();
        panic!("{e}; metrics:\n{text}\nlog:\n{}", running.log())
    });
    let families = families(&text);
    let undescribed: Vec<&str> = families
        .iter()
        .filter(|(_, (_, help))| !help)
        .map(|(name, _)| name.as_str())
        .collect();
    assert!(
        undescribed.is_empty(),
        "families without HELP: {undescribed:?}\n{text}"
    );
    let summaries: Vec<&str> = families
        .iter()
        .filter(|(_, (kind, _))| kind == "summary")
        .map(|(name, _)| name.as_str())
        .collect();
    assert!(
        summaries.is_empty(),
        "summaries, not histograms: {summaries:?}"
    );
    assert!(families.len() > 40, "{} families:\n{text}", families.len());
    running.signal("TERM");
    assert!(running.wait().unwrap().success(), "{}", running.log());
}

/// Each metric family of a Prometheus text page: its type and whether it has HELP.
fn families(text: &str) -> BTreeMap<String, (String, bool)> {
    let mut families = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            families
                .entry(name.to_owned())
                .or_insert((String::new(), false))
                .0 = kind.to_owned();
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split_once(' ').map_or(rest, |(name, _)| name);
            families
                .entry(name.to_owned())
                .or_insert((String::new(), false))
                .1 = true;
        }
    }
    families
}
