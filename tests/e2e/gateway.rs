//! The API gateway through the binary: the seed's scenario line by line (routing, JWT, the
//! Redis cache and rate limit, the breaker), against real upstream HTTP servers the tests
//! start, the real Redis, and a Redis of the test's own where the test stops it.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::sluice;
use sluice_tests::{Running, Scratch, free_port, json_lines, metrics, wait_for};

pub(crate) const SECRET: &str = "the-gateway-test-secret-32-bytes";

/// What the upstream services saw and how they answer.
#[derive(Default)]
pub(crate) struct Seen {
    /// Requests that reached each service (`products`, `orders`).
    pub products: AtomicUsize,
    pub orders: AtomicUsize,
    /// The last request: path, and its `x-user-id` header.
    pub last: Mutex<Option<(String, Option<String>)>>,
    /// What `/orders` answers: 200, or this status.
    pub orders_status: AtomicU16,
    /// Milliseconds `/products/slow/*` waits before answering.
    pub slow_ms: AtomicU64,
    /// The product names, by id (the "database" behind the service).
    pub names: Mutex<BTreeMap<String, String>>,
}

/// The products and orders services, on a port of their own.
pub(crate) struct Services {
    pub address: SocketAddr,
    pub seen: Arc<Seen>,
    _runtime: tokio::runtime::Runtime,
}

async fn product(
    State(seen): State<Arc<Seen>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> impl IntoResponse {
    seen.products.fetch_add(1, Ordering::SeqCst);
    let user = headers
        .get("x-user-id")
        .map(|v| v.to_str().unwrap().to_owned());
    *seen.last.lock().unwrap() = Some((format!("/products/{id}"), user.clone()));
    let name = seen.names.lock().unwrap().get(&id).cloned();
    let body = serde_json::json!({"id": id, "name": name, "user": user}).to_string();
    ([("content-type", "application/json")], body)
}

async fn slow_product(State(seen): State<Arc<Seen>>, Path(id): Path<String>) -> impl IntoResponse {
    seen.products.fetch_add(1, Ordering::SeqCst);
    let wait = seen.slow_ms.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(wait)).await;
    (
        [("content-type", "application/json")],
        format!(r#"{{"id":"{id}"}}"#),
    )
}

async fn order(State(seen): State<Arc<Seen>>, Path(id): Path<String>) -> impl IntoResponse {
    seen.orders.fetch_add(1, Ordering::SeqCst);
    *seen.last.lock().unwrap() = Some((format!("/orders/{id}"), None));
    let status = match seen.orders_status.load(Ordering::SeqCst) {
        0 => StatusCode::OK,
        s => StatusCode::from_u16(s).unwrap(),
    };
    (status, format!(r#"{{"order":"{id}"}}"#))
}

impl Services {
    pub fn start() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let seen = Arc::new(Seen::default());
        let app = Router::new()
            .route("/products/slow/{id}", get(slow_product))
            .route("/products/{id}", get(product))
            .route("/orders/{id}", get(order))
            .with_state(Arc::clone(&seen));
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let address = listener.local_addr().unwrap();
        runtime.spawn(async move { axum::serve(listener, app).await });
        Services {
            address,
            seen,
            _runtime: runtime,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }
}

/// An HS256 token for `sub`, expiring `exp_in` seconds from now (negative: in the past).
pub(crate) fn token(sub: &str, exp_in: i64, secret: &str) -> String {
    let now = jsonwebtoken::get_current_timestamp() as i64;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"sub": sub, "exp": now + exp_in}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// A response read off the wire.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// Sends `raw` (a whole HTTP/1.1 request) and reads the answer until the server closes.
pub(crate) fn send_raw(address: SocketAddr, raw: &str) -> Answer {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream.write_all(raw.as_bytes()).unwrap();
    let mut bytes = Vec::new();
    let _ = stream.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Answer {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// `GET path` with these extra header lines.
pub(crate) fn get_with(address: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut raw = format!("GET {path} HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n");
    for (name, value) in headers {
        raw.push_str(&format!("{name}: {value}\r\n"));
    }
    raw.push_str("\r\n");
    send_raw(address, &raw)
}

pub(crate) fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// A running gateway: its process, its API and its listener.
pub(crate) struct Gateway {
    pub process: Running,
    pub api: SocketAddr,
    pub address: SocketAddr,
    pub access_log: PathBuf,
    _dir: Scratch,
}

/// Writes the config (the `[sources.gateway]` table's routes and upstreams are `body`) and
/// starts the gateway, waiting for `/ready`.
pub(crate) fn start_gateway(test: &str, redis_url: &str, body: &str) -> Gateway {
    let dir = Scratch::new(test);
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let address: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let access_log = dir.join("access.jsonl");
    let config = dir.write(
        "gateway.toml",
        &format!(
            r#"
            [api]
            address = "{api}"
            [pipeline]
            data_dir = "{data}"
            # A loaded test machine running a debug build can take longer than the 100 ms
            # default over one command, which the gateway would take for Redis failing.
            [redis]
            url = "{redis_url}"
            timeout = "2s"
            [sources.gateway]
            type = "gateway"
            address = "{address}"
            [sources.gateway.jwt]
            secret = "{SECRET}"
            {body}
            [sinks.access_log]
            type = "file"
            inputs = ["gateway"]
            path = "{log}"
            "#,
            data = dir.join("data").display(),
            log = access_log.display(),
        ),
    );
    let mut process = sluice().spawn(&config);
    process.wait_ready(api).unwrap();
    Gateway {
        process,
        api,
        address,
        access_log,
        _dir: dir,
    }
}

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

fn redis() -> redis::Connection {
    redis::Client::open(redis_url())
        .unwrap()
        .get_connection()
        .unwrap()
}

/// A fresh number, so tests sharing Redis never share keys or users.
fn unique() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    base * 100 + N.fetch_add(1, Ordering::SeqCst) % 100
}

/// The seed's two routes (as in examples/gateway.toml), with a rate limit of `limit`.
fn seed_routes(services: &Services, limit: u64) -> String {
    format!(
        r#"
        [sources.gateway.upstreams.products]
        instances = ["{url}"]
        [sources.gateway.upstreams.orders]
        instances = ["{url}"]
        [sources.gateway.upstreams.orders.breaker]
        failures = 3
        open_for = "300ms"
        max_open_for = "300ms"
        [[sources.gateway.routes]]
        id = "products"
        prefix = "/api/products"
        rewrite_prefix = "/products"
        upstream = "products"
        params = ["id"]
        [sources.gateway.routes.rate_limit]
        limit = {limit}
        window = "1m"
        [sources.gateway.routes.cache]
        key = "cache:products:{{id}}"
        ttl = "300s"
        public = true
        [[sources.gateway.routes]]
        id = "orders"
        prefix = "/api/orders"
        rewrite_prefix = "/orders"
        upstream = "orders"
        timeout = "2s"
        "#,
        url = services.url()
    )
}

#[test]
fn the_seed_scenario_routes_authenticates_caches_and_logs() {
    let services = Services::start();
    let gw = start_gateway("gw_seed", &redis_url(), &seed_routes(&services, 100));
    let id = unique().to_string();
    let key = format!("cache:products:{id}");
    let mut redis = redis();
    let _: () = redis::cmd("DEL").arg(&key).query(&mut redis).unwrap();
    let user = format!("456{id}");
    let auth = bearer(&token(&user, 300, SECRET));
    let path = format!("/api/products/{id}");

    // A client-sent X-User-ID never reaches the service.
    let first = get_with(
        gw.address,
        &path,
        &[("Authorization", &auth), ("X-User-ID", "999")],
    );
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(first.header("x-cache"), Some("MISS"));
    assert_eq!(
        *services.seen.last.lock().unwrap(),
        Some((format!("/products/{id}"), Some(user.clone()))),
        "rewritten path, and the verified user only"
    );
    let ttl: i64 = redis::cmd("TTL").arg(&key).query(&mut redis).unwrap();
    assert!(
        (290..=300).contains(&ttl),
        "stored as {key} for 300 s, TTL {ttl}"
    );
    assert!(first.header("ratelimit-limit") == Some("100"), "{first:?}");

    let second = get_with(gw.address, &path, &[("Authorization", &auth)]);
    assert_eq!(second.status, 200);
    assert_eq!(second.header("x-cache"), Some("HIT"));
    assert_eq!(second.body, first.body);
    assert_eq!(
        services.seen.products.load(Ordering::SeqCst),
        1,
        "a HIT does not reach the service"
    );

    // Every request is logged (an event of the gateway source) and counted. A record is
    // written when its response is done, so two requests on two serving threads may be logged
    // in either order.
    let records = wait_for("two access-log records", || {
        let lines = json_lines(&gw.access_log);
        (lines.len() >= 2).then_some(lines)
    })
    .unwrap();
    let mut caches: Vec<&str> = records
        .iter()
        .filter_map(|r| r["payload"]["cache"].as_str())
        .collect();
    caches.sort_unstable();
    assert_eq!(caches, ["HIT", "MISS"], "{records:?}");
    for record in &records {
        assert_eq!(record["payload"]["route"], "products", "{records:?}");
        assert_eq!(record["payload"]["user"], serde_json::json!(user));
    }
    let all = metrics(gw.api).unwrap();
    let ok = sluice_tests::metric(
        &all,
        "sluice_gateway_requests_total",
        &[("route", "products"), ("status", "2xx")],
    );
    assert_eq!(ok, Some(2.0));
    assert!(
        all.keys()
            .any(|k| k.starts_with("sluice_gateway_request_duration_seconds_bucket")),
        "latency is a histogram with buckets"
    );
    assert_eq!(
        sluice_tests::metric(
            &all,
            "sluice_gateway_cache_requests_total",
            &[("route", "products"), ("result", "hit")]
        ),
        Some(1.0)
    );
}

#[test]
fn every_bad_token_kind_gets_401_with_a_challenge_and_reaches_nothing() {
    let services = Services::start();
    let gw = start_gateway("gw_tokens", &redis_url(), &seed_routes(&services, 100));
    let now = jsonwebtoken::get_current_timestamp();
    let b64 = |s: &str| {
        use std::fmt::Write as _;
        // base64url without padding, enough for the header and claims of an alg:none token.
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in s.as_bytes().chunks(3) {
            let n =
                chunk.iter().fold(0u32, |n, b| (n << 8) | u32::from(*b)) << (8 * (3 - chunk.len()));
            for i in 0..=chunk.len() {
                let _ = write!(out, "{}", A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    };
    let none = format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"JWT"}"#),
        b64(&format!(r#"{{"sub":"456","exp":{}}}"#, now + 300))
    );
    let cases = [
        ("missing", None),
        (
            "forged",
            Some(bearer(&token(
                "456",
                300,
                "another-secret-that-is-32-bytes!",
            ))),
        ),
        ("expired", Some(bearer(&token("456", -3600, SECRET)))),
        ("alg none", Some(bearer(&none))),
        ("garbage", Some(bearer("abc.def.ghi"))),
        ("not bearer", Some("Basic dXNlcjpwYXNz".to_owned())),
    ];
    for (kind, auth) in cases {
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        let answer = get_with(gw.address, "/api/products/1", &headers);
        assert_eq!(answer.status, 401, "{kind}: {answer:?}");
        let challenge = answer.header("www-authenticate").unwrap_or_default();
        assert!(challenge.starts_with("Bearer"), "{kind}: {answer:?}");
    }
    assert_eq!(services.seen.products.load(Ordering::SeqCst), 0);
}

#[test]
fn two_gateways_share_one_limit_and_the_one_over_gets_429() {
    let services = Services::start();
    let routes = seed_routes(&services, 10);
    let a = start_gateway("gw_limit_a", &redis_url(), &routes);
    let b = start_gateway("gw_limit_b", &redis_url(), &routes);
    let user = format!("limit-{}", unique());
    let auth = bearer(&token(&user, 300, SECRET));
    let mut allowed = 0;
    let mut refused = Vec::new();
    for i in 0..16 {
        let gw = if i % 2 == 0 { &a } else { &b };
        // Cache-Control: no-cache so that every request is counted and forwarded.
        let answer = get_with(
            gw.address,
            "/api/products/7",
            &[("Authorization", &auth), ("Cache-Control", "no-cache")],
        );
        match answer.status {
            200 => allowed += 1,
            429 => refused.push(answer),
            other => panic!("unexpected {other}: {answer:?}"),
        }
    }
    assert_eq!(
        allowed, 10,
        "the user's requests across both gateways stay within the limit"
    );
    let last = refused.last().unwrap();
    let retry: u64 = last.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{last:?}");
    assert_eq!(last.header("ratelimit-remaining"), Some("0"));
    assert!(last.body.contains("Too many requests"), "{last:?}");
    // Another user is not affected.
    let other = bearer(&token(&format!("{user}-other"), 300, SECRET));
    assert_eq!(
        get_with(
            a.address,
            "/api/products/7",
            &[("Authorization", &other), ("Cache-Control", "no-cache")]
        )
        .status,
        200
    );
}

#[test]
fn an_open_breaker_answers_503_without_calling_and_a_probe_closes_it() {
    let services = Services::start();
    let gw = start_gateway("gw_breaker", &redis_url(), &seed_routes(&services, 1000));
    let auth = bearer(&token("456", 300, SECRET));
    services.seen.orders_status.store(500, Ordering::SeqCst);
    for _ in 0..3 {
        assert_eq!(
            get_with(gw.address, "/api/orders/1", &[("Authorization", &auth)]).status,
            500
        );
    }
    let hits = services.seen.orders.load(Ordering::SeqCst);
    assert_eq!(hits, 3);
    let open = get_with(gw.address, "/api/orders/1", &[("Authorization", &auth)]);
    assert_eq!(open.status, 503, "{open:?}");
    let body: serde_json::Value = serde_json::from_str(&open.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"error": "Service temporarily unavailable"})
    );
    assert_eq!(
        services.seen.orders.load(Ordering::SeqCst),
        hits,
        "the service was not called"
    );

    // Recovered: once the breaker half-opens, a probe succeeds and it closes.
    services.seen.orders_status.store(0, Ordering::SeqCst);
    wait_for("the breaker to close", || {
        (get_with(gw.address, "/api/orders/1", &[("Authorization", &auth)]).status == 200)
            .then_some(())
    })
    .unwrap();
    for _ in 0..3 {
        assert_eq!(
            get_with(gw.address, "/api/orders/1", &[("Authorization", &auth)]).status,
            200
        );
    }
    let all = metrics(gw.api).unwrap();
    assert_eq!(
        sluice_tests::metric(
            &all,
            "sluice_gateway_breaker_state",
            &[("upstream", "orders")]
        ),
        Some(0.0)
    );
}

#[test]
fn a_slow_upstream_gets_504_and_repeated_timeouts_open_the_breaker() {
    let services = Services::start();
    services.seen.slow_ms.store(3000, Ordering::SeqCst);
    let routes = format!(
        r#"
        [sources.gateway.upstreams.products]
        instances = ["{url}"]
        [sources.gateway.upstreams.products.breaker]
        failures = 2
        open_for = "1h"
        max_open_for = "1h"
        [[sources.gateway.routes]]
        id = "slow"
        prefix = "/slow"
        rewrite_prefix = "/products/slow"
        upstream = "products"
        auth = "off"
        timeout = "200ms"
        "#,
        url = services.url()
    );
    let gw = start_gateway("gw_timeout", &redis_url(), &routes);
    assert_eq!(get_with(gw.address, "/slow/1", &[]).status, 504);
    assert_eq!(get_with(gw.address, "/slow/1", &[]).status, 504);
    let hits = services.seen.products.load(Ordering::SeqCst);
    assert_eq!(get_with(gw.address, "/slow/1", &[]).status, 503);
    assert_eq!(services.seen.products.load(Ordering::SeqCst), hits);
}

#[test]
fn cache_bypass_and_one_upstream_call_for_concurrent_misses() {
    let services = Services::start();
    services.seen.slow_ms.store(300, Ordering::SeqCst);
    let routes = format!(
        r#"
        [sources.gateway.upstreams.products]
        instances = ["{url}"]
        [[sources.gateway.routes]]
        id = "slow"
        prefix = "/slow"
        rewrite_prefix = "/products/slow"
        upstream = "products"
        params = ["id"]
        auth = "optional"
        [sources.gateway.routes.cache]
        key = "cache:gwtest:slow:{{id}}"
        [[sources.gateway.routes]]
        id = "plain"
        prefix = "/api/products"
        rewrite_prefix = "/products"
        upstream = "products"
        params = ["id"]
        auth = "optional"
        [sources.gateway.routes.cache]
        key = "cache:gwtest:plain:{{id}}"
        "#,
        url = services.url()
    );
    let gw = start_gateway("gw_cache", &redis_url(), &routes);
    let id = unique();
    let address = gw.address;
    let answers: Vec<Answer> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| s.spawn(move || get_with(address, &format!("/slow/{id}"), &[])))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(answers.iter().all(|a| a.status == 200), "{answers:?}");
    assert_eq!(
        services.seen.products.load(Ordering::SeqCst),
        1,
        "one upstream call for 8 concurrent misses"
    );
    assert_eq!(
        answers
            .iter()
            .filter(|a| a.header("x-cache") == Some("MISS"))
            .count(),
        1
    );

    // Cache-Control: no-cache bypasses; a POST is not cached; per-user keys for a non-public route.
    let bypass = get_with(
        gw.address,
        &format!("/slow/{id}"),
        &[("Cache-Control", "no-cache")],
    );
    assert_eq!(bypass.header("x-cache"), Some("BYPASS"));
    let alice = bearer(&token("alice", 300, SECRET));
    let pid = unique();
    let a = get_with(
        gw.address,
        &format!("/api/products/{pid}"),
        &[("Authorization", &alice)],
    );
    assert_eq!(a.header("x-cache"), Some("MISS"));
    let anonymous = get_with(gw.address, &format!("/api/products/{pid}"), &[]);
    assert_eq!(
        anonymous.header("x-cache"),
        Some("MISS"),
        "alice's answer is hers alone"
    );
    assert!(anonymous.body.contains(r#""user":null"#), "{anonymous:?}");
    let again = get_with(
        gw.address,
        &format!("/api/products/{pid}"),
        &[("Authorization", &alice)],
    );
    assert_eq!(again.header("x-cache"), Some("HIT"));
    let mut redis = redis();
    let per_user: bool = redis::cmd("EXISTS")
        .arg(format!("cache:gwtest:plain:{pid}:user:alice"))
        .query(&mut redis)
        .unwrap();
    assert!(per_user);
}

#[test]
fn traversal_absolute_targets_and_smuggling_are_refused() {
    let services = Services::start();
    let gw = start_gateway("gw_hygiene", &redis_url(), &seed_routes(&services, 1000));
    let auth = bearer(&token("456", 300, SECRET));
    // Dot segments resolve before routing: this is an orders request, and goes there.
    let resolved = get_with(
        gw.address,
        "/api/products/%2e%2e/orders/5",
        &[("Authorization", &auth)],
    );
    assert_eq!(resolved.status, 200, "{resolved:?}");
    assert_eq!(
        services
            .seen
            .last
            .lock()
            .unwrap()
            .as_ref()
            .map(|(p, _)| p.clone()),
        Some("/orders/5".to_owned())
    );
    assert_eq!(services.seen.products.load(Ordering::SeqCst), 0);
    for path in [
        "/api/products/..%2Forders/5",
        "/../api/orders/5",
        "/api/products/%5c..%5corders",
        "/api/%ff",
    ] {
        let answer = get_with(gw.address, path, &[("Authorization", &auth)]);
        assert_eq!(answer.status, 400, "{path}: {answer:?}");
    }
    let absolute = send_raw(
        gw.address,
        "GET http://evil.test/api/orders/1 HTTP/1.1\r\nHost: evil.test\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(absolute.status, 400, "no open proxy: {absolute:?}");
    let double_length = send_raw(
        gw.address,
        "POST /api/orders/1 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 30\r\nConnection: close\r\n\r\nabc",
    );
    assert_eq!(double_length.status, 400, "{double_length:?}");
    // Chunked wins over Content-Length, and the connection is closed after the answer: what
    // follows the chunked body is never read as a request.
    let te_and_cl = send_raw(
        gw.address,
        "POST /api/orders/1 HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /api/orders/2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(te_and_cl.status, 401, "{te_and_cl:?}");
    assert_eq!(
        te_and_cl.header("connection"),
        Some("close"),
        "{te_and_cl:?}"
    );
    assert!(
        !te_and_cl.body.contains("HTTP/1.1"),
        "one answer only: {te_and_cl:?}"
    );
    let big = "x".repeat(20 * 1024);
    let large_head = get_with(gw.address, "/api/orders/1", &[("X-Big", &big)]);
    assert_eq!(large_head.status, 431, "{large_head:?}");
    assert_eq!(
        services.seen.orders.load(Ordering::SeqCst),
        1,
        "only the resolved request reached orders"
    );
}

/// A Redis server of the test's own, on its own port, so the test may stop it.
struct OwnRedis {
    port: u16,
    child: Option<Child>,
}

impl OwnRedis {
    fn start(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/services.sh installs it)");
        let url = format!("redis://127.0.0.1:{port}");
        wait_for("the test's redis to answer", || {
            let mut c = redis::Client::open(url.as_str())
                .ok()?
                .get_connection()
                .ok()?;
            redis::cmd("PING").query::<String>(&mut c).ok()
        })
        .unwrap();
        OwnRedis {
            port,
            child: Some(child),
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
fn redis_down_fails_open_or_closed_as_configured_then_recovers() {
    let services = Services::start();
    let port = free_port();
    let mut own = OwnRedis::start(port);
    let routes = format!(
        r#"
        [sources.gateway.upstreams.products]
        instances = ["{url}"]
        [[sources.gateway.routes]]
        id = "open"
        prefix = "/open"
        rewrite_prefix = "/products"
        upstream = "products"
        auth = "off"
        [sources.gateway.routes.rate_limit]
        limit = 1000
        by = "ip"
        on_store_error = "open"
        fallback_limit = 2
        # The fallback's windows are aligned like Redis's: an hour makes it unlikely that the
        # four requests below straddle two of them.
        window = "1h"
        [[sources.gateway.routes]]
        id = "closed"
        prefix = "/closed"
        rewrite_prefix = "/products"
        upstream = "products"
        auth = "off"
        [sources.gateway.routes.rate_limit]
        limit = 1000
        by = "ip"
        on_store_error = "closed"
        "#,
        url = services.url()
    );
    let gw = start_gateway(
        "gw_redis_down",
        &format!("redis://127.0.0.1:{}", own.port),
        &routes,
    );
    assert_eq!(get_with(gw.address, "/open/1", &[]).status, 200);
    assert_eq!(get_with(gw.address, "/closed/1", &[]).status, 200);

    own.stop();
    let answers: Vec<(u16, Option<String>, Option<String>)> = (0..4)
        .map(|_| {
            let r = get_with(gw.address, "/open/1", &[]);
            let header = |name| r.header(name).map(str::to_owned);
            (
                r.status,
                header("ratelimit-remaining"),
                header("ratelimit-reset"),
            )
        })
        .collect();
    let open: Vec<u16> = answers.iter().map(|a| a.0).collect();
    assert_eq!(
        &open[..2],
        [200, 200],
        "{answers:?}: failing open, under the in-process limit"
    );
    assert!(
        open[2..].iter().all(|s| *s == 429),
        "{answers:?}: the fallback limit holds"
    );
    let closed = get_with(gw.address, "/closed/1", &[]);
    assert_eq!(closed.status, 503, "{closed:?}");
    assert!(closed.header("retry-after").is_some());
    let all = metrics(gw.api).unwrap();
    assert!(
        sluice_tests::metric(
            &all,
            "sluice_gateway_rate_limit_store_errors_total",
            &[("route", "closed")]
        )
        .unwrap_or(0.0)
            >= 1.0
    );

    // Each serving thread's connection reconnects at its next command.
    let _again = OwnRedis::start(port);
    for route in ["/closed/1", "/open/1"] {
        wait_for("the route to recover", || {
            (0..4)
                .all(|_| get_with(gw.address, route, &[]).status == 200)
                .then_some(())
        })
        .unwrap();
    }
    // Logged once per change of state and route: each failure logged after a route's first
    // follows a recovery (serving threads have connections of their own, so while Redis goes
    // down one may still answer once another has failed).
    let log = gw.process.log();
    let (failed, recovered) = (
        log.matches("rate limit store failed").count(),
        log.matches("rate limit store answers again").count(),
    );
    assert!(
        (2..=2 + recovered).contains(&failed),
        "{failed} failures logged, {recovered} recoveries: logged once per state change and route"
    );
}

#[test]
fn the_id_endpoint_is_routable_through_the_gateway() {
    let dir = Scratch::new("gw_ids");
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let address: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = dir.write(
        "gateway.toml",
        &format!(
            r#"
            [api]
            address = "{api}"
            [pipeline]
            data_dir = "{data}"
            [ids.generators.orders]
            type = "snowflake"
            datacenter = 1
            worker = 2
            [sources.gateway]
            type = "gateway"
            address = "{address}"
            [sources.gateway.upstreams.ids]
            instances = ["http://{api}"]
            [[sources.gateway.routes]]
            id = "ids"
            prefix = "/api/ids"
            rewrite_prefix = "/ids"
            upstream = "ids"
            methods = ["GET"]
            [sinks.log]
            type = "blackhole"
            inputs = ["gateway"]
            "#,
            data = dir.join("data").display(),
        ),
    );
    let mut process = sluice().spawn(&config);
    process.wait_ready(api).unwrap();
    let answer = get_with(address, "/api/ids/orders?count=3", &[]);
    assert_eq!(answer.status, 200, "{answer:?}");
    let body: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(body["ids"].as_array().map(Vec::len), Some(3), "{answer:?}");
}

fn curl(args: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{http_version}",
        ])
        .args(args)
        .output()
        .expect("curl (scripts/services.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (status, version) = text.split_once(' ').unwrap_or((&text, ""));
    (status.to_owned(), version.to_owned())
}

#[test]
fn http2_in_clear_and_tls_termination_with_alpn() {
    let services = Services::start();
    let dir = Scratch::new("gw_tls_certs");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ])
        .args([
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .expect("openssl (scripts/services.sh installs it)");
    assert!(made.success());
    let plain = start_gateway("gw_h2c", &redis_url(), &seed_routes(&services, 1000));
    let auth = format!("Authorization: {}", bearer(&token("456", 300, SECRET)));
    let url = format!("http://{}/api/orders/1", plain.address);
    assert_eq!(
        curl(&["--http2-prior-knowledge", "-H", &auth, &url]),
        ("200".into(), "2".into())
    );
    assert_eq!(
        curl(&["--http1.1", "-H", &auth, &url]),
        ("200".into(), "1.1".into())
    );

    let routes = format!(
        "{}\n[sources.gateway.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        seed_routes(&services, 1000),
        cert.display(),
        key.display()
    );
    let tls = start_gateway("gw_tls", &redis_url(), &routes);
    let url = format!("https://localhost:{}/api/orders/1", tls.address.port());
    let resolve = format!("localhost:{}:127.0.0.1", tls.address.port());
    let ca = cert.display().to_string();
    assert_eq!(
        curl(&[
            "--http2",
            "--cacert",
            &ca,
            "--resolve",
            &resolve,
            "-H",
            &auth,
            &url
        ]),
        ("200".into(), "2".into()),
        "HTTP/2 by ALPN"
    );
    assert_eq!(
        curl(&[
            "--http1.1",
            "--cacert",
            &ca,
            "--resolve",
            &resolve,
            "-H",
            &auth,
            &url
        ]),
        ("200".into(), "1.1".into())
    );
    assert_eq!(services.seen.orders.load(Ordering::SeqCst), 4);
}
