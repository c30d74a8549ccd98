//! Encodings of events for the destinations that need one, and the write loop shared by the
//! sinks that write JSON lines.

mod jsonl;

pub use jsonl::encode_json_line;

use sluice_pipeline::{Error, ErrorKind, SinkContext};

/// Most bytes gathered from waiting batches before one write and one flush.
const MAX_WRITE_BYTES: usize = 4 * 1024 * 1024;

/// A byte stream that can be made durable (a file: fsync; a terminal: flush).
pub(crate) trait LineTarget: Send {
    /// Appends `bytes`.
    fn write(&mut self, bytes: &[u8]) -> impl Future<Output = std::io::Result<()>> + Send;
    /// Returns once everything written so far is as durable as the target allows.
    fn persist(&mut self) -> impl Future<Output = std::io::Result<()>> + Send;
}

/// Writes every event the sink receives as a JSON line to `target`, gathering the batches
/// already waiting into one write, and acknowledges them once `persist` returns.
pub(crate) async fn write_lines(
    cx: &mut SinkContext,
    mut target: impl LineTarget,
    what: &str,
) -> Result<(), Error> {
    let io_error = |e| Error::new(ErrorKind::Io, format!("writing to {what}")).with_source(e);
    let mut buffer = Vec::new();
    let mut pending = Vec::new();
    while let Some(batch) = cx.next().await {
        buffer.clear();
        batch.iter().for_each(|e| encode_json_line(e, &mut buffer));
        pending.push(batch);
        while buffer.len() < MAX_WRITE_BYTES {
            let Some(batch) = cx.try_next() else { break };
            batch.iter().for_each(|e| encode_json_line(e, &mut buffer));
            pending.push(batch);
        }
        target.write(&buffer).await.map_err(io_error)?;
        target.persist().await.map_err(io_error)?;
        for event in pending.drain(..).flatten() {
            event.ack();
        }
    }
    Ok(())
}
