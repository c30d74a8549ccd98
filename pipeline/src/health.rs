//! Readiness of the running components and resources, and the role of each election, as
//! `/ready` reports them.
//!
//! A source of a pipeline that runs under an election does not run while this process is a
//! standby; its flag is then left out, so a healthy standby is ready (and says it is a standby).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::leadership::{Election, Role};
use crate::metrics::{SourceFigures, ready_gauge};
use crate::quarantined::Quarantined;
use crate::tap::Taps;

/// Every component's ready flag, and every election's role. A handle may be scoped to one
/// pipeline of the process; all handles see everything.
#[derive(Clone, Default)]
pub struct Health {
    inner: Arc<Mutex<Registered>>,
    /// The pipeline what this handle registers belongs to.
    pipeline: Arc<str>,
    /// The running components' outputs, for `/tap`.
    taps: Taps,
    /// The latest quarantined events, for `/quarantined`.
    quarantined: Quarantined,
}

#[derive(Default)]
struct Registered {
    flags: Vec<ReadyFlag>,
    /// Each source's figures, by its flag's id.
    figures: Vec<(Arc<str>, Arc<SourceFigures>)>,
    /// Each election, with the pipeline it belongs to.
    elections: Vec<(Arc<str>, Arc<Election>)>,
    /// Pipelines expected whose components are not registered yet.
    starting: Vec<Arc<str>>,
}

/// The kind of the flags that outlive a pipeline (see [`Health::forget_pipeline`]).
pub(crate) const RESOURCE: &str = "resource";

/// What `/ready` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// Pipelines (by config file) whose components are not registered yet: while any is,
    /// the process is not ready, whatever the flags say.
    pub starting: Vec<String>,
    /// Ids of what is not ready; empty when all is.
    pub not_ready: Vec<String>,
    /// Each election of this process and its role.
    pub roles: Vec<(String, Role)>,
}

impl Health {
    /// Registers a component (or resource) of `kind`, not ready yet.
    pub fn register(&self, kind: &'static str, id: &str) -> ReadyFlag {
        self.add(kind, id, None)
    }

    /// Registers a source (that runs only while `election` is led, if given), with the
    /// figures `/status` shows for it.
    pub(crate) fn register_source(
        &self,
        id: &str,
        election: Option<&Arc<Election>>,
        figures: &Arc<SourceFigures>,
    ) -> ReadyFlag {
        let flag = self.add("source", id, election.cloned());
        self.lock()
            .figures
            .push((Arc::clone(&flag.id), Arc::clone(figures)));
        flag
    }

    fn add(&self, kind: &'static str, id: &str, gate: Option<Arc<Election>>) -> ReadyFlag {
        let flag = ReadyFlag {
            id: Arc::from(id),
            kind,
            pipeline: Arc::clone(&self.pipeline),
            ready: Arc::new(AtomicBool::new(false)),
            times_ready: Arc::new(AtomicU64::new(0)),
            gauge: ready_gauge(kind, id),
            gate,
        };
        flag.gauge.set(0.0);
        self.lock().flags.push(flag.clone());
        flag
    }

    /// The outputs of this process's running components, to watch.
    pub fn taps(&self) -> &Taps {
        &self.taps
    }

    /// The latest events this process quarantined (metadata only).
    pub fn quarantined(&self) -> &Quarantined {
        &self.quarantined
    }

    /// Expects the pipeline of this handle: the process is starting (not ready) until that
    /// pipeline has [registered](Health::registered) its components.
    pub(crate) fn expect(&self) {
        let mut registered = self.lock();
        if !registered.starting.contains(&self.pipeline) {
            registered.starting.push(Arc::clone(&self.pipeline));
        }
    }

    /// Says that this handle's pipeline has registered every component it runs.
    pub(crate) fn registered(&self) {
        self.lock().starting.retain(|p| *p != self.pipeline);
    }

    /// Registers election `name`, in standby.
    pub(crate) fn election(&self, name: &str) -> Arc<Election> {
        let election = Election::new(name);
        self.lock()
            .elections
            .push((Arc::clone(&self.pipeline), Arc::clone(&election)));
        election
    }

    /// A handle on the same registrations whose new ones belong to pipeline `name`.
    pub(crate) fn scoped(&self, name: &str) -> Health {
        Health {
            inner: Arc::clone(&self.inner),
            pipeline: Arc::from(name),
            taps: self.taps.clone(),
            quarantined: self.quarantined.clone(),
        }
    }

    /// Forgets the components and elections of this handle's pipeline, once stopped (its
    /// replacement registers its own); the resources' flags stay.
    pub(crate) fn forget_pipeline(&self) {
        let mut registered = self.lock();
        let pipeline = &self.pipeline;
        let Registered {
            flags,
            figures,
            elections,
            starting,
        } = &mut *registered;
        // Its replacement is starting until it registers.
        if !starting.contains(pipeline) {
            starting.push(Arc::clone(pipeline));
        }
        flags.retain(|flag| {
            let keep = flag.kind == RESOURCE || flag.pipeline != *pipeline;
            if !keep {
                figures.retain(|(id, _)| *id != flag.id);
            }
            keep
        });
        elections.retain(|(p, _)| p != pipeline);
    }

    /// What is not ready, and each election's role.
    pub fn readiness(&self) -> Readiness {
        let registered = self.lock();
        let not_ready = registered
            .flags
            .iter()
            .filter(|flag| {
                let running = flag
                    .gate
                    .as_ref()
                    .is_none_or(|e| matches!(e.role(), Role::Leader(_)));
                running && !flag.is_ready()
            })
            .map(|flag| flag.id.to_string())
            .collect();
        let roles = registered
            .elections
            .iter()
            .map(|(_, e)| (e.name().to_owned(), e.role()))
            .collect();
        let starting = registered.starting.iter().map(|p| p.to_string()).collect();
        Readiness {
            starting,
            not_ready,
            roles,
        }
    }

    /// Everything `/status` shows, as JSON: each pipeline with its election's role and its
    /// components (ready, and for sources in-flight events, checkpoint, failed events and
    /// what they report), then the resources.
    pub fn status(&self) -> serde_json::Value {
        use serde_json::{Map, Value, json};
        let registered = self.lock();
        let mut pipelines: Vec<(Arc<str>, Map<String, Value>)> = Vec::new();
        let mut resources = Vec::new();
        for flag in &registered.flags {
            let mut component = Map::new();
            component.insert("id".into(), json!(&*flag.id));
            component.insert("kind".into(), json!(flag.kind));
            component.insert("ready".into(), json!(flag.is_ready()));
            if flag.kind == RESOURCE {
                resources.push(Value::Object(component));
                continue;
            }
            if let Some((_, figures)) = registered.figures.iter().find(|(id, _)| *id == flag.id) {
                let (in_flight, checkpoint, failed, reported) = figures.read();
                component.insert("in_flight_events".into(), json!(in_flight));
                component.insert("checkpoint".into(), json!(checkpoint));
                component.insert("failed_events".into(), json!(failed));
                for (name, value) in reported {
                    component.insert(name.into(), json!(value));
                }
            }
            let at = match pipelines.iter().position(|(p, _)| *p == flag.pipeline) {
                Some(at) => at,
                None => {
                    let mut pipeline = Map::new();
                    pipeline.insert("config".into(), json!(&*flag.pipeline));
                    pipeline.insert("components".into(), json!([]));
                    pipelines.push((Arc::clone(&flag.pipeline), pipeline));
                    pipelines.len() - 1
                }
            };
            if let Some(Value::Array(components)) = pipelines[at].1.get_mut("components") {
                components.push(Value::Object(component));
            }
        }
        for (pipeline, election) in &registered.elections {
            if let Some((_, entry)) = pipelines.iter_mut().find(|(p, _)| p == pipeline) {
                let (role, token) = match election.role() {
                    Role::Leader(token) => ("leader", Some(token.0)),
                    Role::Standby => ("standby", None),
                };
                entry.insert(
                    "election".into(),
                    json!({"name": election.name(), "role": role, "fencing_token": token}),
                );
            }
        }
        json!({
            "pipelines": pipelines.into_iter().map(|(_, p)| Value::Object(p)).collect::<Vec<_>>(),
            "resources": resources,
        })
    }

    /// Ids of what is not ready (and pipelines still starting, as `starting <file>`); empty
    /// when all is.
    pub fn not_ready(&self) -> Vec<String> {
        let readiness = self.readiness();
        readiness
            .starting
            .iter()
            .map(|p| format!("starting {p}"))
            .chain(readiness.not_ready)
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registered> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("readiness", &self.readiness())
            .finish()
    }
}

/// One component's readiness: started and, where it talks to a server, connected.
#[derive(Debug, Clone)]
pub struct ReadyFlag {
    id: Arc<str>,
    kind: &'static str,
    pipeline: Arc<str>,
    ready: Arc<AtomicBool>,
    /// How many times it turned ready: the runtime's sign that a restart succeeded.
    times_ready: Arc<AtomicU64>,
    gauge: metrics::Gauge,
    gate: Option<Arc<Election>>,
}

impl ReadyFlag {
    /// Sets the flag.
    pub fn set(&self, ready: bool) {
        let was = self.ready.swap(ready, Ordering::AcqRel);
        if ready && !was {
            self.times_ready.fetch_add(1, Ordering::AcqRel);
        }
        self.gauge.set(if ready { 1.0 } else { 0.0 });
    }

    /// Reads the flag.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// How many times the flag turned ready so far.
    pub(crate) fn times_ready(&self) -> u64 {
        self.times_ready.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leadership::FencingToken;
    use crate::leadership::Leadership;
    use crate::leadership::tests::Local;

    #[test]
    fn reports_components_not_ready() {
        let health = Health::default();
        let a = health.register("source", "a");
        let _b = health.register("sink", "b");
        assert_eq!(health.not_ready(), ["a", "b"]);
        a.set(true);
        assert_eq!(health.not_ready(), ["b"]);
        assert_eq!(a.times_ready(), 1);
        a.set(true);
        assert_eq!(a.times_ready(), 1, "only turning ready counts");
    }

    #[test]
    fn a_process_is_starting_until_each_expected_pipeline_registered() {
        let process = Health::default();
        let relay = process.scoped("relay.toml");
        let gateway = process.scoped("gateway.toml");
        relay.expect();
        gateway.expect();
        assert_eq!(
            process.readiness().starting,
            ["relay.toml", "gateway.toml"],
            "nothing registered yet: starting, though no flag is down"
        );
        relay.register("sink", "broker").set(true);
        relay.registered();
        assert_eq!(process.not_ready(), ["starting gateway.toml"]);
        gateway.registered();
        assert!(process.not_ready().is_empty());
        gateway.forget_pipeline();
        assert_eq!(
            process.not_ready(),
            ["starting gateway.toml"],
            "a reloaded pipeline starts again"
        );
    }

    #[tokio::test]
    async fn a_standby_leaves_its_gated_sources_out() {
        let health = Health::default();
        let election = health.election("relay");
        let source = health.register_source("outbox", Some(&election), &Arc::default());
        let sink = health.register("sink", "broker");
        sink.set(true);
        let readiness = health.readiness();
        assert!(readiness.not_ready.is_empty(), "{readiness:?}");
        assert_eq!(readiness.roles, [("relay".to_owned(), Role::Standby)]);

        let term = Local::default().campaign("relay").await.unwrap();
        election.won(term);
        let readiness = health.readiness();
        assert_eq!(readiness.not_ready, ["outbox"]);
        assert_eq!(
            readiness.roles,
            [("relay".to_owned(), Role::Leader(FencingToken(1)))]
        );
        source.set(true);
        assert!(health.not_ready().is_empty());
        election.lost();
        source.set(false);
        assert!(health.not_ready().is_empty());
    }

    #[tokio::test]
    async fn status_shows_each_pipeline_its_role_and_its_sources_figures() {
        let process = Health::default();
        let _coord = process.register(RESOURCE, "coord");
        let health = process.scoped("relay.toml");
        let election = health.election("relay");
        let figures = Arc::new(SourceFigures::default());
        let source = health.register_source("outbox", Some(&election), &figures);
        source.set(true);
        figures.report("lag_bytes", 512.0);
        let term = Local::default().campaign("relay").await.unwrap();
        election.won(term);
        let status = process.status();
        assert_eq!(
            status,
            serde_json::json!({
                "pipelines": [{
                    "config": "relay.toml",
                    "election": {"name": "relay", "role": "leader", "fencing_token": 1},
                    "components": [{
                        "id": "outbox", "kind": "source", "ready": true,
                        "in_flight_events": 0, "checkpoint": null, "failed_events": 0,
                        "lag_bytes": 512.0
                    }]
                }],
                "resources": [{"id": "coord", "kind": "resource", "ready": false}]
            })
        );
        health.forget_pipeline();
        assert_eq!(process.status()["pipelines"], serde_json::json!([]));
    }
}
