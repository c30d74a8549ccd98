//! The `[ids]` resource: the process's named generators, built once and shared by every `id`
//! transform and by `GET /ids/{generator}` on the API server.
//!
//! Running, it sets up what the generators need on their servers (creates the PostgreSQL
//! sequences, reaches Redis) and counts in `/ready` once that is done; it publishes the
//! Snowflake generators' clock statistics as metrics every second. Its live check
//! (`sluice check`) prints each Snowflake layout's dates and each sequence's exact SQL.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, counter, gauge};
use sluice_pipeline::component::BoxFuture;
use sluice_pipeline::resource::Provider;
use sluice_pipeline::{
    BuildContext, Error, ErrorKind, Finding, Resource, ResourceConfig, ResourceContext,
};

use crate::calendar;
use crate::config::{GeneratorConfig, IdsConfig, SnowflakeConfig};
use crate::error::IdError;
use crate::generator::IdGenerator;
use crate::id::Id;
use crate::metrics::{
    CLOCK_STEPS_BACK, EXHAUSTED_WAITS, FAILURES, ISSUED, LARGEST_STEP_BACK, describe,
};
use crate::random::{Ulids, Uuid7};
use crate::snowflake::{Snowflake, StaticWorker};

/// How often the Snowflake generators' statistics become metrics.
const PUBLISH_INTERVAL: Duration = Duration::from_secs(1);

/// A generator under its name, counting what it issues.
#[derive(Debug)]
pub struct NamedGenerator {
    name: String,
    generator: IdGenerator,
    issued: Counter,
}

impl NamedGenerator {
    /// A named generator.
    pub fn new(name: impl Into<String>, generator: IdGenerator) -> Self {
        let name = name.into();
        let issued = counter!(ISSUED, "generator" => name.clone(), "kind" => generator.kind());
        NamedGenerator {
            name,
            generator,
            issued,
        }
    }

    /// Its name in `[ids.generators]`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The generator.
    pub fn generator(&self) -> &IdGenerator {
        &self.generator
    }

    /// Issues `count` ids and counts them, or counts the failure.
    pub async fn generate(&self, count: usize) -> Result<Vec<Id>, IdError> {
        match self.generator.generate(count).await {
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
        let IdGenerator::Snowflake(g) = &self.generator else {
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
    max_count: usize,
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
    /// Builds every generator of `config`. No I/O.
    pub fn build(config: &IdsConfig) -> Result<Ids, Error> {
        describe();
        let mut generators = BTreeMap::new();
        for (name, generator) in &config.generators {
            let built = build_generator(generator).map_err(|e| {
                Error::new(
                    ErrorKind::Config,
                    format!("ids.generators.{name}: cannot build the generator"),
                )
                .with_source(e)
            })?;
            generators.insert(name.clone(), Arc::new(NamedGenerator::new(name, built)));
        }
        Ok(Ids {
            generators,
            max_count: config.max_count,
        })
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

    async fn set_up(&self) -> Result<(), Error> {
        for named in self.generators.values() {
            let result = match &named.generator {
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

fn build_generator(config: &GeneratorConfig) -> Result<IdGenerator, IdError> {
    Ok(match config {
        GeneratorConfig::Snowflake(c) => {
            let layout = c.layout().map_err(|e| IdError::Setup(e.message))?;
            IdGenerator::Snowflake(Snowflake::new(
                layout,
                Arc::new(StaticWorker(c.node())),
                c.options(),
            )?)
        }
        GeneratorConfig::Uuid4(_) => IdGenerator::Uuid4,
        GeneratorConfig::Uuid7(_) => IdGenerator::Uuid7(Uuid7::new()),
        GeneratorConfig::Ulid(_) => IdGenerator::Ulid(Ulids::new()),
        #[cfg(feature = "postgres")]
        GeneratorConfig::PostgresSequence(c) => {
            IdGenerator::Sequence(crate::sequence::PgSequence::new(c.url.expose(), c.plan()))
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
            cx.set_ready(true);
            let mut tick = tokio::time::interval(PUBLISH_INTERVAL);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = cx.shutdown().requested() => break,
                }
                self.generators.values().for_each(|g| g.publish_stats());
            }
            self.generators.values().for_each(|g| g.publish_stats());
            Ok(())
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
    fn build(&self, _cx: &BuildContext) -> Result<Arc<dyn Resource>, Error> {
        Ok(Arc::new(Ids::build(self)?))
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
            let g = PgSequence::new(c.url.expose(), plan);
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
    let mut findings = vec![Finding::ok(format!(
        "snowflake {layout} (timestamp/datacenter/worker/sequence bits) from epoch {}, datacenter {} worker {}, {} ids per millisecond: {}",
        calendar::rfc3339(layout.epoch_ms()),
        c.datacenter.0,
        c.worker.0,
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
