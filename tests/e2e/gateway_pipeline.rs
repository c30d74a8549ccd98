//! The gateway as pipeline components: `http_ingress` answering by its own event's delivery,
//! and `cache_invalidate` evicting the response cache from PostgreSQL CDC.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::gateway::{SECRET, Services, bearer, get_with, send_raw, token};
use crate::sluice;
use sluice_tests::{Running, Scratch, TestDb, free_port, json_lines, wait_for};

fn post(
    address: SocketAddr,
    key: Option<&str>,
    content_type: &str,
    body: &str,
) -> crate::gateway::Answer {
    let key = key.map_or_else(String::new, |k| format!("Idempotency-Key: {k}\r\n"));
    send_raw(
        address,
        &format!(
            "POST /events HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n{key}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
}

static NEXT: AtomicU64 = AtomicU64::new(2);

fn ids_in(path: &Path) -> Vec<String> {
    json_lines(path)
        .iter()
        .map(|line| line["id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn start(dir: &Scratch, text: &str, api: SocketAddr) -> Running {
    let config = dir.write("pipeline.toml", text);
    let mut process = sluice().spawn(&config);
    process.wait_ready(api).unwrap();
    process
}

#[test]
fn ingress_answers_202_only_once_delivered_503_when_full_and_delivers_a_key_once() {
    let dir = Scratch::new("gw_ingress");
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let address: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let out = dir.join("out.jsonl");
    let _process = start(
        &dir,
        &format!(
            r#"
            [api]
            address = "{api}"
            [pipeline]
            data_dir = "{data}"
            max_in_flight_events = 1
            [sources.ingress]
            type = "http_ingress"
            address = "{address}"
            path = "/events"
            content_types = ["application/json"]
            # One event a second: the second event waits about a second before its sink.
            [transforms.slow]
            type = "throttle"
            inputs = ["ingress"]
            rate = 1
            [sinks.out]
            type = "file"
            inputs = ["slow"]
            path = "{out}"
            "#,
            data = dir.join("data").display(),
            out = out.display(),
        ),
        api,
    );
    let first = post(
        address,
        Some("order-1"),
        "application/json",
        r#"{"order":1}"#,
    );
    assert_eq!(first.status, 202, "{first:?}");
    assert_eq!(
        ids_in(&out),
        ["order-1"],
        "answered only once the sink holds it"
    );

    // The throttle holds each next event until it is due; while one is in flight the budget
    // (1) is full, so of two requests sent at once one is refused, the other answered only
    // once delivered.
    let (accepted, refused) = wait_for("one of two concurrent requests refused", || {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let keys = [format!("order-{n}a"), format!("order-{n}b")];
        let answers: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = keys
                .iter()
                .map(|k| {
                    s.spawn(move || {
                        (
                            k.clone(),
                            post(address, Some(k), "application/json", r#"{"order":2}"#),
                        )
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let accepted = answers.iter().find(|(_, a)| a.status == 202)?.clone();
        let refused = answers.iter().find(|(_, a)| a.status == 503)?.clone();
        Some((accepted, refused))
    })
    .unwrap();
    assert!(refused.1.header("retry-after").is_some(), "{refused:?}");
    let delivered = ids_in(&out);
    assert!(delivered.contains(&accepted.0), "202 only once delivered");
    assert!(!delivered.contains(&refused.0), "a 503 was not delivered");

    // The same key again is answered without a second delivery.
    let again = post(
        address,
        Some("order-1"),
        "application/json",
        r#"{"order":1}"#,
    );
    assert_eq!(again.status, 202, "{again:?}");
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(ids_in(&out).iter().filter(|id| *id == "order-1").count(), 1);

    // Bad content.
    assert_eq!(post(address, None, "text/plain", "hi").status, 415);
    assert_eq!(
        post(address, None, "application/json", "{not json").status,
        400
    );
    let get = send_raw(
        address,
        "GET /events HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(get.status, 405);
    assert_eq!(get.header("allow"), Some("POST"));
}

#[test]
fn an_update_in_postgres_evicts_the_cached_product_through_cdc() {
    let services = Services::start();
    let db = TestDb::create("gw_cdc");
    db.execute("CREATE TABLE products (id bigint PRIMARY KEY, name text NOT NULL)");
    let id = 9_000_000 + u64::from(std::process::id());
    db.execute(&format!("INSERT INTO products VALUES ({id}, 'old name')"));
    services
        .seen
        .names
        .lock()
        .unwrap()
        .insert(id.to_string(), "old name".into());
    let key = format!("cache:products:{id}");
    let redis_url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let mut redis = redis::Client::open(redis_url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = redis::cmd("DEL").arg(&key).query(&mut redis).unwrap();

    let dir = Scratch::new("gw_cdc");
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let address: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let process = start(
        &dir,
        &format!(
            r#"
            [api]
            address = "{api}"
            [pipeline]
            data_dir = "{data}"
            [redis]
            url = "{redis_url}"
            [sources.gateway]
            type = "gateway"
            address = "{address}"
            [sources.gateway.jwt]
            secret = "{SECRET}"
            [sources.gateway.upstreams.products]
            instances = ["{upstream}"]
            [[sources.gateway.routes]]
            id = "products"
            prefix = "/api/products"
            rewrite_prefix = "/products"
            upstream = "products"
            params = ["id"]
            [sources.gateway.routes.cache]
            key = "cache:products:{{id}}"
            public = true
            [sinks.access]
            type = "blackhole"
            inputs = ["gateway"]
            [sources.products_cdc]
            type = "postgres_cdc"
            url = "{url}"
            slot = "{slot}"
            publication = "{slot}"
            tables = ["public.products"]
            operations = ["update", "delete"]
            status_interval = "100ms"
            [sinks.evict]
            type = "cache_invalidate"
            inputs = ["products_cdc"]
            keys = ["cache:products:{{id}}"]
            "#,
            data = dir.join("data").display(),
            upstream = services.url(),
            url = db.url,
            slot = db.name,
        ),
        api,
    );
    let auth = bearer(&token("456", 300, SECRET));
    let path = format!("/api/products/{id}");
    let first = get_with(address, &path, &[("Authorization", &auth)]);
    assert_eq!(first.header("x-cache"), Some("MISS"), "{first:?}");
    assert!(first.body.contains("old name"));
    assert_eq!(
        get_with(address, &path, &[("Authorization", &auth)]).header("x-cache"),
        Some("HIT")
    );

    services
        .seen
        .names
        .lock()
        .unwrap()
        .insert(id.to_string(), "new name".into());
    db.execute(&format!(
        "UPDATE products SET name = 'new name' WHERE id = {id}"
    ));
    wait_for("the CDC event to evict the key", || {
        let exists: bool = redis::cmd("EXISTS").arg(&key).query(&mut redis).ok()?;
        (!exists).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}; log:\n{}", process.log()));
    let fresh = get_with(address, &path, &[("Authorization", &auth)]);
    assert_eq!(fresh.header("x-cache"), Some("MISS"), "{fresh:?}");
    assert!(fresh.body.contains("new name"), "{fresh:?}");
    assert_eq!(services.seen.products.load(Ordering::SeqCst), 2);
}
