//! The Grafana dashboards under `dashboards/` against a real Prometheus: the demo's processes
//! (a relay under leader election, the gateway of `examples/demo-gateway.toml` with its CDC
//! invalidation and ids) are run and given work, a Prometheus of the test's own scrapes them
//! every second, and every panel's every query must return data.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use sluice_tests::rabbitmq::Vhost;
use sluice_tests::{Scratch, TestDb, free_port, http_get, metric, metrics, wait_for};

use crate::gateway::{SECRET, Services, bearer, get_with, token};
use crate::sluice;

const DASHBOARDS: [&str; 3] = ["relay.json", "gateway.json", "coordination-ids.json"];

/// A Prometheus server of the test's own, stopped when dropped.
struct Prometheus {
    child: Child,
    address: SocketAddr,
    log: std::path::PathBuf,
}

impl Prometheus {
    /// Starts `prometheus` scraping `targets` (job name, addresses) every second, with its
    /// config and data under `dir`.
    fn start(dir: &Scratch, targets: &[(&str, &[SocketAddr])]) -> Self {
        let jobs: String = targets
            .iter()
            .map(|(job, addresses)| {
                let list: Vec<String> = addresses.iter().map(|a| format!("\"{a}\"")).collect();
                format!(
                    "  - job_name: {job}\n    static_configs:\n      - targets: [{}]\n",
                    list.join(", ")
                )
            })
            .collect();
        let config = dir.write(
            "prometheus.yml",
            &format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n{jobs}"
            ),
        );
        let address: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = dir.join("prometheus.log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={address}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run prometheus ({e}): `scripts/services.sh up` installs it")
            });
        Prometheus {
            child,
            address,
            log,
        }
    }

    /// The instant-query result of `expr`: its samples' values (an error answer is none).
    fn query(&self, expr: &str) -> Vec<f64> {
        let path = format!(
            "/api/v1/query?query={}",
            utf8_percent_encode(expr, NON_ALPHANUMERIC)
        );
        let Ok((200, body)) = http_get(self.address, &path) else {
            return Vec::new();
        };
        let answer: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        answer["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|sample| sample["value"][1].as_str()?.parse().ok())
            .collect()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One query of one panel of one dashboard.
struct Target {
    dashboard: &'static str,
    panel: String,
    expr: String,
}

/// Every panel's every query, in every dashboard (rows' nested panels included).
fn targets() -> Vec<Target> {
    fn walk(dashboard: &'static str, panels: &serde_json::Value, out: &mut Vec<Target>) {
        for panel in panels.as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or("(untitled)");
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str();
                let expr =
                    expr.unwrap_or_else(|| panic!("{dashboard}: {title}: a target without expr"));
                out.push(Target {
                    dashboard,
                    panel: title.to_owned(),
                    expr: expr.to_owned(),
                });
            }
            walk(dashboard, &panel["panels"], out);
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards");
    let mut out = Vec::new();
    for dashboard in DASHBOARDS {
        let text = std::fs::read_to_string(root.join(dashboard)).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("dashboards/{dashboard} is not JSON: {e}"));
        walk(dashboard, &json["panels"], &mut out);
    }
    out
}

fn relay_config(db: &TestDb, vhost: &Vhost, api: SocketAddr, data: &Path) -> String {
    let etcd = std::env::var("ETCD_ENDPOINTS").unwrap_or_else(|_| "http://127.0.0.1:2379".into());
    format!(
        r##"
        [api]
        address = "{api}"
        [coord]
        backend = "etcd"
        endpoints = "{etcd}"
        ttl = "5s"
        node = "a"
        [pipeline]
        data_dir = "{data}"
        leader = "{election}"
        [sources.outbox]
        type = "postgres_cdc"
        url = "{url}"
        slot = "{slot}"
        publication = "{slot}"
        tables = ["public.outbox"]
        status_interval = "100ms"
        [transforms.events]
        type = "outbox"
        inputs = ["outbox"]
        [sinks.broker]
        type = "rabbitmq"
        inputs = ["events"]
        url = "{amqp}"
        exchange = "outbox.{{aggregatetype}}"
        exchange_type = "topic"
        routing_key = "{{type}}"
        quarantine_exchange = "sluice.quarantine"
        [[sinks.broker.declare.exchanges]]
        name = "sluice.quarantine"
        type = "fanout"
        [[sinks.broker.declare.exchanges]]
        name = "outbox.order"
        type = "topic"
        [[sinks.broker.declare.queues]]
        name = "orders"
        [[sinks.broker.declare.bindings]]
        exchange = "outbox.order"
        queue = "orders"
        routing_key = "#"
        "##,
        data = data.display(),
        election = db.name,
        url = db.url,
        slot = db.name,
        amqp = vhost.url(),
    )
}

#[test]
fn every_dashboard_panel_returns_data_from_a_prometheus_scraping_the_demo() {
    let targets = targets();
    let dir = Scratch::new("dashboards");
    let db = TestDb::create("dashboards");
    db.execute(concat!(
        include_str!("../../examples/sql/orders.sql"),
        include_str!("../../examples/sql/outbox.sql"),
        include_str!("../../examples/sql/products.sql"),
    ));
    let vhost = Vhost::create("dashboards").unwrap();

    let relay_api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let relay = dir.write(
        "relay.toml",
        &relay_config(&db, &vhost, relay_api, &dir.join("relay")),
    );
    let mut relay = sluice().spawn(&relay);
    relay.wait_ready(relay_api).unwrap();

    let products = Services::start();
    let gateway_api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let gateway: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let redis = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let config = dir.write(
        "demo-gateway.toml",
        include_str!("../../examples/demo-gateway.toml"),
    );
    let data = dir.join("gateway");
    let mut gateway_process = sluice().spawn_env(
        &config,
        &[
            ("SLUICE_API", &gateway_api.to_string()),
            ("GATEWAY_ADDR", &gateway.to_string()),
            ("PRODUCTS_URL", &products.url()),
            ("DATABASE_URL", &db.url),
            ("REDIS_URL", &redis),
            ("JWT_SECRET", SECRET),
            ("SLUICE_DATA", &data.display().to_string()),
            ("PRODUCTS_SLOT", &format!("{}_products", db.name)),
        ],
    );
    gateway_process.wait_ready(gateway_api).unwrap();

    let prometheus = Prometheus::start(
        &dir,
        &[("relay", &[relay_api]), ("gateway", &[gateway_api])],
    );
    wait_for("Prometheus to scrape both processes", || {
        let up = prometheus.query("up == 1");
        (up.len() == 2).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}; prometheus log:\n{}", prometheus.log()));

    // Work for every panel, once the scrapes have begun, so that rates see it: orders through
    // the relay, requests through the gateway (a 401, a MISS and a HIT, a 429, ids), and a
    // product update evicting its cache entry through CDC.
    for batch in 0..5 {
        db.execute(&format!(
            "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) \
             SELECT 'order', 'customer-' || (g % 7), 'OrderCreated', json_build_object('seq', g)::jsonb \
             FROM generate_series({}, {}) g",
            batch * 100,
            batch * 100 + 99
        ));
    }
    wait_for("the relay to have RabbitMQ confirm 500 messages", || {
        let confirmed = metric(
            &metrics(relay_api).ok()?,
            "sluice_rabbitmq_confirmed_messages_total",
            &[],
        )?;
        (confirmed >= 500.0).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}; relay log:\n{}", relay.log()));
    // The Redis keys (cache:products:ID, the rate limit's user) are this test's own.
    let id = 8_000_000 + u64::from(std::process::id());
    db.execute(&format!(
        "INSERT INTO products (id, name, price) VALUES ({id}, 'Dashboard lamp', 10)"
    ));
    let product = format!("/api/products/{id}");
    let auth = bearer(&token(&format!("dashboards-{id}"), 300, SECRET));
    let headers = [("Authorization", auth.as_str())];
    assert_eq!(get_with(gateway, &product, &[]).status, 401);
    for _ in 0..2 {
        assert_eq!(get_with(gateway, &product, &headers).status, 200);
    }
    let limited: Vec<u16> = (0..6)
        .map(|_| get_with(gateway, &format!("/api/limited/products/{id}"), &headers).status)
        .collect();
    assert!(limited.contains(&429), "{limited:?}");
    let ids = get_with(gateway, "/api/ids/orders?count=3", &headers);
    assert_eq!(ids.status, 200, "{ids:?}");
    db.execute(&format!("UPDATE products SET price = 11 WHERE id = {id}"));
    wait_for("the CDC event to evict the product's cache entry", || {
        let evicted = metric(
            &metrics(gateway_api).ok()?,
            "sluice_cache_invalidate_keys_total",
            &[],
        )?;
        (evicted >= 1.0).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}; gateway log:\n{}", gateway_process.log()));

    // Every query answers once the next scrapes carry the work; one that still answers
    // nothing (or only NaN) at the deadline names its dashboard, panel and expression.
    let mut pending: Vec<&Target> = targets.iter().collect();
    let answered = wait_for("every panel's query to return data", || {
        pending.retain(|t| !prometheus.query(&t.expr).iter().any(|v| !v.is_nan()));
        pending.is_empty().then_some(())
    });
    if answered.is_err() {
        let missing: Vec<String> = pending
            .iter()
            .map(|t| format!("dashboards/{} / {:?}: {}", t.dashboard, t.panel, t.expr))
            .collect();
        panic!(
            "{} of {} dashboard queries returned nothing:\n{}",
            missing.len(),
            targets.len(),
            missing.join("\n")
        );
    }
}
