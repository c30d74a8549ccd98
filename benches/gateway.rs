//! The API gateway beside nginx and HAProxy, in one run, against the same upstream.
//!
//! Run: `cargo bench --bench gateway` with Redis up (`scripts/services.sh up` installs nginx,
//! HAProxy and wrk; `REDIS_URL` names Redis). Options (after `--`): `--secs S` (each
//! measurement, default 8), `--connections C` (wrk's, default 32), `--json PATH` (default
//! `target/bench-gateway.json`).
//!
//! The program starts everything it measures on free loopback ports and stops it at the end:
//! an nginx serving a fixed 40-byte JSON answer (the upstream, one worker), then, in front of
//! it, an nginx reverse proxy (2 workers, upstream keep-alive), HAProxy (2 threads, connection
//! reuse) and `sluice run` (the release binary) with four routes: `plain` (proxy only), `jwt`
//! (+ HS256 verification and the `X-User-ID` header), `jwt-rl` (+ the Redis rate limit, one
//! script per request, a limit never reached) and `cache-hit` (answered from the Redis cache).
//! Each scenario is one `wrk -t1 -c C --latency` run of `--secs` after a 1 s warm-up; CPU per
//! request is the user + system time of the proxy's processes (all of nginx's workers) over
//! the run, divided by the requests. Everything shares the machine's cores with the load
//! generator and the upstream, so the figures compare the proxies with one another, not with
//! a dedicated machine.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use sluice_tests::free_port;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{Args, cpu_time_ns, write_json};

const SECRET: &str = "the-gateway-bench-secret-32-byte";

struct Proc {
    name: &'static str,
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(name: &'static str, program: &str, args: &[&str]) -> Proc {
    let child = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e} (scripts/services.sh up installs it)"));
    Proc { name, child }
}

/// Waits until `url` answers 200.
fn wait_up(url: &str, headers: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut curl = Command::new("curl");
        curl.args(["-s", "-o", "/dev/null", "-w", "%{http_code}"]);
        for h in headers {
            curl.args(["-H", h]);
        }
        let out = curl.arg(url).output().expect("curl");
        if out.stdout == b"200" {
            return;
        }
        assert!(Instant::now() < deadline, "{url} never answered 200");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// CPU time of `pid` and of its children (nginx's workers).
fn tree_cpu_ns(pid: u32) -> u64 {
    let mut total = cpu_time_ns(pid);
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if ppid == Some(pid) {
                total += cpu_time_ns(child);
            }
        }
    }
    total
}

#[derive(Debug, Clone, serde::Serialize)]
struct Figures {
    scenario: String,
    requests_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu_us_per_request: f64,
    non_2xx: u64,
}

fn millis(text: &str) -> f64 {
    let text = text.trim();
    let (number, unit) = text
        .find(|c: char| c.is_ascii_alphabetic())
        .map_or((text, "ms"), |at| text.split_at(at));
    let n: f64 = number.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        _ => f64::NAN,
    }
}

fn wrk(
    scenario: &str,
    url: &str,
    headers: &[&str],
    pid: u32,
    secs: u64,
    connections: u64,
) -> Figures {
    let run = |secs: u64| {
        let mut cmd = Command::new("wrk");
        cmd.args([
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{secs}s"),
            "--latency",
        ]);
        for h in headers {
            cmd.args(["-H", h]);
        }
        let out = cmd
            .arg(url)
            .output()
            .expect("wrk (scripts/services.sh up installs it)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run(1);
    let cpu_before = tree_cpu_ns(pid);
    let text = run(secs);
    let cpu = tree_cpu_ns(pid).saturating_sub(cpu_before);
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|v| v.trim().to_owned()))
            .unwrap_or_default()
    };
    let total: f64 = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0);
    let non_2xx = field("Non-2xx or 3xx responses:").parse().unwrap_or(0);
    Figures {
        scenario: scenario.to_owned(),
        requests_per_sec: field("Requests/sec:").parse().unwrap_or(0.0),
        p50_ms: millis(&field("50%")),
        p99_ms: millis(&field("99%")),
        cpu_us_per_request: if total > 0.0 {
            cpu as f64 / 1000.0 / total
        } else {
            f64::NAN
        },
        non_2xx,
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn main() {
    let args = Args::from_env();
    if !args.is_bench_run() {
        return;
    }
    let secs: u64 = args.number("--secs", 8);
    let connections: u64 = args.number("--connections", 32);
    let json = args
        .option("--json")
        .unwrap_or_else(|| "target/bench-gateway.json".into());
    let redis = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let dir = std::env::temp_dir().join(format!("sluice-bench-gateway-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.display();

    let upstream_port = free_port();
    let upstream_conf = write(
        &dir,
        "upstream.conf",
        &format!(
            r#"worker_processes 1; daemon off; pid {d}/upstream.pid; error_log {d}/upstream.err;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{upstream_port} reuseport;
    location / {{ default_type application/json; return 200 '{{"id":123,"name":"widget","price":9.99}}'; }} }} }}
"#
        ),
    );
    let _upstream = spawn(
        "upstream",
        "nginx",
        &[
            "-c",
            upstream_conf.to_str().unwrap(),
            "-e",
            &format!("{d}/upstream.err"),
        ],
    );
    wait_up(
        &format!("http://127.0.0.1:{upstream_port}/products/123"),
        &[],
    );

    let nginx_port = free_port();
    let nginx_conf = write(
        &dir,
        "nginx.conf",
        &format!(
            r#"worker_processes 2; daemon off; pid {d}/nginx.pid; error_log {d}/nginx.err;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000;
  upstream products {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}
  server {{ listen 127.0.0.1:{nginx_port};
    location /api/products/ {{ proxy_pass http://products/products/; proxy_http_version 1.1;
      proxy_set_header Connection ""; }} }} }}
"#
        ),
    );
    let nginx = spawn(
        "nginx",
        "nginx",
        &[
            "-c",
            nginx_conf.to_str().unwrap(),
            "-e",
            &format!("{d}/nginx.err"),
        ],
    );

    let haproxy_port = free_port();
    let haproxy_conf = write(
        &dir,
        "haproxy.cfg",
        &format!(
            "global\n  nbthread 2\n  maxconn 8192\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n  option http-keep-alive\nfrontend f\n  bind 127.0.0.1:{haproxy_port}\n  default_backend b\nbackend b\n  http-reuse always\n  http-request replace-path /api(.*) \\1\n  server s1 127.0.0.1:{upstream_port}\n"
        ),
    );
    let haproxy = spawn(
        "haproxy",
        "haproxy",
        &["-db", "-f", haproxy_conf.to_str().unwrap()],
    );

    let api_port = free_port();
    let gateway_port = free_port();
    let sluice_conf = write(
        &dir,
        "gateway.toml",
        &format!(
            r#"
[api]
address = "127.0.0.1:{api_port}"
[pipeline]
data_dir = "{d}/data"
[redis]
url = "{redis}"
[sources.gateway]
type = "gateway"
address = "127.0.0.1:{gateway_port}"
[sources.gateway.jwt]
secret = "{SECRET}"
[sources.gateway.upstreams.products]
instances = ["http://127.0.0.1:{upstream_port}"]
[[sources.gateway.routes]]
id = "plain"
prefix = "/api/products"
rewrite_prefix = "/products"
upstream = "products"
auth = "off"
[[sources.gateway.routes]]
id = "jwt"
prefix = "/jwt/products"
rewrite_prefix = "/products"
upstream = "products"
[[sources.gateway.routes]]
id = "bench-jwt-rl"
prefix = "/rl/products"
rewrite_prefix = "/products"
upstream = "products"
[sources.gateway.routes.rate_limit]
limit = 1000000000
window = "1m"
[[sources.gateway.routes]]
id = "cached"
prefix = "/cached/products"
rewrite_prefix = "/products"
upstream = "products"
auth = "off"
params = ["id"]
[sources.gateway.routes.cache]
key = "cache:bench-gateway:{{id}}"
public = true
[sinks.access_log]
type = "blackhole"
inputs = ["gateway"]
"#
        ),
    );
    let sluice = spawn(
        "sluice",
        env!("CARGO_BIN_EXE_sluice"),
        &["run", sluice_conf.to_str().unwrap()],
    );

    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"sub": "456", "exp": jsonwebtoken::get_current_timestamp() + 3600}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let auth = format!("Authorization: Bearer {token}");
    let base = |port: u16, path: &str| format!("http://127.0.0.1:{port}{path}");
    wait_up(&base(nginx_port, "/api/products/123"), &[]);
    wait_up(&base(haproxy_port, "/api/products/123"), &[]);
    wait_up(&base(gateway_port, "/api/products/123"), &[]);
    wait_up(&base(gateway_port, "/rl/products/123"), &[&auth]);
    wait_up(&base(gateway_port, "/cached/products/123"), &[]);

    let pid = |p: &Proc| p.child.id();
    let scenarios: Vec<(&str, String, Vec<&str>, u32)> = vec![
        (
            "nginx",
            base(nginx_port, "/api/products/123"),
            vec![],
            pid(&nginx),
        ),
        (
            "haproxy",
            base(haproxy_port, "/api/products/123"),
            vec![],
            pid(&haproxy),
        ),
        (
            "sluice-plain",
            base(gateway_port, "/api/products/123"),
            vec![],
            pid(&sluice),
        ),
        (
            "sluice-jwt",
            base(gateway_port, "/jwt/products/123"),
            vec![&auth],
            pid(&sluice),
        ),
        (
            "sluice-jwt-rl",
            base(gateway_port, "/rl/products/123"),
            vec![&auth],
            pid(&sluice),
        ),
        (
            "sluice-cache-hit",
            base(gateway_port, "/cached/products/123"),
            vec![],
            pid(&sluice),
        ),
    ];
    let figures: Vec<Figures> = scenarios
        .iter()
        .map(|(name, url, headers, pid)| {
            let f = wrk(name, url, headers, *pid, secs, connections);
            eprintln!(
                "{name}: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms",
                f.requests_per_sec, f.p50_ms, f.p99_ms
            );
            f
        })
        .collect();
    let rps = |name: &str| {
        figures
            .iter()
            .find(|f| f.scenario == name)
            .map_or(f64::NAN, |f| f.requests_per_sec)
    };
    let (nginx_rps, plain_rps) = (rps("nginx"), rps("sluice-plain"));
    println!(
        "\nAPI gateway, {connections} connections, {secs} s each, one wrk thread, same upstream"
    );
    println!(
        "{:<18} {:>10} {:>9} {:>9} {:>12} {:>9}  target",
        "scenario", "req/s", "p50 ms", "p99 ms", "CPU µs/req", "ratio"
    );
    let mut rows = Vec::new();
    for f in &figures {
        let (ratio, target) = match f.scenario.as_str() {
            "haproxy" => (f.requests_per_sec / nginx_rps, "(baseline)"),
            "sluice-plain" => (
                f.requests_per_sec / nginx_rps,
                "≥ 1.00 × nginx, p99 ≤ nginx's",
            ),
            "sluice-jwt" => (f.requests_per_sec / nginx_rps, ""),
            "sluice-jwt-rl" => (f.requests_per_sec / nginx_rps, "≥ 0.85 × nginx"),
            "sluice-cache-hit" => (f.requests_per_sec / plain_rps, "≥ 1.50 × sluice-plain"),
            _ => (1.0, "(baseline)"),
        };
        println!(
            "{:<18} {:>10.0} {:>9.2} {:>9.2} {:>12.1} {:>8.2}×  {}{}",
            f.scenario,
            f.requests_per_sec,
            f.p50_ms,
            f.p99_ms,
            f.cpu_us_per_request,
            ratio,
            target,
            if f.non_2xx > 0 {
                format!(" ({} non-2xx!)", f.non_2xx)
            } else {
                String::new()
            }
        );
        rows.push(serde_json::json!({"figures": f, "ratio": ratio, "target": target}));
    }
    write_json(
        &json,
        &serde_json::json!({"connections": connections, "secs": secs, "scenarios": rows}),
    );
    drop(scenarios);
    for p in [sluice, haproxy, nginx] {
        eprintln!("stopping {}", p.name);
        drop(p);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
