//! `dedupe`: drops an event whose id was already seen within a window of the last N ids and,
//! optionally, a duration. Replays after a reconnect or a restart re-send events with the same
//! ids; this stage keeps them from reaching the sink twice while the window remembers them.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use serde::Deserialize;

use crate::component::{BuildContext, DynTransform, Output, Transform, TransformConfig, Validate};
use crate::config::{FieldError, FieldErrors, HumanDuration};
use crate::error::Error;
use crate::event::Batch;

/// Default for [`DedupeConfig::max_ids`].
pub const DEFAULT_MAX_IDS: usize = 100_000;

/// Config of the `dedupe` transform.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DedupeConfig {
    /// How many of the most recent distinct ids to remember. Bounds memory.
    #[serde(default = "default_max_ids")]
    pub max_ids: usize,
    /// Forget an id this long after it was first seen, such as `"10m"`. Unset: ids are
    /// forgotten only when `max_ids` newer ones push them out.
    pub ttl: Option<HumanDuration>,
}

fn default_max_ids() -> usize {
    DEFAULT_MAX_IDS
}

impl Validate for DedupeConfig {
    fn validate(&self) -> Result<(), FieldErrors> {
        if self.max_ids == 0 {
            return Err(FieldError::new("max_ids", "must be at least 1").into());
        }
        if self.ttl.is_some_and(|t| t.get().is_zero()) {
            return Err(FieldError::new("ttl", "must be longer than zero").into());
        }
        Ok(())
    }
}

impl TransformConfig for DedupeConfig {
    fn build(&self, _cx: &BuildContext) -> Result<Box<dyn DynTransform>, Error> {
        Ok(Box::new(Dedupe::new(self)))
    }
}

/// The running `dedupe` transform.
#[derive(Debug)]
pub struct Dedupe {
    seen: HashSet<Arc<str>>,
    /// Ids in the order first seen, with when; the front is evicted first.
    order: VecDeque<(Arc<str>, Instant)>,
    max_ids: usize,
    ttl: Option<std::time::Duration>,
}

impl Dedupe {
    /// A transform with an empty window.
    pub fn new(config: &DedupeConfig) -> Self {
        Dedupe {
            seen: HashSet::with_capacity(config.max_ids.min(1 << 16)),
            order: VecDeque::new(),
            max_ids: config.max_ids,
            ttl: config.ttl.map(HumanDuration::get),
        }
    }

    /// Whether `id` is new (and now remembered) rather than a repeat within the window.
    fn first_sighting(&mut self, id: &str, now: Instant) -> bool {
        if let Some(ttl) = self.ttl {
            while let Some((old, at)) = self.order.front() {
                if now.duration_since(*at) < ttl {
                    break;
                }
                self.seen.remove(old);
                self.order.pop_front();
            }
        }
        if self.seen.contains(id) {
            return false;
        }
        let id: Arc<str> = Arc::from(id);
        self.seen.insert(Arc::clone(&id));
        self.order.push_back((id, now));
        if self.order.len() > self.max_ids
            && let Some((old, _)) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        true
    }
}

impl Transform for Dedupe {
    fn process(
        &mut self,
        events: Batch,
        out: &mut Output,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        let now = Instant::now();
        for event in events {
            if self.first_sighting(&event.id, now) {
                out.push(event);
            } else {
                out.drop_event(event);
            }
        }
        std::future::ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, Position};
    use bytes::Bytes;
    use std::time::Duration;

    fn dedupe(max_ids: usize, ttl: Option<Duration>) -> Dedupe {
        Dedupe::new(&DedupeConfig {
            max_ids,
            ttl: ttl.map(HumanDuration),
        })
    }

    #[test]
    fn drops_repeats_within_the_id_window() {
        let mut d = dedupe(2, None);
        let t = Instant::now();
        assert!(d.first_sighting("a", t));
        assert!(!d.first_sighting("a", t));
        assert!(d.first_sighting("b", t));
        assert!(d.first_sighting("c", t)); // pushes "a" out
        assert!(d.first_sighting("a", t));
        assert!(!d.first_sighting("c", t));
        assert_eq!(d.seen.len(), 2);
    }

    #[test]
    fn forgets_ids_after_the_ttl() {
        let mut d = dedupe(100, Some(Duration::from_secs(10)));
        let t = Instant::now();
        assert!(d.first_sighting("a", t));
        assert!(!d.first_sighting("a", t + Duration::from_secs(9)));
        assert!(d.first_sighting("a", t + Duration::from_secs(10)));
    }

    #[tokio::test]
    async fn process_counts_drops() {
        let mut d = dedupe(10, None);
        let batch: Batch = ["x", "y", "x"]
            .iter()
            .map(|id| Event::new(*id, Position(1), Bytes::new()))
            .collect();
        let mut out = Output::default();
        d.process(batch, &mut out).await.unwrap();
        let (kept, _, dropped) = out.split();
        assert_eq!(kept.len(), 2);
        assert_eq!(dropped, 1);
    }

    #[test]
    fn refuses_an_empty_window() {
        let config = DedupeConfig {
            max_ids: 0,
            ttl: None,
        };
        assert_eq!(config.validate().unwrap_err().0[0].path, "max_ids");
    }
}
