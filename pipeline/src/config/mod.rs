//! Loading a pipeline from a TOML file: sections, components, environment interpolation and
//! every check that needs no I/O, with errors that name the file, the field and the rule.
//!
//! ```toml
//! [api]
//! address = "127.0.0.1:9464"
//!
//! [sources.orders]
//! type = "generator"
//! count = 1000
//!
//! [sinks.out]
//! type = "file"
//! inputs = ["orders"]
//! path = "${OUT_DIR:-/tmp}/orders.jsonl"
//! ```

pub mod duration;
mod interpolate;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::DeserializeOwned;

pub use duration::HumanDuration;
pub use interpolate::InterpolationError;

use crate::backoff::BackoffConfig;
use crate::component::{SinkConfig, SourceConfig, TransformConfig};
use crate::metrics::Buckets;
use crate::registry::Registry;
use crate::resource::ResourceConfig;
use crate::topology;

/// One problem in a config file: the dotted path of the field and what rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path such as `sources.orders.count`; empty for the whole file.
    pub path: String,
    /// What is wrong, and where possible what to write instead.
    pub message: String,
}

impl FieldError {
    /// A problem at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            path: path.into(),
            message: message.into(),
        }
    }

    /// The same problem under a parent path (`count` under `sources.orders`).
    pub fn within(mut self, parent: &str) -> Self {
        self.path = join(parent, &self.path);
        self
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem one check found, in the order found: what a component's
/// [`Validate`](crate::Validate) returns, so that one run of `sluice check` lists them all.
/// A single [`FieldError`] converts into it, so `?` works on checks that find one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldErrors(pub Vec<FieldError>);

impl FieldErrors {
    /// None yet.
    pub fn new() -> Self {
        FieldErrors(Vec::new())
    }

    /// Keeps the problem `result` reports, if any.
    pub fn add(&mut self, result: Result<(), FieldError>) {
        if let Err(error) = result {
            self.0.push(error);
        }
    }

    /// Keeps `error`.
    pub fn push(&mut self, error: FieldError) {
        self.0.push(error);
    }

    /// Keeps every problem `result` reports, each under `parent` (a nested section).
    pub fn add_within(&mut self, result: Result<(), FieldErrors>, parent: &str) {
        if let Err(errors) = result {
            self.0
                .extend(errors.0.into_iter().map(|e| e.within(parent)));
        }
    }

    /// `Ok` when nothing was found.
    pub fn into_result(self) -> Result<(), FieldErrors> {
        if self.0.is_empty() { Ok(()) } else { Err(self) }
    }
}

impl From<FieldError> for FieldErrors {
    fn from(error: FieldError) -> Self {
        FieldErrors(vec![error])
    }
}

impl fmt::Display for FieldErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

/// Every problem found in one config file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors {
    /// The file.
    pub file: PathBuf,
    /// The problems, in file order as far as it is known.
    pub errors: Vec<FieldError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{}: {error}", self.file.display())?;
        }
        Ok(())
    }
}

/// The HTTP endpoint serving `/metrics`, `/health` and `/ready`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Address to listen on, such as `127.0.0.1:9464`.
    pub address: SocketAddr,
    /// Bucket bounds of the histograms, by unit: `seconds` (every latency), default 0.1 ms to
    /// 30 s, and `events` (batch sizes), default 1 to 10,000. One process has one set: every
    /// config it runs must give the same.
    #[serde(default)]
    pub buckets: Buckets,
}

impl ApiConfig {
    /// Serving at `address` with the default buckets.
    pub fn at(address: SocketAddr) -> Self {
        ApiConfig {
            address,
            buckets: Buckets::default(),
        }
    }
}

/// Default for [`PipelineSettings::data_dir`].
pub const DEFAULT_DATA_DIR: &str = "sluice-data";
/// Default for [`PipelineSettings::max_in_flight_events`].
pub const DEFAULT_MAX_IN_FLIGHT_EVENTS: usize = 10_000;
/// Default for [`PipelineSettings::max_in_flight_bytes`].
pub const DEFAULT_MAX_IN_FLIGHT_BYTES: usize = 16 * 1024 * 1024;
/// Default for [`PipelineSettings::channel_capacity`].
pub const DEFAULT_CHANNEL_CAPACITY: usize = 16;

/// Engine settings shared by every component (the `[pipeline]` section).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineSettings {
    /// Where sluice keeps local state: checkpoints of sources that have no server to keep them,
    /// and the default quarantine file. Relative paths are relative to the working directory.
    pub data_dir: PathBuf,
    /// Most events a source may have emitted and not yet acknowledged; beyond it the source
    /// waits. This, not time, is what bounds memory when a sink is slow.
    pub max_in_flight_events: usize,
    /// Most bytes (payloads and metadata) a source may have in flight.
    pub max_in_flight_bytes: usize,
    /// Batches each stage's input channel holds before its producer waits.
    pub channel_capacity: usize,
    /// Run the sources only while this process leads the election of this name (through the
    /// coordination section, such as `[coord]`); unset, they always run.
    pub leader: Option<String>,
    /// How long the runtime waits before restarting a component that failed with a retryable
    /// error (a lost connection), doubling from `initial` to `max`.
    pub restart: BackoffConfig,
}

impl Default for PipelineSettings {
    fn default() -> Self {
        PipelineSettings {
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            max_in_flight_events: DEFAULT_MAX_IN_FLIGHT_EVENTS,
            max_in_flight_bytes: DEFAULT_MAX_IN_FLIGHT_BYTES,
            channel_capacity: DEFAULT_CHANNEL_CAPACITY,
            leader: None,
            restart: BackoffConfig::default(),
        }
    }
}

/// Where rejected events go (the `[quarantine]` section).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuarantineConfig {
    /// A sink of this pipeline that receives rejected events. When unset, they are appended
    /// to a JSON-lines file.
    pub sink: Option<String>,
    /// The JSON-lines file used when no sink is named; default `<data_dir>/quarantine.jsonl`.
    pub path: Option<PathBuf>,
}

/// A component as written in the file: its type, its inputs, and its typed config.
#[derive(Debug)]
pub struct Component<C: ?Sized> {
    /// The `type` key.
    pub type_name: String,
    /// The `inputs` key (always empty for sources).
    pub inputs: Vec<String>,
    /// The component's own settings.
    pub config: Box<C>,
}

/// A whole pipeline, parsed and checked.
#[derive(Debug)]
pub struct Config {
    /// The file it came from.
    pub file: PathBuf,
    /// The `[api]` section, if any.
    pub api: Option<ApiConfig>,
    /// The `[pipeline]` section.
    pub pipeline: PipelineSettings,
    /// The `[quarantine]` section.
    pub quarantine: QuarantineConfig,
    /// `[sources.ID]`.
    pub sources: BTreeMap<String, Component<dyn SourceConfig>>,
    /// `[transforms.ID]`.
    pub transforms: BTreeMap<String, Component<dyn TransformConfig>>,
    /// `[sinks.ID]`.
    pub sinks: BTreeMap<String, Component<dyn SinkConfig>>,
    /// Resource sections (`[coord]`, …), by section name.
    pub resources: BTreeMap<String, Resource>,
    /// The built-in JSON-lines quarantine sink, when no quarantine sink is named.
    pub(crate) quarantine_fallback: Option<Box<dyn SinkConfig>>,
}

/// A resource section as written in the file, and its typed config.
#[derive(Debug)]
pub struct Resource {
    /// The section after interpolation, to tell whether a reloaded config changed it.
    pub raw: toml::Value,
    /// The typed config.
    pub config: Box<dyn ResourceConfig>,
    /// Its place in the build order (the order the registry registered the sections in).
    pub rank: usize,
}

const SECTIONS: &str = "api, pipeline, quarantine, sources, transforms, sinks";

impl Config {
    /// Reads, interpolates from the process environment, parses and checks `path`.
    pub fn load(path: &Path, registry: &Registry) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
            file: path.to_owned(),
            errors: vec![FieldError::new(
                "",
                format!("cannot read the config file: {e}"),
            )],
        })?;
        Config::parse(&text, path, registry, &|name| std::env::var(name).ok())
    }

    /// Parses and checks `text` as if read from `file`, looking variables up with `env`.
    pub fn parse(
        text: &str,
        file: &Path,
        registry: &Registry,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigErrors> {
        let fail = |errors| ConfigErrors {
            file: file.to_owned(),
            errors,
        };
        let mut document: toml::Table = toml::from_str(text).map_err(|e| {
            let message = e.to_string().trim_end().replace('\n', "\n  ");
            fail(vec![FieldError::new(
                "",
                format!("invalid TOML: {message}"),
            )])
        })?;
        let mut errors = Vec::new();
        for (key, value) in document.iter_mut() {
            interpolate_value(value, key, env, &mut errors);
        }
        if !errors.is_empty() {
            return Err(fail(errors));
        }

        let mut config = Config {
            file: file.to_owned(),
            api: None,
            pipeline: PipelineSettings::default(),
            quarantine: QuarantineConfig::default(),
            sources: BTreeMap::new(),
            transforms: BTreeMap::new(),
            sinks: BTreeMap::new(),
            resources: BTreeMap::new(),
            quarantine_fallback: None,
        };
        for (key, value) in document {
            match key.as_str() {
                "api" => config.api = deserialize_at(value, "api", &mut errors),
                "pipeline" => {
                    if let Some(p) = deserialize_at(value, "pipeline", &mut errors) {
                        config.pipeline = p;
                    }
                }
                "quarantine" => {
                    if let Some(q) = deserialize_at(value, "quarantine", &mut errors) {
                        config.quarantine = q;
                    }
                }
                "sources" => {
                    config.sources = components(value, "sources", false, &mut errors, |t, v| {
                        registry.parse_source(t, v)
                    });
                }
                "transforms" => {
                    config.transforms =
                        components(value, "transforms", true, &mut errors, |t, v| {
                            registry.parse_transform(t, v)
                        });
                }
                "sinks" => {
                    config.sinks = components(value, "sinks", true, &mut errors, |t, v| {
                        registry.parse_sink(t, v)
                    });
                }
                _ if registry.has_resource(&key) => {
                    match registry.parse_resource(&key, value.clone()) {
                        Ok(parsed) => {
                            let rank = registry.resource_rank(&key);
                            config.resources.insert(
                                key,
                                Resource {
                                    raw: value,
                                    config: parsed,
                                    rank,
                                },
                            );
                        }
                        Err(e) => errors.extend(e.0.into_iter().map(|e| e.within(&key))),
                    }
                }
                _ => {
                    let mut known = SECTIONS.to_owned();
                    for name in registry.resource_names() {
                        known.push_str(", ");
                        known.push_str(name);
                    }
                    errors.push(FieldError::new(
                        key.clone(),
                        format!("unknown section (expected one of: {known})"),
                    ));
                }
            }
        }
        if errors.is_empty() {
            errors.extend(config.check());
        }
        if config.quarantine.sink.is_none() {
            config.quarantine_fallback = registry.quarantine_file_sink(&config.quarantine_path());
        }
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(fail(errors))
        }
    }

    /// Checks that need every component parsed: the settings, the graph and the quarantine.
    fn check(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if let Some(api) = &self.api {
            for (field, problem) in api.buckets.problems() {
                errors.push(FieldError::new(format!("api.buckets.{field}"), problem));
            }
        }
        let p = &self.pipeline;
        for (field, value) in [
            ("max_in_flight_events", p.max_in_flight_events),
            ("max_in_flight_bytes", p.max_in_flight_bytes),
            ("channel_capacity", p.channel_capacity),
        ] {
            if value == 0 {
                errors.push(FieldError::new(
                    format!("pipeline.{field}"),
                    "must be at least 1",
                ));
            }
        }
        if let Err(rule) = p.restart.check() {
            errors.push(FieldError::new("pipeline.restart", rule));
        }
        if let Some(leader) = &p.leader {
            if let Err(message) = check_election_name(leader) {
                errors.push(FieldError::new("pipeline.leader", message));
            }
            if !self
                .resources
                .values()
                .any(|r| r.config.provides_leadership())
            {
                errors.push(FieldError::new(
                    "pipeline.leader",
                    "running under an election needs a coordination section that provides elections, such as [coord]",
                ));
            }
        }
        if let (Some(_), Some(_)) = (&self.quarantine.sink, &self.quarantine.path) {
            errors.push(FieldError::new(
                "quarantine",
                "set either `sink` or `path`, not both: `path` is only for the built-in JSON-lines file",
            ));
        }
        if let Some(sink) = &self.quarantine.sink
            && !self.sinks.contains_key(sink)
        {
            errors.push(FieldError::new(
                "quarantine.sink",
                format!("no sink has the id {sink:?}"),
            ));
        }
        errors.extend(topology::check(self));
        errors
    }

    /// The quarantine file used when no quarantine sink is named.
    pub fn quarantine_path(&self) -> PathBuf {
        self.quarantine
            .path
            .clone()
            .unwrap_or_else(|| self.pipeline.data_dir.join("quarantine.jsonl"))
    }
}

/// Checks that `name` can name an election on every backend (an etcd key, a ZooKeeper node):
/// letters, digits, `_`, `-` and `.`, not starting with `.`.
pub fn check_election_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "invalid election name {name:?}: use letters, digits, '_', '-' and '.', not starting with '.'"
        ))
    }
}

/// Deserializes a typed value, reporting failures with their full field path.
pub fn deserialize<T: DeserializeOwned>(value: toml::Value) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        FieldError::new(path, e.into_inner().to_string())
    })
}

fn deserialize_at<T: DeserializeOwned>(
    value: toml::Value,
    parent: &str,
    errors: &mut Vec<FieldError>,
) -> Option<T> {
    deserialize(value)
        .map_err(|e| errors.push(e.within(parent)))
        .ok()
}

fn components<C: ?Sized>(
    section: toml::Value,
    name: &str,
    takes_inputs: bool,
    errors: &mut Vec<FieldError>,
    parse: impl Fn(&str, toml::Value) -> Result<Box<C>, FieldErrors>,
) -> BTreeMap<String, Component<C>> {
    let mut parsed = BTreeMap::new();
    let toml::Value::Table(section) = section else {
        errors.push(FieldError::new(
            name,
            format!("must be a table of components, such as [{name}.my_id]"),
        ));
        return parsed;
    };
    for (id, value) in section {
        let path = format!("{name}.{id}");
        if let Err(message) = topology::check_id(&id) {
            errors.push(FieldError::new(&path, message));
            continue;
        }
        let toml::Value::Table(mut table) = value else {
            errors.push(FieldError::new(
                &path,
                "must be a table with at least a `type`",
            ));
            continue;
        };
        let type_name = match table.remove("type") {
            Some(toml::Value::String(t)) => t,
            Some(_) => {
                errors.push(FieldError::new(format!("{path}.type"), "must be a string"));
                continue;
            }
            None => {
                errors.push(FieldError::new(
                    format!("{path}.type"),
                    "missing: every component needs a `type`",
                ));
                continue;
            }
        };
        let inputs = if takes_inputs {
            match table.remove("inputs").map(deserialize::<Vec<String>>) {
                Some(Ok(inputs)) => inputs,
                Some(Err(e)) => {
                    errors.push(e.within(&format!("{path}.inputs")));
                    continue;
                }
                None => Vec::new(),
            }
        } else {
            Vec::new()
        };
        match parse(&type_name, toml::Value::Table(table)) {
            Err(e) => errors.extend(e.0.into_iter().map(|e| e.within(&path))),
            Ok(config) => {
                parsed.insert(
                    id,
                    Component {
                        type_name,
                        inputs,
                        config,
                    },
                );
            }
        }
    }
    parsed
}

fn interpolate_value(
    value: &mut toml::Value,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<FieldError>,
) {
    match value {
        toml::Value::String(s) => match interpolate::interpolate(s, env) {
            Ok(resolved) => *s = resolved,
            Err(e) => errors.push(FieldError::new(path, e.to_string())),
        },
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                interpolate_value(item, &format!("{path}[{i}]"), env, errors);
            }
        }
        toml::Value::Table(table) => {
            for (key, item) in table.iter_mut() {
                interpolate_value(item, &join(path, key), env, errors);
            }
        }
        _ => {}
    }
}

fn join(parent: &str, child: &str) -> String {
    match (parent.is_empty(), child.is_empty()) {
        (true, _) => child.to_owned(),
        (_, true) => parent.to_owned(),
        _ if child.starts_with('[') => format!("{parent}{child}"),
        _ => format!("{parent}.{child}"),
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::parse;

    fn errors(pipeline: &str, body: &str) -> Vec<String> {
        match parse("config", pipeline, body) {
            Ok(_) => Vec::new(),
            Err(errors) => errors.errors.iter().map(ToString::to_string).collect(),
        }
    }

    const COUNT_TO_HOLD: &str = r#"
        [sources.gen]
        type = "count"
        probe = "config"
        count = 1
        [sinks.out]
        type = "hold"
        inputs = ["gen"]
        probe = "config"
    "#;

    #[test]
    fn histogram_buckets_are_checked_and_named_by_their_field() {
        let api = "[api]\naddress = \"127.0.0.1:0\"\nbuckets = { seconds = [1, 0.5] }\n";
        assert_eq!(
            errors("", &format!("{api}{COUNT_TO_HOLD}")),
            ["api.buckets.seconds: must be strictly ascending (1 is followed by 0.5)"]
        );
        let api = "[api]\naddress = \"127.0.0.1:0\"\nbuckets = { events = [1, 10] }\n";
        assert!(errors("", &format!("{api}{COUNT_TO_HOLD}")).is_empty());
    }

    #[test]
    fn a_leader_needs_a_section_that_runs_elections() {
        assert_eq!(
            errors(r#"leader = "relay""#, COUNT_TO_HOLD),
            [
                "pipeline.leader: running under an election needs a coordination section that provides elections, such as [coord]"
            ]
        );
        let with = format!("[elections]\nprobe = \"config\"\n{COUNT_TO_HOLD}");
        assert!(errors(r#"leader = "relay""#, &with).is_empty());
    }

    #[test]
    fn election_names_fit_every_backend() {
        let with = format!("[elections]\nprobe = \"config\"\n{COUNT_TO_HOLD}");
        for bad in ["", "a/b", ".hidden", "two words"] {
            let found = errors(&format!("leader = {bad:?}"), &with);
            assert_eq!(found.len(), 1, "{bad:?}: {found:?}");
            assert!(
                found[0].starts_with("pipeline.leader: invalid election name"),
                "{found:?}"
            );
        }
    }

    #[test]
    fn the_restart_backoff_is_checked() {
        // The helper sets `restart` itself; a second one is a TOML error, so parse by hand.
        let text =
            format!("[pipeline]\nrestart = {{ initial = \"10s\", max = \"1s\" }}\n{COUNT_TO_HOLD}");
        let errors = super::Config::parse(
            &text,
            std::path::Path::new("t.toml"),
            &crate::testing::registry(),
            &|_| None,
        )
        .unwrap_err();
        assert_eq!(
            errors.errors[0].to_string(),
            "pipeline.restart: `max` must not be below `initial`"
        );
    }

    #[test]
    fn unknown_sections_list_the_resources_too() {
        let found = errors("", &format!("[cord]\n{COUNT_TO_HOLD}"));
        assert_eq!(
            found,
            [
                "cord: unknown section (expected one of: api, pipeline, quarantine, sources, transforms, sinks, audit, elections)"
            ]
        );
    }

    #[test]
    fn a_resource_section_is_parsed_and_checked_by_its_type() {
        let found = errors("", &format!("[elections]\nprobe = 3\n{COUNT_TO_HOLD}"));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("elections.probe: invalid type"),
            "{found:?}"
        );
    }
}
