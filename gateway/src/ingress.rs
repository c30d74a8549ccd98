//! The `http_ingress` source: each POST becomes an event (the body its payload, the
//! `Idempotency-Key` header its id), and is answered by that event's own fate: `202` once it
//! is durably delivered (its receipt, DESIGN §4), `503` with `Retry-After` when the pipeline's
//! in-flight budget is full or delivery failed, `422` when it was quarantined, `4xx` for bad
//! content. A repeated `Idempotency-Key` within `dedupe_window` is not delivered again: it
//! gets the first request's answer (waiting for it if it is still in flight).
//!
//! ```toml
//! [sources.orders_in]
//! type = "http_ingress"
//! address = "127.0.0.1:8081"
//! path = "/events"
//! content_types = ["application/json"]
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use http::{HeaderValue, Method, StatusCode, header};
use hyper::body::Incoming;
use serde::Deserialize;
use sluice_pipeline::component::{BuildContext, DynSource};
use sluice_pipeline::{
    Emitter, Error, ErrorKind, Event, FieldError, FieldErrors, HumanDuration, Outcome, Position,
    Refused, Source, SourceConfig, SourceContext, Text, Validate,
};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::body::{self, Response};
use crate::context::Peer;
use crate::metrics;
use crate::server::{self, Handler, Limits};

/// Default for [`IngressConfig::path`].
pub const DEFAULT_PATH: &str = "/";
/// Default for [`IngressConfig::event_type`].
pub const DEFAULT_EVENT_TYPE: &str = "http_ingress";
/// Default for [`IngressConfig::max_body_bytes`]: 1 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// Default for [`IngressConfig::dedupe_window`].
pub const DEFAULT_DEDUPE_WINDOW: HumanDuration = HumanDuration::from_secs(300);
/// Default for [`IngressConfig::delivery_timeout`].
pub const DEFAULT_DELIVERY_TIMEOUT: HumanDuration = HumanDuration::from_secs(30);
/// Default for [`IngressConfig::client_timeout`].
pub const DEFAULT_CLIENT_TIMEOUT: HumanDuration = HumanDuration::from_secs(30);
/// The longest `Idempotency-Key` accepted.
pub const MAX_KEY_BYTES: usize = 256;

/// Config of the `http_ingress` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngressConfig {
    /// The address to listen on.
    pub address: String,
    /// The path POSTs go to; others get 404.
    #[serde(default = "default_path")]
    pub path: String,
    /// The events' type.
    #[serde(default = "default_event_type")]
    pub event_type: String,
    /// Accepted `Content-Type`s (without parameters); unset, any. A JSON type's body must
    /// parse as JSON (400 otherwise).
    #[serde(default)]
    pub content_types: Vec<String>,
    /// The largest body accepted (413 beyond).
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// How long an `Idempotency-Key` is remembered.
    #[serde(default = "default_dedupe_window")]
    pub dedupe_window: HumanDuration,
    /// How long a request waits for its event's delivery before it is answered 504 (the
    /// event may still be delivered: retry with the same key).
    #[serde(default = "default_delivery_timeout")]
    pub delivery_timeout: HumanDuration,
    /// How long a client may take to send its request.
    #[serde(default = "default_client_timeout")]
    pub client_timeout: HumanDuration,
}

fn default_path() -> String {
    DEFAULT_PATH.to_owned()
}
fn default_event_type() -> String {
    DEFAULT_EVENT_TYPE.to_owned()
}
fn default_max_body_bytes() -> usize {
    DEFAULT_MAX_BODY_BYTES
}
fn default_dedupe_window() -> HumanDuration {
    DEFAULT_DEDUPE_WINDOW
}
fn default_delivery_timeout() -> HumanDuration {
    DEFAULT_DELIVERY_TIMEOUT
}
fn default_client_timeout() -> HumanDuration {
    DEFAULT_CLIENT_TIMEOUT
}

impl IngressConfig {
    /// The first rule the section breaks.
    pub(crate) fn check(&self) -> Result<(), FieldError> {
        self.address.parse::<SocketAddr>().map_err(|_| {
            FieldError::new(
                "address",
                format!(
                    "{:?} is not an address such as 127.0.0.1:8081",
                    self.address
                ),
            )
        })?;
        if !self.path.starts_with('/') {
            return Err(FieldError::new("path", "must start with /"));
        }
        if self.max_body_bytes == 0 {
            return Err(FieldError::new("max_body_bytes", "must be at least 1"));
        }
        if self.delivery_timeout.get().is_zero() {
            return Err(FieldError::new("delivery_timeout", "must be more than 0"));
        }
        Ok(())
    }
}

impl SourceConfig for IngressConfig {
    fn build(&self, cx: &BuildContext) -> Result<Box<dyn DynSource>, Error> {
        metrics::describe();
        Ok(Box::new(IngressSource {
            config: self.clone(),
            id: cx.id.clone(),
        }))
    }
}

/// The running `http_ingress` source.
#[derive(Debug)]
pub struct IngressSource {
    config: IngressConfig,
    id: String,
}

impl Source for IngressSource {
    async fn run(&mut self, cx: &mut SourceContext) -> Result<(), Error> {
        let address = self.config.address.as_str();
        let listener = TcpListener::bind(address).await.map_err(|e| {
            Error::new(ErrorKind::Io, format!("binding http_ingress to {address}")).with_source(e)
        })?;
        let ingress = Arc::new(Ingress {
            config: self.config.clone(),
            id: self.id.clone(),
            emitter: cx.emitter(),
            seen: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
        });
        let limits = Limits {
            client_timeout: self.config.client_timeout.get(),
            max_header_bytes: crate::config::DEFAULT_MAX_HEADER_BYTES,
        };
        cx.set_ready(true);
        tracing::info!(%address, "http ingress listening");
        server::serve(listener, None, ingress, limits, cx.shutdown()).await;
        cx.set_ready(false);
        Ok(())
    }

    fn replays(&self) -> bool {
        false
    }
}

/// An `Idempotency-Key` seen: its answer, once known.
struct Seen {
    at: Instant,
    answer: watch::Receiver<Option<StatusCode>>,
}

struct Ingress {
    config: IngressConfig,
    id: String,
    emitter: Emitter,
    seen: Mutex<HashMap<String, Seen>>,
    next: AtomicU64,
}

fn answer(status: StatusCode, message: &str) -> Response {
    let mut response = if status == StatusCode::ACCEPTED {
        body::json(status, serde_json::json!({ "status": message }).to_string())
    } else {
        body::error(status, message)
    };
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

impl Handler for Ingress {
    async fn handle(
        &self,
        request: http::Request<Incoming>,
        _peer: Arc<Peer>,
        _tls: bool,
    ) -> Response {
        let response = self.accept(request).await;
        ::metrics::counter!(metrics::INGRESS_REQUESTS, "source" => self.id.clone(), "status" => response.status().as_str().to_owned())
            .increment(1);
        response
    }
}

impl Ingress {
    async fn accept(&self, request: http::Request<Incoming>) -> Response {
        if request.uri().path() != self.config.path {
            return body::error(StatusCode::NOT_FOUND, "No such path");
        }
        if request.method() != Method::POST {
            let mut response = body::error(StatusCode::METHOD_NOT_ALLOWED, "Only POST is accepted");
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
            return response;
        }
        let content_type = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            });
        if !self.config.content_types.is_empty()
            && !content_type.as_ref().is_some_and(|t| {
                self.config
                    .content_types
                    .iter()
                    .any(|c| c.eq_ignore_ascii_case(t))
            })
        {
            return body::error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                &format!(
                    "Content-Type must be one of {}",
                    self.config.content_types.join(", ")
                ),
            );
        }
        let key = match request.headers().get("idempotency-key").map(|v| v.to_str()) {
            None => None,
            Some(Ok(k)) if !k.is_empty() && k.len() <= MAX_KEY_BYTES => Some(k.to_owned()),
            Some(_) => {
                return body::error(
                    StatusCode::BAD_REQUEST,
                    &format!("Idempotency-Key must be 1 to {MAX_KEY_BYTES} visible characters"),
                );
            }
        };
        let (parts, incoming) = request.into_parts();
        let body = match server::read_body(
            incoming,
            self.config.max_body_bytes,
            self.config.client_timeout.get(),
        )
        .await
        {
            Ok(body) => body,
            Err(refusal) => return refusal,
        };
        if body.is_empty() {
            return body::error(StatusCode::BAD_REQUEST, "The body is empty");
        }
        if content_type
            .as_deref()
            .is_some_and(|t| t == "application/json" || t.ends_with("+json"))
            && serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_err()
        {
            return body::error(StatusCode::BAD_REQUEST, "The body is not valid JSON");
        }
        // A key seen within the window gets the first request's answer.
        let publish = match &key {
            Some(key) => match self.claim(key) {
                Ok(sender) => Some(sender),
                Err(mut earlier) => {
                    let status = earlier
                        .wait_for(Option::is_some)
                        .await
                        .ok()
                        .and_then(|s| *s);
                    return match status {
                        Some(status) => {
                            let mut response =
                                answer(status, "accepted (repeated Idempotency-Key)");
                            response
                                .headers_mut()
                                .insert("idempotent-replayed", HeaderValue::from_static("true"));
                            response
                        }
                        None => answer(StatusCode::SERVICE_UNAVAILABLE, "Try again"),
                    };
                }
            },
            None => None,
        };
        let id = key.clone().unwrap_or_else(|| {
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            let start = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            format!("{}-{start:x}-{n}", self.id)
        });
        let mut event = Event::new(id, Position(0), body);
        event.event_type = Text::from(self.config.event_type.as_str());
        if let Some(t) = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
        {
            event.headers.set("content-type", Some(Text::from(t)));
        }
        let status = self.deliver(event).await;
        if let (Some(sender), Some(key)) = (publish, &key) {
            if status.0 == StatusCode::ACCEPTED {
                let _ = sender.send(Some(status.0));
            } else {
                // Not delivered: the key may be tried again.
                self.seen
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(key);
                let _ = sender.send(Some(status.0));
            }
        }
        answer(status.0, status.1)
    }

    /// Claims `key` for this request, or returns the earlier request's answer channel.
    fn claim(
        &self,
        key: &str,
    ) -> Result<watch::Sender<Option<StatusCode>>, watch::Receiver<Option<StatusCode>>> {
        let window = self.config.dedupe_window.get();
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(earlier) = seen.get(key)
            && earlier.at.elapsed() < window
        {
            return Err(earlier.answer.clone());
        }
        if seen.len() >= 1024 {
            seen.retain(|_, s| s.at.elapsed() < window);
        }
        let (sender, receiver) = watch::channel(None);
        seen.insert(
            key.to_owned(),
            Seen {
                at: Instant::now(),
                answer: receiver,
            },
        );
        Ok(sender)
    }

    async fn deliver(&self, event: Event) -> (StatusCode, &'static str) {
        let receipts = match self.emitter.try_emit(vec![event]).await {
            Ok(receipts) => receipts,
            Err(Refused::Full) => {
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The pipeline is full: try again",
                );
            }
            Err(Refused::Closed) => {
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The source is stopping: try again",
                );
            }
        };
        let Some(receipt) = receipts.into_iter().next() else {
            return (StatusCode::INTERNAL_SERVER_ERROR, "No receipt");
        };
        match tokio::time::timeout(self.config.delivery_timeout.get(), receipt).await {
            Ok(Outcome::Delivered | Outcome::Dropped) => (StatusCode::ACCEPTED, "delivered"),
            Ok(Outcome::Quarantined(_)) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "The event was refused and quarantined",
            ),
            Ok(Outcome::Failed) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "The event could not be delivered: try again",
            ),
            Err(_) => (
                StatusCode::GATEWAY_TIMEOUT,
                "Delivery is taking too long: retry with the same Idempotency-Key",
            ),
        }
    }
}

impl Validate for IngressConfig {
    fn validate(&self) -> Result<(), FieldErrors> {
        self.check().map_err(FieldErrors::from)
    }
}
