//! The replication slot and publication, over an ordinary SQL session: finding, creating,
//! recognizing a lost slot, measuring lag, writing heartbeats and building the queries that
//! read the tables.
//!
//! sluice records which slot feeds a publication in the publication's comment
//! (`sluice: slot NAME`) when it creates the slot, and there too whatever must be delivered
//! from the tables before the slot streams ([`Mark`]). A slot that is missing while that mark
//! is there was lost (dropped, or not carried over by a failover), which is different from a
//! first start: recreating it silently would skip everything committed while it was gone.

use std::borrow::Borrow;
use std::time::Duration;

use pgwire_replication::ReplicationClient;
use sluice_pipeline::{Error, ErrorKind, Term};
use tokio_postgres::Client;

use super::config::{HEARTBEAT_PREFIX, PostgresCdcConfig, Recover, Snapshot};
use crate::postgres::connect::{Database, Sessions, quote_ident};
use crate::postgres::error::classify;
use crate::postgres::pgoutput::Lsn;
use crate::postgres::table::TableName;

/// Where streaming starts, and what must be read from the tables first.
#[derive(Debug)]
pub(crate) struct Start {
    /// The slot's confirmed position (or its consistent point when just created).
    pub lsn: Lsn,
    /// Rows to deliver from the tables before streaming, if any.
    pub catch_up: Option<CatchUp>,
}

/// Rows the stream cannot deliver, read from the tables before it starts.
#[derive(Debug)]
pub(crate) enum CatchUp {
    /// Every row still in the tables: the slot was recreated after a loss.
    Replay,
    /// The rows already in the tables when the slot was created (`snapshot = "initial"`): as of
    /// the slot's exported snapshot when it was just created, or as of now when a restart came
    /// before they were all delivered (the exported snapshot died with the session that made
    /// it; see [`prepare`]).
    Snapshot(Option<Exported>),
}

/// A snapshot exported by the slot's creation: importable (`SET TRANSACTION SNAPSHOT`) only
/// while the replication session that created the slot stays open and idle.
pub(crate) struct Exported {
    /// The snapshot's name.
    pub name: String,
    /// Held only to keep the snapshot alive; dropping it ends the session.
    _session: ReplicationClient,
}

impl std::fmt::Debug for Exported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exported")
            .field("name", &self.name)
            .finish()
    }
}

/// What the publication's comment records about the slot sluice created for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mark {
    /// Created; nothing to read from the tables.
    Created,
    /// Recreated after a loss; the replay is not delivered yet, so a restart replays again.
    ReplayPending,
    /// Created with `snapshot = "initial"`; the snapshot is not delivered yet. Written before
    /// the slot is created, so a crash at any point leaves it there.
    SnapshotPending,
    /// Created with `snapshot = "initial"` (or replayed since), and those rows delivered.
    Snapshotted,
}

impl Mark {
    const ALL: [Mark; 4] = [
        Mark::Created,
        Mark::ReplayPending,
        Mark::SnapshotPending,
        Mark::Snapshotted,
    ];

    /// The comment for `slot`.
    fn text(self, slot: &str) -> String {
        let state = match self {
            Mark::Created => "",
            Mark::ReplayPending => ", replay pending",
            Mark::SnapshotPending => ", snapshot pending",
            Mark::Snapshotted => ", snapshot delivered",
        };
        format!("sluice: slot {slot}{state}")
    }

    /// The mark a comment holds for `slot`, if it is one.
    fn read(comment: Option<&str>, slot: &str) -> Option<Mark> {
        let comment = comment?;
        Mark::ALL.into_iter().find(|m| m.text(slot) == comment)
    }

    /// The mark once the tables' rows are delivered: a snapshot's record is kept when the
    /// config asks for one, so that a restart does not take the existing slot for one made
    /// without it.
    fn caught_up(config: &PostgresCdcConfig) -> Mark {
        match config.snapshot {
            Snapshot::Initial => Mark::Snapshotted,
            Snapshot::Never => Mark::Created,
        }
    }
}

/// Why `snapshot = "initial"` does not apply to an existing slot whose publication holds
/// `comment`, if it does not: the slot was not created with a snapshot (nor is a replay of
/// every row pending, which does as much), and creating it is the only moment a snapshot is
/// consistent with it.
pub(crate) fn snapshot_refusal(
    config: &PostgresCdcConfig,
    comment: Option<&str>,
) -> Option<String> {
    let mark = Mark::read(comment, &config.slot);
    let had_snapshot = matches!(
        mark,
        Some(Mark::SnapshotPending | Mark::Snapshotted | Mark::ReplayPending)
    );
    (config.snapshot == Snapshot::Initial && !had_snapshot).then(|| {
        format!(
            "snapshot = \"initial\" applies when sluice creates the slot, and slot {:?} already exists without one: remove `snapshot`, and republish the rows already in {} with `sluice backfill CONFIG --source ID --where \"…\"` (same ids, so consumers that dedupe by id are safe)",
            config.slot,
            config.tables.join(", ")
        )
    })
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

/// `<verb> "publication" <clause> "schema"."table", …`: the statement that creates a
/// publication for `tables` (`CREATE PUBLICATION`, `FOR TABLE`) or adds them to it
/// (`ALTER PUBLICATION`, `ADD TABLE`).
pub(crate) fn publication_sql(
    verb: &str,
    publication: &str,
    clause: &str,
    tables: &[impl Borrow<TableName>],
) -> String {
    let tables: Vec<String> = tables.iter().map(|t| t.borrow().quoted()).collect();
    format!(
        "{verb} {} {clause} {}",
        quote_ident(publication),
        tables.join(", ")
    )
}

/// How long a new leader waits for the slot's previous walsender to go once terminated.
const TAKE_OVER_TIMEOUT: Duration = Duration::from_secs(10);

/// Makes sure the publication covers the tables and the slot exists, recreating a lost slot
/// when `recover = "replay"`; returns where to start and what to read from the tables first.
/// A slot in use by another server process is taken over when `term` (this process leads the
/// pipeline's election) is still valid: the previous leader's walsender is terminated (see
/// [`take_over`]).
///
/// With `snapshot = "initial"`, the slot is created on a replication session that exports its
/// snapshot: the rows that snapshot shows are exactly those committed before the slot's
/// consistent point, where streaming starts, so none is missed or read twice. The pending mark
/// is written before the slot is created and cleared once the rows are delivered. A restart in
/// between finds the slot and the mark but no snapshot (it ended with the session that
/// exported it), and reads the tables again as of then: every row still there is delivered,
/// and those committed after the consistent point arrive a second time through the stream,
/// with the same ids — duplicates that consumers drop, never a gap. Dropping and recreating
/// the slot instead would be exact only for rows still in the tables: an outbox that deletes
/// its rows once written (Debezium's pattern) keeps them only in the WAL the old slot holds.
pub(crate) async fn prepare(
    sql: &Client,
    database: &Database,
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
    let mark = Mark::read(comment.as_deref(), &config.slot);
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
            let catch_up = match mark {
                Some(Mark::ReplayPending) => Some(CatchUp::Replay),
                Some(Mark::SnapshotPending) => {
                    tracing::warn!(slot = %config.slot, "the slot's snapshot was not all delivered before the last stop: reading the tables again as of now (rows committed since the slot was created arrive twice, with the same ids)");
                    Some(CatchUp::Snapshot(None))
                }
                _ => None,
            };
            if let Some(refusal) = snapshot_refusal(config, comment.as_deref()) {
                return Err(Error::new(ErrorKind::Config, refusal));
            }
            if comment.is_none() {
                set_mark(sql, config, Mark::Created).await?;
            }
            let lsn = confirmed
                .as_deref()
                .map(parse_lsn)
                .transpose()?
                .unwrap_or(Lsn(0));
            Ok(Start { lsn, catch_up })
        }
        // A stop between writing the mark and creating the slot: nothing was streamed, so a
        // new slot and its snapshot start afresh.
        None if mark == Some(Mark::SnapshotPending) => create(sql, database, config).await,
        None if mark.is_some() => {
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
        None => create(sql, database, config).await,
    }
}

/// Creates the slot on first start: with an exported snapshot of the tables' rows when the
/// config asks for one.
async fn create(
    sql: &Client,
    database: &Database,
    config: &PostgresCdcConfig,
) -> Result<Start, Error> {
    match config.snapshot {
        Snapshot::Never => {
            let lsn = create_slot(sql, config, Mark::Created).await?;
            Ok(Start {
                lsn,
                catch_up: None,
            })
        }
        Snapshot::Initial => {
            set_mark(sql, config, Mark::SnapshotPending).await?;
            let (lsn, exported) = create_slot_exporting(database, config).await?;
            Ok(Start {
                lsn,
                catch_up: Some(CatchUp::Snapshot(Some(exported))),
            })
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

/// The `tables` that `publication` (which exists) does not cover.
pub(crate) async fn unpublished<'a>(
    sql: &Client,
    publication: &str,
    tables: &'a [TableName],
) -> Result<Vec<&'a TableName>, tokio_postgres::Error> {
    let rows = sql
        .query(
            "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1",
            &[&publication],
        )
        .await?;
    let published: Vec<TableName> = rows
        .iter()
        .map(|r| TableName::new(r.get::<_, String>(0), r.get::<_, String>(1)))
        .collect();
    Ok(tables.iter().filter(|t| !published.contains(t)).collect())
}

async fn add_missing_tables(
    sql: &Client,
    config: &PostgresCdcConfig,
    tables: &[TableName],
) -> Result<(), Error> {
    let missing = unpublished(sql, &config.publication, tables)
        .await
        .map_err(sql_error("listing the publication's tables"))?;
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
                TableName::list(&missing)
            ),
        ));
    }
    sql.batch_execute(&alter)
        .await
        .map_err(sql_error(format!("adding tables with `{alter}`")))?;
    tracing::info!(publication = %config.publication, tables = %TableName::list(&missing), "added tables to the publication");
    Ok(())
}

async fn create_slot(sql: &Client, config: &PostgresCdcConfig, mark: Mark) -> Result<Lsn, Error> {
    let row = sql
        .query_one(
            "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&config.slot],
        )
        .await
        .map_err(sql_error(creating_slot(config)))?;
    let lsn = parse_lsn(row.get(0))?;
    set_mark(sql, config, mark).await?;
    tracing::info!(slot = %config.slot, consistent_point = %lsn, "created the replication slot");
    Ok(lsn)
}

fn creating_slot(config: &PostgresCdcConfig) -> String {
    format!(
        "creating the replication slot {:?} (the role needs REPLICATION, and max_replication_slots a free slot)",
        config.slot
    )
}

/// Creates the slot on a replication session that exports the snapshot its consistent point
/// corresponds to (`CREATE_REPLICATION_SLOT … EXPORT_SNAPSHOT`, understood by every server
/// with pgoutput), and keeps the session open so that the snapshot can be imported.
async fn create_slot_exporting(
    database: &Database,
    config: &PostgresCdcConfig,
) -> Result<(Lsn, Exported), Error> {
    let replication_error = |context: String| {
        move |e: pgwire_replication::PgWireError| {
            let kind = match e {
                pgwire_replication::PgWireError::Auth(_)
                | pgwire_replication::PgWireError::Tls(_)
                | pgwire_replication::PgWireError::Server(_) => ErrorKind::Config,
                _ => ErrorKind::Connect,
            };
            Error::new(kind, context).with_source(e)
        }
    };
    let settings = database.replication(&config.slot, &config.publication)?;
    let mut session =
        ReplicationClient::connect_gated(settings)
            .await
            .map_err(replication_error(
                "opening a replication session".to_owned(),
            ))?;
    let rows = session
        .simple_query(&format!(
            "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput EXPORT_SNAPSHOT",
            quote_ident(&config.slot)
        ))
        .await
        .map_err(replication_error(creating_slot(config)))?;
    // slot_name, consistent_point, snapshot_name, output_plugin
    let text = |i: usize| {
        rows.first()
            .and_then(|row| row.get(i))
            .and_then(Option::as_ref)
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Protocol,
                    format!("CREATE_REPLICATION_SLOT answered without column {i}"),
                )
            })
    };
    let lsn = parse_lsn(&text(1)?)?;
    let name = text(2)?;
    tracing::info!(slot = %config.slot, consistent_point = %lsn, snapshot = %name, "created the replication slot with an exported snapshot");
    Ok((
        lsn,
        Exported {
            name,
            _session: session,
        },
    ))
}

/// Records that the rows read from the tables before streaming are all delivered.
pub(crate) async fn caught_up(sql: &Client, config: &PostgresCdcConfig) -> Result<(), Error> {
    set_mark(sql, config, Mark::caught_up(config)).await
}

async fn set_mark(sql: &Client, config: &PostgresCdcConfig, mark: Mark) -> Result<(), Error> {
    let comment = format!(
        "COMMENT ON PUBLICATION {} IS '{}'",
        quote_ident(&config.publication),
        mark.text(&config.slot).replace('\'', "''")
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
        drop_slot(sql, config).await?;
    }
    let lsn = create_slot(sql, config, Mark::ReplayPending).await?;
    Ok(Start {
        lsn,
        catch_up: Some(CatchUp::Replay),
    })
}

async fn drop_slot(sql: &Client, config: &PostgresCdcConfig) -> Result<(), Error> {
    sql.execute("SELECT pg_drop_replication_slot($1)", &[&config.slot])
        .await
        .map(drop)
        .map_err(sql_error("dropping the lost slot"))
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

/// The query that reads the rows of `table` (those matching `filter`, an SQL condition, when
/// given) with each column as text (NULL as `None`), ordered by `order_by`, and the column
/// names.
pub(crate) async fn read_query(
    sql: &Client,
    table: &TableName,
    order_by: &str,
    filter: Option<&str>,
) -> Result<(Vec<String>, String), Error> {
    let columns: Vec<String> = sql
        .query(
            "SELECT column_name::text FROM information_schema.columns \
             WHERE table_schema = $1 AND table_name = $2 ORDER BY ordinal_position",
            &[&table.schema(), &table.name()],
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
                "cannot read {table}: it has no column {order_by:?} to order rows by (set replay_order_by to one of: {})",
                columns.join(", ")
            ),
        ));
    }
    let filter = filter.map_or(String::new(), |f| format!(" WHERE ({f})"));
    let select = format!(
        "SELECT {} FROM {}{filter} ORDER BY {}",
        columns
            .iter()
            .map(|c| format!("{}::text", quote_ident(c)))
            .collect::<Vec<_>>()
            .join(", "),
        table.quoted(),
        quote_ident(order_by)
    );
    Ok((columns, select))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(snapshot: Snapshot) -> PostgresCdcConfig {
        let text = format!(
            "url = \"postgres://postgres@127.0.0.1/db\"\nslot = \"s\"\npublication = \"p\"\nsnapshot = \"{}\"",
            match snapshot {
                Snapshot::Never => "never",
                Snapshot::Initial => "initial",
            }
        );
        sluice_pipeline::config::deserialize(toml::from_str::<toml::Value>(&text).unwrap()).unwrap()
    }

    #[test]
    fn marks_read_back_for_their_own_slot_only() {
        for mark in Mark::ALL {
            let text = mark.text("s");
            assert_eq!(Mark::read(Some(&text), "s"), Some(mark), "{text}");
            assert_eq!(Mark::read(Some(&text), "other"), None, "{text}");
        }
        assert_eq!(Mark::read(Some("the orders outbox"), "s"), None);
        assert_eq!(Mark::read(None, "s"), None);
    }

    #[test]
    fn a_snapshot_is_refused_only_for_a_slot_made_without_one() {
        let initial = config(Snapshot::Initial);
        for (comment, refused) in [
            (None, true),
            (Some(Mark::Created.text("s")), true),
            (Some("someone else's comment".to_owned()), true),
            (Some(Mark::SnapshotPending.text("s")), false),
            (Some(Mark::Snapshotted.text("s")), false),
            (Some(Mark::ReplayPending.text("s")), false),
        ] {
            let refusal = snapshot_refusal(&initial, comment.as_deref());
            assert_eq!(refusal.is_some(), refused, "{comment:?}");
            if let Some(refusal) = refusal {
                assert!(refusal.contains("sluice backfill"), "{refusal}");
            }
        }
        assert_eq!(snapshot_refusal(&config(Snapshot::Never), None), None);
    }

    #[test]
    fn a_delivered_catch_up_keeps_the_snapshot_on_record_when_configured() {
        assert_eq!(
            Mark::caught_up(&config(Snapshot::Initial)),
            Mark::Snapshotted
        );
        assert_eq!(Mark::caught_up(&config(Snapshot::Never)), Mark::Created);
    }
}
