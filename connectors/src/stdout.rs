//! `stdout`: writes each event as a JSON line to standard output, acknowledging it once the
//! line is flushed (a terminal or pipe offers nothing more durable).
//!
//! ```toml
//! [sinks.console]
//! type = "stdout"
//! inputs = ["events"]
//! ```

use serde::Deserialize;
use sluice_pipeline::component::{BuildContext, DynSink};
use sluice_pipeline::{Error, Sink, SinkConfig, SinkContext, Validate};
use tokio::io::AsyncWriteExt;

use crate::codec::{LineTarget, write_lines};

/// Config of the `stdout` sink (it has no settings).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdoutSinkConfig {}

impl Validate for StdoutSinkConfig {}

impl SinkConfig for StdoutSinkConfig {
    fn build(&self, _cx: &BuildContext) -> Result<Box<dyn DynSink>, Error> {
        Ok(Box::new(StdoutSink))
    }
}

/// The running `stdout` sink.
#[derive(Debug)]
pub struct StdoutSink;

struct Stdout(tokio::io::Stdout);

impl LineTarget for Stdout {
    async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.0.write_all(bytes).await
    }

    async fn persist(&mut self) -> std::io::Result<()> {
        self.0.flush().await
    }
}

impl Sink for StdoutSink {
    async fn run(&mut self, cx: &mut SinkContext) -> Result<(), Error> {
        cx.set_ready(true);
        write_lines(cx, Stdout(tokio::io::stdout()), "standard output").await
    }
}
