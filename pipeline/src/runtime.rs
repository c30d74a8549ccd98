//! Running a pipeline: building its resources and components, wiring them with bounded
//! channels, one task each (restarted as [`supervise`] says), and shutting
//! down in order.
//!
//! Shutdown flows with the data. Sources stop on the signal, drain their acknowledgements and
//! record their checkpoints; when the sources are done for good their output channels close, so
//! each downstream stage finishes the batches it has and ends in turn; the resources stop last.
//! A component that fails for good is logged and counted, its unanswered events fail (so no
//! checkpoint passes them) and the rest of the pipeline is asked to stop.

use std::collections::HashMap;
use std::sync::Arc;

use metrics::Counter;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::ack::Budget;
use crate::api::{self, Routes};
use crate::backoff::Backoff;
use crate::component::{BoxFuture, BuildContext, DynSink, DynSource, DynTransform, SinkContext};
use crate::config::Config;
use crate::error::{Error, ErrorKind, chain};
use crate::event::{Batch, Event, Text};
use crate::health::{Health, RESOURCE};
use crate::leadership::{LeaderView, Leadership};
use crate::metrics::{
    ComponentMetrics, SourceMetrics, error_counter, quarantined_counter, reload_counter,
};
use crate::resource::{Provider, ResourceContext, Resources};
use crate::shutdown::{Shutdown, ShutdownTrigger};
use crate::supervise::{self, Gate, SourceSlot, TransformSlot};
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
#[derive(Clone)]
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
            event.note_quarantined(&reason);
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
    run_reloading(config, mpsc::channel(1).1, shutdown).await
}

/// Runs `first`, then each config `updates` delivers in its place: the running pipeline is
/// stopped and drained to its checkpoints, then the new one starts (the latest, if several
/// arrived meanwhile), so nothing is lost across a reload. Resources whose sections did not
/// change keep running across it; the API server keeps serving unless its address changed.
/// Ends when a pipeline finishes or fails, or when `shutdown` fires and everything drained.
pub async fn run_reloading(
    first: &Config,
    mut updates: mpsc::Receiver<Config>,
    shutdown: Shutdown,
) -> Result<(), RunError> {
    let health = Health::default();
    let routes = Routes::default();
    let mut api = start_api(first, &health, &routes).await?;
    let mut resources = ResourceSet::start(first, &health, &routes)?;
    let mut latest: Option<Config> = None;
    let result = loop {
        let config = latest.as_ref().unwrap_or(first);
        let stop = ShutdownTrigger::new();
        let mut next = None;
        let failures = {
            let pipeline = run_pipeline(config, &mut resources, &health, stop.subscribe());
            tokio::pin!(pipeline);
            loop {
                tokio::select! {
                    failures = &mut pipeline => break failures,
                    () = shutdown.requested(), if !stop.is_triggered() => stop.trigger(),
                    Some(update) = updates.recv(), if next.is_none() && !shutdown.is_requested() => {
                        tracing::info!(config = %update.file.display(), "reloading: draining the running pipeline first");
                        next = Some(update);
                        stop.trigger();
                    }
                }
            }
        };
        if !failures.is_empty() {
            break Err(RunError::Failed { failures });
        }
        let Some(mut next) = next else { break Ok(()) };
        if shutdown.is_requested() {
            break Ok(());
        }
        while let Ok(newer) = updates.try_recv() {
            next = newer;
        }
        health.forget_pipeline();
        if !same_resources(config, &next) {
            tracing::info!("the resource sections changed: restarting the resources");
            let failures =
                std::mem::replace(&mut resources, ResourceSet::start(&next, &health, &routes)?)
                    .stop()
                    .await;
            if !failures.is_empty() {
                break Err(RunError::Failed { failures });
            }
        }
        if config.api.as_ref().map(|a| a.address) != next.api.as_ref().map(|a| a.address) {
            if let Some(old) = api.take() {
                old.stop().await;
            }
            api = start_api(&next, &health, &routes).await?;
        }
        reload_counter("applied").increment(1);
        tracing::info!(config = %next.file.display(), "reloaded");
        latest = Some(next);
    };
    let stopped = resources.stop().await;
    if let Some(api) = api {
        api.stop().await;
    }
    match result {
        Ok(()) if !stopped.is_empty() => Err(RunError::Failed { failures: stopped }),
        Err(RunError::Failed { mut failures }) => {
            failures.extend(stopped);
            Err(RunError::Failed { failures })
        }
        other => other,
    }
}

/// Whether `a` and `b` have the same resource sections, written the same way.
fn same_resources(a: &Config, b: &Config) -> bool {
    a.resources.len() == b.resources.len()
        && a.resources
            .iter()
            .zip(&b.resources)
            .all(|((name_a, a), (name_b, b))| name_a == name_b && a.raw == b.raw)
}

async fn start_api(
    config: &Config,
    health: &Health,
    routes: &Routes,
) -> Result<Option<api::ApiServer>, RunError> {
    let Some(api) = &config.api else {
        return Ok(None);
    };
    api::serve(api.address, health.clone(), routes.clone())
        .await
        .map(Some)
        .map_err(|source| RunError::Api {
            address: api.address,
            source,
        })
}

/// Builds every resource and component of `config`, and drops them: nothing runs and no I/O
/// is done. `sluice check` and a reload do this to refuse a config whose parts cannot be built
/// (a component that needs a resource the config lacks) before anything is stopped or started.
pub fn try_build(config: &Config) -> Result<(), RunError> {
    let (_, provided) = build_resources(config)?;
    build_components(config, &provided).map(drop)
}

type BuiltResources<'a> = Vec<(&'a String, Arc<dyn crate::resource::Resource>)>;

/// Builds every resource section and collects what they provide.
fn build_resources(config: &Config) -> Result<(BuiltResources<'_>, Resources), RunError> {
    let mut provider = Provider::default();
    let mut built = Vec::new();
    for (name, section) in &config.resources {
        let cx = BuildContext {
            id: name.clone(),
            data_dir: config.pipeline.data_dir.clone(),
            leader: config.pipeline.leader.clone(),
            resources: Resources::default(),
        };
        let resource = section.config.build(&cx).map_err(build_error(name))?;
        Arc::clone(&resource).provide(&mut provider);
        built.push((name, resource));
    }
    let provided = provider.finish().map_err(build_error("resources"))?;
    Ok((built, provided))
}

/// A pipeline's components, built.
struct Built<'a> {
    sources: Vec<(&'a str, Box<dyn DynSource>)>,
    transforms: Vec<(&'a str, Box<dyn DynTransform>)>,
    sinks: Vec<(&'a str, Box<dyn DynSink>)>,
    leadership: Option<Arc<dyn Leadership>>,
}

/// Builds every component (and finds the leadership the pipeline's `leader` needs).
fn build_components<'a>(config: &'a Config, resources: &Resources) -> Result<Built<'a>, RunError> {
    let build_cx = |id: &str| BuildContext {
        id: id.to_owned(),
        data_dir: config.pipeline.data_dir.clone(),
        leader: config.pipeline.leader.clone(),
        resources: resources.clone(),
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
    let leadership = match &config.pipeline.leader {
        Some(_) => Some(
            resources
                .require::<dyn Leadership>("pipeline.leader", "coord")
                .map_err(build_error("pipeline"))?,
        ),
        None => None,
    };
    Ok(Built {
        sources,
        transforms,
        sinks,
        leadership,
    })
}

/// The process's resources, built and running.
struct ResourceSet {
    provided: Resources,
    stop: ShutdownTrigger,
    tasks: JoinSet<TaskResult>,
    names: TaskNames,
}

impl ResourceSet {
    /// Builds every resource section (no I/O), collects what they provide and the routes they
    /// serve, and starts each on a task of its own.
    fn start(config: &Config, health: &Health, routes: &Routes) -> Result<Self, RunError> {
        let (built, provided) = build_resources(config)?;
        let mut router = axum::Router::new();
        for (_, resource) in &built {
            if let Some(added) = Arc::clone(resource).routes() {
                router = router.merge(added);
            }
        }
        routes.set(router);
        let stop = ShutdownTrigger::new();
        let mut tasks = JoinSet::new();
        let mut names = HashMap::new();
        for (name, resource) in built {
            let cx = ResourceContext {
                name: Arc::from(name.as_str()),
                ready: health.register(RESOURCE, name),
                shutdown: stop.subscribe(),
            };
            let task = supervise::run_resource(resource, cx, config.pipeline.restart);
            let handle = spawn(&mut tasks, name, RESOURCE, Box::pin(task));
            names.insert(handle.id(), (name.clone(), RESOURCE));
        }
        Ok(ResourceSet {
            provided,
            stop,
            tasks,
            names,
        })
    }

    /// Waits until a resource fails for good (never, while they all run).
    async fn failed(&mut self) -> (String, &'static str, Error) {
        loop {
            match self.tasks.join_next_with_id().await {
                None => std::future::pending::<()>().await,
                Some(joined) => {
                    if let (id, kind, Err(error)) = outcome(joined, &self.names) {
                        return (id, kind, error);
                    }
                }
            }
        }
    }

    /// Stops the resources (after the pipelines) and returns those that failed.
    async fn stop(mut self) -> Vec<(String, Error)> {
        self.stop.trigger();
        let mut failures = Vec::new();
        while let Some(joined) = self.tasks.join_next_with_id().await {
            if let (id, kind, Err(error)) = outcome(joined, &self.names) {
                report_failure(&id, kind, &error);
                failures.push((id, error));
            }
        }
        failures
    }
}

/// A finished task's component, kind and result, a panic counting as an internal error.
fn outcome(
    joined: Result<(tokio::task::Id, TaskResult), tokio::task::JoinError>,
    names: &TaskNames,
) -> TaskResult {
    match joined {
        Ok((_, outcome)) => outcome,
        Err(e) => {
            let (id, kind) = names
                .get(&e.id())
                .cloned()
                .unwrap_or(("unknown".to_owned(), "component"));
            let error = Error::new(ErrorKind::Internal, format!("task panicked: {e}"));
            (id, kind, Err(error))
        }
    }
}

fn report_failure(id: &str, kind: &'static str, error: &Error) {
    tracing::error!(component_id = %id, component_kind = kind, error = %chain(error), "component failed; stopping the pipeline");
    error_counter(kind, id, error.kind().as_str()).increment(1);
}

/// Runs the pipeline's components until they are all done; returns those that failed.
async fn run_pipeline(
    config: &Config,
    resources: &mut ResourceSet,
    health: &Health,
    shutdown: Shutdown,
) -> Vec<(String, Error)> {
    let stop = ShutdownTrigger::new();
    let (mut tasks, names) = match spawn_components(config, &resources.provided, health, &stop) {
        Ok(spawned) => spawned,
        Err(RunError::Build { component, source }) => return vec![(component, source)],
        Err(other) => {
            return vec![(
                "pipeline".to_owned(),
                Error::new(ErrorKind::Internal, other.to_string()),
            )];
        }
    };

    let mut failures = Vec::new();
    let mut stopping = false;
    loop {
        tokio::select! {
            () = shutdown.requested(), if !stopping => {
                tracing::info!("shutdown requested: draining");
                stopping = true;
                stop.trigger();
            }
            (id, kind, error) = resources.failed() => {
                report_failure(&id, kind, &error);
                failures.push((id, error));
                stop.trigger();
            }
            joined = tasks.join_next_with_id() => {
                let Some(joined) = joined else { break };
                if let (id, kind, Err(error)) = outcome(joined, &names) {
                    report_failure(&id, kind, &error);
                    failures.push((id, error));
                    stop.trigger();
                }
            }
        }
    }
    failures
}

fn build_error(id: &str) -> impl FnOnce(Error) -> RunError {
    let component = id.to_owned();
    move |source| RunError::Build { component, source }
}

/// Builds every component and spawns its task; all channels are wired before any task runs.
fn spawn_components(
    config: &Config,
    resources: &Resources,
    health: &Health,
    stop: &ShutdownTrigger,
) -> Result<(JoinSet<TaskResult>, TaskNames), RunError> {
    let Built {
        sources,
        transforms,
        sinks,
        leadership,
    } = build_components(config, resources)?;
    let gate = match (&config.pipeline.leader, leadership) {
        (Some(name), Some(leadership)) => Some(Gate {
            leadership,
            election: health.election(name),
        }),
        _ => None,
    };
    let leader_view = gate
        .as_ref()
        .map_or_else(LeaderView::none, |gate| gate.election.view());

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
    let restart = config.pipeline.restart;

    let mut tasks = JoinSet::new();
    let mut names = HashMap::new();
    let slots = sources
        .into_iter()
        .map(|(id, source)| SourceSlot {
            id: Arc::from(id),
            source,
            output: fanout(id),
            quarantine: quarantine("source", id),
            ready: match &gate {
                Some(gate) => health.register_gated(id, &gate.election),
                None => health.register("source", id),
            },
            metrics: SourceMetrics::new(id),
            data_dir: config.pipeline.data_dir.clone(),
            budget,
            backoff: Backoff::new(restart),
            finished: false,
        })
        .collect();
    let sources_task = supervise::run_sources(slots, gate, stop.subscribe(), restart);
    let handle = tasks.spawn(async move {
        match sources_task.await {
            Ok(()) => ("sources".to_owned(), "source", Ok(())),
            Err((id, error)) => (id.to_string(), "source", Err(error)),
        }
    });
    names.insert(handle.id(), ("sources".to_owned(), "source"));
    let mut start = |id: &str, kind: &'static str, task| {
        let handle = spawn(&mut tasks, id, kind, task);
        names.insert(handle.id(), (id.to_owned(), kind));
    };
    for (id, transform) in transforms {
        let input = receivers.remove(id).ok_or_else(|| missing_channel(id))?;
        let slot = TransformSlot {
            id: Arc::from(id),
            transform,
            input,
            output: fanout(id),
            quarantine: quarantine("transform", id),
            ready: health.register("transform", id),
            metrics: ComponentMetrics::new("transform", id),
        };
        start(
            id,
            "transform",
            Box::pin(supervise::run_transform(slot, restart)),
        );
    }
    for (id, sink) in sinks {
        let input = receivers.remove(id).ok_or_else(|| missing_channel(id))?;
        let cx = SinkContext {
            id: Arc::from(id),
            input,
            quarantine: quarantine("sink", id),
            ready: health.register("sink", id),
            metrics: ComponentMetrics::new("sink", id),
            leader: leader_view.clone(),
            restart,
        };
        start(id, "sink", Box::pin(supervise::run_sink(sink, cx, restart)));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{config, ids, probe};

    const RELAY: &str = r#"
        [sources.gen]
        type = "count"
        probe = "reload"
        count = 0
        [sinks.out]
        type = "hold"
        inputs = ["gen"]
        probe = "reload"
    "#;

    #[tokio::test]
    async fn a_reload_drains_the_running_pipeline_then_starts_the_new_one() {
        let first = config("reload", "", RELAY);
        let with_transform = RELAY.replace(
            "[sinks.out]",
            "[transforms.pass]\ntype = \"flaky\"\ninputs = [\"gen\"]\nprobe = \"reload\"\nfail_batches = 0\n[sinks.out]",
        );
        let second = config(
            "reload",
            "",
            &with_transform.replace(
                r#"inputs = ["gen"]
        probe = "reload""#,
                r#"inputs = ["pass"]
        probe = "reload""#,
            ),
        );
        let probe = probe("reload");
        let (updates, receiver) = mpsc::channel(1);
        let trigger = ShutdownTrigger::new();
        let shutdown = trigger.subscribe();
        let running = tokio::spawn(async move { run_reloading(&first, receiver, shutdown).await });
        probe
            .wait("the first pipeline's events", |p| p.delivered().len() >= 20)
            .await;
        updates.send(second).await.unwrap();
        probe
            .wait("the second pipeline's run", |p| p.runs().len() == 2)
            .await;
        let first_checkpoint = probe.runs()[1].expect("the first pipeline recorded its checkpoint");
        probe
            .wait("the second pipeline's events", |p| {
                p.delivered().len() >= first_checkpoint as usize + 20
            })
            .await;
        assert_eq!(
            *probe.starts.lock().unwrap(),
            3,
            "the first sink, then the new pipeline's transform and sink"
        );
        trigger.trigger();
        running.await.unwrap().unwrap();
        let last = probe.checkpoint.lock().unwrap().unwrap();
        assert_eq!(
            probe.delivered(),
            ids(1..=last),
            "nothing lost or repeated across the reload"
        );
    }
}
