//! `blackhole`: acknowledges every event and keeps nothing, optionally at a limited rate.
//! For benchmarks, and for testing backpressure with a deliberately slow sink.
//!
//! ```toml
//! [sinks.void]
//! type = "blackhole"
//! inputs = ["events"]
//! rate = 100          # events per second (omit for no limit)
//! ```

use serde::Deserialize;
use sluice_pipeline::component::{BuildContext, DynSink};
use sluice_pipeline::pace::Pace;
use sluice_pipeline::{Error, FieldError, FieldErrors, Sink, SinkConfig, SinkContext, Validate};

/// Config of the `blackhole` sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlackholeSinkConfig {
    /// Acknowledge at most this many events per second; unset, as fast as they come.
    pub rate: Option<u64>,
}

impl Validate for BlackholeSinkConfig {
    fn validate(&self) -> Result<(), FieldErrors> {
        if self.rate == Some(0) {
            return Err(FieldError::new(
                "rate",
                "must be at least 1 event per second (omit it for no limit)",
            )
            .into());
        }
        Ok(())
    }
}

impl SinkConfig for BlackholeSinkConfig {
    fn build(&self, _cx: &BuildContext) -> Result<Box<dyn DynSink>, Error> {
        Ok(Box::new(BlackholeSink { rate: self.rate }))
    }
}

/// The running `blackhole` sink.
#[derive(Debug)]
pub struct BlackholeSink {
    rate: Option<u64>,
}

impl Sink for BlackholeSink {
    async fn run(&mut self, cx: &mut SinkContext) -> Result<(), Error> {
        cx.set_ready(true);
        let pace = self.rate.map(Pace::new);
        let mut acked: u64 = 0;
        while let Some(batch) = cx.next().await {
            for event in batch {
                if let Some(pace) = &pace {
                    pace.wait(acked).await;
                }
                event.ack();
                acked += 1;
            }
        }
        Ok(())
    }
}
