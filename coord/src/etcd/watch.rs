//! Watches: etcd's own, from the revision after `after`, its events mapped to [`Change`]s.
//! etcd keeps the history until it is compacted, so every revision is delivered exactly once,
//! deletes included; a compacted start says [`WatchEvent::Compacted`].

use bytes::Bytes;
use etcd_client::{Client, Event, EventType, WatchOptions, WatchStream};
use futures::stream;

use super::errors::to_coord;
use super::keys::Keys;
use super::recipe::{to_i64, to_u64, watch_ended};
use crate::backend::{BoxStream, Change, KeyValue, SessionId, WatchEvent};
use crate::error::CoordError;

/// Where a watch is: following, or finished (after a `Compacted` or an error).
struct Following {
    stream: Option<WatchStream>,
    keys: Keys,
    endpoints: String,
}

/// Watches every key under `prefix` for changes after revision `after`.
pub async fn watch(
    client: &Client,
    keys: Keys,
    endpoints: String,
    prefix: &str,
    after: u64,
) -> Result<BoxStream<'static, Result<WatchEvent, CoordError>>, CoordError> {
    let start = to_i64(after)?.saturating_add(1);
    let stream = client
        .clone()
        .watch(
            keys.prefixed(prefix),
            Some(WatchOptions::new().with_prefix().with_start_revision(start)),
        )
        .await
        .map_err(|e| to_coord(e, &endpoints, "starting a watch"))?;
    let state = Following {
        stream: Some(stream),
        keys,
        endpoints,
    };
    Ok(Box::pin(stream::unfold(state, |mut state| async move {
        let event = state.next().await?;
        Some((event, state))
    })))
}

impl Following {
    /// The next event, or `None` once the watch has ended.
    async fn next(&mut self) -> Option<Result<WatchEvent, CoordError>> {
        loop {
            let stream = self.stream.as_mut()?;
            let response = match stream.message().await {
                Ok(Some(response)) => response,
                Ok(None) => return self.end(Err(watch_ended(&self.endpoints))),
                Err(err) => return self.end(Err(to_coord(err, &self.endpoints, "watching"))),
            };
            if response.compact_revision() > 0 {
                // Revisions before `compact_revision` are gone.
                let compacted = to_u64(response.compact_revision() - 1);
                return self.end(compacted.map(|compacted| WatchEvent::Compacted { compacted }));
            }
            if response.canceled() {
                return self.end(Err(cancelled(response.cancel_reason(), &self.endpoints)));
            }
            let changes: Result<Vec<Change>, CoordError> = response
                .events()
                .iter()
                .filter_map(|event| self.change(event).transpose())
                .collect();
            match changes {
                Ok(changes) if changes.is_empty() => {}
                Ok(changes) => return Some(Ok(WatchEvent::Changes(changes))),
                Err(err) => return self.end(Err(err)),
            }
        }
    }

    /// Delivers `last` and ends the watch.
    fn end(
        &mut self,
        last: Result<WatchEvent, CoordError>,
    ) -> Option<Result<WatchEvent, CoordError>> {
        self.stream = None;
        Some(last)
    }

    /// The change an event says, or `None` for a key outside the namespace.
    fn change(&self, event: &Event) -> Result<Option<Change>, CoordError> {
        let Some(kv) = event.kv() else {
            return Err(CoordError::Protocol(
                "an etcd watch event without a key".to_owned(),
            ));
        };
        Ok(match event.event_type() {
            EventType::Put => key_value(&self.keys, kv)?.map(Change::Put),
            EventType::Delete => match self.keys.unprefixed(kv.key()) {
                Some(key) => Some(Change::Delete {
                    key,
                    mod_revision: to_u64(kv.mod_revision())?,
                }),
                None => None,
            },
        })
    }
}

/// Why etcd ended a watch that was not compacted: no permission on the prefix is final;
/// anything else (the member lost its Raft leader, above all) is worth watching again.
fn cancelled(reason: &str, endpoints: &str) -> CoordError {
    let source = format!("etcd cancelled the watch: {reason}").into();
    if reason.contains("permission denied") {
        CoordError::Refused {
            doing: "watching".to_owned(),
            source,
        }
    } else {
        CoordError::Unreachable {
            endpoints: endpoints.to_owned(),
            source,
        }
    }
}

/// The trait's view of an etcd key-value, or `None` for a key outside the namespace.
pub fn key_value(keys: &Keys, kv: &etcd_client::KeyValue) -> Result<Option<KeyValue>, CoordError> {
    let Some(key) = keys.unprefixed(kv.key()) else {
        return Ok(None);
    };
    Ok(Some(KeyValue {
        key,
        value: Bytes::copy_from_slice(kv.value()),
        create_revision: to_u64(kv.create_revision())?,
        mod_revision: to_u64(kv.mod_revision())?,
        version: to_u64(kv.version())?,
        session: (kv.lease() != 0).then_some(SessionId(kv.lease())),
    }))
}
