//! Small components for the engine's own tests, whose state a test watches through a
//! [`Probe`]: a counting source with a checkpoint, a sink that can fail once while holding
//! events, a transform that fails its first batches, and a resource holding an in-memory
//! election.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::watch;

use crate::ack::Outcome;
use crate::component::{
    BoxFuture, BuildContext, DynSink, DynSource, DynTransform, Output, Refused, Sink, SinkConfig,
    SinkContext, Source, SourceConfig, SourceContext, Transform, TransformConfig, Validate,
};
use crate::config::{Config, ConfigErrors};
use crate::error::{Error, ErrorKind};
use crate::event::{Batch, Event, Position};
use crate::leadership::Leadership;
use crate::leadership::tests::Local;
use crate::registry::Registry;
use crate::resource::{Provider, Resource, ResourceConfig, ResourceContext};

/// What a test watches of its components.
#[derive(Default)]
pub(crate) struct Probe {
    /// The counting source's recorded checkpoint.
    pub(crate) checkpoint: Mutex<Option<u64>>,
    /// Runs of the source, and the position each started after.
    pub(crate) runs: Mutex<Vec<Option<u64>>>,
    /// Starts of the sink (or transform).
    pub(crate) starts: Mutex<usize>,
    /// Ids the sink acknowledged, in order.
    pub(crate) delivered: Mutex<Vec<String>>,
    changed: watch::Sender<u64>,
    pub(crate) leadership: Arc<Local>,
    /// What the requests source's receipts said, by event id.
    pub(crate) outcomes: Mutex<Vec<(String, Result<Outcome, Refused>)>>,
    /// Set by the requests source: a holding sink may deliver what it holds.
    pub(crate) released: Mutex<bool>,
}

impl Probe {
    fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    pub(crate) async fn wait(&self, what: &str, done: impl Fn(&Probe) -> bool) {
        let mut changed = self.changed.subscribe();
        let waited = tokio::time::timeout(Duration::from_secs(20), async {
            while !done(self) {
                let _ = changed.changed().await;
            }
        })
        .await;
        assert!(waited.is_ok(), "timed out waiting for {what}");
    }

    pub(crate) fn delivered(&self) -> Vec<String> {
        self.delivered.lock().unwrap().clone()
    }

    pub(crate) fn runs(&self) -> Vec<Option<u64>> {
        self.runs.lock().unwrap().clone()
    }
}

static PROBES: LazyLock<Mutex<HashMap<String, Arc<Probe>>>> = LazyLock::new(Default::default);

/// The probe called `name`, shared by every component naming it.
pub(crate) fn probe(name: &str) -> Arc<Probe> {
    Arc::clone(PROBES.lock().unwrap().entry(name.to_owned()).or_default())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CountConfig {
    probe: String,
    /// Emit up to this position, then end; 0: until stopped.
    count: u64,
}
impl Validate for CountConfig {}
impl SourceConfig for CountConfig {
    fn build(&self, _cx: &BuildContext) -> Result<Box<dyn DynSource>, Error> {
        Ok(Box::new(Count {
            probe: probe(&self.probe),
            count: self.count,
        }))
    }
}

struct Count {
    probe: Arc<Probe>,
    count: u64,
}

impl Source for Count {
    async fn run(&mut self, cx: &mut SourceContext) -> Result<(), Error> {
        let restored = *self.probe.checkpoint.lock().unwrap();
        if let Some(position) = restored {
            cx.resume_from(Position(position))?;
        }
        self.probe.runs.lock().unwrap().push(restored);
        self.probe.bump();
        cx.set_ready(true);
        let mut next = restored.unwrap_or(0) + 1;
        let shutdown = cx.shutdown().clone();
        while self.count == 0 || next <= self.count {
            let event = Event::new(format!("e{next}"), Position(next), Bytes::new());
            tokio::select! {
                biased;
                () = shutdown.requested() => break,
                emitted = cx.emit(vec![event]) => emitted?,
            }
            next += 1;
            if self.count == 0 {
                // An endless source paces itself a little, as a real one waits for input.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        let checkpoint = cx.drain().await;
        *self.probe.checkpoint.lock().unwrap() = checkpoint.map(|p| p.0);
        self.probe.bump();
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestsConfig {
    probe: String,
    /// The ids of the events to emit, each from a task of its own.
    ids: Vec<String>,
}
impl Validate for RequestsConfig {}
impl SourceConfig for RequestsConfig {
    fn build(&self, _cx: &BuildContext) -> Result<Box<dyn DynSource>, Error> {
        Ok(Box::new(Requests {
            probe: probe(&self.probe),
            ids: self.ids.clone(),
        }))
    }
}

/// Emits each of its ids through the emitter, one after the other, as a server would for
/// each request; records each refusal at once and each receipt's outcome when it comes, after
/// telling the sinks to let go of what they hold; then ends.
struct Requests {
    probe: Arc<Probe>,
    ids: Vec<String>,
}

impl Source for Requests {
    async fn run(&mut self, cx: &mut SourceContext) -> Result<(), Error> {
        cx.set_ready(true);
        let emitter = cx.emitter();
        let mut waiting = tokio::task::JoinSet::new();
        for id in &self.ids {
            let event = Event::new(id.as_str(), Position(0), Bytes::new());
            match emitter.try_emit(vec![event]).await {
                Ok(receipts) => {
                    let probe = Arc::clone(&self.probe);
                    let id = id.clone();
                    waiting.spawn(async move {
                        for receipt in receipts {
                            let outcome = receipt.await;
                            probe
                                .outcomes
                                .lock()
                                .unwrap()
                                .push((id.clone(), Ok(outcome)));
                        }
                        probe.bump();
                    });
                }
                Err(refused) => {
                    self.probe
                        .outcomes
                        .lock()
                        .unwrap()
                        .push((id.clone(), Err(refused)));
                }
            }
        }
        *self.probe.released.lock().unwrap() = true;
        self.probe.bump();
        while waiting.join_next().await.is_some() {}
        Ok(())
    }

    fn replays(&self) -> bool {
        false
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HoldConfig {
    probe: String,
    /// Fail once, holding the events, after receiving this many.
    #[serde(default)]
    fail_after: Option<usize>,
    /// Fail with an error that is not retryable.
    #[serde(default)]
    fatal: bool,
    /// Send events whose id starts with this to the quarantine instead.
    #[serde(default)]
    reject_prefix: Option<String>,
    /// Hold events until the probe is released.
    #[serde(default)]
    hold: bool,
}
impl Validate for HoldConfig {}
impl SinkConfig for HoldConfig {
    fn build(&self, _cx: &BuildContext) -> Result<Box<dyn DynSink>, Error> {
        Ok(Box::new(Hold {
            probe: probe(&self.probe),
            fail_after: self.fail_after,
            fatal: self.fatal,
            reject_prefix: self.reject_prefix.clone(),
            hold: self.hold,
            held: Vec::new(),
            received: 0,
        }))
    }
}

struct Hold {
    probe: Arc<Probe>,
    fail_after: Option<usize>,
    fatal: bool,
    reject_prefix: Option<String>,
    hold: bool,
    held: Batch,
    received: usize,
}

impl Hold {
    fn deliver(&mut self) {
        let mut delivered = self.probe.delivered.lock().unwrap();
        for event in self.held.drain(..) {
            delivered.push(event.id.to_string());
            event.ack();
        }
        drop(delivered);
        self.probe.bump();
    }
}

impl Sink for Hold {
    async fn start(&mut self, _cx: &mut SinkContext) -> Result<(), Error> {
        *self.probe.starts.lock().unwrap() += 1;
        // What the last run held is delivered by this one.
        self.deliver();
        Ok(())
    }

    async fn run(&mut self, cx: &mut SinkContext) -> Result<(), Error> {
        cx.set_ready(true);
        let mut changed = self.probe.changed.subscribe();
        loop {
            let batch = tokio::select! {
                batch = cx.next() => match batch {
                    Some(batch) => batch,
                    None => break,
                },
                _ = changed.changed(), if self.hold => {
                    if *self.probe.released.lock().unwrap() {
                        self.hold = false;
                        self.deliver();
                    }
                    continue;
                }
            };
            self.received += batch.len();
            let (rejected, batch): (Batch, Batch) = batch.into_iter().partition(|e| {
                self.reject_prefix
                    .as_deref()
                    .is_some_and(|prefix| e.id.starts_with(prefix))
            });
            let reasons = rejected
                .into_iter()
                .map(|e| (e, "refused by the test".into()));
            cx.reject(reasons.collect()).await;
            self.held.extend(batch);
            if self.hold {
                continue;
            }
            if self.fail_after.is_some_and(|n| self.received >= n) {
                self.fail_after = None;
                let kind = if self.fatal {
                    ErrorKind::Config
                } else {
                    ErrorKind::Connect
                };
                return Err(Error::new(kind, "the destination went away"));
            }
            self.deliver();
        }
        self.deliver();
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FlakyConfig {
    probe: String,
    /// Fail this many batches, then pass everything.
    fail_batches: usize,
    /// Drop events whose id starts with this.
    #[serde(default)]
    drop_prefix: Option<String>,
}
impl Validate for FlakyConfig {}
impl TransformConfig for FlakyConfig {
    fn build(&self, _cx: &BuildContext) -> Result<Box<dyn DynTransform>, Error> {
        Ok(Box::new(Flaky {
            probe: probe(&self.probe),
            fail_batches: self.fail_batches,
            drop_prefix: self.drop_prefix.clone(),
        }))
    }
}

struct Flaky {
    probe: Arc<Probe>,
    fail_batches: usize,
    drop_prefix: Option<String>,
}

impl Transform for Flaky {
    async fn start(&mut self) -> Result<(), Error> {
        *self.probe.starts.lock().unwrap() += 1;
        Ok(())
    }

    async fn process(&mut self, events: Batch, out: &mut Output) -> Result<(), Error> {
        if self.fail_batches > 0 {
            self.fail_batches -= 1;
            return Err(Error::new(ErrorKind::Connect, "lookup service unreachable"));
        }
        for event in events {
            match &self.drop_prefix {
                Some(prefix) if event.id.starts_with(prefix.as_str()) => out.drop_event(event),
                _ => out.push(event),
            }
        }
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ElectionsConfig {
    probe: String,
}
impl Validate for ElectionsConfig {}
impl ResourceConfig for ElectionsConfig {
    fn build(&self, _cx: &BuildContext) -> Result<Arc<dyn Resource>, Error> {
        Ok(Arc::new(Elections(probe(&self.probe))))
    }
    fn provides_leadership(&self) -> bool {
        true
    }
}

struct Elections(Arc<Probe>);

impl Resource for Elections {
    fn run<'a>(&'a self, cx: &'a mut ResourceContext) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            cx.set_ready(true);
            cx.shutdown().requested().await;
            Ok(())
        })
    }
    fn provide(self: Arc<Self>, provider: &mut Provider) {
        provider.insert::<dyn Leadership>(Arc::clone(&self.0.leadership) as Arc<dyn Leadership>);
    }
}

/// A resource that needs, when it is built, the leadership an earlier one provides; its name
/// sorts before `elections`, so only the registry's order builds it after them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditConfig {}
impl Validate for AuditConfig {}
impl ResourceConfig for AuditConfig {
    fn build(&self, cx: &BuildContext) -> Result<Arc<dyn Resource>, Error> {
        cx.resources
            .require::<dyn Leadership>("[audit]", "elections")?;
        Ok(Arc::new(Audit))
    }
}

/// What `[audit]` builds: it only proves it found the leadership.
struct Audit;

impl Resource for Audit {
    fn run<'a>(&'a self, cx: &'a mut ResourceContext) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            cx.set_ready(true);
            cx.shutdown().requested().await;
            Ok(())
        })
    }
    fn provide(self: Arc<Self>, provider: &mut Provider) {
        provider.insert::<Audit>(self);
    }
}

/// A registry of the test components: `count`, `hold`, `flaky`, `[elections]` and `[audit]`.
pub(crate) fn registry() -> Registry {
    let mut registry = Registry::new();
    registry
        .source::<CountConfig>("count")
        .source::<RequestsConfig>("requests")
        .sink::<HoldConfig>("hold")
        .transform::<FlakyConfig>("flaky")
        .resource::<ElectionsConfig>("elections")
        .resource::<AuditConfig>("audit");
    registry
}

/// A pipeline from `body` (components and resources), with `pipeline` added to its
/// `[pipeline]` section, fast restarts and its data in a fresh directory.
pub(crate) fn config(name: &str, pipeline: &str, body: &str) -> Config {
    parse(name, pipeline, body).unwrap_or_else(|errors| panic!("{errors}"))
}

/// Parses what [`config`] would, returning the errors.
pub(crate) fn parse(name: &str, pipeline: &str, body: &str) -> Result<Config, ConfigErrors> {
    let data = std::env::temp_dir().join(format!("sluice-supervise-{name}-{}", std::process::id()));
    let text = format!(
        "[pipeline]\ndata_dir = {data:?}\nrestart = {{ initial = \"5ms\", max = \"20ms\" }}\n{pipeline}\n{body}",
        data = data.display().to_string(),
    );
    Config::parse(&text, Path::new("test.toml"), &registry(), &|_| None)
}

/// The ids of the count source's events at `range`.
pub(crate) fn ids(range: std::ops::RangeInclusive<u64>) -> Vec<String> {
    range.map(|n| format!("e{n}")).collect()
}
