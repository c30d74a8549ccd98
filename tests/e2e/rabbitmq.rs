//! The `rabbitmq` sink through the binary, against the local RabbitMQ: generated events arrive
//! once, persistent and in key order; unroutable and oversized events are quarantined while the
//! rest flows; a broker stopped and started mid-stream loses nothing and holds the checkpoint
//! while it is down; and a consumer written with another client library (Python's pika) reads
//! the messages.
//!
//! Each test owns a virtual host. nextest runs these one at a time (`.config/nextest.toml`),
//! since one of them stops the broker; all of them also ride out a broker restart.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::process::Command;

use crate::sluice;
use sluice_tests::rabbitmq::{Received, Vhost, rabbitmqctl_patiently};
use sluice_tests::{Scratch, free_port, json_lines, metric, metrics, saved_checkpoint, wait_for};

/// Every message ready in `queue` of `vhost`, in queue order.
fn take_ready(vhost: &Vhost, queue: &str) -> Vec<Received> {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime
        .block_on(sluice_tests::rabbitmq::Reader::new(vhost.url()).take_ready(queue))
        .unwrap()
}

/// Checks that the first delivery of each generated event comes in sequence order per key, and
/// returns the sequence numbers delivered, without duplicates.
fn in_key_order(messages: &[Received]) -> BTreeSet<u64> {
    let mut last: HashMap<String, u64> = HashMap::new();
    let mut seen = BTreeSet::new();
    for m in messages {
        let body = m.json();
        let seq = body["seq"].as_u64().unwrap();
        let key = body["key"].as_str().unwrap().to_owned();
        assert_eq!(m.message_id.as_deref(), Some(format!("gen-{seq}").as_str()));
        if !seen.insert(seq) {
            continue;
        }
        if let Some(previous) = last.insert(key.clone(), seq) {
            assert!(
                previous < seq,
                "{key}: gen-{seq} arrived after gen-{previous}"
            );
        }
    }
    seen
}

/// A pipeline from the generator (`source` settings) to the `rabbitmq` sink `broker`
/// (`sink` settings), publishing to exchange `orders` (direct, declared), whose queue `orders`
/// takes routing key `generated`.
fn pipeline(
    dir: &Scratch,
    vhost: &Vhost,
    source: &str,
    sink: &str,
    api: Option<SocketAddr>,
) -> std::path::PathBuf {
    let sink =
        format!("{sink}\n[[sinks.broker.declare.exchanges]]\nname = \"orders\"\ntype = \"direct\"");
    pipeline_binding_orders(dir, vhost, source, &sink, api)
}

/// [`pipeline`] without declaring the exchange: only its queue and binding are declared.
fn pipeline_binding_orders(
    dir: &Scratch,
    vhost: &Vhost,
    source: &str,
    sink: &str,
    api: Option<SocketAddr>,
) -> std::path::PathBuf {
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
            [sinks.broker]
            type = "rabbitmq"
            inputs = ["gen"]
            url = "{url}"
            exchange = "orders"
            # Generated events have no aggregatetype for the default routing key.
            routing_key = "{{type}}"
            properties = ["content_type", "correlation_id"]
            {sink}
            [[sinks.broker.declare.queues]]
            name = "orders"
            [[sinks.broker.declare.bindings]]
            exchange = "orders"
            queue = "orders"
            routing_key = "generated"
            "#,
            data = dir.join("data").display(),
            url = vhost.url(),
        ),
    )
}

#[test]
fn bindings_may_name_the_exchange_that_exchange_type_declares() {
    let vhost = Vhost::create("e2e-declared").unwrap();
    let dir = Scratch::new("rabbitmq-declared");
    let config = pipeline_binding_orders(
        &dir,
        &vhost,
        "count = 100",
        "exchange_type = \"direct\"",
        None,
    );
    let mut running = sluice().spawn(&config);
    let status = running.wait().unwrap();
    assert!(status.success(), "{}", running.log());
    assert_eq!(take_ready(&vhost, "orders").len(), 100);
}

#[test]
fn generated_events_arrive_once_persistent_and_in_key_order() {
    let vhost = Vhost::create("e2e-order").unwrap();
    let dir = Scratch::new("rabbitmq-order");
    let config = pipeline(
        &dir,
        &vhost,
        "count = 5000\nkeys = 12\nbatch_size = 200",
        "channels = 4\nconfirm_window = 256\nheaders = { origin = \"gen/{key}\" }",
        None,
    );
    let mut running = sluice().spawn(&config);
    let status = running.wait().unwrap();
    assert!(status.success(), "{}", running.log());
    assert_eq!(saved_checkpoint(&dir.join("data"), "gen"), Some(5000));

    let messages = take_ready(&vhost, "orders");
    assert_eq!(messages.len(), 5000, "each event exactly once");
    assert_eq!(in_key_order(&messages), (1..=5000).collect());
    for m in &messages {
        let key = m.json()["key"].as_str().unwrap().to_owned();
        assert_eq!(m.delivery_mode, Some(2), "persistent");
        assert_eq!(m.routing_key, "generated");
        assert_eq!(m.kind.as_deref(), Some("generated"));
        assert_eq!(m.content_type.as_deref(), Some("application/json"));
        assert_eq!(m.correlation_id.as_deref(), Some(key.as_str()));
        assert_eq!(m.header("origin"), Some(format!("gen/{key}").as_str()));
        assert_eq!(m.headers.len(), 1, "identity travels in properties");
    }
    let log = running.log();
    assert!(log.contains("connected to RabbitMQ"), "{log}");
}

#[test]
fn unroutable_and_oversized_events_are_quarantined_and_the_rest_flows() {
    let vhost = Vhost::create("e2e-quarantine").unwrap();
    let dir = Scratch::new("rabbitmq-quarantine");
    // Routing by key: only key-0 … key-2 are bound, so key-3 is unroutable.
    let config = dir.write(
        "pipeline.toml",
        &format!(
            r#"
            [pipeline]
            data_dir = "{data}"
            [sources.gen]
            type = "generator"
            count = 400
            keys = 4
            [sources.big]
            type = "generator"
            count = 3
            payload_bytes = 5000
            [sinks.broker]
            type = "rabbitmq"
            inputs = ["gen", "big"]
            url = "{url}"
            exchange = "orders"
            routing_key = "{{key}}"
            quarantine_exchange = "quarantine"
            max_payload_bytes = 4096
            [[sinks.broker.declare.exchanges]]
            name = "orders"
            type = "direct"
            [[sinks.broker.declare.exchanges]]
            name = "quarantine"
            type = "fanout"
            [[sinks.broker.declare.queues]]
            name = "orders"
            [[sinks.broker.declare.queues]]
            name = "quarantined"
            [[sinks.broker.declare.bindings]]
            exchange = "quarantine"
            queue = "quarantined"
            {bindings}
            "#,
            data = dir.join("data").display(),
            url = vhost.url(),
            bindings = (0..3)
                .map(|k| format!(
                    "[[sinks.broker.declare.bindings]]\nexchange = \"orders\"\nqueue = \"orders\"\nrouting_key = \"key-{k}\"\n"
                ))
                .collect::<String>(),
        ),
    );
    let mut running = sluice().spawn(&config);
    let status = running.wait().unwrap();
    assert!(status.success(), "{}", running.log());
    assert_eq!(saved_checkpoint(&dir.join("data"), "gen"), Some(400));
    assert_eq!(saved_checkpoint(&dir.join("data"), "big"), Some(3));

    let delivered = take_ready(&vhost, "orders");
    let delivered_seqs = in_key_order(&delivered);
    let expected: BTreeSet<u64> = (1..=400).filter(|n| n % 4 != 3).collect();
    assert_eq!(delivered_seqs, expected);

    let quarantined = take_ready(&vhost, "quarantined");
    assert_eq!(quarantined.len(), 100);
    for m in &quarantined {
        assert_eq!(m.json()["key"], "key-3");
        assert_eq!(
            m.header("sluice.quarantine.reason"),
            Some(
                "unroutable: exchange \"orders\" has no route for routing key \"key-3\" (312 NO_ROUTE)"
            )
        );
        assert_eq!(m.header("sluice.quarantine.component"), Some("broker"));
        assert_eq!(m.routing_key, "key-3");
    }

    let file = json_lines(&dir.join("data/quarantine.jsonl"));
    assert_eq!(
        file.len(),
        3,
        "the oversized events, in the pipeline's quarantine"
    );
    for line in &file {
        assert!(line["id"].as_str().unwrap().starts_with("big-"));
        let reason = line["headers"]["sluice.quarantine.reason"]
            .as_str()
            .unwrap();
        assert!(
            reason.ends_with("is larger than max_payload_bytes (4096)"),
            "{reason}"
        );
    }
}

/// Stops the broker's application and starts it again when dropped, so that a failing test
/// never leaves RabbitMQ down for the others.
struct StoppedBroker;

impl StoppedBroker {
    fn stop() -> Self {
        rabbitmqctl_patiently(&["stop_app"]).unwrap();
        StoppedBroker
    }
}

impl Drop for StoppedBroker {
    fn drop(&mut self) {
        if let Err(e) = rabbitmqctl_patiently(&["start_app"]) {
            eprintln!("could not start RabbitMQ again: {e}");
        }
    }
}

fn sink_metric(api: SocketAddr, name: &str) -> Option<f64> {
    metric(&metrics(api).ok()?, name, &[("component_id", "broker")])
}

fn source_metric(api: SocketAddr, name: &str) -> Option<f64> {
    metric(&metrics(api).ok()?, name, &[("component_id", "gen")])
}

#[test]
fn a_broker_restart_mid_stream_loses_nothing_and_holds_the_checkpoint() {
    let vhost = Vhost::create("e2e-restart").unwrap();
    let dir = Scratch::new("rabbitmq-restart");
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = pipeline(
        &dir,
        &vhost,
        "count = 6000\nrate = 1000\nkeys = 8\nbatch_size = 50\ncheckpoint_interval = \"100ms\"",
        "channels = 3\nbackoff_initial = \"100ms\"\nbackoff_max = \"1s\"",
        Some(api),
    );
    let mut running = sluice().spawn(&config);
    running.wait_ready(api).unwrap();
    wait_for("1000 events confirmed", || {
        (sink_metric(api, "sluice_rabbitmq_confirmed_messages_total")? >= 1000.0).then_some(())
    })
    .unwrap();

    let stopped = StoppedBroker::stop();
    wait_for("the sink to notice", || {
        (sink_metric(api, "sluice_component_ready")? == 0.0).then_some(())
    })
    .unwrap();
    // At least 300 ms after the sink lost the connection (it counts the loss, then each failed
    // attempt after 100 ms, 200 ms…), so the checkpoint gauge (refreshed every 100 ms) is
    // current.
    wait_for("failed reconnection attempts", || {
        (sink_metric(api, "sluice_rabbitmq_reconnects_total")? >= 3.0).then_some(())
    })
    .unwrap();
    let held = source_metric(api, "sluice_source_checkpoint_position").unwrap();
    // Seconds later, with events waiting (the sink stopped reading; the source is held back),
    // the checkpoint has not moved.
    wait_for("more failed reconnection attempts", || {
        (sink_metric(api, "sluice_rabbitmq_reconnects_total")? >= 6.0).then_some(())
    })
    .unwrap();
    assert!(source_metric(api, "sluice_source_in_flight_events").unwrap() > 0.0);
    assert_eq!(
        source_metric(api, "sluice_source_checkpoint_position"),
        Some(held),
        "the checkpoint moved while the broker was down"
    );
    let saved = saved_checkpoint(&dir.join("data"), "gen").unwrap();
    assert!(
        saved as f64 <= held,
        "saved {saved} ahead of the checkpoint {held}"
    );
    assert!(held < 6000.0);
    drop(stopped);

    let status = running.wait().unwrap();
    assert!(status.success(), "{}", running.log());
    assert_eq!(saved_checkpoint(&dir.join("data"), "gen"), Some(6000));
    let messages = take_ready(&vhost, "orders");
    assert_eq!(
        in_key_order(&messages),
        (1..=6000).collect(),
        "nothing lost"
    );
    let log = running.log();
    assert!(log.contains("lost the connection to RabbitMQ"), "{log}");
}

const PIKA_CONSUMER: &str = r#"
import json, sys
import pika

url, queue = sys.argv[1], sys.argv[2]
connection = pika.BlockingConnection(pika.URLParameters(url))
channel = connection.channel()
while True:
    method, properties, body = channel.basic_get(queue, auto_ack=True)
    if method is None:
        break
    headers = {
        k: v.decode() if isinstance(v, bytes) else v
        for k, v in (properties.headers or {}).items()
    }
    print(json.dumps({
        "routing_key": method.routing_key,
        "message_id": properties.message_id,
        "type": properties.type,
        "delivery_mode": properties.delivery_mode,
        "content_type": properties.content_type,
        "app_id": properties.app_id,
        "correlation_id": properties.correlation_id,
        "headers": headers,
        "body": json.loads(body),
    }))
connection.close()
"#;

fn pika_imports() -> bool {
    Command::new("python3")
        .args(["-c", "import pika"])
        .status()
        .is_ok_and(|s| s.success())
}

/// Makes sure Python can import pika, installing it with pip if it cannot.
fn ensure_pika() {
    if pika_imports() {
        return;
    }
    let install = Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", "pika>=1.3"])
        .output()
        .expect("python3 and pip are needed for the pika consumer test");
    assert!(
        install.status.success() && pika_imports(),
        "installing pika failed: {}",
        String::from_utf8_lossy(&install.stderr)
    );
}

#[test]
fn a_python_pika_consumer_reads_the_messages() {
    ensure_pika();
    let vhost = Vhost::create("e2e-pika").unwrap();
    let dir = Scratch::new("rabbitmq-pika");
    let config = pipeline(&dir, &vhost, "count = 300\nkeys = 5", "", None);
    let mut running = sluice().spawn(&config);
    assert!(running.wait().unwrap().success(), "{}", running.log());

    let script = dir.write("consume.py", PIKA_CONSUMER);
    let out = Command::new("python3")
        .arg(&script)
        .arg(vhost.url())
        .arg("orders")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = out.stdout.split(|b| *b == b'\n').filter(|l| !l.is_empty());
    let messages: Vec<serde_json::Value> =
        lines.map(|l| serde_json::from_slice(l).unwrap()).collect();
    assert_eq!(messages.len(), 300);
    let mut last: HashMap<String, u64> = HashMap::new();
    for m in &messages {
        let seq = m["body"]["seq"].as_u64().unwrap();
        let key = m["body"]["key"].as_str().unwrap();
        assert_eq!(m["message_id"], format!("gen-{seq}"));
        assert_eq!(m["type"], "generated");
        assert_eq!(m["delivery_mode"], 2);
        assert_eq!(m["content_type"], "application/json");
        assert_eq!(m["app_id"], serde_json::Value::Null);
        assert_eq!(m["routing_key"], "generated");
        assert_eq!(m["correlation_id"], key);
        if let Some(previous) = last.insert(key.to_owned(), seq) {
            assert!(previous < seq, "{key}: {seq} after {previous}");
        }
    }
}
