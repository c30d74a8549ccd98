//! The `gateway` source: runs the gateway (see [`crate::config`] for its config), and emits
//! one event per request, its access-log record as JSON, so access logs flow to any sink.
//!
//! Records never slow requests: each serving thread gathers them in batches (of
//! [`server::ACCESS_LOG_BATCH`], or what [`server::ACCESS_LOG_FLUSH`] brought) handed to a
//! bounded queue (`access_log_buffer`) that this source drains into the pipeline with
//! [`Emitter::try_emit`]; when either is full, records are shed and counted
//! (`sluice_gateway_access_log_shed_total`). The source keeps no
//! checkpoint: there is nothing to resume.
//!
//! Upstreams with `discover` follow the coordination registry ([`crate::discovery`]); the
//! source is ready once each has its first list of instances.
//!
//! Event: id `<source id>-<n>`, key the route, type `access_log`, fields `route`, `status`,
//! `method`, payload the JSON record.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use bytes::Bytes;
use sluice_coord::Coord;
use sluice_pipeline::component::{BuildContext, DynSource};
use sluice_pipeline::{
    Emitter, Error, ErrorKind, Event, Position, Refused, Source, SourceConfig, SourceContext, Text,
};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::config::GatewayConfig;
use crate::discovery;
use crate::proxy::Upstream;
use crate::redis::Redis;
use crate::server::{self, AccessLog, AccessRecord, Entrance};
use crate::stack;

/// Most records emitted as one batch.
pub const MAX_BATCH: usize = 256;

impl SourceConfig for GatewayConfig {
    fn build(&self, cx: &BuildContext) -> Result<Box<dyn DynSource>, Error> {
        crate::metrics::describe();
        // Build the stack now so that a missing [redis] or a bad key is a config error.
        stack::build(
            self,
            cx.resources.get::<Redis>(),
            &format!("sources.{}", cx.id),
        )?;
        let coord = match self.upstreams.iter().find(|(_, u)| u.discover.is_some()) {
            Some((name, _)) => Some(cx.resources.require::<Coord>(
                &format!("sources.{}.upstreams.{name}.discover", cx.id),
                "coord",
            )?),
            None => None,
        };
        Ok(Box::new(GatewaySource {
            config: self.clone(),
            redis: cx.resources.get::<Redis>(),
            coord,
            id: cx.id.clone(),
        }))
    }
}

/// The running `gateway` source.
#[derive(Debug)]
pub struct GatewaySource {
    config: GatewayConfig,
    redis: Option<Arc<Redis>>,
    /// The registry, when an upstream is discovered.
    coord: Option<Arc<Coord>>,
    id: String,
}

impl Source for GatewaySource {
    async fn run(&mut self, cx: &mut SourceContext) -> Result<(), Error> {
        let gateway = stack::build(
            &self.config,
            self.redis.clone(),
            &format!("sources.{}", self.id),
        )?;
        if let Some(verifier) = &gateway.verifier {
            verifier.start();
        }
        let gateway_upstreams = gateway.upstreams.clone();
        let tls = match &self.config.tls {
            Some(tls) => {
                Some(server::tls_acceptor(tls).map_err(|e| Error::new(ErrorKind::Config, e))?)
            }
            None => None,
        };
        let address = self.config.address.as_str();
        let listener = std::net::TcpListener::bind(address)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|e| {
                Error::new(ErrorKind::Io, format!("binding the gateway to {address}"))
                    .with_source(e)
            })?;
        let threads = self.config.threads.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        });
        tracing::info!(address = %listener.local_addr().map_or_else(|_| address.to_owned(), |a| a.to_string()), tls = tls.is_some(), threads, "gateway listening");
        let (log, records) = AccessLog::new(self.config.access_log_buffer);
        let entrance = Arc::new(Entrance::new(gateway, &self.config, log.clone()));
        let emitter = cx.emitter();
        let drain = tokio::spawn(forward(
            records,
            emitter,
            log.shed_counter(),
            self.id.clone(),
        ));
        let limits = server::Limits {
            client_timeout: self.config.client_timeout.get(),
            max_header_bytes: self.config.max_header_bytes,
        };
        // One single-threaded runtime per core, each accepting on the same socket: a request,
        // its upstream connection and their wake-ups stay on one thread, as in nginx's
        // workers, instead of crossing between the shared runtime's threads.
        let mut workers = Vec::with_capacity(threads);
        for n in 0..threads {
            let listener = listener.try_clone().map_err(|e| {
                Error::new(ErrorKind::Io, "sharing the gateway's socket").with_source(e)
            })?;
            let (entrance, tls, shutdown, log) = (
                Arc::clone(&entrance),
                tls.clone(),
                cx.shutdown().clone(),
                log.clone(),
            );
            let (done, finished) = tokio::sync::oneshot::channel::<()>();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| {
                    Error::new(ErrorKind::Io, "starting a gateway thread").with_source(e)
                })?;
            std::thread::Builder::new()
                .name(format!("gateway-{n}"))
                .spawn(move || {
                    crate::worker::set(n + 1);
                    runtime.block_on(async move {
                        match TcpListener::from_std(listener) {
                            Ok(listener) => tokio::select! {
                                () = server::serve(listener, tls, entrance, limits, &shutdown) => {}
                                () = log.flush_periodically() => {}
                            },
                            Err(e) => tracing::error!(error = %e, "gateway thread cannot listen"),
                        }
                        // The connections have ended: their last records go too.
                        log.flush();
                    });
                    let _ = done.send(());
                })
                .map_err(|e| {
                    Error::new(ErrorKind::Io, "starting a gateway thread").with_source(e)
                })?;
            workers.push(finished);
        }
        drop((entrance, log));
        let discovering = self.discover(&gateway_upstreams, cx);
        // Ready once every discovered upstream knows its instances (the first lists).
        for mut found in discovering.found {
            tokio::select! {
                _ = found.wait_for(|found| *found) => {}
                () = cx.shutdown().requested() => break,
            }
        }
        cx.set_ready(true);
        for finished in workers {
            let _ = finished.await;
        }
        for task in discovering.tasks {
            task.abort();
        }
        cx.set_ready(false);
        // Once the last connection has ended, the entrance (holding the queue's sender) is
        // gone, and the drain ends after the last record; connections still open past the
        // drain timeout lose their records.
        if tokio::time::timeout(server::DRAIN_TIMEOUT, drain)
            .await
            .is_err()
        {
            tracing::warn!("access-log records still queued at shutdown are lost");
        }
        Ok(())
    }

    fn replays(&self) -> bool {
        false
    }
}

/// The tasks following the registry for discovered upstreams, and whether each has its first
/// list yet.
struct Discovering {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    found: Vec<watch::Receiver<bool>>,
}

impl GatewaySource {
    /// Starts following the registry for each upstream with `discover`.
    fn discover(
        &self,
        upstreams: &BTreeMap<String, Arc<Upstream>>,
        cx: &SourceContext,
    ) -> Discovering {
        let mut discovering = Discovering {
            tasks: Vec::new(),
            found: Vec::new(),
        };
        let Some(coord) = &self.coord else {
            return discovering;
        };
        for (name, config) in &self.config.upstreams {
            let (Some(service), Some(upstream)) = (&config.discover, upstreams.get(name)) else {
                continue;
            };
            let (found, receiver) = watch::channel(false);
            discovering.tasks.push(tokio::spawn(discovery::follow(
                Arc::clone(coord),
                service.clone(),
                Arc::clone(upstream),
                cx.backoff(),
                found,
                cx.shutdown().clone(),
            )));
            discovering.found.push(receiver);
        }
        discovering
    }
}

/// Moves records from the queue into the pipeline, shedding what it refuses.
async fn forward(
    mut records: mpsc::Receiver<Vec<AccessRecord>>,
    emitter: Emitter,
    shed: metrics::Counter,
    id: String,
) {
    let mut batches = Vec::new();
    let mut n: u64 = 0;
    loop {
        if records
            .recv_many(&mut batches, MAX_BATCH.div_ceil(server::ACCESS_LOG_BATCH))
            .await
            == 0
        {
            return;
        }
        let events: Vec<Event> = batches
            .drain(..)
            .flatten()
            .map(|record| {
                n += 1;
                event(&id, n, &record)
            })
            .collect();
        let count = events.len() as u64;
        match emitter.try_emit(events).await {
            Ok(_receipts) => {}
            Err(Refused::Full) => shed.increment(count),
            Err(Refused::Closed) => {
                shed.increment(count);
                return;
            }
        }
    }
}

fn event(id: &str, n: u64, record: &AccessRecord) -> Event {
    // Sized for a usual record, so that writing it does not grow the buffer.
    let mut payload = Vec::with_capacity(320);
    record.write_json(&mut payload);
    let mut event_id = String::with_capacity(id.len() + 21);
    event_id.push_str(id);
    let _ = write!(event_id, "-{n}");
    let mut event = Event::new(event_id, Position(n), Bytes::from(payload));
    event.event_type = Text::from_static("access_log");
    if let Some(route) = &record.route {
        let route = Text::from(&**route);
        event.key = Some(route.clone());
        event.fields.set("route", Some(route));
    }
    event.fields.set("status", Some(status_text(record.status)));
    event
        .fields
        .set("method", Some(method_text(&record.method)));
    event
}

/// The three digits of every status code from 100 to 599, so that a status becomes a field
/// without formatting or allocating.
static STATUS_DIGITS: [u8; 1500] = {
    let mut digits = [0u8; 1500];
    let mut i = 0;
    while i < 500 {
        let code = i + 100;
        digits[i * 3] = b'0' + (code / 100) as u8;
        digits[i * 3 + 1] = b'0' + (code / 10 % 10) as u8;
        digits[i * 3 + 2] = b'0' + (code % 10) as u8;
        i += 1;
    }
    digits
};

fn status_text(status: u16) -> Text {
    let at = usize::from(status.wrapping_sub(100)) * 3;
    match STATUS_DIGITS
        .get(at..at + 3)
        .and_then(|d| std::str::from_utf8(d).ok())
    {
        Some(digits) if (100..600).contains(&status) => Text::from_static(digits),
        _ => Text::from(status.to_string()),
    }
}

fn method_text(method: &http::Method) -> Text {
    use http::Method;
    let name = match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => return Text::from(method.as_str()),
    };
    Text::from_static(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::Peer;

    #[test]
    fn an_access_record_is_one_json_object_with_every_field() {
        let mut record = AccessRecord {
            time_unix_ms: 1_764_000_000_123,
            client: Arc::new(Peer::new("[::1]:5000".parse().unwrap())),
            method: http::Method::POST,
            path: "/a\"b\\c/é\u{1}".to_owned(),
            version: "HTTP/1.1",
            route: Some(Arc::from("orders")),
            status: 201,
            duration_ms: 1.25,
            upstream: Some(Arc::from("http://127.0.0.1:3000")),
            upstream_ms: Some(0.5),
            cache: Some("MISS"),
            user: Some(Arc::from("456")),
        };
        let parsed = |record: &AccessRecord| {
            let mut out = Vec::new();
            record.write_json(&mut out);
            serde_json::from_slice::<serde_json::Value>(&out).unwrap()
        };
        assert_eq!(
            parsed(&record),
            serde_json::json!({
                "time_unix_ms": 1_764_000_000_123_u64, "client_ip": "::1", "method": "POST",
                "path": "/a\"b\\c/é\u{1}", "version": "HTTP/1.1", "route": "orders",
                "status": 201, "duration_ms": 1.25, "upstream": "http://127.0.0.1:3000",
                "upstream_ms": 0.5, "cache": "MISS", "user": "456"
            })
        );
        (record.route, record.upstream, record.upstream_ms) = (None, None, None);
        (record.cache, record.user) = (None, None);
        let absent = parsed(&record);
        for key in ["route", "upstream", "upstream_ms", "cache", "user"] {
            assert_eq!(absent[key], serde_json::Value::Null, "{key}");
        }
    }

    #[test]
    fn statuses_and_methods_become_fields_as_their_text() {
        for status in [0, 99, 100, 200, 404, 599, 600, 999, u16::MAX] {
            assert_eq!(status_text(status), *status.to_string(), "{status}");
        }
        for method in ["GET", "POST", "PATCH", "PROPFIND"] {
            let parsed = http::Method::from_bytes(method.as_bytes()).unwrap();
            assert_eq!(method_text(&parsed), *method);
        }
    }
}
