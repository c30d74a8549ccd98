//! What the gateway speaks to its upstreams, through the binary: a WebSocket upgrade passed
//! through to a real WebSocket echo server (both ways, text and binary), and an upstream over
//! TLS whose certificate a private CA signs (`ca_file`), refused without that CA; HTTP/2
//! upstreams in clear and over TLS, and HTTP/1.1 upstream connections kept alive (nginx).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use futures::{SinkExt, StreamExt};
use sluice_tests::{Scratch, free_port, wait_for};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

use crate::gateway::{get_with, start_gateway};

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A WebSocket server echoing every message, on a port of its own; records the paths of the
/// handshakes it accepted.
struct EchoServer {
    address: std::net::SocketAddr,
    paths: Arc<Mutex<Vec<String>>>,
    runtime: tokio::runtime::Runtime,
}

impl EchoServer {
    fn start() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let address = listener.local_addr().unwrap();
        let paths = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&paths);
        runtime.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let seen = Arc::clone(&seen);
                tokio::spawn(async move {
                    // The signature is tungstenite's handshake callback's.
                    #[allow(clippy::result_large_err)]
                    let record = |request: &Request, response: Response| {
                        seen.lock().unwrap().push(request.uri().path().to_owned());
                        Ok(response)
                    };
                    let Ok(mut socket) = tokio_tungstenite::accept_hdr_async(stream, record).await
                    else {
                        return;
                    };
                    while let Some(Ok(message)) = socket.next().await {
                        if message.is_close() || socket.send(message).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        EchoServer {
            address,
            paths,
            runtime,
        }
    }
}

#[test]
fn a_websocket_upgrade_is_passed_through_both_ways() {
    let echo = EchoServer::start();
    let gw = start_gateway(
        "gw_websocket",
        &redis_url(),
        &format!(
            r#"
            [sources.gateway.upstreams.chat]
            instances = ["http://{}"]
            [[sources.gateway.routes]]
            id = "chat"
            prefix = "/api/chat"
            rewrite_prefix = "/ws"
            upstream = "chat"
            auth = "off"
            "#,
            echo.address
        ),
    );
    echo.runtime.block_on(async {
        let tcp = tokio::net::TcpStream::connect(gw.address).await.unwrap();
        let url = format!("ws://{}/api/chat/room-1", gw.address);
        let (mut socket, response) = tokio_tungstenite::client_async(url, tcp).await.unwrap();
        assert_eq!(response.status(), 101);
        socket.send(Message::text("hello")).await.unwrap();
        assert_eq!(
            socket.next().await.unwrap().unwrap(),
            Message::text("hello")
        );
        // Larger than one read of the tunnel, so several frames' bytes cross it.
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        socket.send(Message::binary(big.clone())).await.unwrap();
        assert_eq!(socket.next().await.unwrap().unwrap(), Message::binary(big));
        socket.close(None).await.unwrap();
    });
    assert_eq!(
        *echo.paths.lock().unwrap(),
        ["/ws/room-1"],
        "one handshake reached the upstream, rewritten"
    );
}

/// Runs `openssl` with `args`, which must succeed.
fn openssl(args: &[&str]) {
    let status = Command::new("openssl")
        .args(args)
        .stderr(Stdio::null())
        .status()
        .expect("openssl (scripts/services.sh installs it)");
    assert!(status.success(), "openssl {args:?}");
}

/// A CA, and a certificate for `localhost` it signs: (ca.pem, cert.pem, key.pem).
fn private_ca(dir: &Scratch) -> (String, String, String) {
    let path = |name: &str| dir.join(name).display().to_string();
    let (ca_key, ca, key, csr, cert, ext) = (
        path("ca.key"),
        path("ca.pem"),
        path("key.pem"),
        path("cert.csr"),
        path("cert.pem"),
        dir.write(
            "ext.cnf",
            "basicConstraints=CA:false\nsubjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n",
        ),
    );
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=gateway test CA",
        "-keyout",
        &ca_key,
        "-out",
        &ca,
    ]);
    openssl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        &key,
        "-out",
        &csr,
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        &ext.display().to_string(),
        "-out",
        &cert,
    ]);
    (ca, cert, key)
}

/// An HTTPS server (Python's) answering every GET with the path and `Host` it received.
struct HttpsServer {
    child: Child,
    port: u16,
}

const HTTPS_SERVER: &str = r#"
import http.server, json, ssl, sys
class Echo(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = json.dumps({"path": self.path, "host": self.headers.get("Host")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Echo)
tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
tls.load_cert_chain(sys.argv[1], sys.argv[2])
server.socket = tls.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

impl HttpsServer {
    fn start(cert: &str, key: &str) -> Self {
        let mut child = Command::new("python3")
            .args(["-c", HTTPS_SERVER, cert, key])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().expect("the server prints its port");
        HttpsServer { child, port }
    }
}

impl Drop for HttpsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn an_https_upstream_is_verified_against_its_private_ca() {
    let dir = Scratch::new("gw_https_upstream");
    let (ca, cert, key) = private_ca(&dir);
    let server = HttpsServer::start(&cert, &key);
    let gw = start_gateway(
        "gw_https_upstream_gw",
        &redis_url(),
        &format!(
            r#"
            [sources.gateway.upstreams.secure]
            instances = ["https://localhost:{port}/v1"]
            ca_file = "{ca}"
            [sources.gateway.upstreams.untrusted]
            instances = ["https://localhost:{port}/v1"]
            [[sources.gateway.routes]]
            id = "secure"
            prefix = "/api/secure"
            rewrite_prefix = ""
            upstream = "secure"
            auth = "off"
            [[sources.gateway.routes]]
            id = "untrusted"
            prefix = "/api/untrusted"
            rewrite_prefix = ""
            upstream = "untrusted"
            auth = "off"
            "#,
            port = server.port
        ),
    );
    let answer = get_with(gw.address, "/api/secure/items/1?x=2", &[]);
    assert_eq!(answer.status, 200, "{answer:?}");
    let body: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(body["path"], "/v1/items/1?x=2", "{body}");
    assert_eq!(body["host"], format!("localhost:{}", server.port), "{body}");

    let refused = get_with(gw.address, "/api/untrusted/items/1", &[]);
    assert_eq!(
        refused.status, 502,
        "a certificate no trusted CA signs is refused: {refused:?}"
    );
}

/// An nginx (Debian's) answering every request with the protocol, `Host`, URI and connection
/// number it saw: HTTP/1.1 on one port, HTTP/2 in clear (prior knowledge) on another and HTTP/2
/// over TLS (ALPN) on a third.
struct Nginx {
    child: Child,
    ports: Ports,
}

#[derive(Clone, Copy)]
struct Ports {
    h1: u16,
    clear: u16,
    tls: u16,
}

impl Nginx {
    fn start(dir: &Scratch, cert: &str, key: &str) -> Self {
        let ports = Ports {
            h1: free_port(),
            clear: free_port(),
            tls: free_port(),
        };
        Nginx::start_on(dir, cert, key, ports)
    }

    fn start_on(dir: &Scratch, cert: &str, key: &str, ports: Ports) -> Self {
        let Ports { h1, clear, tls } = ports;
        let d = dir.path().display();
        let echo = r#"default_type application/json;
            return 200 '{"protocol":"$server_protocol","host":"$http_host","uri":"$request_uri","connection":"$connection"}';"#;
        let conf = dir.write(
            "nginx.conf",
            &format!(
                r#"master_process off; daemon off; pid {d}/nginx.pid; error_log {d}/nginx.err;
events {{ worker_connections 256; }}
http {{ access_log off;
  server {{ listen 127.0.0.1:{h1}; location / {{ {echo} }} }}
  server {{ listen 127.0.0.1:{clear} http2; location / {{ {echo} }} }}
  server {{ listen 127.0.0.1:{tls} ssl http2; ssl_certificate {cert}; ssl_certificate_key {key};
    location / {{ {echo} }} }} }}
"#
            ),
        );
        let child = Command::new("nginx")
            .args(["-c", &conf.display().to_string(), "-e"])
            .arg(dir.join("nginx.err"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx (scripts/services.sh installs it)");
        let nginx = Nginx { child, ports };
        wait_for("nginx to listen", || {
            [h1, clear, tls]
                .iter()
                .all(|port| std::net::TcpStream::connect(("127.0.0.1", *port)).is_ok())
                .then_some(())
        })
        .unwrap();
        nginx
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The JSON nginx answered through the gateway at `path`.
fn echoed(gw: std::net::SocketAddr, path: &str) -> serde_json::Value {
    let answer = get_with(gw, path, &[]);
    assert_eq!(answer.status, 200, "{answer:?}");
    serde_json::from_str(&answer.body).unwrap()
}

#[test]
fn http2_upstreams_in_clear_and_over_tls_and_kept_alive_http1() {
    let dir = Scratch::new("gw_h2_upstream");
    let (ca, cert, key) = private_ca(&dir);
    let nginx = Nginx::start(&dir, &cert, &key);
    let gw = start_gateway(
        "gw_h2_upstream_gw",
        &redis_url(),
        &format!(
            r#"
            [sources.gateway.upstreams.h2c]
            instances = ["http://127.0.0.1:{clear}"]
            http2 = true
            [sources.gateway.upstreams.h2]
            instances = ["https://localhost:{tls}/v2"]
            http2 = true
            ca_file = "{ca}"
            [sources.gateway.upstreams.h1]
            instances = ["http://127.0.0.1:{h1}"]
            [[sources.gateway.routes]]
            id = "h2c"
            prefix = "/api/h2c"
            rewrite_prefix = "/items"
            upstream = "h2c"
            auth = "off"
            [[sources.gateway.routes]]
            id = "h2"
            prefix = "/api/h2"
            rewrite_prefix = "/items"
            upstream = "h2"
            auth = "off"
            [[sources.gateway.routes]]
            id = "h1"
            prefix = "/api/h1"
            rewrite_prefix = "/items"
            upstream = "h1"
            auth = "off"
            "#,
            h1 = nginx.ports.h1,
            clear = nginx.ports.clear,
            tls = nginx.ports.tls,
        ),
    );
    let h2c = echoed(gw.address, "/api/h2c/1?x=2");
    assert_eq!(h2c["protocol"], "HTTP/2.0", "{h2c}");
    assert_eq!(h2c["uri"], "/items/1?x=2", "{h2c}");
    assert_eq!(
        h2c["host"],
        format!("127.0.0.1:{}", nginx.ports.clear),
        "{h2c}"
    );
    let h2 = echoed(gw.address, "/api/h2/1");
    assert_eq!(h2["protocol"], "HTTP/2.0", "HTTP/2 by ALPN: {h2}");
    assert_eq!(h2["uri"], "/v2/items/1", "{h2}");
    assert_eq!(h2["host"], format!("localhost:{}", nginx.ports.tls), "{h2}");

    // Requests of one client connection are served by one serving thread, whose upstream
    // connection is reused once the previous answer has been read.
    let out = Command::new("curl")
        .args(["-s", "-w", "\n"])
        .arg(format!("http://{}/api/h1/1", gw.address))
        .arg(format!("http://{}/api/h1/2", gw.address))
        .arg(format!("http://{}/api/h1/3", gw.address))
        .output()
        .expect("curl");
    let answers: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(answers.len(), 3, "{answers:?}");
    assert!(
        answers.iter().all(|a| a["protocol"] == "HTTP/1.1"),
        "{answers:?}"
    );
    assert!(
        answers
            .iter()
            .all(|a| a["connection"] == answers[0]["connection"]),
        "one upstream connection for all three: {answers:?}"
    );

    // The upstream restarts: the connections the gateway keeps are closed under it, and the
    // next requests get new ones.
    let ports = nginx.ports;
    drop(nginx);
    let _nginx = Nginx::start_on(&dir, &cert, &key, ports);
    for path in ["/api/h1/4", "/api/h2c/4", "/api/h2/4"] {
        let answer = echoed(gw.address, path);
        assert!(
            answer["uri"].as_str().unwrap().ends_with("/items/4"),
            "{answer}"
        );
    }
}
