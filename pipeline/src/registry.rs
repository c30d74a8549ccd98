//! The table from a component's `type` name to the code that parses its config.
//!
//! The engine knows no component by name: the binary fills one [`Registry`] with every
//! component it ships, and adding a connector is one line there.

use std::collections::BTreeMap;
use std::path::Path;

use serde::de::DeserializeOwned;

use crate::component::{SinkConfig, SourceConfig, TransformConfig, Validate};
use crate::config::{FieldError, FieldErrors, deserialize};
use crate::resource::ResourceConfig;

type Parse<C> = fn(toml::Value) -> Result<Box<C>, FieldErrors>;

/// Builds the sink that receives rejected events when the config names no quarantine sink.
pub type QuarantineFileSink = fn(&Path) -> Box<dyn SinkConfig>;

/// Known component types, by kind.
pub struct Registry {
    sources: BTreeMap<&'static str, Parse<dyn SourceConfig>>,
    transforms: BTreeMap<&'static str, Parse<dyn TransformConfig>>,
    sinks: BTreeMap<&'static str, Parse<dyn SinkConfig>>,
    resources: BTreeMap<&'static str, Parse<dyn ResourceConfig>>,
    /// Resource sections in the order they were registered: the order they are built in.
    resource_order: Vec<&'static str>,
    quarantine_file: Option<QuarantineFileSink>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    /// A registry that knows the engine's own transforms (`filter`, `dedupe`).
    pub fn new() -> Self {
        let mut registry = Registry {
            sources: BTreeMap::new(),
            transforms: BTreeMap::new(),
            sinks: BTreeMap::new(),
            resources: BTreeMap::new(),
            resource_order: Vec::new(),
            quarantine_file: None,
        };
        crate::transforms::register(&mut registry);
        registry
    }

    /// Registers a source type whose config deserializes into `C`.
    pub fn source<C: SourceConfig + DeserializeOwned>(&mut self, name: &'static str) -> &mut Self {
        self.sources
            .insert(name, |v| Ok(Box::new(checked::<C>(v)?)));
        self
    }

    /// Registers a transform type whose config deserializes into `C`.
    pub fn transform<C: TransformConfig + DeserializeOwned>(
        &mut self,
        name: &'static str,
    ) -> &mut Self {
        self.transforms
            .insert(name, |v| Ok(Box::new(checked::<C>(v)?)));
        self
    }

    /// Registers a sink type whose config deserializes into `C`.
    pub fn sink<C: SinkConfig + DeserializeOwned>(&mut self, name: &'static str) -> &mut Self {
        self.sinks.insert(name, |v| Ok(Box::new(checked::<C>(v)?)));
        self
    }

    /// Registers a resource: the top-level section `name` (such as `coord`), whose config
    /// deserializes into `C`. Resources are built in the order they were registered, each
    /// seeing what the earlier ones provide: register a resource after those it uses.
    pub fn resource<C: ResourceConfig + DeserializeOwned>(
        &mut self,
        name: &'static str,
    ) -> &mut Self {
        self.resources
            .insert(name, |v| Ok(Box::new(checked::<C>(v)?)));
        if !self.resource_order.contains(&name) {
            self.resource_order.push(name);
        }
        self
    }

    /// Where resource section `name` comes in the build order.
    pub(crate) fn resource_rank(&self, name: &str) -> usize {
        self.resource_order
            .iter()
            .position(|n| *n == name)
            .unwrap_or(usize::MAX)
    }

    pub(crate) fn has_resource(&self, name: &str) -> bool {
        self.resources.contains_key(name)
    }

    pub(crate) fn resource_names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.resources.keys().copied()
    }

    pub(crate) fn parse_resource(
        &self,
        name: &str,
        value: toml::Value,
    ) -> Result<Box<dyn ResourceConfig>, FieldErrors> {
        lookup(&self.resources, "resource", name)?(value)
    }

    /// Sets the sink used for quarantined events when the config names none.
    pub fn quarantine_file(&mut self, build: QuarantineFileSink) -> &mut Self {
        self.quarantine_file = Some(build);
        self
    }

    pub(crate) fn quarantine_file_sink(&self, path: &Path) -> Option<Box<dyn SinkConfig>> {
        self.quarantine_file.map(|build| build(path))
    }

    pub(crate) fn parse_source(
        &self,
        type_name: &str,
        value: toml::Value,
    ) -> Result<Box<dyn SourceConfig>, FieldErrors> {
        lookup(&self.sources, "source", type_name)?(value)
    }

    pub(crate) fn parse_transform(
        &self,
        type_name: &str,
        value: toml::Value,
    ) -> Result<Box<dyn TransformConfig>, FieldErrors> {
        lookup(&self.transforms, "transform", type_name)?(value)
    }

    pub(crate) fn parse_sink(
        &self,
        type_name: &str,
        value: toml::Value,
    ) -> Result<Box<dyn SinkConfig>, FieldErrors> {
        lookup(&self.sinks, "sink", type_name)?(value)
    }
}

fn checked<C: DeserializeOwned + Validate>(value: toml::Value) -> Result<C, FieldErrors> {
    let config: C = deserialize(value)?;
    config.validate()?;
    Ok(config)
}

fn lookup<P: Copy>(
    table: &BTreeMap<&'static str, P>,
    kind: &str,
    type_name: &str,
) -> Result<P, FieldError> {
    table.get(type_name).copied().ok_or_else(|| {
        let known: Vec<_> = table.keys().copied().collect();
        FieldError::new(
            "type",
            format!(
                "unknown {kind} type {type_name:?} (known {kind} types: {})",
                known.join(", ")
            ),
        )
    })
}
