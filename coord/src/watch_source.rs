//! The `coord_watch` source: every change under a key prefix of the coordination service as an
//! event, in revision order, resuming after a restart from the revision it checkpointed.
//!
//! ```toml
//! [coord]
//! backend = "etcd"
//! endpoints = ["127.0.0.1:2379"]
//!
//! [sources.flags]
//! type = "coord_watch"
//! prefix = "flags/"
//! ```
//!
//! Each event is one change: id `KEY@REVISION` of the write (the same on a replay and in a
//! snapshot, so a dedupe or an inbox drops repeats), ordering key the coordination key, type `put` or `delete`, fields `key`,
//! `operation`, `revision` and, for a put, `create_revision` and `version`; the payload is the
//! value (empty for a delete). The position is the revision, and the checkpoint is saved in the
//! pipeline's data directory.
//!
//! The first run (no checkpoint) starts with what the prefix holds: one `put` per key at the
//! revision of the read, with the field `snapshot = "initial"`. When the history after the
//! checkpoint has been compacted away (etcd's compaction; the embedded store's bounded
//! history), the changes in between cannot be replayed: the source says so in its log, counts
//! it in `sluice_coord_watch_recoveries_total`, and reads the prefix again — each key a `put`
//! with `snapshot = "recovered"` and `snapshot_revision`. A key absent from a recovered snapshot
//! was deleted in the gap; intermediate values are lost. ZooKeeper keeps no history: after a
//! restart it replays each key's latest value once (see docs/coordination.md).

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use serde::Deserialize;
use sluice_pipeline::component::{
    BuildContext, DynSource, Source, SourceConfig, SourceContext, Validate,
};
use sluice_pipeline::config::HumanDuration;
use sluice_pipeline::error::Error;
use sluice_pipeline::event::{Event, Position, Text};
use sluice_pipeline::{FieldError, FieldErrors};

use crate::backend::{Change, KeyValue};
use crate::coord::Coord;
use crate::follow::Follow;

/// The `coord_watch` source's config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordWatchConfig {
    /// The key prefix to follow (without the `[coord]` namespace).
    pub prefix: String,
    /// How often the checkpoint is saved while running (always on shutdown); default 1 s.
    #[serde(default = "default_checkpoint_interval")]
    pub checkpoint_interval: HumanDuration,
}

fn default_checkpoint_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(1))
}

impl Validate for CoordWatchConfig {
    fn validate(&self) -> Result<(), FieldErrors> {
        let mut problems = FieldErrors::new();
        if self.prefix.is_empty() {
            problems.push(FieldError::new(
                "prefix",
                "must not be empty (following every key of the service is not supported)",
            ));
        }
        if self.checkpoint_interval.get().is_zero() {
            problems.push(FieldError::new("checkpoint_interval", "must be above 0"));
        }
        problems.into_result()
    }
}

impl SourceConfig for CoordWatchConfig {
    fn build(&self, cx: &BuildContext) -> Result<Box<dyn DynSource>, Error> {
        let coord = cx
            .resources
            .require::<Coord>("the coord_watch source", "coord")?;
        Ok(Box::new(CoordWatch {
            config: self.clone(),
            coord: (*coord).clone(),
        }))
    }
}

/// The running `coord_watch` source.
struct CoordWatch {
    config: CoordWatchConfig,
    coord: Coord,
}

impl Source for CoordWatch {
    async fn run(&mut self, cx: &mut SourceContext) -> Result<(), Error> {
        let store = cx.checkpoint_store();
        let restored = store.restore().await?;
        let prefix = self.config.prefix.as_str();
        let mut follow = match restored {
            Some(position) => {
                cx.resume_from(position)?;
                tracing::info!(revision = position.0, %prefix, "resuming after the saved revision");
                self.coord.follow_from(prefix, position.0)
            }
            None => self.coord.follow(prefix),
        };
        let recoveries = crate::metrics::watch_recoveries(cx.id());
        let shutdown = cx.shutdown().clone();
        let mut save = tokio::time::interval(self.config.checkpoint_interval.get());
        save.reset();
        let outcome = loop {
            let item = tokio::select! {
                () = shutdown.requested() => break Ok(()),
                _ = save.tick() => {
                    store.record(cx.checkpoint()).await?;
                    continue;
                }
                item = follow.next() => item,
            };
            cx.set_ready(true);
            let events = match item {
                Some(Ok(Follow::Snapshot {
                    kvs,
                    revision,
                    recovered,
                })) => {
                    if recovered {
                        recoveries.increment(1);
                        tracing::warn!(%prefix, revision, "the changes since the checkpoint were compacted away: emitting the prefix as read at this revision instead");
                    }
                    kvs.iter()
                        .map(|kv| snapshot_event(kv, revision, recovered))
                        .collect::<Vec<_>>()
                }
                Some(Ok(Follow::Changes(changes))) => changes.iter().map(change_event).collect(),
                Some(Err(error)) => {
                    break Err(error.into_error(format!("following {prefix:?}")));
                }
                None => break Ok(()),
            };
            cx.emit(events).await?;
        };
        cx.set_ready(false);
        let checkpoint = cx.drain().await;
        store.record(checkpoint).await?;
        outcome
    }
}

/// A change as an event.
fn change_event(change: &Change) -> Event {
    match change {
        Change::Put(kv) => put_event(kv, kv.mod_revision),
        Change::Delete { key, mod_revision } => {
            let mut event = base(key, *mod_revision, *mod_revision, "delete", Bytes::new());
            event.fields.set("operation", Some(Text::from("delete")));
            event
        }
    }
}

/// A key of a snapshot read at `revision`, as a `put` event marked with the snapshot's kind.
fn snapshot_event(kv: &KeyValue, revision: u64, recovered: bool) -> Event {
    let mut event = put_event(kv, revision);
    let kind = if recovered { "recovered" } else { "initial" };
    event.fields.set("snapshot", Some(Text::from(kind)));
    event
        .fields
        .set("snapshot_revision", Some(Text::from(revision.to_string())));
    event
}

/// A put, at `position` (its revision, or the revision of the snapshot it was read in).
fn put_event(kv: &KeyValue, position: u64) -> Event {
    let mut event = base(&kv.key, kv.mod_revision, position, "put", kv.value.clone());
    event.fields.set("operation", Some(Text::from("put")));
    event.fields.set(
        "create_revision",
        Some(Text::from(kv.create_revision.to_string())),
    );
    event
        .fields
        .set("version", Some(Text::from(kv.version.to_string())));
    event
}

/// An event for a write to `key` at `revision`, at `position`.
fn base(key: &str, revision: u64, position: u64, kind: &str, value: Bytes) -> Event {
    let mut event = Event::new(format!("{key}@{revision}"), Position(position), value);
    event.key = Some(Text::from(key));
    event.event_type = Text::from(kind);
    event.fields.set("key", Some(Text::from(key)));
    event
        .fields
        .set("revision", Some(Text::from(revision.to_string())));
    event
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_become_events_named_by_key_and_revision() {
        let kv = KeyValue {
            key: "flags/dark".to_owned(),
            value: Bytes::from_static(b"on"),
            create_revision: 3,
            mod_revision: 9,
            version: 4,
            session: None,
        };
        let put = change_event(&Change::Put(kv.clone()));
        assert_eq!(
            (put.id.as_str(), put.event_type.as_str(), put.meta.position),
            ("flags/dark@9", "put", Position(9))
        );
        assert_eq!(put.key.as_ref().map(Text::as_str), Some("flags/dark"));
        assert_eq!(&put.payload[..], b"on");
        assert_eq!(put.fields.text("version").map(Text::as_str), Some("4"));
        let delete = change_event(&Change::Delete {
            key: "flags/dark".to_owned(),
            mod_revision: 10,
        });
        assert_eq!(
            (delete.id.as_str(), delete.payload.len()),
            ("flags/dark@10", 0)
        );
        let recovered = snapshot_event(&kv, 12, true);
        assert_eq!(
            (
                recovered.id.as_str(),
                recovered.meta.position,
                recovered.fields.text("snapshot").map(Text::as_str)
            ),
            ("flags/dark@9", Position(12), Some("recovered"))
        );
    }
}
