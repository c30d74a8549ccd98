//! The `gateway` source: runs the gateway (see [`crate::config`] for its config), and emits
//! one event per request, its access-log record as JSON, so access logs flow to any sink.
//!
//! Records never slow requests: they wait in a bounded queue (`access_log_buffer`) that this
//! source drains into the pipeline with [`Emitter::try_emit`]; when either is full, records
//! are shed and counted (`sluice_gateway_access_log_shed_total`). The source keeps no
//! checkpoint: there is nothing to resume.
//!
//! Event: id `<source id>-<n>`, key the route, type `access_log`, fields `route`, `status`,
//! `method`, payload the JSON record.

use std::sync::Arc;

use bytes::Bytes;
use sluice_pipeline::component::{BuildContext, DynSource};
use sluice_pipeline::{
    Emitter, Error, ErrorKind, Event, Position, Refused, Source, SourceConfig, SourceContext, Text,
};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::config::GatewayConfig;
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
        Ok(Box::new(GatewaySource {
            config: self.clone(),
            redis: cx.resources.get::<Redis>(),
            id: cx.id.clone(),
        }))
    }
}

/// The running `gateway` source.
#[derive(Debug)]
pub struct GatewaySource {
    config: GatewayConfig,
    redis: Option<Arc<Redis>>,
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
        drop(log);
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
            let (entrance, tls, shutdown) =
                (Arc::clone(&entrance), tls.clone(), cx.shutdown().clone());
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
                            Ok(listener) => {
                                server::serve(listener, tls, entrance, limits, &shutdown).await
                            }
                            Err(e) => tracing::error!(error = %e, "gateway thread cannot listen"),
                        }
                    });
                    let _ = done.send(());
                })
                .map_err(|e| {
                    Error::new(ErrorKind::Io, "starting a gateway thread").with_source(e)
                })?;
            workers.push(finished);
        }
        drop(entrance);
        cx.set_ready(true);
        for finished in workers {
            let _ = finished.await;
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

/// Moves records from the queue into the pipeline, shedding what it refuses.
async fn forward(
    mut records: mpsc::Receiver<AccessRecord>,
    emitter: Emitter,
    shed: metrics::Counter,
    id: String,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut n: u64 = 0;
    loop {
        if records.recv_many(&mut batch, MAX_BATCH).await == 0 {
            return;
        }
        let events: Vec<Event> = batch
            .drain(..)
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
    let payload = serde_json::to_vec(record).unwrap_or_default();
    let mut event = Event::new(format!("{id}-{n}"), Position(n), Bytes::from(payload));
    event.event_type = Text::from("access_log");
    if let Some(route) = &record.route {
        event.key = Some(Text::from(&**route));
        event.fields.set("route", Some(Text::from(&**route)));
    }
    event
        .fields
        .set("status", Some(Text::from(record.status.to_string())));
    event
        .fields
        .set("method", Some(Text::from(record.method.as_str())));
    event
}
