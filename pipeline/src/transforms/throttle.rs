//! `throttle`: passes events on at no more than a given rate, holding the rest back (it never
//! drops). For downstreams that cannot take bursts; backpressure then reaches the source.
//!
//! ```toml
//! [transforms.gentle]
//! type = "throttle"
//! inputs = ["events"]
//! rate = 500            # events per second
//! ```

use std::future::Future;

use serde::Deserialize;

use crate::component::{BuildContext, DynTransform, Output, Transform, TransformConfig, Validate};
use crate::config::{FieldError, FieldErrors};
use crate::error::Error;
use crate::event::Batch;
use crate::pace::Pace;

/// Config of the `throttle` transform.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThrottleConfig {
    /// Most events per second passed on.
    pub rate: u64,
}

impl Validate for ThrottleConfig {
    fn validate(&self) -> Result<(), FieldErrors> {
        if self.rate == 0 {
            return Err(FieldError::new("rate", "must be at least 1 event per second").into());
        }
        Ok(())
    }
}

impl TransformConfig for ThrottleConfig {
    fn build(&self, _cx: &BuildContext) -> Result<Box<dyn DynTransform>, Error> {
        Ok(Box::new(Throttle {
            pace: None,
            rate: self.rate,
            passed: 0,
        }))
    }
}

/// The running `throttle` transform.
#[derive(Debug)]
pub struct Throttle {
    /// Started with the first event, so an idle start does not build up credit.
    pace: Option<Pace>,
    rate: u64,
    passed: u64,
}

impl Transform for Throttle {
    fn process(
        &mut self,
        events: Batch,
        out: &mut Output,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        let rate = self.rate;
        let pace = self.pace.get_or_insert_with(|| Pace::new(rate)).clone();
        let last = self.passed + events.len().saturating_sub(1) as u64;
        self.passed += events.len() as u64;
        async move {
            pace.wait(last).await;
            events.into_iter().for_each(|e| out.push(e));
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, Position};
    use bytes::Bytes;

    #[tokio::test(start_paused = true)]
    async fn holds_batches_until_they_are_due() {
        let mut t = Throttle {
            pace: None,
            rate: 10,
            passed: 0,
        };
        let start = tokio::time::Instant::now();
        for _ in 0..3 {
            let batch: Batch = (0..10)
                .map(|i| Event::new(format!("{i}"), Position(1), Bytes::new()))
                .collect();
            let mut out = Output::default();
            t.process(batch, &mut out).await.unwrap();
            assert_eq!(out.len(), 10);
        }
        // 30 events at 10/s: the last is due 2.9 s after the first.
        let elapsed = start.elapsed();
        assert!(
            elapsed >= std::time::Duration::from_millis(2900),
            "{elapsed:?}"
        );
    }
}
