//! The latest quarantined events of a process, as the API's `/quarantined` (and the console)
//! shows them: metadata only (the event's id, the component that rejected it, the reason and
//! when), never a payload, a field or a header, so that what an operator's browser sees is what
//! the process already logs.
//!
//! The log is a bounded ring: recording is a short lock and a copy of three shared texts, and it
//! never holds more than [`CAPACITY`] entries, however many events are quarantined.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::event::Text;

/// How many of the latest quarantined events are kept.
pub const CAPACITY: usize = 50;

/// The most characters of a reason kept (a reason is written for a person; a longer one is cut).
const MAX_REASON_CHARS: usize = 300;

/// The latest quarantined events of this process, newest last. Clones share one log.
#[derive(Clone, Default)]
pub struct Quarantined {
    inner: Arc<Mutex<Log>>,
}

#[derive(Default)]
struct Log {
    recent: VecDeque<Entry>,
    /// Every event recorded since the process started.
    total: u64,
}

struct Entry {
    id: Text,
    component: Text,
    reason: Text,
    time_ms: u128,
}

impl Quarantined {
    /// Records that `component` quarantined event `id` for `reason`, now.
    pub(crate) fn record(&self, component: &Text, id: &Text, reason: &Text) {
        let time_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let reason = match reason.as_str().char_indices().nth(MAX_REASON_CHARS) {
            Some((cut, _)) => Text::from(format!("{}…", &reason.as_str()[..cut])),
            None => reason.clone(),
        };
        let mut log = self.lock();
        if log.recent.len() == CAPACITY {
            log.recent.pop_front();
        }
        log.recent.push_back(Entry {
            id: id.clone(),
            component: component.clone(),
            reason,
            time_ms,
        });
        log.total += 1;
    }

    /// The log as JSON: `total` (events quarantined since the process started) and `recent`
    /// (the latest ones, newest first, each with `id`, `component`, `reason` and `time_ms`, the
    /// Unix time in milliseconds).
    pub fn to_json(&self) -> Value {
        let log = self.lock();
        let recent: Vec<Value> = log
            .recent
            .iter()
            .rev()
            .map(|e| {
                json!({
                    "id": e.id.as_str(),
                    "component": e.component.as_str(),
                    "reason": e.reason.as_str(),
                    "time_ms": e.time_ms,
                })
            })
            .collect();
        json!({ "total": log.total, "recent": recent })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Log> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_latest_newest_first_and_counts_them_all() {
        let log = Quarantined::default();
        let component = Text::from("check");
        for n in 0..CAPACITY + 5 {
            log.record(&component, &Text::from(format!("e{n}")), &Text::from("bad"));
        }
        let json = log.to_json();
        assert_eq!(json["total"], CAPACITY + 5);
        let recent = json["recent"].as_array().unwrap();
        assert_eq!(recent.len(), CAPACITY);
        assert_eq!(recent[0]["id"], format!("e{}", CAPACITY + 4));
        assert_eq!(recent[CAPACITY - 1]["id"], "e5");
        assert_eq!(recent[0]["component"], "check");
        assert_eq!(recent[0]["reason"], "bad");
        assert!(recent[0]["time_ms"].as_u64().unwrap() > 0);
        let keys: Vec<&String> = recent[0].as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            ["component", "id", "reason", "time_ms"],
            "metadata only"
        );
    }

    #[test]
    fn a_long_reason_is_cut() {
        let log = Quarantined::default();
        let long = "é".repeat(MAX_REASON_CHARS + 10);
        log.record(&Text::from("c"), &Text::from("e"), &Text::from(long));
        let reason = log.to_json()["recent"][0]["reason"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(reason.chars().count(), MAX_REASON_CHARS + 1);
        assert!(reason.ends_with('…'));
    }
}
