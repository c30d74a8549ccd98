//! Watches: etcd's own, from the revision after `after`, its events mapped to [`Change`]s.
//! etcd keeps the history until it is compacted, so every revision is delivered exactly once,
//! deletes included; a compacted start says [`WatchEvent::Compacted`]. A watch whose stream
//! is lost (its member died) opens it again from the revision after its last change.

use bytes::Bytes;
use etcd_client::{Event, EventType, WatchOptions, WatchStream};
use futures::stream;

use super::conn::Conn;
use super::keys::Keys;
use super::recipe::{to_i64, to_u64, watch_ended};
use crate::backend::{BoxStream, Change, KeyValue, SessionId, WatchEvent};
use crate::error::CoordError;

/// Losses of the stream in a row, with no change received in between, after which a watch
/// gives up resuming and says so (the caller watches again from its last revision).
const RESUMES: u32 = 3;

/// Where a watch is: following (from a stream, or about to open one), or finished (after a
/// `Compacted` or an error).
struct Following {
    conn: Conn,
    keys: Keys,
    /// The etcd key prefix watched.
    prefix: String,
    /// The revision to go on from: just after the last change delivered.
    next: i64,
    stream: Option<WatchStream>,
    /// Losses of the stream since the last change.
    lost: u32,
    done: bool,
}

/// Watches every key under `prefix` for changes after revision `after`.
pub async fn watch(
    conn: &Conn,
    keys: Keys,
    prefix: &str,
    after: u64,
) -> Result<BoxStream<'static, Result<WatchEvent, CoordError>>, CoordError> {
    let mut state = Following {
        conn: conn.clone(),
        prefix: keys.prefixed(prefix),
        keys,
        next: to_i64(after)?.saturating_add(1),
        stream: None,
        lost: 0,
        done: false,
    };
    state.stream = Some(state.open().await?);
    Ok(Box::pin(stream::unfold(state, |mut state| async move {
        let event = state.next().await?;
        Some((event, state))
    })))
}

impl Following {
    /// Opens the etcd watch from `next`, on whichever member the client picks.
    async fn open(&self) -> Result<WatchStream, CoordError> {
        let (prefix, from) = (&self.prefix, self.next);
        self.conn
            .call("starting a watch", |mut c| async move {
                let options = WatchOptions::new().with_prefix().with_start_revision(from);
                c.watch(prefix.as_str(), Some(options)).await
            })
            .await
    }

    /// The next event, or `None` once the watch has ended.
    async fn next(&mut self) -> Option<Result<WatchEvent, CoordError>> {
        loop {
            if self.done {
                return None;
            }
            let stream = match &mut self.stream {
                Some(stream) => stream,
                None => match self.open().await {
                    Ok(stream) => self.stream.insert(stream),
                    Err(err) => return self.end(Err(err)),
                },
            };
            let response = match stream.message().await {
                Ok(Some(response)) => response,
                Ok(None) => match self.resume(watch_ended(&self.conn.endpoints)) {
                    Some(end) => return Some(end),
                    None => continue,
                },
                Err(err) => match self.resume(self.conn.error(err, "watching")) {
                    Some(end) => return Some(end),
                    None => continue,
                },
            };
            if response.compact_revision() > 0 {
                // Revisions before `compact_revision` are gone.
                let compacted = to_u64(response.compact_revision() - 1);
                return self.end(compacted.map(|compacted| WatchEvent::Compacted { compacted }));
            }
            if response.canceled() {
                let err = cancelled(response.cancel_reason(), &self.conn.endpoints);
                match self.resume(err) {
                    Some(end) => return Some(end),
                    None => continue,
                }
            }
            let changes: Result<Vec<Change>, CoordError> = response
                .events()
                .iter()
                .filter_map(|event| self.change(event).transpose())
                .collect();
            if let Some(last) = response.events().last().and_then(Event::kv) {
                self.next = last.mod_revision().saturating_add(1);
                self.lost = 0;
            }
            match changes {
                Ok(changes) if changes.is_empty() => {}
                Ok(changes) => return Some(Ok(WatchEvent::Changes(changes))),
                Err(err) => return self.end(Err(err)),
            }
        }
    }

    /// After the stream was lost with `err`: `None` to open it again from `next` (another
    /// member may serve it), or the error that ends the watch.
    fn resume(&mut self, err: CoordError) -> Option<Result<WatchEvent, CoordError>> {
        self.stream = None;
        self.lost += 1;
        if matches!(err, CoordError::Unreachable { .. }) && self.lost <= RESUMES {
            tracing::debug!(error = %err, from = self.next, "etcd watch lost; resuming");
            return None;
        }
        self.end(Err(err))
    }

    /// Delivers `last` and ends the watch.
    fn end(
        &mut self,
        last: Result<WatchEvent, CoordError>,
    ) -> Option<Result<WatchEvent, CoordError>> {
        self.stream = None;
        self.done = true;
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
