//! The `coord_kv` sink: events put or delete keys of the coordination service, each
//! acknowledged once the service has committed it.
//!
//! ```toml
//! [pipeline]
//! leader = "flags-writer"
//!
//! [sinks.flags]
//! type = "coord_kv"
//! inputs = ["changes"]
//! key = "flags/{aggregateid}"     # a template over the event's id, key, type, fields, headers
//! operation = "put"               # "put", "delete", or a template rendering to one of them
//! fenced = true
//! ```
//!
//! A put writes the event's payload. With `fenced = true` (which needs `[pipeline] leader`)
//! each write is one atomic step that applies only while this process holds the pipeline's
//! leadership — etcd: a transaction comparing the leader key's create revision; ZooKeeper: a
//! multi with a check on the election node — and is refused locally, without asking the server,
//! once the term's session is past its deadline. A refused write fails its event (never
//! written; the source reads it again under the next leader) and is counted in
//! `sluice_coord_kv_fenced_refusals_total`. An event whose key or operation cannot be rendered
//! is quarantined with the reason.

use serde::Deserialize;
use sluice_pipeline::component::{BuildContext, DynSink, Sink, SinkConfig, SinkContext, Validate};
use sluice_pipeline::error::{Error, ErrorKind};
use sluice_pipeline::event::{Event, Text};
use sluice_pipeline::template::Template;
use sluice_pipeline::{FieldError, FieldErrors};

use crate::backend::{Fenced, Op};
use crate::coord::Coord;
use crate::election::LeaderTerm;

/// The `coord_kv` sink's config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordKvConfig {
    /// The key to write (without the `[coord]` namespace), as a template.
    pub key: Template,
    /// `put` (the default), `delete`, or a template that renders to one of them.
    #[serde(default = "default_operation")]
    pub operation: Template,
    /// Write only while this process leads the pipeline's election, atomically.
    #[serde(default)]
    pub fenced: bool,
}

fn default_operation() -> Template {
    Template::parse("put").unwrap_or_else(|_| unreachable!("a constant template"))
}

impl Validate for CoordKvConfig {
    fn validate(&self) -> Result<(), FieldErrors> {
        match self.operation.constant() {
            Some("put" | "delete") | None => Ok(()),
            Some(other) => Err(FieldError::new(
                "operation",
                format!("{other:?} is not an operation (expected put, delete, or a template)"),
            )
            .into()),
        }
    }
}

impl SinkConfig for CoordKvConfig {
    fn build(&self, cx: &BuildContext) -> Result<Box<dyn DynSink>, Error> {
        let coord = cx
            .resources
            .require::<Coord>("the coord_kv sink", "coord")?;
        if self.fenced && cx.leader.is_none() {
            return Err(Error::new(
                ErrorKind::Config,
                "fenced = true writes only while this process leads the pipeline: set [pipeline] leader",
            ));
        }
        Ok(Box::new(CoordKv {
            config: self.clone(),
            coord: (*coord).clone(),
        }))
    }
}

/// The running `coord_kv` sink.
struct CoordKv {
    config: CoordKvConfig,
    coord: Coord,
}

/// What one event asks for, or why it cannot be written.
fn op_of(config: &CoordKvConfig, event: &Event) -> Result<Op, String> {
    let key = config
        .key
        .render(event)
        .map_err(|missing| format!("key: {missing}"))?;
    if key.is_empty() {
        return Err(format!("key {:?} renders empty", config.key.as_str()));
    }
    match config.operation.render(event).as_deref() {
        Ok("put") => Ok(Op::Put {
            key,
            value: event.payload.clone(),
        }),
        Ok("delete") => Ok(Op::Delete { key }),
        Ok(other) => Err(format!(
            "operation {other:?} is neither put nor delete (from {:?})",
            config.operation.as_str()
        )),
        Err(missing) => Err(format!("operation: {missing}")),
    }
}

impl Sink for CoordKv {
    async fn run(&mut self, cx: &mut SinkContext) -> Result<(), Error> {
        let refusals = crate::metrics::kv_fenced_refusals(cx.id());
        let backend = self.coord.connected().await;
        cx.set_ready(true);
        while let Some(batch) = cx.next().await {
            let mut rejected = Vec::new();
            let mut events = batch.into_iter();
            while let Some(event) = events.next() {
                let op = match op_of(&self.config, &event) {
                    Ok(op) => op,
                    Err(reason) => {
                        rejected.push((event, Text::from(reason)));
                        continue;
                    }
                };
                let written = if self.config.fenced {
                    let term = cx.term();
                    match term
                        .as_ref()
                        .and_then(|t| t.as_any().downcast_ref::<LeaderTerm>())
                    {
                        Some(term) => self.coord.fenced(term.held(), op).await,
                        None => Ok(Fenced::Refused),
                    }
                } else {
                    unfenced(&*backend, op).await
                };
                match written {
                    Ok(Fenced::Applied(_)) => event.ack(),
                    Ok(Fenced::Refused) => {
                        refusals.increment(1);
                        tracing::warn!(event_id = %event.id, "not written: this process no longer leads the pipeline");
                        event.fail();
                    }
                    Err(error) => {
                        // What was not written fails, so the source reads it again.
                        event.fail();
                        events.for_each(Event::fail);
                        cx.reject(rejected).await;
                        return Err(error.into_error("writing to the coordination service"));
                    }
                }
            }
            cx.reject(rejected).await;
        }
        Ok(())
    }
}

/// Writes `op` unconditionally; its revision.
async fn unfenced(backend: &dyn crate::Backend, op: Op) -> Result<Fenced, crate::CoordError> {
    match op {
        Op::Put { key, value } => backend.put(&key, value, None).await.map(Fenced::Applied),
        Op::Delete { key } => backend
            .delete(&key)
            .await
            .map(|revision| Fenced::Applied(revision.unwrap_or_default())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn config(key: &str, operation: &str) -> CoordKvConfig {
        CoordKvConfig {
            key: Template::parse(key).unwrap(),
            operation: Template::parse(operation).unwrap(),
            fenced: false,
        }
    }

    #[test]
    fn events_render_their_key_and_operation_or_say_why_not() {
        let mut event = Event::new("e1", Default::default(), Bytes::from_static(b"v"));
        event.fields.set("flag", Some(Text::from("dark")));
        event.fields.set("op", Some(Text::from("delete")));
        assert_eq!(
            op_of(&config("flags/{flag}", "put"), &event),
            Ok(Op::Put {
                key: "flags/dark".to_owned(),
                value: Bytes::from_static(b"v")
            })
        );
        assert_eq!(
            op_of(&config("flags/{flag}", "{op}"), &event),
            Ok(Op::Delete {
                key: "flags/dark".to_owned()
            })
        );
        assert!(
            op_of(&config("flags/{missing}", "put"), &event)
                .unwrap_err()
                .contains("missing")
        );
        event.fields.set("op", Some(Text::from("upsert")));
        assert!(
            op_of(&config("k", "{op}"), &event)
                .unwrap_err()
                .contains(r#""upsert" is neither put nor delete"#)
        );
        assert!(config("k", "upsert").validate().is_err());
    }
}
