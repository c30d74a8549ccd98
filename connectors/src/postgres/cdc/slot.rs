//! The replication slot and publication, over an ordinary SQL session: finding, creating,
//! recognizing a lost slot, measuring lag, writing heartbeats and reading tables for a replay.
//!
//! sluice records which slot feeds a publication in the publication's comment
//! (`sluice: slot NAME`) when it creates the slot. A slot that is missing while that mark is
//! there was lost (dropped, or not carried over by a failover), which is different from a first
//! start: recreating it silently would skip everything committed while it was gone.

use std::time::Duration;

use sluice_pipeline::{Error, ErrorKind, Term};
use tokio_postgres::Client;

use super::config::{HEARTBEAT_PREFIX, PostgresCdcConfig, Recover};
use crate::postgres::connect::{quote_ident, quote_table, split_table};
use crate::postgres::error::classify;
use crate::postgres::pgoutput::Lsn;

/// Where streaming starts, and whether rows must be replayed first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Start {
    /// The slot's confirmed position (or its consistent point when just created).
    pub lsn: Lsn,
    /// Whether the slot was recreated after a loss, so the tables' rows must be republished.
    pub replay: bool,
}

fn sql_error(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> Error {
    let context = context.into();
    move |e| Error::new(classify(&e), context).with_source(e)
}

fn parse_lsn(text: &str) -> Result<Lsn, Error> {
    text.parse().map_err(|e| {
        Error::new(
            ErrorKind::Protocol,
            format!("PostgreSQL sent the LSN {text:?}"),
        )
        .with_source(e)
    })
}

/// The publication comment of a slot sluice created.
fn mark(slot: &str) -> String {
    format!("sluice: slot {slot}")
}

/// The publication comment while a replay after slot loss has not been delivered: a restart
/// in the middle replays again instead of forgetting it.
fn replay_mark(slot: &str) -> String {
    format!("sluice: slot {slot}, replay pending")
}

/// `<verb> "publication" <clause> "schema"."table", …`: the statement that creates a
/// publication for `tables` (`CREATE PUBLICATION`, `FOR TABLE`) or adds them to it
/// (`ALTER PUBLICATION`, `ADD TABLE`).
pub(crate) fn publication_sql(
    verb: &str,
    publication: &str,
    clause: &str,
    tables: &[impl AsRef<str>],
) -> String {
    let tables: Vec<String> = tables.iter().map(|t| quote_table(t.as_ref())).collect();
    format!(
        "{verb} {} {clause} {}",
        quote_ident(publication),
        tables.join(", ")
    )
}

/// How long a new leader waits for the slot's previous walsender to go once terminated.
const TAKE_OVER_TIMEOUT: Duration = Duration::from_secs(10);

/// Makes sure the publication covers the tables and the slot exists, recreating a lost slot
/// when `recover = "replay"`; returns where to start. A slot in use by another server process
/// is taken over when `term` (this process leads the pipeline's election) is still valid: the
/// previous leader's walsender is terminated (see [`take_over`]).
pub(crate) async fn prepare(
    sql: &Client,
    config: &PostgresCdcConfig,
    term: Option<&dyn Term>,
) -> Result<Start, Error> {
    let tables = config.qualified_tables();
    let publication = sql
        .query_opt(
            "SELECT obj_description(oid, 'pg_publication') FROM pg_publication WHERE pubname = $1",
            &[&config.publication],
        )
        .await
        .map_err(sql_error("looking up the publication"))?;
    let comment: Option<String> = match &publication {
        Some(row) => row.get(0),
        None => {
            let create = publication_sql(
                "CREATE PUBLICATION",
                &config.publication,
                "FOR TABLE",
                &tables,
            );
            if !config.create {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!(
                        "publication {:?} does not exist: run `{create}`, or set create = true",
                        config.publication
                    ),
                ));
            }
            sql.batch_execute(&create).await.map_err(sql_error(format!(
                "creating the publication with `{create}`"
            )))?;
            tracing::info!(publication = %config.publication, "created the publication");
            None
        }
    };
    add_missing_tables(sql, config, &tables).await?;

    let mut slot = look_up_slot(sql, config).await?;
    if let (Some(row), Some(term)) = (&slot, term)
        && let Some(pid) = row.get::<_, Option<i32>>(3)
    {
        take_over(sql, config, pid, term).await?;
        slot = look_up_slot(sql, config).await?;
    }
    let replay_pending = comment.as_deref() == Some(replay_mark(&config.slot).as_str());
    let marked = replay_pending || comment.as_deref() == Some(mark(&config.slot).as_str());
    match slot {
        Some(row) => {
            let plugin: String = row.get(0);
            let wal_status: Option<String> = row.get(1);
            let confirmed: Option<String> = row.get(2);
            let active_pid: Option<i32> = row.get(3);
            if plugin != "pgoutput" {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!(
                        "slot {:?} uses the {plugin:?} plugin; sluice reads pgoutput: drop it or choose another slot name",
                        config.slot
                    ),
                ));
            }
            if wal_status.as_deref() == Some("lost") {
                return lost(
                    sql,
                    config,
                    "was invalidated (wal_status = 'lost'): PostgreSQL removed WAL it still needed, usually because max_slot_wal_keep_size was exceeded",
                    true,
                )
                .await;
            }
            if let Some(pid) = active_pid {
                return Err(Error::new(
                    ErrorKind::Connect,
                    format!(
                        "slot {:?} is in use by the server process {pid}: another sluice may be running with it",
                        config.slot
                    ),
                ));
            }
            if comment.is_none() {
                set_mark(sql, config, &mark(&config.slot)).await?;
            }
            let lsn = confirmed
                .as_deref()
                .map(parse_lsn)
                .transpose()?
                .unwrap_or(Lsn(0));
            Ok(Start {
                lsn,
                replay: replay_pending,
            })
        }
        None if marked => {
            lost(
                sql,
                config,
                "is missing although this publication was feeding it: it was dropped, or this server was promoted from a replica that did not have it",
                false,
            )
            .await
        }
        None if !config.create => Err(Error::new(
            ErrorKind::Config,
            format!(
                "slot {:?} does not exist: run `SELECT pg_create_logical_replication_slot('{}', 'pgoutput')`, or set create = true",
                config.slot, config.slot
            ),
        )),
        None => {
            let lsn = create_slot(sql, config, &mark(&config.slot)).await?;
            Ok(Start { lsn, replay: false })
        }
    }
}

async fn look_up_slot(
    sql: &Client,
    config: &PostgresCdcConfig,
) -> Result<Option<tokio_postgres::Row>, Error> {
    sql.query_opt(
        "SELECT plugin, wal_status, confirmed_flush_lsn::text, active_pid \
         FROM pg_replication_slots WHERE slot_name = $1 AND database = current_database()",
        &[&config.slot],
    )
    .await
    .map_err(sql_error("looking up the replication slot"))
}

/// Takes the slot from the server process `pid` that streams it, for a new leader: once this
/// process holds a newer term than whoever opened that stream, the stream belongs to a leader
/// that has lost (frozen, or cut off from the coordination service), and PostgreSQL would only
/// drop it after `wal_sender_timeout`. Safe because only the holder of a valid term does this
/// (checked right before), a term is valid on at most one node at a time, and PostgreSQL lets
/// one connection at a time use a slot: the old leader cannot confirm or read past this point.
async fn take_over(
    sql: &Client,
    config: &PostgresCdcConfig,
    pid: i32,
    term: &dyn Term,
) -> Result<(), Error> {
    if !term.is_valid() {
        return Err(Error::new(
            ErrorKind::Connect,
            "the leadership ended before the slot was taken over",
        ));
    }
    tracing::warn!(slot = %config.slot, pid, token = %term.token(), "the slot is in use by a previous leader: terminating its walsender");
    sql.query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .map_err(sql_error(format!(
            "terminating the server process {pid} that holds slot {:?} (needs superuser or pg_signal_backend)",
            config.slot
        )))?;
    let deadline = tokio::time::Instant::now() + TAKE_OVER_TIMEOUT;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tick.tick().await;
        let row = look_up_slot(sql, config).await?;
        let active = row.and_then(|row| row.get::<_, Option<i32>>(3));
        match active {
            None => return Ok(()),
            Some(_) if tokio::time::Instant::now() >= deadline => {
                return Err(Error::new(
                    ErrorKind::Connect,
                    format!(
                        "slot {:?} is still in use after terminating its walsender",
                        config.slot
                    ),
                ));
            }
            Some(_) => {}
        }
    }
}

async fn add_missing_tables(
    sql: &Client,
    config: &PostgresCdcConfig,
    tables: &[String],
) -> Result<(), Error> {
    let rows = sql
        .query(
            "SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = $1",
            &[&config.publication],
        )
        .await
        .map_err(sql_error("listing the publication's tables"))?;
    let published: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    let missing: Vec<&String> = tables.iter().filter(|t| !published.contains(t)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let alter = publication_sql(
        "ALTER PUBLICATION",
        &config.publication,
        "ADD TABLE",
        &missing,
    );
    if !config.create {
        return Err(Error::new(
            ErrorKind::Config,
            format!(
                "publication {:?} does not include {}: run `{alter}`, or set create = true",
                config.publication,
                missing
                    .iter()
                    .map(|t| t.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    sql.batch_execute(&alter)
        .await
        .map_err(sql_error(format!("adding tables with `{alter}`")))?;
    tracing::info!(publication = %config.publication, tables = ?missing, "added tables to the publication");
    Ok(())
}

async fn create_slot(
    sql: &Client,
    config: &PostgresCdcConfig,
    comment: &str,
) -> Result<Lsn, Error> {
    let row = sql
        .query_one(
            "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&config.slot],
        )
        .await
        .map_err(sql_error(format!(
            "creating the replication slot {:?} (the role needs REPLICATION, and max_replication_slots a free slot)",
            config.slot
        )))?;
    let lsn = parse_lsn(row.get(0))?;
    set_mark(sql, config, comment).await?;
    tracing::info!(slot = %config.slot, consistent_point = %lsn, "created the replication slot");
    Ok(lsn)
}

/// Records that the replay after a slot loss is delivered.
pub(crate) async fn replay_done(sql: &Client, config: &PostgresCdcConfig) -> Result<(), Error> {
    set_mark(sql, config, &mark(&config.slot)).await
}

async fn set_mark(sql: &Client, config: &PostgresCdcConfig, mark: &str) -> Result<(), Error> {
    let comment = format!(
        "COMMENT ON PUBLICATION {} IS '{}'",
        quote_ident(&config.publication),
        mark.replace('\'', "''")
    );
    sql.batch_execute(&comment)
        .await
        .map_err(sql_error("recording the slot on the publication"))
}

async fn lost(
    sql: &Client,
    config: &PostgresCdcConfig,
    what: &str,
    exists: bool,
) -> Result<Start, Error> {
    let message = format!("replication slot {:?} {what}", config.slot);
    if config.recover == Recover::Error {
        return Err(Error::new(
            ErrorKind::Config,
            format!(
                "{message}. Events committed since it was lost cannot be read from the WAL. Set recover = \"replay\" to recreate the slot and republish every row still in {} (same ids, so consumers that dedupe by id are safe)",
                config.tables.join(", ")
            ),
        ));
    }
    tracing::warn!(slot = %config.slot, "{message}; recreating it and replaying the tables");
    if exists {
        sql.execute("SELECT pg_drop_replication_slot($1)", &[&config.slot])
            .await
            .map_err(sql_error("dropping the lost slot"))?;
    }
    let lsn = create_slot(sql, config, &replay_mark(&config.slot)).await?;
    Ok(Start { lsn, replay: true })
}

/// Bytes of WAL the slot holds back: `pg_current_wal_lsn() - confirmed_flush_lsn`.
pub(crate) async fn lag_bytes(sql: &Client, slot: &str) -> Result<Option<i64>, Error> {
    let row = sql
        .query_opt(
            "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(sql_error("measuring the slot's lag"))?;
    Ok(row.and_then(|r| r.get(0)))
}

/// Writes a non-transactional heartbeat message into the WAL, its content the server's time
/// (microseconds since the Unix epoch, in decimal): once it is confirmed, everything committed
/// before that time is delivered.
pub(crate) async fn heartbeat(sql: &Client) -> Result<(), Error> {
    sql.execute(
        "SELECT pg_logical_emit_message(false, $1, (extract(epoch FROM clock_timestamp()) * 1000000)::bigint::text)",
        &[&HEARTBEAT_PREFIX],
    )
    .await
    .map(drop)
    .map_err(sql_error("writing a heartbeat"))
}

/// The query that reads every row of `table` with each column as text (NULL as `None`),
/// ordered by `order_by`, and the column names.
pub(crate) async fn replay_query(
    sql: &Client,
    table: &str,
    order_by: &str,
) -> Result<(Vec<String>, String), Error> {
    let (schema, name) = split_table(table);
    let columns: Vec<String> = sql
        .query(
            "SELECT column_name::text FROM information_schema.columns \
             WHERE table_schema = $1 AND table_name = $2 ORDER BY ordinal_position",
            &[&schema, &name],
        )
        .await
        .map_err(sql_error(format!("listing the columns of {table}")))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if !columns.iter().any(|c| c == order_by) {
        return Err(Error::new(
            ErrorKind::Config,
            format!(
                "cannot replay {table}: it has no column {order_by:?} to order rows by (set replay_order_by to one of: {})",
                columns.join(", ")
            ),
        ));
    }
    let select = format!(
        "SELECT {} FROM {} ORDER BY {}",
        columns
            .iter()
            .map(|c| format!("{}::text", quote_ident(c)))
            .collect::<Vec<_>>()
            .join(", "),
        quote_table(table),
        quote_ident(order_by)
    );
    Ok((columns, select))
}
