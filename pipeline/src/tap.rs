//! Taps: the events leaving a component, live, for people watching (`sluice tap`, the API's
//! `/tap/ID`).
//!
//! A tap never slows the pipeline: while nobody watches, a component's output pays one atomic
//! load per batch; while someone does, each event is copied (its payload shared, not copied)
//! into a bounded broadcast channel, and a watcher that reads too slowly misses events — it is
//! told how many — rather than holding anything back. Only sources and transforms have outputs;
//! a sink is watched through the components it reads from.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::UNIX_EPOCH;

use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

use crate::event::{Event, Fields, Text};

/// Events a watcher may fall behind by before it misses some.
const CAPACITY: usize = 1024;

/// An event as a tap shows it.
#[derive(Debug, Clone)]
pub struct Tapped {
    component: Arc<str>,
    id: Text,
    key: Option<Text>,
    event_type: Text,
    fields: Fields,
    headers: Fields,
    position: u64,
    commit_time_ms: Option<u128>,
    payload: bytes::Bytes,
}

impl Tapped {
    fn of(component: &Arc<str>, event: &Event) -> Tapped {
        Tapped {
            component: Arc::clone(component),
            id: event.id.clone(),
            key: event.key.clone(),
            event_type: event.event_type.clone(),
            fields: event.fields.clone(),
            headers: event.headers.clone(),
            position: event.meta.position.0,
            commit_time_ms: event
                .meta
                .commit_time
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_millis()),
            payload: event.payload.clone(),
        }
    }

    /// The event as one JSON object: its metadata, and its payload when `payload` is set (as
    /// JSON when it parses as JSON, else as text, else as its size).
    pub fn to_json(&self, payload: bool) -> Value {
        let fields = |f: &Fields| {
            Value::Object(
                f.iter()
                    .map(|(k, v)| (k.as_str().to_owned(), json!(v.map(Text::as_str))))
                    .collect::<Map<_, _>>(),
            )
        };
        let mut record = json!({
            "component": &*self.component,
            "id": self.id.as_str(),
            "key": self.key.as_ref().map(Text::as_str),
            "type": self.event_type.as_str(),
            "position": self.position,
            "commit_time_ms": self.commit_time_ms,
            "fields": fields(&self.fields),
            "headers": fields(&self.headers),
            "payload_bytes": self.payload.len(),
        });
        if payload {
            record["payload"] =
                serde_json::from_slice(&self.payload).unwrap_or_else(
                    |_| match std::str::from_utf8(&self.payload) {
                        Ok(text) => Value::String(text.to_owned()),
                        Err(_) => Value::Null,
                    },
                );
        }
        record
    }
}

/// One component's output, as taps see it.
#[derive(Clone)]
pub(crate) struct TapPoint {
    component: Arc<str>,
    sender: broadcast::Sender<Arc<Tapped>>,
}

impl TapPoint {
    /// Copies `batch` to the watchers, if there are any.
    pub(crate) fn offer(&self, batch: &[Event]) {
        if self.sender.receiver_count() == 0 {
            return;
        }
        for event in batch {
            // No watcher left since the check: nothing to do.
            let _ = self
                .sender
                .send(Arc::new(Tapped::of(&self.component, event)));
        }
    }
}

/// What can be tapped in this process: each component's output, by id.
#[derive(Clone, Default)]
pub struct Taps {
    points: Arc<Mutex<HashMap<Arc<str>, Point>>>,
}

enum Point {
    /// Weak, so that watchers' streams end when the component's run does.
    Output(broadcast::WeakSender<Arc<Tapped>>),
    /// A sink: watched through what it reads.
    Sink(Vec<String>),
}

/// Why a component cannot be tapped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TapError {
    /// No running component has that id.
    #[error("no running component is named {0:?}")]
    Unknown(String),
    /// A sink has no output.
    #[error("{sink:?} is a sink, which has no output: tap what it reads ({})", inputs.join(", "))]
    Sink {
        /// The sink.
        sink: String,
        /// The components it reads.
        inputs: Vec<String>,
    },
}

impl Taps {
    /// The tap point of a source or transform's output, registered under its id (replacing
    /// the one of an earlier run, whose watchers then see their stream end).
    pub(crate) fn output(&self, component: &str) -> TapPoint {
        let (sender, _) = broadcast::channel(CAPACITY);
        self.lock()
            .insert(Arc::from(component), Point::Output(sender.downgrade()));
        TapPoint {
            component: Arc::from(component),
            sender,
        }
    }

    /// Registers a sink and the components it reads, so that a tap of it can say where to look.
    pub(crate) fn sink(&self, component: &str, inputs: Vec<String>) {
        self.lock()
            .insert(Arc::from(component), Point::Sink(inputs));
    }

    /// Watches the output of `component`.
    pub fn watch(&self, component: &str) -> Result<broadcast::Receiver<Arc<Tapped>>, TapError> {
        match self.lock().get(component) {
            Some(Point::Output(sender)) => sender
                .upgrade()
                .map(|sender| sender.subscribe())
                .ok_or_else(|| TapError::Unknown(component.to_owned())),
            Some(Point::Sink(inputs)) => Err(TapError::Sink {
                sink: component.to_owned(),
                inputs: inputs.clone(),
            }),
            None => Err(TapError::Unknown(component.to_owned())),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Point>> {
        self.points.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Position;

    fn event(n: u64, payload: &'static str) -> Event {
        let mut event = Event::new(format!("e{n}"), Position(n), bytes::Bytes::from(payload));
        event.key = Some(Text::from("order-1"));
        event.headers.set("source", Some(Text::from("test")));
        event
    }

    #[tokio::test]
    async fn watchers_see_what_leaves_a_component_and_a_slow_one_is_told_what_it_missed() {
        let taps = Taps::default();
        let point = taps.output("outbox");
        point.offer(&[event(0, "{}")]); // nobody watches: nothing kept
        let mut watcher = taps.watch("outbox").unwrap();
        let batch = vec![event(1, r#"{"total": 5}"#), event(2, "plain text")];
        point.offer(&batch);
        let first = watcher.recv().await.unwrap();
        assert_eq!(
            first.to_json(false),
            json!({
                "component": "outbox", "id": "e1", "key": "order-1", "type": "",
                "position": 1, "commit_time_ms": null, "fields": {},
                "headers": {"source": "test"}, "payload_bytes": 12
            })
        );
        assert_eq!(first.to_json(true)["payload"], json!({"total": 5}));
        assert_eq!(
            watcher.recv().await.unwrap().to_json(true)["payload"],
            "plain text"
        );
        let flood: Vec<Event> = (0..CAPACITY as u64 + 10).map(|n| event(n, "")).collect();
        point.offer(&flood);
        assert!(matches!(
            watcher.recv().await,
            Err(broadcast::error::RecvError::Lagged(10))
        ));
    }

    #[test]
    fn a_sink_or_an_unknown_component_is_refused_with_where_to_look() {
        let taps = Taps::default();
        taps.sink("broker", vec!["router".to_owned()]);
        assert_eq!(
            taps.watch("broker").unwrap_err().to_string(),
            r#""broker" is a sink, which has no output: tap what it reads (router)"#
        );
        assert_eq!(
            taps.watch("nope").unwrap_err(),
            TapError::Unknown("nope".to_owned())
        );
        let ended = taps.output("finished");
        let mut watcher = taps.watch("finished").unwrap();
        drop(ended);
        assert!(
            taps.watch("finished").is_err(),
            "a component that ended is gone"
        );
        assert!(
            watcher
                .try_recv()
                .is_err_and(|e| e == broadcast::error::TryRecvError::Closed)
        );
    }
}
