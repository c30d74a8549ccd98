//! `postgres_poll`: the polling relay. Reads unpublished outbox rows in batches with
//! `SELECT … FOR UPDATE SKIP LOCKED`, emits them as row events, and sets their `published_at`
//! once they are acknowledged end to end. Several relays (sluice processes) may poll one table
//! at once.
//!
//! ```toml
//! [sources.outbox]
//! type = "postgres_poll"
//! url = "${DATABASE_URL}"
//! table = "public.outbox"          # defaults shown
//! position_column = "seq"
//! published_column = "published_at"
//! aggregate_column = "aggregateid"
//! batch_size = 1000
//! interval = "250ms"
//! notify_channel = "sluice_outbox" # optional: wake up on NOTIFY instead of waiting
//! max_batches_in_flight = 4
//! created_column = "created_at"   # the backlog's age is measured from it
//! backlog_interval = "5s"
//! [sources.outbox.cleanup]         # optional: delete delivered rows after a retention
//! retention = "1h"
//! ```
//!
//! The table needs an increasing integer column to order by (a `bigint GENERATED ALWAYS AS
//! IDENTITY` or `bigserial`), a nullable `timestamptz` published column and an aggregate
//! column, plus two partial indexes; `examples/sql/outbox-poll.sql` has the DDL and the
//! `NOTIFY` trigger, and `docs/postgres-poll.md` the operator's view.
//!
//! # Events
//!
//! Row events as [`crate::postgres::row`] describes them: `event_type` `insert`, every column
//! in `fields` in PostgreSQL's text format, the `sluice.table` header. The `id` is the row's
//! position column. A row whose position is NULL or negative, or with a column that cannot be
//! read as text (the whole poll then fails on the server, and the batch is read again row by
//! row to isolate it), is quarantined with the reason; quarantined counts as delivered, so it
//! is marked too.
//!
//! The event *position* (what the checkpoint counts) is the number of the batch within this
//! run, not the position column. A source must never emit a position below one it emitted
//! before, but rows do not become visible in position order: transactions take their sequence
//! numbers when they insert and become visible when they commit, so row 9 can appear after row
//! 10 was emitted, and a row skipped because another relay held it can come back when that
//! relay fails. A relay that emitted position column values would have to leave such rows
//! behind. Batch numbers only grow, and a batch's number is exactly what marking needs: the
//! checkpoint passing batch `n` means every event of batches `1..=n` is acknowledged.
//!
//! # Marking only what was acknowledged
//!
//! Each batch is one transaction on a connection of its own: `BEGIN`, lock and read the batch,
//! emit it, and keep the transaction open. When the checkpoint reaches the batch's number,
//! `UPDATE … SET published_at = statement_timestamp() WHERE ctid = ANY(…)` and `COMMIT`, in
//! one round trip, batches in order. The commit is asynchronous (`synchronous_commit = off`):
//! a server crash may lose the last marks, which only means delivering those rows again. While the transaction is open its row locks keep other
//! relays off those rows, and the rows' `ctid`s cannot change. Nothing else ever sets the
//! column. So a crash (of sluice, of its connection, of the server) at any point leaves every
//! row whose event was not acknowledged unmarked and unlocked, and it is polled again: events
//! may be delivered twice (same id, for dedupe), never lost. A batch whose transaction is lost
//! before marking is abandoned, counted, and its rows are polled again. Several batches may be
//! open at once (`max_batches_in_flight`), so polling continues while earlier batches are
//! delivered.
//!
//! # Order per aggregate, across relays
//!
//! `FOR UPDATE SKIP LOCKED` alone gives every relay distinct rows, but can reorder an
//! aggregate: relay A locks row 5 of aggregate X, relay B skips it and takes row 6, and B may
//! deliver 6 before A delivers 5. So a locked row is only *admitted* (emitted) when every
//! unpublished row of its aggregate with a lower position is in the same batch, or in one of
//! this relay's own open batches (emitted earlier by the same relay, delivered in that order).
//! Otherwise it is *deferred*: held by the transaction, not emitted, not marked, and released
//! when the batch ends, for a later poll. The check runs in the same statement as the lock:
//! per aggregate of the batch, a walk of the aggregate's unpublished rows in position order
//! (the `(aggregate, position) WHERE published IS NULL` index) finds its first row outside the
//! batch and outside the relay's own open batches; batch rows before it are admitted.
//!
//! Why that keeps order: take rows `r1 < r2` of one aggregate, and a poll whose snapshot
//! admits `r2`. In that snapshot `r1` is either
//! - unpublished: then it is in the same batch (emitted just before `r2`) or in one of this
//!   relay's earlier open batches (emitted before `r2`, into the same ordered stream, and
//!   marked first since batches commit in order);
//! - published: the relay that marked it had its event acknowledged before committing the mark,
//!   so before the snapshot, so before `r2` is emitted;
//! - not visible: it committed after `r2`. An application that serializes writes per aggregate
//!   (updating the aggregate's own row in the same transaction does) never does that; without
//!   such serialization the two rows have no order any relay could know.
//!
//! So `r2` never overtakes `r1`, with any number of relays and batches in flight, however they
//! interleave. Rows whose aggregate is NULL have no order to keep. Advisory locks on the
//! aggregate taken while scanning, the usual alternative, have a window inside one scan where a
//! relay fails the lock on row 5, sees it released, and takes it for row 6; the check compares
//! rows, not lock timing (`docs/adr/0006-polling-positions-and-aggregate-order.md`). A hot
//! aggregate is delivered by one relay at a time; relays share the work across aggregates.
//!
//! # Polling
//!
//! A poll runs when one is due — at start, after a full batch, on every `interval`, on a
//! notification, after a batch is marked if the previous poll deferred rows — and a connection
//! and room in the in-flight budget are free. Readiness follows the connection: ready once
//! connected (and listening, with `notify_channel`), not ready while reconnecting with backoff.
//! On shutdown the source stops polling, waits for the open batches' events, marks them and
//! commits.

mod backlog;
mod batch;
mod check;
mod config;
mod listen;
mod metrics;
mod source;

pub use batch::{Ctid, CtidError, LockedBatch, PolledRow, Poller, Session};
pub use config::{
    DEFAULT_AGGREGATE_COLUMN, DEFAULT_BATCH_SIZE, DEFAULT_INTERVAL, DEFAULT_MAX_BATCHES_IN_FLIGHT,
    DEFAULT_POSITION_COLUMN, DEFAULT_PUBLISHED_COLUMN, DEFAULT_TABLE, PollConfig,
};
pub use metrics::{
    ABANDONED_ROWS, BATCHES, DEFERRED_ROWS, ERRORS, MARKED_ROWS, NOTIFICATIONS, OPEN_BATCHES,
    POLLED_ROWS, QUERY_DURATION,
};
pub use source::PollSource;
