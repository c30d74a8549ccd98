//! Running a pipeline: building its components, wiring them with bounded channels, one task
//! each, and shutting down in order.
//!
//! Shutdown flows with the data. Sources stop on the signal, drain their acknowledgements and
//! record their checkpoints; when a source's task ends its output channels close, so each
//! downstream stage finishes the batches it has and ends in turn. A component that fails is
//! logged and counted, its unanswered events fail (so no checkpoint passes them) and the rest of
//! the pipeline is asked to stop.

use std::collections::HashMap;
use std::sync::Arc;

use metrics::Counter;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::ack::{Budget, Tracker};
use crate::api;
use crate::component::{
    BoxFuture, BuildContext, DynSink, DynSource, DynTransform, Output, SinkContext, SourceContext,
};
use crate::config::Config;
use crate::error::{Error, ErrorKind, chain};
use crate::event::{Batch, Event, Text};
use crate::health::{Health, ReadyFlag};
use crate::metrics::{ComponentMetrics, SourceMetrics, error_counter, quarantined_counter};
use crate::shutdown::{Shutdown, ShutdownTrigger};
use crate::topology::consumers;

/// The id of the built-in quarantine file sink.
pub const QUARANTINE_FILE_ID: &str = "_quarantine";
/// Header set on a quarantined event: why it was rejected.
pub const QUARANTINE_REASON_HEADER: &str = "sluice.quarantine.reason";
/// Header set on a quarantined event: the component that rejected it.
pub const QUARANTINE_COMPONENT_HEADER: &str = "sluice.quarantine.component";

/// Why a pipeline could not run, or stopped with a failure.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The HTTP API could not listen.
    #[error("cannot serve the API on {address}")]
    Api {
        /// The configured address.
        address: std::net::SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A component could not be built from its config.
    #[error("cannot build component {component}")]
    Build {
        /// The component id.
        component: String,
        /// The cause.
        #[source]
        source: Error,
    },
    /// Components failed while running; the checkpoints did not pass their events.
    #[error("{}", failures.iter().map(|(id, e)| format!("component {id} failed: {}", chain(e))).collect::<Vec<_>>().join("; "))]
    Failed {
        /// The failed components and their errors.
        failures: Vec<(String, Error)>,
    },
}

/// A stage's outputs: the input channels of every component that reads from it.
pub(crate) struct Fanout {
    targets: Vec<mpsc::Sender<Batch>>,
}

impl Fanout {
    /// Sends `batch` to every reader, cloning it for all but the last (a clone of an event is a
    /// child its source waits for). A reader that has gone away fails its copy of the batch.
    pub(crate) async fn send(&self, batch: Batch) {
        let Some((last, rest)) = self.targets.split_last() else {
            return;
        };
        if batch.is_empty() {
            return;
        }
        for target in rest {
            let _ = target.send(batch.clone()).await;
        }
        let _ = last.send(batch).await;
    }
}

/// Where a component sends the events it rejects.
#[derive(Clone)]
pub(crate) struct QuarantineSender {
    target: Option<mpsc::Sender<Batch>>,
    component: Text,
    counter: Counter,
}

impl QuarantineSender {
    /// Marks each event with its reason and the rejecting component, and sends them on. With no
    /// quarantine to send to (the quarantine sink itself rejecting), the events fail.
    pub(crate) async fn send(&self, rejected: Vec<(Event, Text)>) {
        if rejected.is_empty() {
            return;
        }
        self.counter.increment(rejected.len() as u64);
        let mut batch = Vec::with_capacity(rejected.len());
        for (mut event, reason) in rejected {
            tracing::warn!(event_id = %event.id, %reason, "event quarantined");
            event.headers.set(QUARANTINE_REASON_HEADER, Some(reason));
            event
                .headers
                .set(QUARANTINE_COMPONENT_HEADER, Some(self.component.clone()));
            batch.push(event);
        }
        match &self.target {
            Some(target) => {
                let _ = target.send(batch).await;
            }
            None => {
                tracing::error!(
                    events = batch.len(),
                    "the quarantine sink rejected events it cannot quarantine; they fail and hold their checkpoints"
                );
                batch.into_iter().for_each(Event::fail);
            }
        }
    }
}

type TaskResult = (String, &'static str, Result<(), Error>);
type TaskNames = HashMap<tokio::task::Id, (String, &'static str)>;

/// Runs `config` until every source has finished and everything has drained, or until
/// `shutdown` fires and everything has drained.
pub async fn run(config: &Config, shutdown: Shutdown) -> Result<(), RunError> {
    let health = Health::default();
    let api = match &config.api {
        Some(api) => Some(
            api::serve(api.address, health.clone())
                .await
                .map_err(|source| RunError::Api {
                    address: api.address,
                    source,
                })?,
        ),
        None => None,
    };

    let stop = ShutdownTrigger::new();
    let (mut tasks, names) = spawn_components(config, &health, &stop)?;

    let mut failures = Vec::new();
    let mut stopping = false;
    loop {
        tokio::select! {
            () = shutdown.requested(), if !stopping => {
                tracing::info!("shutdown requested: draining");
                stopping = true;
                stop.trigger();
            }
            joined = tasks.join_next_with_id() => {
                let Some(joined) = joined else { break };
                let (id, kind, result) = match joined {
                    Ok((_, outcome)) => outcome,
                    Err(e) => {
                        let (id, kind) = names.get(&e.id()).cloned().unwrap_or(("unknown".to_owned(), "component"));
                        (id, kind, Err(Error::new(ErrorKind::Internal, format!("task panicked: {e}"))))
                    }
                };
                if let Err(error) = result {
                    tracing::error!(component_id = %id, component_kind = kind, error = %chain(&error), "component failed; stopping the pipeline");
                    error_counter(kind, &id, error.kind().as_str()).increment(1);
                    failures.push((id, error));
                    stop.trigger();
                }
            }
        }
    }
    if let Some(api) = api {
        api.stop().await;
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(RunError::Failed { failures })
    }
}

/// Builds every component and spawns its task; all channels are wired before any task runs.
fn spawn_components(
    config: &Config,
    health: &Health,
    stop: &ShutdownTrigger,
) -> Result<(JoinSet<TaskResult>, TaskNames), RunError> {
    let build_cx = |id: &str| BuildContext {
        id: id.to_owned(),
        data_dir: config.pipeline.data_dir.clone(),
    };
    let build_error = |id: &str| {
        let component = id.to_owned();
        move |source| RunError::Build { component, source }
    };

    let mut sources: Vec<(&str, Box<dyn DynSource>)> = Vec::new();
    for (id, c) in &config.sources {
        sources.push((id, c.config.build(&build_cx(id)).map_err(build_error(id))?));
    }
    let mut transforms: Vec<(&str, Box<dyn DynTransform>)> = Vec::new();
    for (id, c) in &config.transforms {
        transforms.push((id, c.config.build(&build_cx(id)).map_err(build_error(id))?));
    }
    let mut sinks: Vec<(&str, Box<dyn DynSink>)> = Vec::new();
    for (id, c) in &config.sinks {
        sinks.push((id, c.config.build(&build_cx(id)).map_err(build_error(id))?));
    }
    if let Some(fallback) = &config.quarantine_fallback {
        let sink = fallback
            .build(&build_cx(QUARANTINE_FILE_ID))
            .map_err(build_error(QUARANTINE_FILE_ID))?;
        sinks.push((QUARANTINE_FILE_ID, sink));
    }

    // One bounded input channel per reader.
    let capacity = config.pipeline.channel_capacity;
    let mut senders: HashMap<&str, mpsc::Sender<Batch>> = HashMap::new();
    let mut receivers: HashMap<&str, mpsc::Receiver<Batch>> = HashMap::new();
    let readers = transforms
        .iter()
        .map(|(id, _)| *id)
        .chain(sinks.iter().map(|(id, _)| *id));
    for id in readers {
        let (tx, rx) = mpsc::channel(capacity);
        senders.insert(id, tx);
        receivers.insert(id, rx);
    }
    let quarantine_id = config
        .quarantine
        .sink
        .as_deref()
        .unwrap_or(QUARANTINE_FILE_ID);
    let quarantine_target = senders.get(quarantine_id).cloned();
    let quarantine = |kind: &'static str, id: &str| QuarantineSender {
        target: if id == quarantine_id {
            None
        } else {
            quarantine_target.clone()
        },
        component: Text::from(id),
        counter: quarantined_counter(kind, id),
    };
    let fanout = |id: &str| Fanout {
        targets: consumers(config, id)
            .into_iter()
            .filter_map(|reader| senders.get(reader).cloned())
            .collect(),
    };
    let budget = Budget {
        max_events: config.pipeline.max_in_flight_events,
        max_bytes: config.pipeline.max_in_flight_bytes,
    };

    let mut tasks = JoinSet::new();
    let mut names = HashMap::new();
    let mut start = |id: &str, kind: &'static str, task| {
        let handle = spawn(&mut tasks, id, kind, task);
        names.insert(handle.id(), (id.to_owned(), kind));
    };
    for (id, source) in sources {
        let cx = SourceContext {
            id: Arc::from(id),
            tracker: Tracker::new(budget, None),
            output: fanout(id),
            quarantine: quarantine("source", id),
            shutdown: stop.subscribe(),
            ready: health.register("source", id),
            data_dir: config.pipeline.data_dir.clone(),
            metrics: SourceMetrics::new(id),
        };
        start(id, "source", source.run_boxed(cx));
    }
    for (id, transform) in transforms {
        let input = receivers.remove(id).ok_or_else(|| missing_channel(id))?;
        let ready = health.register("transform", id);
        let task = run_transform(
            transform,
            input,
            fanout(id),
            quarantine("transform", id),
            ready,
            ComponentMetrics::new("transform", id),
        );
        start(id, "transform", Box::pin(task));
    }
    for (id, sink) in sinks {
        let input = receivers.remove(id).ok_or_else(|| missing_channel(id))?;
        let cx = SinkContext {
            id: Arc::from(id),
            input,
            quarantine: quarantine("sink", id),
            ready: health.register("sink", id),
            metrics: ComponentMetrics::new("sink", id),
        };
        start(id, "sink", sink.run_boxed(cx));
    }
    // Every sender now lives in a component's fanout or quarantine handle, so channels close
    // exactly when their writers finish.
    drop(senders);
    Ok((tasks, names))
}

fn missing_channel(id: &str) -> RunError {
    RunError::Build {
        component: id.to_owned(),
        source: Error::new(
            ErrorKind::Internal,
            "input channel missing (topology wiring is broken)",
        ),
    }
}

fn spawn(
    tasks: &mut JoinSet<TaskResult>,
    id: &str,
    kind: &'static str,
    task: BoxFuture<'static, Result<(), Error>>,
) -> tokio::task::AbortHandle {
    let span = tracing::info_span!("component", id = %id, kind);
    let id = id.to_owned();
    tasks.spawn(
        async move {
            tracing::debug!("started");
            let result = task.await;
            tracing::debug!(ok = result.is_ok(), "finished");
            (id, kind, result)
        }
        .instrument(span),
    )
}

async fn run_transform(
    mut transform: Box<dyn DynTransform>,
    mut input: mpsc::Receiver<Batch>,
    output: Fanout,
    quarantine: QuarantineSender,
    ready: ReadyFlag,
    metrics: ComponentMetrics,
) -> Result<(), Error> {
    ready.set(true);
    while let Some(batch) = input.recv().await {
        metrics.received(&batch);
        let mut out = Output::with_capacity(batch.len());
        transform.process_boxed(batch, &mut out).await?;
        let (events, rejected, dropped) = out.split();
        metrics.sent_events.increment(events.len() as u64);
        metrics.dropped_events.increment(dropped);
        quarantine.send(rejected).await;
        output.send(events).await;
    }
    ready.set(false);
    Ok(())
}
