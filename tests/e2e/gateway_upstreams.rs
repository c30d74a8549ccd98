//! What the gateway speaks to its upstreams, through the binary: a WebSocket upgrade passed
//! through to a real WebSocket echo server (both ways, text and binary), and an upstream over
//! TLS whose certificate a private CA signs (`ca_file`), refused without that CA.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use futures::{SinkExt, StreamExt};
use sluice_tests::Scratch;
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
