//! The `rabbitmq` sink against a real RabbitMQ, driven by whole pipelines run in-process: a
//! `scripted` source (defined here) emits exactly the events each case needs — outbox-shaped
//! ones with fields, headers, commit times, and broken ones — and the sink publishes them.
//!
//! Each test owns a virtual host (created and deleted with `rabbitmqctl`) and a scratch data
//! directory. The broker is `AMQP_URL` (default `amqp://guest:guest@127.0.0.1:5672/%2f`), as
//! `scripts/services.sh up` provides it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sluice_connectors::file::FileSinkConfig;
use sluice_connectors::rabbitmq::RabbitmqSinkConfig;
use sluice_connectors::rabbitmq::metrics as rabbitmq_metrics;
use sluice_pipeline::component::{BuildContext, DynSource};
use sluice_pipeline::{
    Config, Error, Event, FieldErrors, Position, Registry, ShutdownTrigger, Source, SourceConfig,
    SourceContext, Validate,
};
use sluice_tests::rabbitmq::cluster::Cluster;
use sluice_tests::rabbitmq::{
    Reader, Received, Vhost, amqps_url, amqps_urls, rabbitmqctl_patiently, vhost_url,
};
use sluice_tests::{Scratch, free_port, json_lines, metric, metrics, saved_checkpoint, test_ca};

/// One event the `scripted` source emits.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Ev {
    id: String,
    key: Option<String>,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    fields: BTreeMap<String, String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    payload: String,
    commit_ms: Option<u64>,
}

impl Ev {
    /// An outbox-shaped event of aggregate `key` (type `order`) with payload `{"key", "n"}`.
    fn order(key: &str, n: u64) -> Ev {
        Ev {
            id: format!("{key}-{n}"),
            key: Some(key.to_owned()),
            kind: "OrderChanged".into(),
            fields: BTreeMap::from([("aggregatetype".into(), "order".into())]),
            payload: serde_json::json!({"key": key, "n": n}).to_string(),
            commit_ms: Some(1_700_000_000_000 + n),
            ..Ev::default()
        }
    }

    fn with_field(mut self, name: &str, value: &str) -> Ev {
        self.fields.insert(name.into(), value.into());
        self
    }
}

/// Config of the `scripted` source: emits `events` in batches, then, if `gate` is set, keeps
/// emitting numbered copies of the last one until that file exists, then `after_gate` more;
/// records its checkpoint when everything is answered.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScriptedConfig {
    events: Vec<Ev>,
    #[serde(default = "default_batch")]
    batch: usize,
    pace_ms: Option<u64>,
    gate: Option<PathBuf>,
    #[serde(default)]
    after_gate: usize,
}

fn default_batch() -> usize {
    50
}

impl Validate for ScriptedConfig {
    fn validate(&self) -> Result<(), FieldErrors> {
        Ok(())
    }
}

impl SourceConfig for ScriptedConfig {
    fn build(&self, _cx: &BuildContext) -> Result<Box<dyn DynSource>, Error> {
        Ok(Box::new(Scripted(self.clone())))
    }
}

struct Scripted(ScriptedConfig);

fn event(ev: &Ev, position: u64) -> Event {
    let mut event = Event::new(
        ev.id.as_str(),
        Position(position),
        Bytes::from(ev.payload.clone()),
    );
    event.key = ev.key.as_deref().map(Into::into);
    event.event_type = ev.kind.as_str().into();
    for (name, value) in &ev.fields {
        event.fields.set(name.as_str(), Some(value.as_str().into()));
    }
    for (name, value) in &ev.headers {
        event
            .headers
            .set(name.as_str(), Some(value.as_str().into()));
    }
    event.meta.commit_time = ev
        .commit_ms
        .map(|ms| UNIX_EPOCH + Duration::from_millis(ms));
    event
}

impl Source for Scripted {
    async fn run(&mut self, cx: &mut SourceContext) -> Result<(), Error> {
        cx.set_ready(true);
        let config = &self.0;
        let pace = config.pace_ms.map(Duration::from_millis);
        let mut position = 0;
        let emit = |events: &[Ev], position: &mut u64| {
            events
                .iter()
                .map(|ev| {
                    *position += 1;
                    event(ev, *position)
                })
                .collect::<Vec<_>>()
        };
        for chunk in config.events.chunks(config.batch) {
            let batch = emit(chunk, &mut position);
            cx.emit(batch).await?;
            if let Some(pace) = pace {
                tokio::time::sleep(pace).await;
            }
        }
        if let (Some(gate), Some(last)) = (&config.gate, config.events.last()) {
            let mut extra = 0usize;
            let mut after = None;
            while after.is_none_or(|after| extra < after) {
                if after.is_none() && gate.exists() {
                    after = Some(extra + config.after_gate);
                }
                let mut ev = last.clone();
                extra += 1;
                let n = config.events.len() + extra;
                ev.id = format!("{}-x{n}", ev.key.as_deref().unwrap_or("none"));
                ev.payload = serde_json::json!({"key": ev.key, "n": n}).to_string();
                let batch = emit(std::slice::from_ref(&ev), &mut position);
                cx.emit(batch).await?;
                tokio::time::sleep(pace.unwrap_or(Duration::from_millis(1))).await;
            }
        }
        if let Some(checkpoint) = cx.drain().await {
            cx.checkpoint_store().save(checkpoint).unwrap();
        }
        Ok(())
    }
}

/// A pipeline `scripted` → `rabbitmq` in `dir`, with the sink settings `sink` (TOML).
fn pipeline(dir: &Scratch, source: &ScriptedConfig, sink: &str, api: Option<SocketAddr>) -> Config {
    let mut registry = Registry::new();
    registry
        .source::<ScriptedConfig>("scripted")
        .sink::<RabbitmqSinkConfig>("rabbitmq")
        .quarantine_file(|path| Box::new(FileSinkConfig::new(path)));
    let mut source = toml::Table::try_from(source).unwrap();
    source.insert("type".into(), "scripted".into());
    let mut sink: toml::Table = toml::from_str(sink).unwrap();
    sink.insert("type".into(), "rabbitmq".into());
    sink.insert("inputs".into(), toml::Value::Array(vec!["events".into()]));
    let table = |key: &str, value: toml::Value| {
        let mut table = toml::Table::new();
        table.insert(key.into(), value);
        toml::Value::Table(table)
    };
    let mut doc = toml::Table::new();
    let data = dir.join("data").display().to_string();
    doc.insert("pipeline".into(), table("data_dir", data.into()));
    if let Some(api) = api {
        doc.insert("api".into(), table("address", api.to_string().into()));
    }
    doc.insert("sources".into(), table("events", source.into()));
    doc.insert("sinks".into(), table("broker", sink.into()));
    let text = toml::to_string(&doc).unwrap();
    Config::parse(&text, &dir.join("pipeline.toml"), &registry, &|_| None)
        .unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn scripted(events: Vec<Ev>) -> ScriptedConfig {
    ScriptedConfig {
        events,
        batch: default_batch(),
        pace_ms: None,
        gate: None,
        after_gate: 0,
    }
}

async fn run(config: &Config) -> Result<(), sluice_pipeline::runtime::RunError> {
    let trigger = ShutdownTrigger::new();
    sluice_pipeline::run(config, trigger.subscribe()).await
}

fn quarantined_file(dir: &Scratch) -> Vec<serde_json::Value> {
    json_lines(&dir.join("data/quarantine.jsonl"))
}

/// Checks that, per key, the first delivery of each event comes in event order, and returns
/// the distinct ids delivered.
fn assert_key_order(messages: &[Received]) -> Vec<String> {
    let mut last: HashMap<String, u64> = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    let mut ids = Vec::new();
    for m in messages {
        let id = m.message_id.clone().unwrap();
        if !seen.insert(id.clone()) {
            continue;
        }
        ids.push(id);
        let body = m.json();
        let key = body["key"].as_str().unwrap().to_owned();
        let n = body["n"].as_u64().unwrap();
        if let Some(previous) = last.insert(key.clone(), n) {
            assert!(previous < n, "key {key}: {n} arrived after {previous}");
        }
    }
    ids
}

fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}

/// 1000 orders over five keys, paced, the last 300 held back until the returned gate file
/// exists: a stream still flowing while a test breaks the sink's connection.
fn gated_orders(dir: &Scratch) -> (ScriptedConfig, PathBuf) {
    let keys = ["a", "b", "c", "d", "e"];
    let events: Vec<Ev> = (0..1000u64)
        .map(|n| Ev::order(keys[n as usize % 5], n))
        .collect();
    let gate = dir.join("gate");
    let source = ScriptedConfig {
        events,
        batch: 20,
        pace_ms: Some(2),
        gate: Some(gate.clone()),
        after_gate: 300,
    };
    (source, gate)
}

/// Checks that the stream of [`gated_orders`] was checkpointed past its gate and that queue
/// `orders` holds every checkpointed event, in key order; returns how many copies were extra.
async fn every_gated_order_delivered_in_key_order(dir: &Scratch, reader: &mut Reader) -> usize {
    let checkpoint = saved_checkpoint(&dir.join("data"), "events").unwrap();
    assert!(checkpoint >= 1300, "{checkpoint}");
    let messages = reader.take_ready("orders").await.unwrap();
    let ids = assert_key_order(&messages);
    assert_eq!(
        ids.len() as u64,
        checkpoint,
        "every event delivered (duplicates aside)"
    );
    messages.len() - ids.len()
}

/// Waits until the sink `broker` behind `api` has reconnected at least once and is ready again.
async fn reconnected(api: SocketAddr) {
    tokio::task::spawn_blocking(move || {
        sluice_tests::wait_for("the sink to reconnect and be ready again", || {
            let m = metrics(api).ok()?;
            let ready = metric(&m, "sluice_component_ready", &[("component_id", "broker")])?;
            let reconnects = metric(
                &m,
                "sluice_rabbitmq_reconnects_total",
                &[("component_id", "broker")],
            )?;
            (ready == 1.0 && reconnects >= 1.0).then_some(())
        })
    })
    .await
    .unwrap()
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn delivers_every_event_once_persistent_and_in_key_order() {
    let vhost = Vhost::create("deliver").unwrap();
    let dir = Scratch::new("rabbitmq-deliver");
    let keys = ["a", "b", "c", "d", "e", "f", "g"];
    let mut events: Vec<Ev> = (0..2000u64)
        .map(|n| Ev::order(keys[(n * 7 / 3) as usize % keys.len()], n))
        .collect();
    events[5].headers.insert(
        "traceparent".into(),
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
    );
    let sink = format!(
        r##"
        url = "{url}"
        exchange = "outbox.{{aggregatetype}}"
        exchange_type = "topic"
        routing_key = "{{type}}.{{key}}"
        properties = ["content_type", "correlation_id", "timestamp"]
        channels = 4
        confirm_window = 64
        headers = {{ tenant = "acme-{{key}}" }}
        [[declare.queues]]
        name = "orders"
        [[declare.bindings]]
        exchange = "outbox.order"
        queue = "orders"
        routing_key = "#"
        [[declare.exchanges]]
        name = "outbox.order"
        type = "topic"
        "##,
        url = vhost.url()
    );
    let config = pipeline(&dir, &scripted(events.clone()), &sink, None);
    run(&config).await.unwrap();

    let messages = Reader::new(vhost.url()).take_ready("orders").await.unwrap();
    assert_eq!(messages.len(), events.len(), "every event exactly once");
    let ids = assert_key_order(&messages);
    assert_eq!(
        sorted(ids),
        sorted(events.iter().map(|e| e.id.clone()).collect())
    );
    for m in &messages {
        let n = m.json()["n"].as_u64().unwrap();
        let key = m.json()["key"].as_str().unwrap().to_owned();
        assert_eq!(m.exchange, "outbox.order");
        assert_eq!(m.routing_key, format!("OrderChanged.{key}"));
        assert_eq!(m.delivery_mode, Some(2), "persistent");
        assert_eq!(m.kind.as_deref(), Some("OrderChanged"));
        assert_eq!(m.content_type.as_deref(), Some("application/json"));
        assert_eq!(
            m.app_id, None,
            "no app_id: the broker pays per property byte"
        );
        assert_eq!(m.timestamp, Some(1_700_000_000 + n / 1000));
        assert_eq!(m.correlation_id.as_deref(), Some(key.as_str()));
        for standard in ["id", "type", "aggregateid", "aggregatetype"] {
            assert_eq!(m.header(standard), None, "{standard} travels in a property");
        }
        assert_eq!(m.header("tenant"), Some(format!("acme-{key}").as_str()));
    }
    let traced = messages
        .iter()
        .find(|m| m.message_id == Some(events[5].id.clone()))
        .unwrap();
    assert_eq!(
        traced.header("traceparent"),
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    );
    assert!(quarantined_file(&dir).is_empty());
    assert_eq!(saved_checkpoint(&dir.join("data"), "events"), Some(2000));
}

/// Sink settings: a direct `outbox.order` exchange routing `orders` to queue `orders`, and the
/// quarantine exchange `sluice.quarantine` feeding queue `quarantined`.
const QUARANTINE_TOPOLOGY: &str = r#"quarantine_exchange = "sluice.quarantine"
[[declare.exchanges]]
name = "outbox.order"
type = "direct"
[[declare.exchanges]]
name = "sluice.quarantine"
type = "fanout"
[[declare.queues]]
name = "orders"
[[declare.queues]]
name = "quarantined"
[[declare.bindings]]
exchange = "outbox.order"
queue = "orders"
routing_key = "orders"
[[declare.bindings]]
exchange = "sluice.quarantine"
queue = "quarantined"
"#;

#[tokio::test(flavor = "multi_thread")]
async fn quarantines_what_cannot_be_delivered_and_the_rest_flows() {
    let vhost = Vhost::create("quarantine").unwrap();
    let dir = Scratch::new("rabbitmq-quarantine");
    let mut events = Vec::new();
    let mut bad = BTreeMap::new();
    for n in 0..60u64 {
        let key = if n % 2 == 0 { "k1" } else { "k2" };
        let mut ev = Ev::order(key, n);
        let reason = match n {
            7 => {
                ev = ev.with_field("route", "nowhere");
                Some(
                    "unroutable: exchange \"outbox.order\" has no route for routing key \"nowhere\" (312 NO_ROUTE)",
                )
            }
            13 => {
                ev.payload = "{\"key\": \"k2\", oops".into();
                Some("payload is not JSON")
            }
            20 => {
                ev.key = None;
                Some("NULL aggregate id")
            }
            31 => {
                ev.fields.remove("aggregatetype");
                Some(
                    "exchange template \"outbox.{aggregatetype}\": the event has no value for {aggregatetype}",
                )
            }
            42 => {
                ev = ev.with_field("aggregatetype", "ghost");
                Some("exchange \"outbox.ghost\" does not exist")
            }
            _ => None,
        };
        if let Some(reason) = reason {
            bad.insert(ev.id.clone(), reason);
        }
        events.push(ev);
    }
    let mut big = Ev::order("k1", 1000);
    big.payload = serde_json::json!({"key": "k1", "n": 1000, "pad": "x".repeat(5000)}).to_string();
    events.push(big);
    let sink = format!(
        r##"
        url = "{url}"
        exchange = "outbox.{{aggregatetype}}"
        routing_key = "{{route}}"
        properties = ["content_type", "correlation_id"]
        channels = 3
        max_payload_bytes = 4096
        {QUARANTINE_TOPOLOGY}
        "##,
        url = vhost.url()
    );
    for ev in &mut events {
        ev.fields
            .entry("route".into())
            .or_insert_with(|| "orders".into());
    }
    let config = pipeline(&dir, &scripted(events.clone()), &sink, None);
    run(&config).await.unwrap();

    let mut reader = Reader::new(vhost.url());
    let delivered = reader.take_ready("orders").await.unwrap();
    let ids = assert_key_order(&delivered);
    let expected: Vec<String> = events
        .iter()
        .filter(|e| !bad.contains_key(&e.id) && e.payload.len() < 4096)
        .map(|e| e.id.clone())
        .collect();
    assert_eq!(sorted(ids), sorted(expected), "everything else delivered");

    let quarantined = reader.take_ready("quarantined").await.unwrap();
    assert_eq!(
        quarantined.len(),
        bad.len(),
        "{:?}",
        quarantined
            .iter()
            .map(|m| (&m.message_id, m.header("sluice.quarantine.reason")))
            .collect::<Vec<_>>()
    );
    for m in &quarantined {
        let id = m.message_id.clone().unwrap_or_default();
        let expected = bad
            .get(&id)
            .unwrap_or_else(|| panic!("unexpected quarantined message {id}"));
        let reason = m.header("sluice.quarantine.reason").unwrap();
        assert!(reason.starts_with(expected), "{id}: {reason}");
        assert_eq!(m.header("sluice.quarantine.component"), Some("broker"));
        assert_eq!(m.delivery_mode, Some(2));
        let original = events.iter().find(|e| e.id == id).unwrap();
        assert_eq!(
            m.body,
            original.payload.as_bytes(),
            "{id}: the body as stored"
        );
        if id == "k2-7" {
            assert_eq!(
                m.routing_key, "nowhere",
                "an unroutable message keeps its routing key"
            );
            assert_eq!(m.content_type.as_deref(), Some("application/json"));
        }
    }

    let file = quarantined_file(&dir);
    assert_eq!(file.len(), 1, "{file:?}");
    assert_eq!(file[0]["id"], "k1-1000");
    assert_eq!(
        file[0]["headers"]["sluice.quarantine.reason"],
        format!(
            "payload of {} bytes is larger than max_payload_bytes (4096)",
            events.last().unwrap().payload.len()
        )
    );
    assert_eq!(
        saved_checkpoint(&dir.join("data"), "events"),
        Some(events.len() as u64)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_quarantine_exchange_returns_go_to_the_pipeline_quarantine() {
    let vhost = Vhost::create("returns").unwrap();
    let dir = Scratch::new("rabbitmq-returns");
    let events: Vec<Ev> = (0..10).map(|n| Ev::order("k", n)).collect();
    // The default exchange routes by queue name; only "known" exists.
    let sink = format!(
        r#"
        url = "{url}"
        routing_key = "{{queue}}"
        [[declare.queues]]
        name = "known"
        "#,
        url = vhost.url()
    );
    let events: Vec<Ev> = events
        .into_iter()
        .map(|e| {
            let queue = if e.id.ends_with('3') {
                "unknown"
            } else {
                "known"
            };
            e.with_field("queue", queue)
        })
        .collect();
    run(&pipeline(&dir, &scripted(events), &sink, None))
        .await
        .unwrap();
    let delivered = Reader::new(vhost.url()).take_ready("known").await.unwrap();
    assert_eq!(delivered.len(), 9);
    let file = quarantined_file(&dir);
    assert_eq!(file.len(), 1);
    assert_eq!(file[0]["id"], "k-3");
    assert_eq!(
        file[0]["headers"]["sluice.quarantine.reason"],
        "unroutable: exchange \"\" has no route for routing key \"unknown\" (312 NO_ROUTE)"
    );
    assert_eq!(saved_checkpoint(&dir.join("data"), "events"), Some(10));
}

const ORDER_SCHEMA: &str = r#"{
    "type": "record", "name": "Order", "namespace": "shop",
    "fields": [{"name": "key", "type": "string"}, {"name": "n", "type": "long"}]
}"#;

#[tokio::test(flavor = "multi_thread")]
async fn avro_bodies_carry_the_confluent_header_and_cloudevents_headers() {
    let vhost = Vhost::create("avro").unwrap();
    let dir = Scratch::new("rabbitmq-avro");
    let schema_path = dir.write("order.avsc", ORDER_SCHEMA);
    let mut events: Vec<Ev> = (0..5).map(|n| Ev::order("k", n)).collect();
    events[2].payload = r#"{"n": 2}"#.into();
    let sink = format!(
        r#"
        url = "{url}"
        routing_key = "orders"
        properties = ["content_type", "correlation_id"]
        encoding = {{ codec = "avro", schema_file = "{schema}", confluent_schema_id = 42 }}
        cloudevents = {{ source = "/shop/{{aggregatetype}}" }}
        {QUARANTINE_TOPOLOGY}
        "#,
        url = vhost.url(),
        schema = schema_path.display()
    );
    run(&pipeline(&dir, &scripted(events), &sink, None))
        .await
        .unwrap();
    let mut reader = Reader::new(vhost.url());
    let delivered = reader.take_ready("orders").await.unwrap();
    assert_eq!(delivered.len(), 4);
    let schema = apache_avro::Schema::parse_str(ORDER_SCHEMA).unwrap();
    let decoder = apache_avro::reader::datum::GenericDatumReader::builder(&schema)
        .build()
        .unwrap();
    for m in &delivered {
        assert_eq!(m.content_type.as_deref(), Some("avro/binary"));
        assert_eq!(&m.body[..5], &[0, 0, 0, 0, 42], "Confluent header");
        let value = decoder.read_value(&mut &m.body[5..]).unwrap();
        let apache_avro::types::Value::Record(fields) = value else {
            panic!("{value:?}")
        };
        assert_eq!(fields[0].1, apache_avro::types::Value::String("k".into()));
        let id = m.message_id.clone().unwrap();
        assert_eq!(
            fields[1].1,
            apache_avro::types::Value::Long(id[2..].parse().unwrap())
        );
        assert_eq!(m.header("ce-specversion"), Some("1.0"));
        assert_eq!(m.header("ce-id"), Some(id.as_str()));
        assert_eq!(m.header("ce-source"), Some("/shop/order"));
        assert_eq!(m.header("ce-type"), Some("OrderChanged"));
        assert_eq!(m.header("ce-subject"), Some("k"));
        assert!(
            m.header("ce-time")
                .unwrap()
                .starts_with("2023-11-14T22:13:20.00")
        );
    }
    let quarantined = reader.take_ready("quarantined").await.unwrap();
    assert_eq!(quarantined.len(), 1);
    assert_eq!(
        quarantined[0].header("sluice.quarantine.reason"),
        Some("payload does not fit the Avro schema \"shop.Order\": field \"key\" is missing")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_nacked_event_is_retried_and_holds_back_only_its_key() {
    let vhost = Vhost::create("nack").unwrap();
    let dir = Scratch::new("rabbitmq-nack");
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    // Key "slow" goes to a queue that takes one message at a time and rejects (nacks) the
    // rest; key "fast" goes to a roomy queue.
    let mut events = Vec::new();
    for n in 0..25u64 {
        let (key, queue) = if n % 5 == 0 {
            ("slow", "tight")
        } else {
            ("fast", "roomy")
        };
        events.push(Ev::order(key, n).with_field("queue", queue));
    }
    let sink = format!(
        r#"
        url = "{url}"
        routing_key = "{{queue}}"
        max_in_flight_per_key = 1
        backoff_initial = "20ms"
        backoff_max = "100ms"
        [[declare.queues]]
        name = "tight"
        arguments = {{ "x-max-length" = 1, "x-overflow" = "reject-publish" }}
        [[declare.queues]]
        name = "roomy"
        "#,
        url = vhost.url()
    );
    let config = pipeline(&dir, &scripted(events), &sink, Some(api));
    let running = tokio::spawn(async move { run(&config).await });

    let mut reader = Reader::new(vhost.url());
    // Every "fast" event arrives while "slow" is stuck behind its full queue.
    let fast = reader.take_at_least("roomy", 20).await.unwrap();
    assert_eq!(fast.len(), 20);
    assert_key_order(&fast);
    let nacked = sluice_tests::wait_for("a nack", || {
        let m = metrics(api).ok()?;
        metric(
            &m,
            "sluice_rabbitmq_nacked_messages_total",
            &[("component_id", "broker")],
        )
        .filter(|n| *n > 0.0)
    })
    .unwrap();
    assert!(nacked > 0.0);
    assert_eq!(reader.ready("tight").await.unwrap(), 1);

    // Taking one at a time lets the retries through, in order.
    let mut slow = Vec::new();
    while slow.len() < 5 {
        slow.extend(reader.take_at_least("tight", 1).await.unwrap());
    }
    let ids: Vec<_> = slow.iter().map(|m| m.message_id.clone().unwrap()).collect();
    assert_eq!(ids, ["slow-0", "slow-5", "slow-10", "slow-15", "slow-20"]);
    running.await.unwrap().unwrap();
    assert_eq!(saved_checkpoint(&dir.join("data"), "events"), Some(25));
}

/// Closes the connections to virtual host `vhost` whose client named itself `name`.
fn close_connections(vhost: &str, name: &str) -> usize {
    let listing =
        rabbitmqctl_patiently(&["list_connections", "pid", "vhost", "client_properties"]).unwrap();
    let mut closed = 0;
    for line in listing.lines() {
        let mut columns = line.splitn(3, '\t');
        if let (Some(pid), Some(host), Some(properties)) =
            (columns.next(), columns.next(), columns.next())
            && host == vhost
            && properties.contains(&format!("\"{name}\""))
        {
            rabbitmqctl_patiently(&["close_connection", pid, "closed by a sluice test"]).unwrap();
            closed += 1;
        }
    }
    closed
}

#[tokio::test(flavor = "multi_thread")]
async fn a_closed_connection_is_reopened_and_nothing_is_lost() {
    let vhost = Vhost::create("reconnect").unwrap();
    let dir = Scratch::new("rabbitmq-reconnect");
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let (source, gate) = gated_orders(&dir);
    let sink = format!(
        r#"
        url = "{url}"
        routing_key = "orders"
        channels = 3
        backoff_initial = "50ms"
        [[declare.queues]]
        name = "orders"
        "#,
        url = vhost.url()
    );
    let config = pipeline(&dir, &source, &sink, Some(api));
    let running = tokio::spawn(async move { run(&config).await });
    let mut reader = Reader::new(vhost.url());
    while reader.ready("orders").await.unwrap() < 500 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let closed = tokio::task::spawn_blocking({
        let name = vhost.name().to_owned();
        move || close_connections(&name, "sluice broker")
    })
    .await
    .unwrap();
    assert_eq!(closed, 1, "the sink has one connection");
    reconnected(api).await;
    std::fs::write(&gate, b"").unwrap();
    running.await.unwrap().unwrap();

    every_gated_order_delivered_in_key_order(&dir, &mut reader).await;
}

/// Runs one event into a sink at `url` that must fail to start, checks that nothing was
/// checkpointed, and returns the error as printed.
async fn start_failure(test: &str, url: &str) -> String {
    let dir = Scratch::new(test);
    let sink = format!("url = \"{url}\"\nrouting_key = \"q\"");
    let error = run(&pipeline(
        &dir,
        &scripted(vec![Ev::order("k", 1)]),
        &sink,
        None,
    ))
    .await
    .unwrap_err();
    let text = sluice_pipeline::error::chain(&error);
    assert!(text.contains("connecting to RabbitMQ"), "{text}");
    assert!(saved_checkpoint(&dir.join("data"), "events").is_none());
    text
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_vhost_fails_the_sink_at_start() {
    start_failure("rabbitmq-novhost", &vhost_url("sluice-no-such-vhost")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_password_fails_the_sink_at_start_as_a_config_error() {
    let vhost = Vhost::create("password").unwrap();
    let (_, password) = sluice_tests::rabbitmq::credentials();
    let url = vhost
        .url()
        .replacen(&format!(":{password}@"), ":not-the-password@", 1);
    assert_ne!(url, vhost.url());
    let text = start_failure("rabbitmq-password", &url).await;
    assert!(
        text.contains("403"),
        "the broker's refusal is named: {text}"
    );
    assert!(
        !text.contains("not-the-password"),
        "the password is not shown: {text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_larger_than_a_frame_arrive_whole_and_come_back_whole_when_returned() {
    let vhost = Vhost::create("frames").unwrap();
    let dir = Scratch::new("rabbitmq-frames");
    // Frames of 8 KiB (the smallest allowed): each body below spans up to 7 of them.
    let url = format!("{}?frame_max=8192", vhost.url());
    let mut events: Vec<Ev> = (0..40u64)
        .map(|n| {
            let mut ev = Ev::order(if n % 2 == 0 { "a" } else { "b" }, n);
            let pad = "p".repeat(1000 * n as usize + 17);
            ev.payload = serde_json::json!({"key": ev.key, "n": n, "pad": pad}).to_string();
            ev.with_field("route", "orders")
        })
        .collect();
    events[25] = events[25].clone().with_field("route", "nowhere");
    let sink = format!(
        r##"
        url = "{url}"
        exchange = "outbox.order"
        routing_key = "{{route}}"
        {QUARANTINE_TOPOLOGY}
        "##
    );
    run(&pipeline(&dir, &scripted(events.clone()), &sink, None))
        .await
        .unwrap();

    let mut reader = Reader::new(vhost.url());
    let delivered = reader.take_ready("orders").await.unwrap();
    assert_key_order(&delivered);
    assert_eq!(delivered.len(), events.len() - 1);
    for m in &delivered {
        let id = m.message_id.clone().unwrap();
        let original = events.iter().find(|e| e.id == id).unwrap();
        assert_eq!(m.body, original.payload.as_bytes(), "{id}: the body, whole");
    }
    let quarantined = reader.take_ready("quarantined").await.unwrap();
    assert_eq!(quarantined.len(), 1);
    let returned = &quarantined[0];
    assert_eq!(returned.message_id.as_deref(), Some(events[25].id.as_str()));
    assert!(
        returned
            .header("sluice.quarantine.reason")
            .unwrap()
            .starts_with("unroutable"),
        "{:?}",
        returned.header("sluice.quarantine.reason")
    );
    assert_eq!(
        returned.body,
        events[25].payload.as_bytes(),
        "the returned body, whole"
    );
    assert!(events[25].payload.len() > 3 * 8192);
    assert_eq!(
        saved_checkpoint(&dir.join("data"), "events"),
        Some(events.len() as u64)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_connection_keeps_its_heartbeats() {
    let vhost = Vhost::create("heartbeat").unwrap();
    let dir = Scratch::new("rabbitmq-heartbeat");
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let gate = dir.join("gate");
    // One event, then one more every 3.5 s: the connection is idle for longer than the
    // broker waits for a heartbeat (two intervals of 1 s).
    let source = ScriptedConfig {
        events: vec![Ev::order("k", 1)],
        batch: 1,
        pace_ms: Some(3500),
        gate: Some(gate.clone()),
        after_gate: 0,
    };
    let sink = format!(
        r#"
        url = "{url}?heartbeat=1"
        routing_key = "orders"
        [[declare.queues]]
        name = "orders"
        "#,
        url = vhost.url()
    );
    let config = pipeline(&dir, &source, &sink, Some(api));
    let running = tokio::spawn(async move { run(&config).await });
    let reconnects = tokio::task::spawn_blocking(move || {
        sluice_tests::wait_for("three events confirmed across two idle gaps", || {
            let m = metrics(api).ok()?;
            let broker = [("component_id", "broker")];
            let confirmed = metric(&m, rabbitmq_metrics::CONFIRMED, &broker)?;
            let reconnects = metric(&m, rabbitmq_metrics::RECONNECTS, &broker).unwrap_or(0.0);
            (confirmed >= 3.0).then_some(reconnects)
        })
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        reconnects, 0.0,
        "the broker never dropped the idle connection"
    );
    std::fs::write(&gate, b"").unwrap();
    running.await.unwrap().unwrap();
    let messages = Reader::new(vhost.url()).take_ready("orders").await.unwrap();
    assert!(messages.len() >= 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn delivers_over_verified_tls_with_a_password_and_with_a_client_certificate() {
    let vhost = Vhost::create("tls").unwrap();
    rabbitmqctl_patiently(&[
        "set_permissions",
        "-p",
        vhost.name(),
        "sluice_cert",
        ".*",
        ".*",
        ".*",
    ])
    .unwrap();
    let (with_password, with_certificate) = amqps_urls(vhost.name());
    for (n, url) in [with_password, with_certificate].iter().enumerate() {
        let dir = Scratch::new(&format!("rabbitmq-tls-{n}"));
        let events: Vec<Ev> = (0..500u64)
            .map(|i| Ev::order(if i % 2 == 0 { "a" } else { "b" }, i).with_field("login", url))
            .collect();
        let sink = format!(
            "url = \"{url}\"\nrouting_key = \"tls\"\nchannels = 2\n[[declare.queues]]\nname = \"tls\""
        );
        let config = pipeline(&dir, &scripted(events.clone()), &sink, None);
        run(&config).await.unwrap();
        let messages = Reader::new(vhost.url()).take_ready("tls").await.unwrap();
        assert_eq!(messages.len(), events.len(), "{url}: every event once");
        assert_key_order(&messages);
        assert_eq!(saved_checkpoint(&dir.join("data"), "events"), Some(500));
    }
}

/// The findings of `sluice check` for a sink at `url` with the further settings `extra`.
async fn check_findings(url: &str, extra: &str) -> Vec<sluice_pipeline::Finding> {
    check_sink(&format!("url = \"{url}\"\n{extra}")).await
}

/// The findings of `sluice check` for a sink with the settings `text` (TOML).
async fn check_sink(text: &str) -> Vec<sluice_pipeline::Finding> {
    use sluice_pipeline::SinkConfig;
    let config: RabbitmqSinkConfig =
        sluice_pipeline::config::deserialize(toml::from_str(text).unwrap()).unwrap();
    config.check().await
}

#[tokio::test(flavor = "multi_thread")]
async fn check_reports_each_node_of_a_cluster() {
    let vhost = Vhost::create("check-nodes").unwrap();
    let down = format!(
        "amqp://guest:guest@127.0.0.1:{}/{}",
        free_port(),
        vhost.name()
    );
    let findings = check_sink(&format!("urls = [\"{}\", \"{down}\"]", vhost.url())).await;
    let levels: Vec<_> = findings.iter().map(|f| f.level).collect();
    use sluice_pipeline::Level;
    assert_eq!(levels, [Level::Ok, Level::Warn], "{findings:?}");
    assert!(
        findings[0].message.starts_with("connected to amqp://"),
        "{findings:?}"
    );
    let shown_down = down.replacen("guest:guest@", "guest@", 1);
    assert!(
        findings[1]
            .message
            .starts_with(&format!("cannot connect to {shown_down}")),
        "{findings:?}"
    );
    assert!(
        findings[1]
            .message
            .ends_with("meanwhile the sink connects to the other nodes"),
        "{findings:?}"
    );
    // With no node reachable, each is a failure.
    let findings = check_sink(&format!(
        "urls = [\"{down}\", \"{}\"]",
        down.replacen("127.0.0.1", "localhost", 1)
    ))
    .await;
    let levels: Vec<_> = findings.iter().map(|f| f.level).collect();
    assert_eq!(levels, [Level::Fail, Level::Fail], "{findings:?}");
}

fn only_failure(findings: &[sluice_pipeline::Finding]) -> &str {
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert_eq!(
        findings[0].level,
        sluice_pipeline::Level::Fail,
        "{findings:?}"
    );
    &findings[0].message
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_failures_name_the_certificate_problem() {
    let ca = test_ca();
    let cacert = |path: &std::path::Path| format!("cacertfile={}", path.display());
    let untrusted = ca.with_file_name("untrusted-ca.pem");
    let findings = check_findings(
        &amqps_url("guest:guest@", "localhost", "%2f", &cacert(&untrusted)),
        "",
    )
    .await;
    let text = only_failure(&findings);
    assert!(
        text.contains("not signed by a trusted CA: set cacertfile"),
        "{text}"
    );

    // The broker's certificate names `localhost`, not 127.0.0.1.
    let findings = check_findings(
        &amqps_url("guest:guest@", "127.0.0.1", "%2f", &cacert(&ca)),
        "",
    )
    .await;
    let text = only_failure(&findings);
    assert!(text.contains("does not name the host in the URL"), "{text}");
    let renamed = format!("{}&server_name_indication=localhost", cacert(&ca));
    let findings =
        check_findings(&amqps_url("guest:guest@", "127.0.0.1", "%2f", &renamed), "").await;
    assert_eq!(
        findings[0].level,
        sluice_pipeline::Level::Ok,
        "{findings:?}"
    );

    let missing = cacert(std::path::Path::new("/nonexistent/ca.pem"));
    let findings =
        check_findings(&amqps_url("guest:guest@", "localhost", "%2f", &missing), "").await;
    let text = only_failure(&findings);
    assert!(
        text.contains("cacertfile=/nonexistent/ca.pem: cannot read the file"),
        "{text}"
    );

    // TLS to the plain listener.
    let plain = vhost_url("%2f").replacen("amqp://", "amqps://", 1);
    let findings = check_findings(&format!("{plain}?{}", cacert(&ca)), "").await;
    let text = only_failure(&findings);
    assert!(
        text.contains("TLS handshake with")
            && text.contains("the server did not answer in TLS: the port is likely a plain one"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn check_reports_the_login_and_every_exchange_problem() {
    let vhost = Vhost::create("check").unwrap();
    let (_, password) = sluice_tests::rabbitmq::credentials();
    let wrong = vhost
        .url()
        .replacen(&format!(":{password}@"), ":wrong-secret-3141@", 1);
    let text = only_failure(&check_findings(&wrong, "").await).to_owned();
    assert!(
        text.contains("403") && text.contains("check the user"),
        "{text}"
    );
    assert!(!text.contains("wrong-secret-3141"), "{text}");

    let text = only_failure(&check_findings(&vhost_url("sluice-no-such-vhost-check"), "").await)
        .to_owned();
    assert!(text.contains("rabbitmqctl add_vhost"), "{text}");

    let findings = check_findings(
        vhost.url(),
        "exchange = \"orders.missing\"\nquarantine_exchange = \"amq.fanout\"",
    )
    .await;
    let levels: Vec<_> = findings.iter().map(|f| f.level).collect();
    use sluice_pipeline::Level::{Fail, Ok};
    assert_eq!(levels, [Ok, Fail, Ok], "{findings:?}");
    assert!(
        findings[1]
            .message
            .contains("exchange \"orders.missing\" does not exist"),
        "{findings:?}"
    );
    let declared = check_findings(
        vhost.url(),
        "exchange = \"orders.missing\"\nexchange_type = \"topic\"",
    )
    .await;
    assert!(
        declared[1]
            .message
            .contains("the sink declares it on start"),
        "{declared:?}"
    );
    let big = check_findings(vhost.url(), "max_payload_bytes = 200000000").await;
    let last = big.last().unwrap();
    assert_eq!(last.level, sluice_pipeline::Level::Warn, "{big:?}");
    assert!(last.message.contains("max_message_size"), "{big:?}");
}

/// A RabbitMQ node of this test's own (its own name, ports and data under a scratch
/// directory), so that the test may raise a resource alarm without touching the shared
/// broker; stopped (that node only) when dropped.
struct OwnBroker {
    node: String,
    url: String,
    _dir: Scratch,
}

impl OwnBroker {
    fn start(test: &str) -> OwnBroker {
        let dir = Scratch::new(test);
        let (port, dist) = (free_port(), free_port());
        let node = format!("sluice-{test}-{}@localhost", std::process::id());
        let base = dir.path().to_owned();
        std::fs::write(
            base.join("rabbitmq.conf"),
            format!("listeners.tcp.default = 127.0.0.1:{port}\n"),
        )
        .unwrap();
        std::fs::write(base.join("enabled_plugins"), "[].\n").unwrap();
        // The node runs as the rabbitmq user, which must own what it writes.
        let status = std::process::Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(&base)
            .status()
            .unwrap();
        assert!(status.success(), "chown of {}", base.display());
        let path = |name: &str| base.join(name).display().to_string();
        let status = std::process::Command::new("rabbitmq-server")
            .arg("-detached")
            .env("RABBITMQ_NODENAME", &node)
            .env("RABBITMQ_NODE_PORT", port.to_string())
            .env("RABBITMQ_DIST_PORT", dist.to_string())
            .env("RABBITMQ_MNESIA_BASE", path("mnesia"))
            .env("RABBITMQ_LOG_BASE", path("log"))
            .env("RABBITMQ_CONFIG_FILE", path("rabbitmq.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", path("enabled_plugins"))
            .env("RABBITMQ_PID_FILE", path("pid"))
            .current_dir(&base)
            .status()
            .unwrap();
        assert!(status.success(), "rabbitmq-server -detached for {node}");
        let broker = OwnBroker {
            url: format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
            node,
            _dir: dir,
        };
        // await_startup waits for the node (bounded by its --timeout), polled until it answers.
        sluice_tests::wait_for("the test's own RabbitMQ node", || {
            broker.ctl(&["await_startup", "--timeout", "5"]).ok()
        })
        .unwrap();
        broker
    }

    fn ctl(&self, args: &[&str]) -> Result<String, String> {
        let out = std::process::Command::new("rabbitmqctl")
            .args(["-q", "-n", &self.node])
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        if let Err(e) = self.ctl(&["stop"]) {
            eprintln!("could not stop RabbitMQ node {}: {e}", self.node);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_blocked_broker_pauses_publishing_and_readiness_until_unblocked() {
    let broker = OwnBroker::start("blocked");
    let dir = Scratch::new("rabbitmq-blocked");
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let gate = dir.join("gate");
    let source = ScriptedConfig {
        events: (0..200u64).map(|n| Ev::order("k", n)).collect(),
        batch: 10,
        pace_ms: Some(2),
        gate: Some(gate.clone()),
        after_gate: 100,
    };
    let sink = format!(
        "url = \"{}\"\nrouting_key = \"orders\"\n[[declare.queues]]\nname = \"orders\"",
        broker.url
    );
    let config = pipeline(&dir, &source, &sink, Some(api));
    let running = tokio::spawn(async move { run(&config).await });
    let broker_id = [("component_id", "broker")];
    let figure = move |name: &'static str| {
        tokio::task::spawn_blocking(move || {
            metrics(api)
                .ok()
                .and_then(|m| metric(&m, name, &[("component_id", "broker")]))
        })
    };
    let wait = |what: &'static str, probe: fn(&BTreeMap<String, f64>) -> bool| {
        tokio::task::spawn_blocking(move || {
            sluice_tests::wait_for(what, || metrics(api).ok().filter(&probe))
        })
    };
    wait("some events confirmed", |m| {
        metric(
            m,
            rabbitmq_metrics::CONFIRMED,
            &[("component_id", "broker")],
        )
        .unwrap_or(0.0)
            >= 50.0
    })
    .await
    .unwrap()
    .unwrap();

    // A watermark of (almost) no memory: the memory alarm goes off and the broker blocks
    // every publishing connection.
    broker
        .ctl(&["set_vm_memory_high_watermark", "0.0000001"])
        .unwrap();
    let m = wait("the sink to see the block", |m| {
        let broker = [("component_id", "broker")];
        metric(m, rabbitmq_metrics::BLOCKED, &broker) == Some(1.0)
            && metric(m, "sluice_component_ready", &broker) == Some(0.0)
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(metric(&m, rabbitmq_metrics::BLOCKS, &broker_id), Some(1.0));
    // Blocked, nothing more is published: the source goes on emitting into the pipeline
    // (until its bounds stop it) while the sink's published count holds.
    let published = metric(&m, rabbitmq_metrics::PUBLISHED, &broker_id).unwrap();
    let waiting = wait("events to wait upstream of the blocked sink", |m| {
        let in_flight = metric(
            m,
            "sluice_source_in_flight_events",
            &[("component_id", "events")],
        );
        let published = metric(
            m,
            rabbitmq_metrics::PUBLISHED,
            &[("component_id", "broker")],
        );
        let confirmed = metric(
            m,
            rabbitmq_metrics::CONFIRMED,
            &[("component_id", "broker")],
        );
        // Emitted, not acknowledged, and not published either.
        in_flight
            .zip(published.zip(confirmed))
            .is_some_and(|(i, (p, c))| i - (p - c) >= 5.0)
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        metric(&waiting, rabbitmq_metrics::PUBLISHED, &broker_id),
        Some(published),
        "published while blocked"
    );

    broker
        .ctl(&["set_vm_memory_high_watermark", "0.4"])
        .unwrap();
    wait("the sink to resume", |m| {
        let broker = [("component_id", "broker")];
        metric(m, rabbitmq_metrics::BLOCKED, &broker) == Some(0.0)
            && metric(m, "sluice_component_ready", &broker) == Some(1.0)
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(figure(rabbitmq_metrics::BLOCKS).await.unwrap(), Some(1.0));
    std::fs::write(&gate, b"").unwrap();
    running.await.unwrap().unwrap();
    let checkpoint = saved_checkpoint(&dir.join("data"), "events").unwrap();
    let messages = Reader::new(&broker.url).take_ready("orders").await.unwrap();
    let ids = assert_key_order(&messages);
    assert_eq!(
        ids.len() as u64,
        checkpoint,
        "every event delivered once the block lifted"
    );
}

/// `curl` against the broker's management API: a client nobody here wrote.
fn management(method: &str, path: &str, body: &str) {
    let (user, password) = sluice_tests::rabbitmq::credentials();
    let out = std::process::Command::new("curl")
        .args(["-sf", "-X", method, "-u", &format!("{user}:{password}")])
        .args(["-H", "content-type: application/json", "-d", body])
        .arg(format!("http://127.0.0.1:15672/api/{path}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "curl {method} {path}: {out:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn check_warns_when_a_constant_route_reaches_no_queue() {
    use sluice_pipeline::Level;
    let vhost = Vhost::create("route").unwrap();
    let url = vhost.url().to_owned();
    let route = |extra: &str| {
        let sink = format!("exchange = \"amq.topic\"\nrouting_key = \"orders.created\"\n{extra}");
        let url = url.clone();
        async move { check_findings(&url, &sink).await }
    };
    let findings = route("").await;
    let last = findings.last().unwrap();
    assert_eq!(last.level, Level::Warn, "{findings:?}");
    assert!(
        last.message.contains(
            "nothing is bound to topic exchange \"amq.topic\" for routing key \"orders.created\""
        ),
        "{findings:?}"
    );

    // What the sink declares on start counts.
    let findings = route(
        "[[declare.queues]]\nname = \"declared\"\n[[declare.bindings]]\nexchange = \"amq.topic\"\nqueue = \"declared\"\nrouting_key = \"orders.*\"",
    )
    .await;
    let last = findings.last().unwrap();
    assert_eq!(last.level, Level::Ok, "{findings:?}");
    assert!(last.message.contains("reaches declared"), "{findings:?}");

    // A binding made on the broker by another client: a pattern that does not match, then
    // one that does.
    let vh =
        percent_encoding::utf8_percent_encode(vhost.name(), percent_encoding::NON_ALPHANUMERIC)
            .to_string();
    management("PUT", &format!("queues/{vh}/bound"), "{}");
    let bind = |key: &str| {
        management(
            "POST",
            &format!("bindings/{vh}/e/amq.topic/q/bound"),
            &format!("{{\"routing_key\": \"{key}\"}}"),
        );
    };
    bind("payments.#");
    assert_eq!(route("").await.last().unwrap().level, Level::Warn);
    bind("orders.#");
    let findings = route("").await;
    let last = findings.last().unwrap();
    assert_eq!(last.level, Level::Ok, "{findings:?}");
    assert!(last.message.contains("reaches bound"), "{findings:?}");

    // The default exchange routes to the queue the key names.
    let findings = check_findings(vhost.url(), "exchange = \"\"\nrouting_key = \"bound\"").await;
    assert!(
        findings.last().unwrap().message.contains("reaches bound"),
        "{findings:?}"
    );
    let findings = check_findings(vhost.url(), "exchange = \"\"\nrouting_key = \"nobody\"").await;
    assert_eq!(findings.last().unwrap().level, Level::Warn, "{findings:?}");
}

/// The node of `cluster` serving the sink's connection, asked of node `ask`, once there is
/// one.
async fn serving_node(cluster: &Arc<Mutex<Cluster>>, ask: usize) -> usize {
    let cluster = Arc::clone(cluster);
    tokio::task::spawn_blocking(move || {
        sluice_tests::wait_for("the sink's connection to a node", || {
            let cluster = cluster.lock().unwrap();
            cluster.node_serving(ask, "sluice broker").ok().flatten()
        })
    })
    .await
    .unwrap()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_node_killed_mid_stream_loses_nothing() {
    let started = std::time::Instant::now();
    let cluster = tokio::task::spawn_blocking(|| Cluster::start("failover", 3))
        .await
        .unwrap()
        .unwrap();
    let urls = cluster.urls();
    let cluster_up = started.elapsed();
    let cluster = Arc::new(Mutex::new(cluster));
    let dir = Scratch::new("rabbitmq-cluster");
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let (source, gate) = gated_orders(&dir);
    let confirm_window = 200;
    let sink = format!(
        r#"
        urls = {urls:?}
        exchange = "orders"
        routing_key = "orders"
        channels = 3
        confirm_window = {confirm_window}
        backoff_initial = "50ms"
        [[declare.exchanges]]
        name = "orders"
        type = "fanout"
        [[declare.queues]]
        name = "orders"
        arguments = {{ "x-queue-type" = "quorum" }}
        [[declare.queues]]
        name = "orders.stream"
        arguments = {{ "x-queue-type" = "stream" }}
        [[declare.bindings]]
        exchange = "orders"
        queue = "orders"
        [[declare.bindings]]
        exchange = "orders"
        queue = "orders.stream"
        "#
    );
    let config = pipeline(&dir, &source, &sink, Some(api));
    let running = tokio::spawn(async move { run(&config).await });

    let killed = serving_node(&cluster, 0).await;
    let survivor = (killed + 1) % urls.len();
    let mut reader = Reader::new(&urls[survivor]);
    while reader.ready("orders").await.unwrap() < 500 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.lock().unwrap().kill(killed).unwrap();
    let killed_at = started.elapsed();
    let now_serving = serving_node(&cluster, survivor).await;
    assert_ne!(now_serving, killed);
    reconnected(api).await;
    std::fs::write(&gate, b"").unwrap();
    tokio::time::timeout(sluice_tests::PATIENCE, running)
        .await
        .expect("the pipeline to drain once the gate opened")
        .unwrap()
        .unwrap();

    let duplicates = every_gated_order_delivered_in_key_order(&dir, &mut reader).await;
    assert!(
        duplicates <= confirm_window,
        "{duplicates} duplicates: more than were unconfirmed when the node went"
    );
    let queues = cluster
        .lock()
        .unwrap()
        .ctl(survivor, &["list_queues", "name", "type"])
        .unwrap();
    eprintln!(
        "cluster up after {cluster_up:?}, node {killed} killed after {killed_at:?}, node {now_serving} serving after it, {duplicates} duplicates, all read after {:?}; queues:\n{queues}",
        started.elapsed()
    );
}
