//! Upstreams discovered from the coordination registry, through the binary: instances that
//! real upstream HTTP servers register in the real etcd and ZooKeeper get the traffic, an
//! instance whose process dies stops getting it once its session expires (within the TTL),
//! a deregistered one at once, and an upstream left without instances answers 503 without
//! opening its breaker.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use sluice_coord::{Coord, CoordConfig, Instance, Registration};
use sluice_tests::{metric, metrics, wait_for};

use crate::gateway::{Gateway, Services, get_with, start_gateway};
use crate::sluice;

/// The session TTL the registering processes use (etcd's shortest).
const TTL: Duration = Duration::from_secs(2);

fn unique(what: &str) -> String {
    format!(
        "e2e-{what}-{}-{}",
        std::process::id(),
        sluice_tests::free_port()
    )
}

fn etcd_section(namespace: &str) -> String {
    let endpoints =
        std::env::var("ETCD_ENDPOINTS").unwrap_or_else(|_| "http://127.0.0.1:2379".to_owned());
    format!(
        "[coord]\nbackend = \"etcd\"\nendpoints = [\"{endpoints}\"]\nnamespace = \"{namespace}\"\nttl = \"{}s\"\n",
        TTL.as_secs()
    )
}

fn zookeeper_section(namespace: &str) -> String {
    let endpoints =
        std::env::var("ZOOKEEPER_ENDPOINTS").unwrap_or_else(|_| "127.0.0.1:2181".to_owned());
    format!(
        "[coord]\nbackend = \"zookeeper\"\nendpoints = [\"{endpoints}\"]\nnamespace = \"{namespace}\"\nttl = \"{}s\"\n",
        TTL.as_secs()
    )
}

/// The registering side: a coordination client per instance, as each instance's own process
/// would have.
struct Registrar {
    runtime: tokio::runtime::Runtime,
    config: CoordConfig,
}

impl Registrar {
    fn new(section: &str) -> Self {
        let table: toml::Table = toml::from_str(section).unwrap();
        let config: CoordConfig = table["coord"].clone().try_into().unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        Registrar { runtime, config }
    }

    /// Registers `services` as instance `id` of `products` under a session of its own.
    fn register(&self, id: &str, services: &Services) -> (Coord, Registration) {
        self.runtime.block_on(async {
            let coord = Coord::connect(&self.config).await.unwrap();
            let registration = coord
                .register(Instance {
                    service: "products".into(),
                    id: id.into(),
                    address: services.address.to_string(),
                    metadata: serde_json::Value::Null,
                })
                .await
                .unwrap();
            (coord, registration)
        })
    }

    fn deregister(&self, registration: Registration) {
        self.runtime.block_on(registration.close()).unwrap();
    }
}

/// A gateway whose `products` upstream is discovered, with `section` as its `[coord]`.
fn discovering_gateway(test: &str, section: &str) -> Gateway {
    let body = format!(
        r#"
        [sources.gateway.upstreams.products]
        discover = "products"
        [sources.gateway.upstreams.products.breaker]
        failures = 2
        open_for = "1h"
        max_open_for = "1h"
        [[sources.gateway.routes]]
        id = "products"
        prefix = "/api/products"
        rewrite_prefix = "/products"
        upstream = "products"
        auth = "off"
        {section}
        "#
    );
    let redis = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    start_gateway(test, &redis, &body)
}

fn hits(services: &Services) -> usize {
    services.seen.products.load(Ordering::SeqCst)
}

fn get(gw: &Gateway) -> crate::gateway::Answer {
    get_with(gw.address, "/api/products/7", &[])
}

/// Sends `n` requests, all answered 200; how many reached `a` and `b`.
fn spread(gw: &Gateway, a: &Services, b: &Services, n: usize) -> (usize, usize) {
    let (a0, b0) = (hits(a), hits(b));
    for _ in 0..n {
        let answer = get(gw);
        assert_eq!(answer.status, 200, "{answer:?}");
    }
    (hits(a) - a0, hits(b) - b0)
}

/// Sends requests until four in a row (two round-robin turns each) miss `gone`; how long
/// that took.
fn until_only_the_other(gw: &Gateway, gone: &Services) -> Duration {
    let started = Instant::now();
    wait_for("traffic to leave the instance", || {
        let before = hits(gone);
        for _ in 0..4 {
            let answer = get(gw);
            assert_eq!(answer.status, 200, "{answer:?}");
        }
        (hits(gone) == before).then(|| started.elapsed())
    })
    .unwrap()
}

/// Once the last instance is gone: 503 with a body that says why, counted, and the breaker
/// (2 failures open it for an hour) not opened by them.
fn no_instance_then_back(gw: &Gateway, registrar: &Registrar, back: &Services) {
    let answer = wait_for("the 503 of an upstream without instances", || {
        let answer = get(gw);
        (answer.status == 503).then_some(answer)
    })
    .unwrap();
    assert_eq!(
        answer.body, r#"{"error":"No instance of the upstream service is available"}"#,
        "{answer:?}"
    );
    for _ in 0..3 {
        assert_eq!(get(gw).status, 503);
    }
    let all = metrics(gw.api).unwrap();
    let labels = [("upstream", "products")];
    assert!(
        metric(&all, "sluice_gateway_no_instance_total", &labels).unwrap_or(0.0) >= 4.0,
        "counted"
    );
    assert_eq!(
        metric(&all, "sluice_gateway_upstream_instances", &labels),
        Some(0.0)
    );
    assert_eq!(
        metric(&all, "sluice_gateway_breaker_state", &labels),
        Some(0.0),
        "the breaker stays closed"
    );
    let (_coord, _registration) = registrar.register("again", back);
    let before = hits(back);
    let answer = wait_for("a registered instance to be used again", || {
        let answer = get(gw);
        (answer.status == 200).then_some(answer)
    })
    .unwrap();
    assert!(hits(back) > before, "{answer:?}");
}

#[test]
fn discovered_instances_share_the_traffic_and_a_dead_ones_leaves_within_the_ttl_on_etcd() {
    let section = etcd_section(&unique("gw-discovery"));
    let registrar = Registrar::new(&section);
    let (a, b) = (Services::start(), Services::start());
    let (_coord_a, registration_a) = registrar.register("a", &a);
    let (coord_b, _registration_b) = registrar.register("b", &b);
    let gw = discovering_gateway("gw_discovery_etcd", &section);

    let (to_a, to_b) = spread(&gw, &a, &b, 20);
    assert_eq!((to_a, to_b), (10, 10), "round-robin over both");

    // B's process dies: its session is no longer renewed, and etcd expires it after the TTL.
    coord_b.abandon();
    let moved = until_only_the_other(&gw, &b);
    eprintln!("traffic left the dead instance {moved:?} after its process died (TTL {TTL:?})");
    assert!(
        moved <= TTL + Duration::from_millis(1500),
        "moved after {moved:?}, TTL {TTL:?}"
    );
    assert_eq!(spread(&gw, &a, &b, 6), (6, 0));

    // A deregisters: at once, nothing is left.
    registrar.deregister(registration_a);
    no_instance_then_back(&gw, &registrar, &b);
}

#[test]
fn discovered_instances_follow_the_zookeeper_registry() {
    let section = zookeeper_section(&unique("gw-discovery"));
    let registrar = Registrar::new(&section);
    let (a, b) = (Services::start(), Services::start());
    let (_coord_a, registration_a) = registrar.register("a", &a);
    let (_coord_b, registration_b) = registrar.register("b", &b);
    let gw = discovering_gateway("gw_discovery_zk", &section);

    assert_eq!(spread(&gw, &a, &b, 20), (10, 10), "round-robin over both");
    registrar.deregister(registration_b);
    let moved = until_only_the_other(&gw, &b);
    eprintln!("traffic left the deregistered instance after {moved:?}");
    assert_eq!(spread(&gw, &a, &b, 6), (6, 0));
    registrar.deregister(registration_a);
    no_instance_then_back(&gw, &registrar, &b);
}

#[test]
fn a_discovered_upstream_without_a_coord_section_is_refused_by_check() {
    let dir = sluice_tests::Scratch::new("gw_discovery_check");
    let config = dir.write(
        "gateway.toml",
        r#"
        [sources.gateway]
        type = "gateway"
        address = "127.0.0.1:0"
        [sources.gateway.upstreams.products]
        discover = "products"
        [[sources.gateway.routes]]
        id = "products"
        prefix = "/api/products"
        upstream = "products"
        [sinks.log]
        type = "blackhole"
        inputs = ["gateway"]
        "#,
    );
    let out = sluice().output(&["check", "--offline", config.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("sources.gateway.upstreams.products.discover needs a [coord] section"),
        "{stderr}"
    );
}
