//! `id`: sets the event id, a header or a field from a generator of the `[ids]` section.
//!
//! ```toml
//! [transforms.number]
//! type = "id"
//! inputs = ["orders"]
//! generator = "orders"          # a name under [ids.generators]
//! target = "headers.order-no"   # "id" (the default), "headers.NAME" or "fields.NAME"
//! overwrite = false             # keep a value already there (the default)
//! ```
//!
//! One batch draws its ids in one call, in event order. By default an event that already has
//! a value there keeps it: an event read again after a failure (at-least-once) keeps the id it
//! was first given only if nothing replaces it, and its id is what downstream deduplication
//! keys on. With `overwrite = true` every pass gives a new id, so a redelivered event arrives
//! as a different one.

use std::sync::Arc;

use serde::Deserialize;
use sluice_pipeline::component::DynTransform;
use sluice_pipeline::{
    Batch, BuildContext, Error, Event, FieldError, FieldErrors, Output, Transform, TransformConfig,
    Validate,
};

use crate::resource::{Ids, NamedGenerator, engine_error};

/// Default for [`IdTransformConfig::target`].
pub const DEFAULT_TARGET: &str = "id";

/// Config of the `id` transform.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdTransformConfig {
    /// The generator, by its name under `[ids.generators]`.
    pub generator: String,
    /// Where the id goes: `id` (the event id), `headers.NAME` or `fields.NAME`.
    #[serde(default = "default_target")]
    pub target: String,
    /// Replace a value already there; by default an event that has one keeps it (an empty
    /// event id counts as none).
    #[serde(default)]
    pub overwrite: bool,
}

fn default_target() -> String {
    DEFAULT_TARGET.to_owned()
}

/// Where the transform writes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Id,
    Header(String),
    Field(String),
}

impl Target {
    fn parse(text: &str) -> Result<Target, FieldError> {
        let named = |kind: &str, name: &str, make: fn(String) -> Target| {
            if name.is_empty() {
                Err(FieldError::new(
                    "target",
                    format!("{text:?} names no {kind}"),
                ))
            } else {
                Ok(make(name.to_owned()))
            }
        };
        match text {
            "id" => Ok(Target::Id),
            _ => match text.split_once('.') {
                Some(("headers", name)) => named("header", name, Target::Header),
                Some(("fields", name)) => named("field", name, Target::Field),
                _ => Err(FieldError::new(
                    "target",
                    format!(
                        "{text:?} is not a target: write \"id\", \"headers.NAME\" or \"fields.NAME\""
                    ),
                )),
            },
        }
    }

    fn is_set(&self, event: &Event) -> bool {
        match self {
            Target::Id => !event.id.is_empty(),
            Target::Header(name) => event.headers.text(name).is_some(),
            Target::Field(name) => event.fields.text(name).is_some(),
        }
    }

    fn set(&self, event: &mut Event, id: String) {
        match self {
            Target::Id => event.id = id.into(),
            Target::Header(name) => event.headers.set(name.as_str(), Some(id.into())),
            Target::Field(name) => event.fields.set(name.as_str(), Some(id.into())),
        }
    }
}

impl Validate for IdTransformConfig {
    fn validate(&self) -> Result<(), FieldErrors> {
        Target::parse(&self.target)
            .map(drop)
            .map_err(FieldErrors::from)
    }
}

impl TransformConfig for IdTransformConfig {
    fn build(&self, cx: &BuildContext) -> Result<Box<dyn DynTransform>, Error> {
        let needed_by = format!("transforms.{}", cx.id);
        let ids = cx.resources.require::<Ids>(&needed_by, "ids")?;
        let target = Target::parse(&self.target).map_err(|e| {
            Error::new(
                sluice_pipeline::ErrorKind::Config,
                format!("{needed_by}.{e}"),
            )
        })?;
        Ok(Box::new(IdTransform {
            generator: ids.require(&self.generator, &needed_by)?,
            target,
            overwrite: self.overwrite,
        }))
    }
}

/// The running `id` transform.
#[derive(Debug)]
pub struct IdTransform {
    generator: Arc<NamedGenerator>,
    target: Target,
    overwrite: bool,
}

impl Transform for IdTransform {
    async fn process(&mut self, mut events: Batch, out: &mut Output) -> Result<(), Error> {
        let wanted: Vec<usize> = events
            .iter()
            .enumerate()
            .filter(|(_, e)| self.overwrite || !self.target.is_set(e))
            .map(|(i, _)| i)
            .collect();
        if !wanted.is_empty() {
            let ids = self
                .generator
                .generate(wanted.len())
                .await
                .map_err(|e| engine_error(self.generator.name(), e))?;
            for (i, id) in wanted.into_iter().zip(ids) {
                self.target.set(&mut events[i], id.to_string());
            }
        }
        for event in events {
            out.push(event);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::IdsConfig;
    use bytes::Bytes;
    use sluice_pipeline::Position;

    fn transform(target: &str, overwrite: bool) -> IdTransform {
        let value: toml::Value = toml::from_str(
            "[generators.orders]\ntype = \"snowflake\"\ndatacenter = 1\nworker = 2\n",
        )
        .unwrap();
        let config: IdsConfig = sluice_pipeline::config::deserialize(value).unwrap();
        let ids = Ids::build(&config, &Default::default()).unwrap();
        IdTransform {
            generator: ids.require("orders", "test").unwrap(),
            target: Target::parse(target).unwrap(),
            overwrite,
        }
    }

    async fn run(t: &mut IdTransform, ids: &[&str]) -> Vec<Event> {
        let events = ids
            .iter()
            .map(|id| Event::new(*id, Position(1), Bytes::new()))
            .collect();
        let mut out = Output::default();
        t.process(events, &mut out).await.unwrap();
        out.split().0
    }

    #[tokio::test]
    async fn only_events_without_a_value_get_one_unless_overwrite() {
        let mut keep = transform("id", false);
        let events = run(&mut keep, &["", "kept", ""]).await;
        let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids[1], "kept");
        let (a, b): (u64, u64) = (ids[0].parse().unwrap(), ids[2].parse().unwrap());
        assert!(a < b, "in event order");

        let mut replace = transform("fields.n", true);
        let mut events = run(&mut replace, &["x"]).await;
        let first = events[0].fields.text("n").unwrap().to_string();
        let mut out = Output::default();
        replace
            .process(std::mem::take(&mut events), &mut out)
            .await
            .unwrap();
        let again = out.split().0;
        assert_ne!(again[0].fields.text("n").unwrap().as_str(), first);
        assert_eq!(again[0].id.as_str(), "x");
    }

    #[test]
    fn targets_are_parsed_with_the_rule() {
        assert_eq!(Target::parse("id"), Ok(Target::Id));
        assert_eq!(
            Target::parse("headers.order-no"),
            Ok(Target::Header("order-no".into()))
        );
        assert_eq!(Target::parse("fields.n"), Ok(Target::Field("n".into())));
        assert!(
            Target::parse("header.x")
                .unwrap_err()
                .message
                .contains("write \"id\", \"headers.NAME\" or \"fields.NAME\"")
        );
        assert!(Target::parse("headers.").is_err());
    }
}
