//! The HTTP API: `/metrics` (Prometheus text), `/health` (the process is alive), `/ready`
//! (every component started and connected, and the role of each election: leader or standby),
//! `/status` (JSON for `sluice status`), `/tap/ID` (events leaving a component, live),
//! `/quarantined` (the latest quarantined events' metadata, JSON) and `/console` (one page that
//! shows all of it in a browser, polling the others).

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use std::sync::{Arc, PoisonError, RwLock};

use axum::Router;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tower::ServiceExt;

use crate::config::ApiConfig;
use crate::health::Health;
use crate::leadership::Role;
use crate::metrics::{self, Buckets};
use crate::tap::Taps;
use tokio::sync::broadcast;

/// The console: one self-contained page (inline CSS and script, no build step) that polls
/// `/status`, `/metrics` and `/quarantined` and computes rates between polls.
const CONSOLE: &str = include_str!("console.html");

/// How often histograms are compacted between scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

static RECORDER: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the Prometheus recorder as the process's metrics recorder, once, with `buckets`
/// (later calls return the same recorder, whatever they pass: one process has one `[api]
/// buckets`, see [`crate::check_together`]). Returns `None` if another recorder was installed
/// first (metrics then go there, not to `/metrics`).
///
/// Every histogram is rendered as a Prometheus histogram (aggregatable across processes,
/// usable with `histogram_quantile`): `*_seconds` ones with `buckets.seconds`, `*_events` ones
/// with `buckets.events`. The engine's metrics are described (HELP) and `sluice_build_info` is
/// set as soon as the recorder is installed.
pub fn prometheus(buckets: &Buckets) -> Option<PrometheusHandle> {
    RECORDER
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), &buckets.seconds)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("_events".to_owned()), &buckets.events)
                })
                .and_then(PrometheusBuilder::install_recorder);
            match &handle {
                Ok(_) => {
                    metrics::describe();
                    metrics::build_info();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics recorder not installed; /metrics will be empty");
                }
            }
            handle.ok()
        })
        .clone()
}

/// A running API server.
pub struct ApiServer {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
    /// The address it listens on (useful when the config asked for port 0).
    pub address: SocketAddr,
}

impl ApiServer {
    /// Stops serving and waits for the server to finish.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// Routes that resources add to the API server beside `/metrics`, `/health` and `/ready` (such
/// as `/ids/{generator}`); replaced when the resources are (a reload that changed them).
#[derive(Clone, Default)]
pub struct Routes(Arc<RwLock<Router>>);

impl Routes {
    /// Serves `router` from now on.
    pub(crate) fn set(&self, router: Router) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = router;
    }

    fn current(&self) -> Router {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Binds `config.address` and serves the API until stopped: the engine's routes, then `routes`.
pub async fn serve(
    config: &ApiConfig,
    health: Health,
    routes: Routes,
) -> std::io::Result<ApiServer> {
    let address = config.address;
    let metrics = prometheus(&config.buckets);
    let upkeep = metrics.clone();
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move { metrics.map(|m| m.render()).unwrap_or_default() }
            }),
        )
        .route("/health", get(|| async { "ok\n" }))
        .route(
            "/status",
            get({
                let health = health.clone();
                move || {
                    let health = health.clone();
                    async move { json(&health.status()) }
                }
            }),
        )
        .route(
            "/quarantined",
            get({
                let quarantined = health.quarantined().clone();
                move || {
                    let quarantined = quarantined.clone();
                    async move { json(&quarantined.to_json()) }
                }
            }),
        )
        .route(
            "/console",
            get(|| async {
                let html = [
                    (axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8"),
                    (axum::http::header::CACHE_CONTROL, "no-store"),
                ];
                (html, CONSOLE)
            }),
        )
        .route(
            "/tap/{component}",
            get({
                let taps = health.taps().clone();
                move |request: Request| {
                    let taps = taps.clone();
                    async move { tap(&taps, &request) }
                }
            }),
        )
        .route(
            "/ready",
            get(move || {
                let health = health.clone();
                async move { ready(&health) }
            }),
        )
        .fallback(move |request: Request| {
            let router = routes.current();
            async move {
                match router.oneshot(request).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                }
            }
        });
    let listener = tokio::net::TcpListener::bind(address).await?;
    let address = listener.local_addr()?;
    tracing::info!(%address, "api listening");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let server = axum::serve(listener, app).with_graceful_shutdown(async {
            let _ = stopped.await;
        });
        // Histograms are compacted between scrapes for as long as the server runs.
        let upkeep = async {
            let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
            loop {
                tick.tick().await;
                if let Some(handle) = &upkeep {
                    handle.run_upkeep();
                }
            }
        };
        tokio::select! {
            result = server => {
                if let Err(e) = result {
                    tracing::error!(error = %e, "api server failed");
                }
            }
            () = upkeep => {}
        }
    });
    Ok(ApiServer {
        stop,
        task,
        address,
    })
}

/// `value` as a JSON answer.
fn json(value: &serde_json::Value) -> impl axum::response::IntoResponse + use<> {
    let json = [(axum::http::header::CONTENT_TYPE, "application/json")];
    (json, value.to_string())
}

/// `GET /tap/ID?payload=true&every=N`: the events leaving component ID, one JSON object per
/// line, every Nth (default 1), with payloads only when asked; `{"missed": N}` when the watcher
/// fell behind. Ends when the component's run does.
fn tap(taps: &Taps, request: &Request) -> axum::response::Response {
    use axum::response::IntoResponse;
    let component = request
        .uri()
        .path()
        .strip_prefix("/tap/")
        .unwrap_or_default();
    let mut payload = false;
    let mut every: u64 = 1;
    for pair in request.uri().query().unwrap_or_default().split('&') {
        match pair.split_once('=').unwrap_or((pair, "")) {
            ("payload", value) => payload = matches!(value, "" | "true" | "1"),
            ("every", value) => match value.parse() {
                Ok(n) if n > 0 => every = n,
                _ => {
                    let refusal = format!("every={value:?}: expected a whole number above 0\n");
                    return (StatusCode::BAD_REQUEST, refusal).into_response();
                }
            },
            ("", _) => {}
            (other, _) => {
                let refusal = format!("unknown parameter {other:?} (expected payload, every)\n");
                return (StatusCode::BAD_REQUEST, refusal).into_response();
            }
        }
    }
    let receiver = match taps.watch(component) {
        Ok(receiver) => receiver,
        Err(e) => return (StatusCode::NOT_FOUND, format!("{e}\n")).into_response(),
    };
    let lines = futures::stream::unfold(
        (receiver, 0u64),
        move |(mut receiver, mut seen)| async move {
            loop {
                let line = match receiver.recv().await {
                    Ok(tapped) => {
                        seen += 1;
                        if (seen - 1) % every != 0 {
                            continue;
                        }
                        tapped.to_json(payload)
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        serde_json::json!({ "missed": missed })
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                };
                let mut bytes = line.to_string().into_bytes();
                bytes.push(b'\n');
                return Some((Ok::<_, std::convert::Infallible>(bytes), (receiver, seen)));
            }
        },
    );
    let ndjson = [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")];
    (ndjson, axum::body::Body::from_stream(lines)).into_response()
}

/// `starting: <configs>` until every pipeline registered its components, then `ready` or
/// `not ready: <ids>`, then one line per election saying this process's role.
fn ready(health: &Health) -> (StatusCode, String) {
    let readiness = health.readiness();
    let (status, mut body) = if !readiness.starting.is_empty() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("starting: {}\n", readiness.starting.join(", ")),
        )
    } else if readiness.not_ready.is_empty() {
        (StatusCode::OK, "ready\n".to_owned())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", readiness.not_ready.join(", ")),
        )
    };
    for (election, role) in readiness.roles {
        let line = match role {
            Role::Leader(token) => {
                format!("leader of election {election} (fencing token {token})\n")
            }
            Role::Standby => format!("standby for election {election}\n"),
        };
        body.push_str(&line);
    }
    (status, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get as get_route;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(address: SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer
    }

    #[test]
    fn ready_says_starting_until_every_pipeline_registered() {
        let health = Health::default();
        let pipeline = health.scoped("relay.toml");
        pipeline.expect();
        assert_eq!(
            ready(&health),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "starting: relay.toml\n".into()
            )
        );
        let sink = pipeline.register("sink", "broker");
        pipeline.registered();
        assert_eq!(
            ready(&health),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: broker\n".into()
            )
        );
        sink.set(true);
        assert_eq!(ready(&health), (StatusCode::OK, "ready\n".into()));
    }

    #[test]
    fn every_histogram_has_buckets_and_the_engines_metrics_have_help() {
        let handle = prometheus(&Buckets::default()).expect("the recorder is this process's");
        ::metrics::histogram!("sluice_api_test_latency_seconds").record(0.003);
        ::metrics::histogram!("sluice_api_test_batch_size_events").record(3.0);
        metrics::ComponentMetrics::new("sink", "api_test");
        let text = handle.render();
        assert!(
            text.contains("# TYPE sluice_api_test_latency_seconds histogram")
                && text.contains("sluice_api_test_latency_seconds_bucket{le=\"0.005\"} 1")
                && text.contains("sluice_api_test_latency_seconds_bucket{le=\"0.0025\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE sluice_api_test_batch_size_events histogram")
                && text.contains("sluice_api_test_batch_size_events_bucket{le=\"2\"} 0")
                && text.contains("sluice_api_test_batch_size_events_bucket{le=\"5\"} 1"),
            "{text}"
        );
        assert!(!text.contains(" summary"), "{text}");
        assert!(
            text.contains("# HELP sluice_component_received_events_total Events a transform or sink received.\n"),
            "{text}"
        );
        let version = env!("CARGO_PKG_VERSION");
        assert!(
            text.lines().any(|l| l.starts_with("sluice_build_info{")
                && l.contains(&format!("version=\"{version}\""))
                && l.ends_with(" 1")),
            "{text}"
        );
    }

    #[tokio::test]
    async fn resource_routes_are_served_beside_the_engines_own() {
        let routes = Routes::default();
        let server = serve(
            &ApiConfig::at("127.0.0.1:0".parse().unwrap()),
            Health::default(),
            routes.clone(),
        )
        .await
        .unwrap();
        assert!(
            get(server.address, "/hello")
                .await
                .starts_with("HTTP/1.1 404")
        );
        routes.set(Router::new().route("/hello", get_route(|| async { "hi" })));
        let hello = get(server.address, "/hello").await;
        assert!(
            hello.starts_with("HTTP/1.1 200") && hello.ends_with("hi"),
            "{hello}"
        );
        let health = get(server.address, "/health").await;
        assert!(health.ends_with("ok\n"), "{health}");
        server.stop().await;
    }

    #[tokio::test]
    async fn the_console_and_the_quarantined_events_it_shows_are_served() {
        let health = Health::default();
        let server = serve(
            &ApiConfig::at("127.0.0.1:0".parse().unwrap()),
            health.clone(),
            Routes::default(),
        )
        .await
        .unwrap();
        let console = get(server.address, "/console").await;
        assert!(
            console.starts_with("HTTP/1.1 200")
                && console.contains("content-type: text/html; charset=utf-8")
                && console.contains("<title>sluice console</title>"),
            "{console}"
        );
        health.quarantined().record(
            &"check".into(),
            &"e1".into(),
            &"fields.total is absent".into(),
        );
        let answer = get(server.address, "/quarantined").await;
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.contains("content-type: application/json"), "{head}");
        let log: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(log["total"], 1);
        assert_eq!(log["recent"][0]["id"], "e1");
        assert_eq!(log["recent"][0]["reason"], "fields.total is absent");
        server.stop().await;
    }
}
