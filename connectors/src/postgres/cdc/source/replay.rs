//! The rows read from the tables rather than the WAL before streaming starts: the initial
//! snapshot, or the replay of the outbox tables after a lost slot was recreated.

use sluice_pipeline::{Error, Position, SourceContext};

use super::super::read::TableRead;
use super::super::slot::CatchUp;
use super::{PostgresCdc, Stream};
use crate::postgres::pgoutput::Lsn;

impl PostgresCdc {
    /// Delivers the rows of the tables the stream cannot (see [`CatchUp`]), at a position just
    /// below the slot's `consistent_point`, so they precede everything the slot streams, and
    /// returns once they are all delivered (true), or once asked to stop before that (false).
    pub(super) async fn catch_up(
        &self,
        cx: &mut SourceContext,
        stream: &mut Stream,
        catch_up: CatchUp,
        consistent_point: Lsn,
    ) -> Result<bool, Error> {
        let (replay, exported) = match catch_up {
            CatchUp::Replay => (true, None),
            CatchUp::Snapshot(exported) => (false, exported),
        };
        let read = TableRead {
            purpose: if replay { "replay" } else { "snapshot" },
            tables: &self.tables,
            order_by: &self.config.replay_order_by,
            filter: None,
            snapshot: exported.as_ref().map(|e| e.name.as_str()),
            batch: self.config.max_batch_events,
        };
        let position = Position(consistent_point.0.saturating_sub(1));
        let delivered = read
            .deliver(&self.database, cx, &stream.metrics.events, position)
            .await?;
        // The exported snapshot is needed only until the read has imported it.
        drop(exported);
        let Some(rows) = delivered else {
            return Ok(false);
        };
        if replay {
            tracing::warn!(rows, "replayed the outbox tables after recreating the slot");
        } else {
            tracing::info!(
                rows,
                "delivered the rows already in the outbox tables (snapshot)"
            );
        }
        Ok(true)
    }
}
