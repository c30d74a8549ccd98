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
use std::net::SocketAddr;
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
use crate::quarantined::Quarantined;
use crate::resource::{Provider, ResourceContext, Resources};
use crate::shutdown::{Shutdown, ShutdownTrigger};
use crate::supervise::{self, Gate, SourceSlot, TransformSlot};
use crate::tap::TapPoint;
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
        address: SocketAddr,
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
    /// Pipelines that cannot run in one process together.
    #[error("{}", problems.join("; "))]
    Together {
        /// What conflicts.
        problems: Vec<String>,
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
    tap: TapPoint,
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
        self.tap.offer(&batch);
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
    log: Quarantined,
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
            self.log.record(&self.component, &event.id, &reason);
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

/// Runs `first`, then each config `updates` delivers in its place (see [`run_process`]).
pub async fn run_reloading(
    first: &Config,
    updates: mpsc::Receiver<Config>,
    shutdown: Shutdown,
) -> Result<(), RunError> {
    run_process(
        vec![PipelineSpec {
            config: first,
            updates,
        }],
        shutdown,
    )
    .await
}

/// One pipeline of a process: its config, and where its reloads come from.
pub struct PipelineSpec<'a> {
    /// The config it starts with.
    pub config: &'a Config,
    /// Configs to replace it with, in order.
    pub updates: mpsc::Receiver<Config>,
}

/// Problems that keep `configs` from running in one process: a component id used twice (ids
/// key metrics and checkpoints), an election named twice, a resource section written two ways.
pub fn check_together(configs: &[&Config]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut ids: HashMap<&str, &Config> = HashMap::new();
    let mut elections: HashMap<&str, &Config> = HashMap::new();
    let mut sections: HashMap<&str, &Config> = HashMap::new();
    let mut buckets: Option<&Config> = None;
    for &config in configs {
        if let Some(api) = &config.api {
            match buckets.and_then(|other| Some((other, other.api.as_ref()?))) {
                Some((other, first)) if first.buckets != api.buckets => problems.push(format!(
                    "{} and {} give different [api] buckets: a process has one set of histogram buckets, make them the same",
                    other.file.display(),
                    config.file.display()
                )),
                Some(_) => {}
                None => buckets = Some(config),
            }
        }
        let components = config
            .sources
            .keys()
            .chain(config.transforms.keys())
            .chain(config.sinks.keys());
        for id in components {
            if let Some(other) = ids.insert(id, config) {
                problems.push(format!(
                    "{} and {} both have a component {id:?}: ids key the metrics and checkpoints of one process, rename one",
                    other.file.display(),
                    config.file.display()
                ));
            }
        }
        if let Some(leader) = &config.pipeline.leader
            && let Some(other) = elections.insert(leader, config)
        {
            problems.push(format!(
                "{} and {} both run under election {leader:?}: one process would campaign twice, name them apart",
                other.file.display(),
                config.file.display()
            ));
        }
        for (name, section) in &config.resources {
            if let Some(other) = sections.get(name.as_str()) {
                if other.resources[name].raw != section.raw {
                    problems.push(format!(
                        "{} and {} write [{name}] differently: a process has one [{name}], make them the same",
                        other.file.display(),
                        config.file.display()
                    ));
                }
            } else {
                sections.insert(name, config);
            }
        }
    }
    problems
}

/// Runs several pipelines in one process, sharing its resources (each section built once)
/// and API servers (one per address). Each pipeline is replaced by each config its `updates`
/// deliver: the running one is stopped and drained to its checkpoints first, then the new one
/// starts (the latest, if several arrived meanwhile), so nothing is lost across a reload; a
/// reload that changes the resource sections or the API address is refused (it needs a
/// restart). Ends when every pipeline has finished, when `shutdown` fires and everything has
/// drained, or when a component or resource fails for good, which stops every pipeline.
pub async fn run_process(
    pipelines: Vec<PipelineSpec<'_>>,
    shutdown: Shutdown,
) -> Result<(), RunError> {
    let configs: Vec<&Config> = pipelines.iter().map(|p| p.config).collect();
    let problems = check_together(&configs);
    if !problems.is_empty() {
        return Err(RunError::Together { problems });
    }
    let health = Health::default();
    // Expected before the API answers, so that /ready says "starting" until each pipeline
    // has registered its components.
    for config in &configs {
        health.scoped(&config.file.display().to_string()).expect();
    }
    let routes = Routes::default();
    let mut apis = Vec::new();
    let mut addresses = Vec::new();
    for config in &configs {
        if let Some(api) = &config.api
            && !addresses.contains(&api.address)
        {
            addresses.push(api.address);
            match api::serve(api, health.clone(), routes.clone()).await {
                Ok(server) => apis.push(server),
                Err(source) => {
                    for server in apis {
                        server.stop().await;
                    }
                    return Err(RunError::Api {
                        address: api.address,
                        source,
                    });
                }
            }
        }
    }
    let api = apis.first().map(|server| server.address);
    let mut resources = ResourceSet::start(&configs, &health, &routes, api)?;
    let provided = resources.provided.clone();
    let stop = ShutdownTrigger::new();
    let mut failures = Vec::new();
    {
        let loops = futures::future::join_all(pipelines.into_iter().map(|spec| {
            let span = tracing::info_span!("pipeline", config = %spec.config.file.display());
            let stop = stop.subscribe();
            reloading(spec, &provided, &health, stop).instrument(span)
        }));
        tokio::pin!(loops);
        loop {
            tokio::select! {
                results = &mut loops => {
                    failures.extend(results.into_iter().flatten());
                    break;
                }
                () = shutdown.requested(), if !stop.is_triggered() => {
                    tracing::info!("shutdown requested: draining");
                    stop.trigger();
                }
                (id, kind, error) = resources.failed() => {
                    report_failure(&id, kind, &error);
                    failures.push((id, error));
                    stop.trigger();
                }
            }
        }
    }
    failures.extend(resources.stop().await);
    for server in apis {
        server.stop().await;
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(RunError::Failed { failures })
    }
}

/// Runs one pipeline of the process and its reloads until it finishes, fails or `stop`
/// fires; returns what failed.
async fn reloading(
    spec: PipelineSpec<'_>,
    resources: &Resources,
    process: &Health,
    stop: Shutdown,
) -> Vec<(String, Error)> {
    let PipelineSpec {
        config: first,
        mut updates,
    } = spec;
    let health = process.scoped(&first.file.display().to_string());
    let mut latest: Option<Config> = None;
    loop {
        let config = latest.as_ref().unwrap_or(first);
        let this_run = ShutdownTrigger::new();
        let mut next = None;
        let failures = {
            let pipeline = run_pipeline(config, resources, &health, this_run.subscribe());
            tokio::pin!(pipeline);
            loop {
                tokio::select! {
                    failures = &mut pipeline => break failures,
                    () = stop.requested(), if !this_run.is_triggered() => this_run.trigger(),
                    Some(update) = updates.recv(), if next.is_none() && !stop.is_requested() => {
                        if let Some(refusal) = reload_refusal(config, &update) {
                            reload_counter("invalid").increment(1);
                            tracing::error!(config = %update.file.display(), %refusal, "the new config is refused; the running pipeline goes on");
                            continue;
                        }
                        tracing::info!(config = %update.file.display(), "reloading: draining the running pipeline first");
                        next = Some(update);
                        this_run.trigger();
                    }
                }
            }
        };
        if !failures.is_empty() || stop.is_requested() {
            return failures;
        }
        let Some(mut next) = next else {
            return failures;
        };
        while let Ok(newer) = updates.try_recv() {
            if reload_refusal(config, &newer).is_none() {
                next = newer;
            }
        }
        health.forget_pipeline();
        reload_counter("applied").increment(1);
        tracing::info!(config = %next.file.display(), "reloaded");
        latest = Some(next);
    }
}

/// Why `next` cannot replace `running` without restarting the process, if it cannot.
fn reload_refusal(running: &Config, next: &Config) -> Option<&'static str> {
    let same_resources = running.resources.len() == next.resources.len()
        && running
            .resources
            .iter()
            .zip(&next.resources)
            .all(|((name_a, a), (name_b, b))| name_a == name_b && a.raw == b.raw);
    if !same_resources {
        Some("it changes the resource sections (such as [coord]), which needs a restart")
    } else if running.api.as_ref().map(|a| a.address) != next.api.as_ref().map(|a| a.address) {
        Some("it changes the [api] address, which needs a restart")
    } else if running.api.as_ref().map(|a| &a.buckets) != next.api.as_ref().map(|a| &a.buckets) {
        Some("it changes the [api] buckets, which needs a restart")
    } else {
        None
    }
}

/// Builds every resource and component of `config`, and drops them: nothing runs and no I/O
/// is done. `sluice check` and a reload do this to refuse a config whose parts cannot be built
/// (a component that needs a resource the config lacks) before anything is stopped or started.
pub fn try_build(config: &Config) -> Result<(), RunError> {
    let (_, provided) = build_resources(&[config])?;
    build_components(config, &provided).map(drop)
}

type BuiltResources<'a> = Vec<(&'a String, Arc<dyn crate::resource::Resource>)>;

/// Builds every resource section of `configs` once, in the registry's order, each seeing
/// what the ones built before it provide, and collects what they all provide.
fn build_resources<'a>(
    configs: &[&'a Config],
) -> Result<(BuiltResources<'a>, Resources), RunError> {
    let mut sections: Vec<(&'a String, &'a crate::config::Resource, &'a Config)> = Vec::new();
    for config in configs {
        for (name, section) in &config.resources {
            if !sections.iter().any(|(done, _, _)| *done == name) {
                sections.push((name, section, config));
            }
        }
    }
    sections.sort_by_key(|(_, section, _)| section.rank);
    let mut provider = Provider::default();
    let mut built: BuiltResources<'a> = Vec::new();
    for (name, section, config) in sections {
        let cx = BuildContext {
            id: name.clone(),
            data_dir: config.pipeline.data_dir.clone(),
            leader: None,
            resources: provider.so_far(),
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
    /// Builds every resource section of `configs` once (no I/O; sections of the same name are
    /// the same, see [`check_together`]), collects what they provide and the routes they
    /// serve, and starts each on a task of its own, telling it where the process's API is.
    fn start(
        configs: &[&Config],
        health: &Health,
        routes: &Routes,
        api: Option<SocketAddr>,
    ) -> Result<Self, RunError> {
        let (built, provided) = build_resources(configs)?;
        let mut router = axum::Router::new();
        for (_, resource) in &built {
            if let Some(added) = Arc::clone(resource).routes() {
                router = router.merge(added);
            }
        }
        routes.set(router);
        let restart = configs
            .first()
            .map(|c| c.pipeline.restart)
            .unwrap_or_default();
        let stop = ShutdownTrigger::new();
        let mut tasks = JoinSet::new();
        let mut names = HashMap::new();
        for (name, resource) in built {
            let cx = ResourceContext {
                name: Arc::from(name.as_str()),
                ready: health.register(RESOURCE, name),
                shutdown: stop.subscribe(),
                api,
            };
            let task = supervise::run_resource(resource, cx, restart);
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
    resources: &Resources,
    health: &Health,
    shutdown: Shutdown,
) -> Vec<(String, Error)> {
    let stop = ShutdownTrigger::new();
    let (mut tasks, names) = match spawn_components(config, resources, health, &stop) {
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
                stopping = true;
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
            _enlisted: leadership.enlist(name),
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
        log: health.quarantined().clone(),
    };
    let taps = health.taps();
    let fanout = |id: &str| Fanout {
        targets: consumers(config, id)
            .into_iter()
            .filter_map(|reader| senders.get(reader).cloned())
            .collect(),
        tap: taps.output(id),
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
        .map(|(id, source)| {
            let metrics = SourceMetrics::new(id, budget);
            let election = gate.as_ref().map(|gate| &gate.election);
            SourceSlot {
                id: Arc::from(id),
                source,
                output: fanout(id),
                quarantine: quarantine("source", id),
                ready: health.register_source(id, election, &metrics.figures),
                metrics,
                data_dir: config.pipeline.data_dir.clone(),
                budget,
                backoff: Backoff::new(restart),
                finished: false,
            }
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
        let inputs = config.sinks.get(id).map(|c| c.inputs.clone());
        taps.sink(id, inputs.unwrap_or_default());
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
    health.registered();
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

    #[test]
    fn pipelines_that_would_clash_in_one_process_are_named() {
        let pipeline = |name: &str, probe: &str| {
            config(
                name,
                r#"leader = "relay""#,
                &format!(
                    "[elections]\nprobe = {probe:?}\n[sources.{name}]\ntype = \"count\"\nprobe = \"x\"\ncount = 1\n[sinks.{name}_out]\ntype = \"hold\"\ninputs = [\"{name}\"]\nprobe = \"x\"\n"
                ),
            )
        };
        let (a, b) = (pipeline("a", "one"), pipeline("b", "two"));
        let problems = check_together(&[&a, &b]);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].contains(r#"both run under election "relay""#),
            "{problems:?}"
        );
        assert!(
            problems[1].contains("write [elections] differently"),
            "{problems:?}"
        );
        assert!(check_together(&[&a]).is_empty());
    }
}
