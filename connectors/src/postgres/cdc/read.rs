//! Rows read from the tables rather than the WAL, for what the stream cannot deliver: the rows
//! already there when the slot was created (`snapshot = "initial"`), every row after a lost slot
//! was recreated (`recover = "replay"`), and the rows `sluice backfill` chooses.
//!
//! The rows are read in one read-only `REPEATABLE READ` transaction (every table as of one
//! moment, or as of an imported snapshot) and become row events like streamed ones, so the
//! `outbox` transform gives them their rows' own ids. They all share one position, so the
//! checkpoint passes it only once every one of them is delivered.

use metrics::Counter;
use sluice_pipeline::{Error, ErrorKind, Fields, Output, Position, SourceContext, Text};
use tokio_postgres::IsolationLevel;

use super::slot;
use crate::postgres::connect::{Database, Sessions};
use crate::postgres::row;
use crate::postgres::table::TableName;

/// Which rows to read, and how.
#[derive(Debug)]
pub(crate) struct TableRead<'a> {
    /// What the rows are for (`snapshot`, `replay`, `backfill`): in their event ids (which the
    /// `outbox` transform replaces with the row's id) and in messages.
    pub purpose: &'static str,
    /// The tables.
    pub tables: &'a [TableName],
    /// The column that orders each table's rows.
    pub order_by: &'a str,
    /// An SQL condition the rows must match; all rows when `None`.
    pub filter: Option<&'a str>,
    /// An exported snapshot to read as of (`SET TRANSACTION SNAPSHOT`); now when `None`.
    pub snapshot: Option<&'a str>,
    /// Most rows per emitted batch.
    pub batch: usize,
}

impl TableRead<'_> {
    /// Emits every row the read covers at `position`, then waits until they are resolved.
    /// Returns how many were read once all are delivered, `None` when asked to stop before
    /// that, and an error when some failed. Nothing is emitted unless every table's query is
    /// valid (a bad `filter` fails with the server's error before any row is read).
    pub(crate) async fn deliver(
        &self,
        database: &Database,
        cx: &mut SourceContext,
        events: &Counter,
        position: Position,
    ) -> Result<Option<u64>, Error> {
        let purpose = self.purpose;
        let mut sql = database.connect().await?;
        let mut queries = Vec::with_capacity(self.tables.len());
        for table in self.tables {
            queries.push(slot::read_query(&sql, table, self.order_by, self.filter).await?);
        }
        let transaction = sql
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(|e| {
                Error::new(ErrorKind::Connect, format!("starting the {purpose}")).with_source(e)
            })?;
        if let Some(snapshot) = self.snapshot {
            transaction
                .batch_execute(&format!(
                    "SET TRANSACTION SNAPSHOT '{}'",
                    snapshot.replace('\'', "''")
                ))
                .await
                .map_err(|e| {
                    Error::new(
                        ErrorKind::Connect,
                        format!("importing the slot's snapshot {snapshot:?}"),
                    )
                    .with_source(e)
                })?;
        }
        let mut statements = Vec::with_capacity(queries.len());
        for (table, (_, select)) in self.tables.iter().zip(&queries) {
            let statement = transaction.prepare(select).await.map_err(|e| {
                let what = match self.filter {
                    Some(filter) => {
                        format!("the condition {filter:?} cannot select rows of {table}")
                    }
                    None => format!("cannot read {table}"),
                };
                Error::new(ErrorKind::Config, what).with_source(e)
            })?;
            statements.push(statement);
        }
        let mut read = 0u64;
        let mut interrupted = false;
        for ((table, (columns, _)), statement) in self.tables.iter().zip(queries).zip(statements) {
            let columns: Vec<Text> = columns.into_iter().map(Text::from).collect();
            let table_name = Text::from(table.to_string());
            let portal = transaction.bind(&statement, &[]).await.map_err(|e| {
                Error::new(ErrorKind::Config, format!("reading {table}")).with_source(e)
            })?;
            loop {
                if cx.shutdown().is_requested() {
                    interrupted = true;
                    break;
                }
                let rows = transaction
                    .query_portal(&portal, self.batch as i32)
                    .await
                    .map_err(|e| {
                        Error::new(ErrorKind::Connect, format!("reading {table}")).with_source(e)
                    })?;
                if rows.is_empty() {
                    break;
                }
                let mut out = Output::with_capacity(rows.len());
                for db_row in &rows {
                    let fields: Fields = columns
                        .iter()
                        .enumerate()
                        .map(|(i, name)| {
                            (
                                name.clone(),
                                db_row.get::<_, Option<String>>(i).map(Text::from),
                            )
                        })
                        .collect();
                    read += 1;
                    let id = Text::from(format!("{purpose}/{table}/{read}"));
                    out.push(row::row_event(
                        id,
                        row::INSERT,
                        table_name.clone(),
                        fields,
                        position,
                    ));
                }
                events.increment(out.len() as u64);
                cx.emit_open(out).await?;
            }
        }
        cx.seal();
        transaction.commit().await.map_err(|e| {
            Error::new(ErrorKind::Connect, format!("ending the {purpose}")).with_source(e)
        })?;
        cx.drain().await;
        if interrupted {
            return Ok(None);
        }
        if read > 0 && cx.checkpoint() < Some(position) {
            if cx.shutdown().is_requested() {
                return Ok(None);
            }
            return Err(Error::new(
                ErrorKind::Internal,
                format!("the rows of the {purpose} were not all delivered; it runs again"),
            ));
        }
        Ok(Some(read))
    }
}
