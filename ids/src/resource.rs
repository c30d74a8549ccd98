//! The `[ids]` resource: the process's named generators, built once and shared by every `id`
//! transform and by `GET /ids/{generator}` on the API server.
//!
//! Running, it sets up what the generators need on their servers (creates the PostgreSQL
//! sequences, reaches Redis) and counts in `/ready` once that is done; it publishes the
//! Snowflake generators' clock statistics as metrics every second. Its live check
//! (`sluice check`) prints each Snowflake layout's dates and each sequence's exact SQL.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use metrics::{Counter, counter, gauge};
use sluice_pipeline::component::BoxFuture;
use sluice_pipeline::resource::Provider;
use sluice_pipeline::{
    BuildContext, Error, ErrorKind, Finding, Resource, ResourceConfig, ResourceContext, Resources,
};

use crate::calendar;
use crate::config::{GeneratorConfig, IdsConfig, PairSource, SnowflakeConfig};
use crate::error::IdError;
use crate::generator::IdGenerator;
use crate::id::Id;
use crate::metrics::{
    CLOCK_STEPS_BACK, EXHAUSTED_WAITS, FAILURES, ISSUED, LARGEST_STEP_BACK, describe,
};
use crate::random::{Ulids, Uuid7};
use crate::snowflake::{Snowflake, StaticWorker, WorkerClaim};

/// How often the Snowflake generators' statistics become metrics.
const PUBLISH_INTERVAL: Duration = Duration::from_secs(1);

/// A generator under its name, counting what it issues.
///
/// A Snowflake generator whose pair is leased has no generator until the pair is held, and
/// gets a new one (with the pair leased again) after a lease is lost; meanwhile it refuses to
/// issue with [`IdError::WorkerNotHeld`].
#[derive(Debug)]
pub struct NamedGenerator {
    name: String,
    kind: &'static str,
    current: RwLock<Option<Arc<IdGenerator>>>,
    issued: Counter,
}

impl NamedGenerator {
    /// A named generator.
    pub fn new(name: impl Into<String>, generator: IdGenerator) -> Self {
        let named = NamedGenerator::waiting(name, generator.kind());
        named.replace(Some(generator));
        named
    }

    /// A named generator of `kind` that issues nothing until one is put in place.
    fn waiting(name: impl Into<String>, kind: &'static str) -> Self {
        let name = name.into();
        let issued = counter!(ISSUED, "generator" => name.clone(), "kind" => kind);
        NamedGenerator {
            name,
            kind,
            current: RwLock::new(None),
            issued,
        }
    }

    /// Its name in `[ids.generators]`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its kind, as configs name it.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// The generator issuing now, if any.
    pub fn current(&self) -> Option<Arc<IdGenerator>> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn replace(&self, generator: Option<IdGenerator>) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = generator.map(Arc::new);
    }

    /// Issues `count` ids and counts them, or counts the failure.
    pub async fn generate(&self, count: usize) -> Result<Vec<Id>, IdError> {
        let result = match self.current() {
            Some(generator) => generator.generate(count).await,
            None => Err(IdError::WorkerNotHeld {
                reason: "no Snowflake worker pair is leased yet".to_owned(),
            }),
        };
        match result {
            Ok(ids) => {
                self.issued.increment(ids.len() as u64);
                Ok(ids)
            }
            Err(error) => {
                counter!(FAILURES, "generator" => self.name.clone(), "reason" => error.reason())
                    .increment(1);
                Err(error)
            }
        }
    }

    fn publish_stats(&self) {
        let Some(generator) = self.current() else {
            return;
        };
        let IdGenerator::Snowflake(g) = &*generator else {
            return;
        };
        let stats = g.stats();
        let name = || self.name.clone();
        for (outcome, value) in [
            ("waited", stats.backward_waits),
            ("refused", stats.backward_refusals),
            ("continued", stats.backward_continued),
        ] {
            counter!(CLOCK_STEPS_BACK, "generator" => name(), "outcome" => outcome).absolute(value);
        }
        counter!(EXHAUSTED_WAITS, "generator" => name()).absolute(stats.exhausted_waits);
        gauge!(LARGEST_STEP_BACK, "generator" => name()).set(stats.largest_step_back_ms as f64);
    }
}

/// The running `[ids]` resource.
#[derive(Debug)]
pub struct Ids {
    generators: BTreeMap<String, Arc<NamedGenerator>>,
    #[cfg(feature = "coord")]
    leases: Vec<Leasing>,
    max_count: usize,
}

/// A Snowflake generator whose pair is leased through `[coord]`, and what leasing it takes.
#[cfg(feature = "coord")]
#[derive(Debug, Clone)]
struct Leasing {
    named: Arc<NamedGenerator>,
    coord: Arc<sluice_coord::Coord>,
    range: crate::snowflake::PairRange,
    guard: Duration,
    layout: crate::snowflake::Layout,
    options: crate::snowflake::Options,
}

#[cfg(feature = "coord")]
impl Leasing {
    /// Keeps a pair leased and a generator issuing under it: a lost lease stops the generator
    /// at once (its claim fails before each id), and a pair is leased again. Returns only on
    /// an error.
    async fn hold(self, changed: tokio::sync::watch::Sender<()>) -> Result<(), Error> {
        use crate::snowflake::lease::LeasedWorker;
        let name = &self.named.name;
        loop {
            let worker = LeasedWorker::lease(&self.coord, &self.range, self.guard)
                .await
                .map_err(|e| engine_error(name, e))?;
            let node = worker.node();
            let generator = Snowflake::new(
                self.layout,
                Arc::clone(&worker) as Arc<dyn WorkerClaim>,
                self.options,
            )
            .map_err(|e| engine_error(name, e))?;
            self.named.replace(Some(IdGenerator::Snowflake(generator)));
            changed.send_replace(());
            tracing::info!(generator = %name, datacenter = node.datacenter, worker = node.worker, token = worker.token(), "issuing under a leased Snowflake worker pair");
            worker.lost().await;
            self.named.replace(None);
            changed.send_replace(());
            tracing::warn!(generator = %name, datacenter = node.datacenter, worker = node.worker, "the lease of the Snowflake worker pair cannot be proven any more: issuing stopped, leasing a pair again");
        }
    }
}

/// Maps a generator's error to the engine's: failures that may pass (a server, the clock, a
/// lease) are retried by the runtime, the rest stop the pipeline.
pub fn engine_error(name: &str, error: IdError) -> Error {
    let kind = match &error {
        e if !e.is_retryable() => ErrorKind::Config,
        IdError::ClockMovedBack { .. }
        | IdError::ClockStalled { .. }
        | IdError::BeforeEpoch { .. } => ErrorKind::Io,
        _ => ErrorKind::Connect,
    };
    Error::new(kind, format!("issuing ids from generator {name:?}")).with_source(error)
}

impl Ids {
    /// Builds every generator of `config`. No I/O. A Snowflake generator without a fixed pair
    /// leases one through the `[coord]` of `resources` once running.
    pub fn build(config: &IdsConfig, resources: &Resources) -> Result<Ids, Error> {
        describe();
        let mut ids = Ids {
            generators: BTreeMap::new(),
            #[cfg(feature = "coord")]
            leases: Vec::new(),
            max_count: config.max_count,
        };
        for (name, generator) in &config.generators {
            let cannot = |e: IdError| {
                Error::new(
                    ErrorKind::Config,
                    format!("ids.generators.{name}: cannot build the generator"),
                )
                .with_source(e)
            };
            let named = match generator {
                GeneratorConfig::Snowflake(c) => match c.pair().map_err(|e| {
                    let path = format!("ids.generators.{name}");
                    Error::new(ErrorKind::Config, e.within(&path).to_string())
                })? {
                    PairSource::Leased { range, guard } => {
                        ids.lease(name, c, range, guard, resources)?
                    }
                    PairSource::Static(node) => Arc::new(NamedGenerator::new(
                        name,
                        snowflake(c, Arc::new(StaticWorker(node))).map_err(cannot)?,
                    )),
                },
                other => Arc::new(NamedGenerator::new(
                    name,
                    build_generator(other).map_err(cannot)?,
                )),
            };
            ids.generators.insert(name.clone(), named);
        }
        Ok(ids)
    }

    /// A generator `name` that leases its pair in `range` once running.
    #[cfg(feature = "coord")]
    fn lease(
        &mut self,
        name: &str,
        config: &SnowflakeConfig,
        range: crate::snowflake::PairRange,
        guard: Option<Duration>,
        resources: &Resources,
    ) -> Result<Arc<NamedGenerator>, Error> {
        let needed_by = format!("ids.generators.{name} (no `worker`: its pair is leased)");
        let coord = resources.require::<sluice_coord::Coord>(&needed_by, "coord")?;
        let guard = crate::snowflake::lease::guard_time(coord.ttl(), guard).map_err(|reason| {
            Error::new(
                ErrorKind::Config,
                format!("ids.generators.{name}.lease.guard: {reason}"),
            )
        })?;
        let named = Arc::new(NamedGenerator::waiting(name, "snowflake"));
        self.leases.push(Leasing {
            named: Arc::clone(&named),
            coord,
            range,
            guard,
            layout: config
                .layout()
                .map_err(|e| Error::new(ErrorKind::Config, e.message))?,
            options: config.options(),
        });
        Ok(named)
    }

    /// Without the `coord` feature, a pair cannot be leased.
    #[cfg(not(feature = "coord"))]
    fn lease(
        &mut self,
        name: &str,
        _config: &SnowflakeConfig,
        _range: crate::snowflake::PairRange,
        _guard: Option<Duration>,
        _resources: &Resources,
    ) -> Result<Arc<NamedGenerator>, Error> {
        Err(Error::new(
            ErrorKind::Config,
            format!(
                "ids.generators.{name}: no `worker` is set, and this build cannot lease one (it lacks the `coord` feature): set datacenter and worker"
            ),
        ))
    }

    /// The generator named `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<NamedGenerator>> {
        self.generators.get(name)
    }

    /// The generator named `name`, or a config error for `needed_by` listing the names.
    pub fn require(&self, name: &str, needed_by: &str) -> Result<Arc<NamedGenerator>, Error> {
        self.get(name).cloned().ok_or_else(|| {
            Error::new(
                ErrorKind::Config,
                format!(
                    "{needed_by}: no generator {name:?} in [ids.generators] (configured: {})",
                    self.names().join(", ")
                ),
            )
        })
    }

    /// The generators' names.
    pub fn names(&self) -> Vec<&str> {
        self.generators.keys().map(String::as_str).collect()
    }

    /// The most ids one HTTP request may ask for.
    pub fn max_count(&self) -> usize {
        self.max_count
    }

    fn publish_stats(&self) {
        self.generators.values().for_each(|g| g.publish_stats());
    }

    async fn set_up(&self) -> Result<(), Error> {
        for named in self.generators.values() {
            let Some(generator) = named.current() else {
                continue;
            };
            let result = match &*generator {
                #[cfg(feature = "postgres")]
                IdGenerator::Sequence(g) => g.set_up().await,
                #[cfg(feature = "redis")]
                IdGenerator::Counter(g) => g.ping().await,
                _ => Ok(()),
            };
            result.map_err(|e| engine_error(&named.name, e))?;
        }
        Ok(())
    }
}

/// A Snowflake generator of `config`'s layout and options under `claim`.
fn snowflake(
    config: &SnowflakeConfig,
    claim: Arc<dyn WorkerClaim>,
) -> Result<IdGenerator, IdError> {
    let layout = config.layout().map_err(|e| IdError::Setup(e.message))?;
    Ok(IdGenerator::Snowflake(Snowflake::new(
        layout,
        claim,
        config.options(),
    )?))
}

/// A generator of any kind but Snowflake (which [`Ids::build`] builds with its pair).
fn build_generator(config: &GeneratorConfig) -> Result<IdGenerator, IdError> {
    Ok(match config {
        GeneratorConfig::Snowflake(_) => {
            return Err(IdError::Setup(
                "a Snowflake generator needs its pair".to_owned(),
            ));
        }
        GeneratorConfig::Uuid4(_) => IdGenerator::Uuid4,
        GeneratorConfig::Uuid7(_) => IdGenerator::Uuid7(Uuid7::new()),
        GeneratorConfig::Ulid(_) => IdGenerator::Ulid(Ulids::new()),
        #[cfg(feature = "postgres")]
        GeneratorConfig::PostgresSequence(c) => {
            IdGenerator::Sequence(crate::sequence::PgSequence::new(c.url.clone(), c.plan()))
        }
        #[cfg(feature = "redis")]
        GeneratorConfig::RedisCounter(c) => {
            let plan = c.plan().map_err(|e| IdError::Setup(e.message))?;
            IdGenerator::Counter(crate::counter::RedisCounter::new(c.url.expose(), plan)?)
        }
    })
}

impl Resource for Ids {
    fn run<'a>(&'a self, cx: &'a mut ResourceContext) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            tokio::select! {
                result = self.set_up() => result?,
                () = cx.shutdown().requested() => return Ok(()),
            }
            // Every generator's slot changes here: leased pairs taken, lost and taken again.
            let (changed, mut changes) = tokio::sync::watch::channel(());
            let mut leasing = tokio::task::JoinSet::new();
            #[cfg(feature = "coord")]
            for lease in &self.leases {
                leasing.spawn(lease.clone().hold(changed.clone()));
            }
            let mut tick = tokio::time::interval(PUBLISH_INTERVAL);
            let outcome = loop {
                cx.set_ready(self.generators.values().all(|g| g.current().is_some()));
                tokio::select! {
                    _ = tick.tick() => self.publish_stats(),
                    Ok(()) = changes.changed() => {}
                    Some(joined) = leasing.join_next() => {
                        break joined.unwrap_or_else(|e| {
                            Err(Error::new(ErrorKind::Internal, format!("leasing a worker pair: {e}")))
                        });
                    }
                    () = cx.shutdown().requested() => break Ok(()),
                }
            };
            leasing.shutdown().await;
            drop(changed);
            self.publish_stats();
            #[cfg(feature = "coord")]
            for lease in &self.leases {
                lease.named.replace(None);
            }
            outcome
        })
    }

    fn provide(self: Arc<Self>, provider: &mut Provider) {
        provider.insert(self);
    }

    fn routes(self: Arc<Self>) -> Option<axum::Router> {
        Some(crate::endpoint::router(self))
    }
}

impl ResourceConfig for IdsConfig {
    fn build(&self, cx: &BuildContext) -> Result<Arc<dyn Resource>, Error> {
        Ok(Arc::new(Ids::build(self, &cx.resources)?))
    }

    fn check(&self) -> BoxFuture<'_, Vec<Finding>> {
        Box::pin(async move {
            let mut findings = Vec::new();
            for (name, generator) in &self.generators {
                let prefix = format!("generators.{name}");
                findings.extend(
                    check_generator(generator)
                        .await
                        .into_iter()
                        .map(|f| Finding {
                            message: format!("{prefix}: {}", f.message),
                            ..f
                        }),
                );
            }
            if self.generators.is_empty() {
                findings.push(Finding::warn(
                    "no generators: add one under [ids.generators.NAME]",
                ));
            }
            findings
        })
    }
}

/// What `sluice check` says about one generator.
async fn check_generator(config: &GeneratorConfig) -> Vec<Finding> {
    match config {
        GeneratorConfig::Snowflake(c) => snowflake_findings(c),
        GeneratorConfig::Uuid4(_) | GeneratorConfig::Uuid7(_) | GeneratorConfig::Ulid(_) => {
            vec![Finding::ok("needs no server and no worker id")]
        }
        #[cfg(feature = "postgres")]
        GeneratorConfig::PostgresSequence(c) => {
            use crate::sequence::{PgSequence, SequenceState};
            let plan = c.plan();
            let sql = plan.create_sql();
            let g = PgSequence::new(c.url.clone(), plan);
            match g.inspect().await {
                Ok(SequenceState::AsPlanned) => vec![Finding::ok(format!(
                    "sequence {} is as planned for node {} of {} with blocks of {} ({sql})",
                    c.sequence, c.node, c.nodes, c.block
                ))],
                Ok(SequenceState::Missing { can_create: true }) => vec![Finding::ok(format!(
                    "sequence {} does not exist yet; sluice creates it on start with: {sql}",
                    c.sequence
                ))],
                Ok(SequenceState::Missing { can_create: false }) => vec![Finding::fail(format!(
                    "sequence {} does not exist and this role may not create it; run as a role that may: {sql}; and grant this role USAGE on it",
                    c.sequence
                ))],
                Ok(SequenceState::Differs { start, increment }) => vec![Finding::fail(format!(
                    "sequence {} has START WITH {start} INCREMENT BY {increment}, but this node needs: {sql} (its ids would collide with other nodes'; plan a new sequence that starts above every id issued)",
                    c.sequence
                ))],
                Err(e) => vec![Finding::fail(sluice_pipeline::error::chain(&e))],
            }
        }
        #[cfg(feature = "redis")]
        GeneratorConfig::RedisCounter(c) => {
            use crate::clock::{Clock, SystemClock};
            let counter = c
                .plan()
                .map_err(|e| IdError::Setup(e.to_string()))
                .and_then(|plan| crate::counter::RedisCounter::new(c.url.expose(), plan));
            let checked = match counter {
                Ok(g) => g.ping().await.map(|()| g.key_for(SystemClock.now_ms())),
                Err(e) => Err(e),
            };
            match checked {
                Ok(key) => vec![Finding::ok(format!(
                    "Redis answers; today's ids count on key {key}, which expires {} after the day",
                    c.retain
                ))],
                Err(e) => vec![Finding::fail(sluice_pipeline::error::chain(&e))],
            }
        }
    }
}

/// The layout, the pair, the cap and both dates that matter for storing the ids.
pub fn snowflake_findings(c: &SnowflakeConfig) -> Vec<Finding> {
    let layout = match c.layout() {
        Ok(layout) => layout,
        Err(e) => return vec![Finding::fail(e.message)],
    };
    let pair = match c.pair() {
        Ok(PairSource::Static(node)) => {
            format!("datacenter {} worker {}", node.datacenter, node.worker)
        }
        Ok(PairSource::Leased { range, .. }) => format!(
            "a pair leased through [coord] among datacenters {}-{} and workers {}-{}",
            range.datacenters.start(),
            range.datacenters.end(),
            range.workers.start(),
            range.workers.end()
        ),
        Err(e) => return vec![Finding::fail(e.to_string())],
    };
    let mut findings = vec![Finding::ok(format!(
        "snowflake {layout} (timestamp/datacenter/worker/sequence bits) from epoch {}, {pair}, {} ids per millisecond: {}",
        calendar::rfc3339(layout.epoch_ms()),
        layout.ids_per_ms(),
        layout.lifetime()
    ))];
    if let Some(from) = layout.exceeds_js_from_ms() {
        findings.push(Finding::ok(format!(
            "ids pass 2^53 from {}: JSON clients must read them as strings (GET /ids serves them as strings)",
            calendar::rfc3339(from)
        )));
    }
    findings
}
