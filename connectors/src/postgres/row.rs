//! The row event: how both PostgreSQL sources (`postgres_cdc`, `postgres_poll`) hand a table
//! row to the pipeline, before the `outbox` transform turns it into an outbox event.
//!
//! - `event_type`: the operation, [`INSERT`], [`UPDATE`] or [`DELETE`] ([`MESSAGE`] for a
//!   `pg_logical_emit_message` record);
//! - `fields`: one entry per column, in table order, holding the value in PostgreSQL's text
//!   format, or `None` for SQL `NULL` (a value that cannot be represented, such as an unchanged
//!   TOASTed column, makes the source quarantine the row instead);
//! - `headers`: [`TABLE_HEADER`] (`schema.table`), or [`MESSAGE_PREFIX_HEADER`] for a message;
//! - `payload`: empty for rows; the content of a logical decoding message;
//! - `id`: stable for the row's place in the source (`<commit LSN>/<ordinal>` for CDC, the
//!   position column for polling); the `outbox` transform replaces it with the outbox `id`;
//! - `meta`: the source position (the commit LSN for CDC; for polling the batch number, see
//!   `docs/adr/0006-polling-positions-and-aggregate-order.md`), commit time and
//!   transaction id where the source knows them.

use sluice_pipeline::{Event, Fields, Position, Text};

/// `event_type` of an inserted row.
pub const INSERT: Text = Text::from_static("insert");
/// `event_type` of an updated row (new values).
pub const UPDATE: Text = Text::from_static("update");
/// `event_type` of a deleted row (the old key or row).
pub const DELETE: Text = Text::from_static("delete");
/// `event_type` of a logical decoding message.
pub const MESSAGE: Text = Text::from_static("message");
/// Header naming the row's table as `schema.table`.
pub const TABLE_HEADER: &str = "sluice.table";
/// Header holding a logical decoding message's prefix.
pub const MESSAGE_PREFIX_HEADER: &str = "sluice.message.prefix";

/// A row event of `table` (`schema.table`) with `columns`, at `position`.
pub fn row_event(
    id: Text,
    operation: Text,
    table: Text,
    columns: Fields,
    position: Position,
) -> Event {
    let mut event = Event::new(id, position, bytes::Bytes::new());
    event.event_type = operation;
    event.fields = columns;
    event
        .headers
        .push(Text::from_static(TABLE_HEADER), Some(table));
    event
}
