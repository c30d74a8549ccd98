//! One batch's life in SQL: locking the next unpublished rows (admitting only those whose
//! aggregate has no earlier row outside the batch), reading them as row events, and marking
//! them published or releasing them.
//!
//! Every statement goes through PostgreSQL's simple query protocol, so each step is one round
//! trip (`BEGIN` travels with the poll, `COMMIT` with the mark) and every column arrives in
//! PostgreSQL's own text format whatever its type. The poll and the mark are prepared once per
//! connection ([`Session`]) and executed by name, so they are not planned again for every batch.
//! The only values written into the SQL are numbers and `ctid`s that sluice formats itself;
//! names are quoted identifiers.

use std::fmt::{self, Write as _};
use std::str::FromStr;

use sluice_pipeline::{Event, Fields, Position, Text};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, SimpleQueryMessage, SimpleQueryRow};

use super::config::PollConfig;
use crate::postgres::connect::quote_ident;
use crate::postgres::error::DbError;
use crate::postgres::row::{INSERT, row_event};
use crate::postgres::table::{Privilege, Table};

/// Types the position column may have.
const POSITION_TYPES: &[&str] = &["smallint", "integer", "bigint"];
/// Types the published column may have.
const PUBLISHED_TYPES: &[&str] = &["timestamp with time zone", "timestamp without time zone"];
/// Columns every row-returning statement puts before the table's own: `ctid`, admitted.
const LEADING_COLUMNS: usize = 2;

/// A row's physical address (`ctid`): how a batch names its rows when marking them. It is
/// stable while the batch's transaction holds the row's lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ctid {
    block: u32,
    offset: u16,
}

impl fmt::Display for Ctid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "({},{})", self.block, self.offset)
    }
}

/// Text that is not a `ctid` such as `(12,3)`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a ctid")]
pub struct CtidError(String);

impl FromStr for Ctid {
    type Err = CtidError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || CtidError(text.to_owned());
        let (block, offset) = text
            .strip_prefix('(')
            .and_then(|t| t.strip_suffix(')'))
            .and_then(|t| t.split_once(','))
            .ok_or_else(error)?;
        Ok(Ctid {
            block: block.parse().map_err(|_| error())?,
            offset: offset.parse().map_err(|_| error())?,
        })
    }
}

/// A polled row: where it is, its event, and why it must be quarantined, if it must.
#[derive(Debug)]
pub struct PolledRow {
    /// Where the row is, for marking it.
    pub ctid: Ctid,
    /// The row event.
    pub event: Event,
    /// Why the row cannot be delivered (its position is NULL or negative, a column cannot be
    /// read); it is quarantined, and marked like a delivered row once the quarantine holds it.
    pub problem: Option<Text>,
}

/// What one poll locked.
#[derive(Debug, Default)]
pub struct LockedBatch {
    /// The admitted rows, in position order.
    pub rows: Vec<PolledRow>,
    /// Rows locked but not admitted: an earlier row of their aggregate is outside the batch
    /// and unpublished. The batch's transaction holds them until it ends; they are not marked.
    pub deferred: usize,
}

impl LockedBatch {
    /// Rows the poll locked, admitted or deferred.
    pub fn locked(&self) -> usize {
        self.rows.len() + self.deferred
    }
}

/// A connection with the poll and mark statements prepared on it ([`Poller::session`]).
#[derive(Debug)]
pub struct Session {
    client: Client,
}

impl Session {
    /// The connection.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Whether the connection is lost.
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }
}

/// The statements of polling one outbox table, checked against the catalog.
#[derive(Debug, Clone)]
pub struct Poller {
    table: Table,
    table_name: Text,
    position_column: String,
    statements: Statements,
}

impl Poller {
    /// Resolves the configured table and checks that it has the columns and the privileges
    /// polling needs.
    pub async fn resolve(client: &Client, config: &PollConfig) -> Result<Poller, DbError> {
        let table = Table::resolve(client, &config.table).await?;
        table.require_column(
            "position_column",
            &config.position_column,
            Some(POSITION_TYPES),
        )?;
        table.require_column(
            "published_column",
            &config.published_column,
            Some(PUBLISHED_TYPES),
        )?;
        table.require_column("aggregate_column", &config.aggregate_column, None)?;
        table.require_privilege(client, Privilege::Select).await?;
        table
            .require_privilege(client, Privilege::Update(&config.published_column))
            .await?;
        Ok(Poller {
            table_name: Text::from(table.qualified_name()),
            statements: Statements::new(&table.quoted_name(), config),
            position_column: config.position_column.clone(),
            table,
        })
    }

    /// The table.
    pub fn table(&self) -> &Table {
        &self.table
    }

    /// Prepares the poll and mark statements on `client`.
    pub async fn session(&self, client: Client) -> Result<Session, DbError> {
        client
            .batch_execute(&self.statements.prepare)
            .await
            .map_err(DbError::statement("preparing the poll statements"))?;
        Ok(Session { client })
    }

    /// Begins a transaction on `session` and locks the next batch of unpublished rows, skipping
    /// rows other transactions hold. A locked row is admitted (returned as an event at
    /// `position`) only if every unpublished row of its aggregate with a lower position is in
    /// this batch or in `in_flight`: rows of this relay's own open batches, which were emitted
    /// before this one.
    ///
    /// The transaction stays open: end it with [`Poller::mark`] once the events are
    /// acknowledged, or [`Poller::release`].
    pub async fn lock_batch<'a>(
        &self,
        session: &Session,
        position: Position,
        in_flight: impl IntoIterator<Item = &'a Ctid>,
    ) -> Result<LockedBatch, DbError> {
        let in_flight = tid_array(in_flight);
        let doing = "polling a batch";
        let client = &session.client;
        match client.simple_query(&Statements::poll(&in_flight)).await {
            Ok(messages) => self.read(messages, position),
            Err(error) if unreadable(&error) => {
                tracing::warn!(
                    "a polled row cannot be read; reading the batch row by row to quarantine it"
                );
                self.release(session).await?;
                self.lock_row_by_row(client, position, &in_flight).await
            }
            Err(error) => Err(DbError::statement(doing)(error)),
        }
    }

    /// The way around a row the server cannot send as text (which fails the whole poll
    /// statement): lock the batch reading only positions, then read each admitted row in a
    /// savepoint of its own. A row that fails keeps only its position and is quarantined.
    async fn lock_row_by_row(
        &self,
        client: &Client,
        position: Position,
        in_flight: &str,
    ) -> Result<LockedBatch, DbError> {
        let doing = "polling a batch row by row";
        let messages = client
            .simple_query(&self.statements.poll_positions(in_flight))
            .await
            .map_err(DbError::statement(doing))?;
        let mut batch = self.read(messages, position)?;
        for row in &mut batch.rows {
            match client
                .simple_query(&self.statements.read_row(row.ctid))
                .await
            {
                Ok(messages) => {
                    if let Some(full) = self.read(messages, position)?.rows.pop() {
                        *row = full;
                    }
                }
                Err(error) if unreadable(&error) => {
                    client
                        .batch_execute(ROLLBACK_ROW)
                        .await
                        .map_err(DbError::statement(doing))?;
                    let code = error.code().map_or("unknown", SqlState::code);
                    row.problem.get_or_insert_with(|| {
                        Text::from(format!("the row cannot be read as text (SQLSTATE {code})"))
                    });
                }
                Err(error) => return Err(DbError::statement(doing)(error)),
            }
        }
        Ok(batch)
    }

    /// Marks `rows` published and commits the batch's transaction. Returns how many rows the
    /// update touched.
    pub async fn mark(&self, session: &Session, rows: &[Ctid]) -> Result<u64, DbError> {
        let messages = session
            .client
            .simple_query(&Statements::mark(rows))
            .await
            .map_err(DbError::statement("marking rows published"))?;
        // Completions come for SET, UPDATE and COMMIT, in that order.
        messages
            .iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::CommandComplete(n) => Some(*n),
                _ => None,
            })
            .nth(1)
            .ok_or_else(|| DbError::Unexpected {
                doing: "marking rows published",
                detail: "no command completion".to_owned(),
            })
    }

    /// Ends the batch's transaction without marking anything, releasing its rows.
    pub async fn release(&self, session: &Session) -> Result<(), DbError> {
        session
            .client
            .batch_execute("ROLLBACK")
            .await
            .map_err(DbError::statement("releasing a batch"))
    }

    fn read(
        &self,
        messages: Vec<SimpleQueryMessage>,
        position: Position,
    ) -> Result<LockedBatch, DbError> {
        let unexpected = |detail: String| DbError::Unexpected {
            doing: "polling a batch",
            detail,
        };
        let mut batch = LockedBatch::default();
        let mut names: Vec<Text> = Vec::new();
        let mut position_index = None;
        for message in messages {
            match message {
                SimpleQueryMessage::RowDescription(columns) => {
                    names = columns
                        .iter()
                        .skip(LEADING_COLUMNS)
                        .map(|c| Text::from(c.name()))
                        .collect();
                    position_index = names.iter().position(|n| *n == *self.position_column);
                }
                SimpleQueryMessage::Row(row) => {
                    let ctid = row
                        .try_get(0)
                        .ok()
                        .flatten()
                        .ok_or_else(|| unexpected("a row without its ctid".to_owned()))?;
                    let ctid: Ctid = ctid.parse().map_err(|e| unexpected(format!("{e}")))?;
                    if row.try_get(1).ok().flatten() != Some("t") {
                        batch.deferred += 1;
                        continue;
                    }
                    let index = position_index.ok_or_else(|| {
                        unexpected(format!(
                            "no column {:?} in the result",
                            self.position_column
                        ))
                    })?;
                    batch
                        .rows
                        .push(self.row(&row, ctid, &names, index, position));
                }
                _ => {}
            }
        }
        Ok(batch)
    }

    /// One admitted row as an event, with the reason to quarantine it if it has one.
    fn row(
        &self,
        row: &SimpleQueryRow,
        ctid: Ctid,
        names: &[Text],
        position_index: usize,
        position: Position,
    ) -> PolledRow {
        let mut fields = Fields::with_capacity(names.len());
        let mut problem = None;
        for (i, name) in names.iter().enumerate() {
            let value = match row.try_get(i + LEADING_COLUMNS) {
                Ok(value) => value.map(Text::from),
                Err(_) => {
                    problem.get_or_insert_with(|| {
                        Text::from(format!("column {name} cannot be read as UTF-8 text"))
                    });
                    None
                }
            };
            fields.push(name.clone(), value);
        }
        let value = fields.iter().nth(position_index).and_then(|(_, v)| v);
        let id = match event_id(&self.position_column, value) {
            Ok(id) => id,
            Err(reason) => {
                problem.get_or_insert(reason);
                value
                    .cloned()
                    .unwrap_or_else(|| Text::from(format!("ctid{ctid}")))
            }
        };
        let event = row_event(id, INSERT, self.table_name.clone(), fields, position);
        PolledRow {
            ctid,
            event,
            problem,
        }
    }
}

/// The event id of a row whose position column holds `value`: the value itself when it is a
/// non-negative integer, otherwise the reason the row must be quarantined (naming the column,
/// never the value).
fn event_id(column: &str, value: Option<&Text>) -> Result<Text, Text> {
    match value {
        None => Err(Text::from(format!("position column {column} is null"))),
        Some(text) if text.parse::<u64>().is_ok() => Ok(text.clone()),
        Some(_) => Err(Text::from(format!(
            "position column {column} is not a non-negative integer"
        ))),
    }
}

/// Whether a statement failed because of what a row holds (a value the server cannot convert
/// to text, corrupted data) rather than because of the statement or the connection.
fn unreadable(error: &tokio_postgres::Error) -> bool {
    error
        .code()
        .is_some_and(|code| code.code().starts_with("22") || *code == SqlState::DATA_CORRUPTED)
}

/// Undoes a failed [`Statements::read_row`], keeping the batch's locks.
const ROLLBACK_ROW: &str = "ROLLBACK TO SAVEPOINT sluice_row; RELEASE SAVEPOINT sluice_row";

/// The SQL text of one table's statements, with the parts where a call's values go. Every
/// statement that returns rows returns the same shape: `ctid`, whether the row is admitted
/// (`t`), then the row's columns.
#[derive(Debug, Clone)]
struct Statements {
    /// `PREPARE`s the poll (`sluice_poll`, taking the `tid[]` of the relay's in-flight rows)
    /// and the mark (`sluice_mark`, taking the `tid[]` of the rows to mark).
    prepare: String,
    /// The poll returning only the position column, with the in-flight rows as a literal:
    /// up to the literal, and after it.
    poll_positions: (String, String),
    /// Up to the `ctid` of the row to read.
    read_row_head: String,
}

impl Statements {
    fn new(table: &str, config: &PollConfig) -> Self {
        let position = quote_ident(&config.position_column);
        let published = quote_ident(&config.published_column);
        let aggregate = quote_ident(&config.aggregate_column);
        let limit = config.batch_size;
        // `batch` locks the next unpublished rows in position order, skipping rows other
        // transactions hold. `known` is what may precede a batch row: the batch and the
        // relay's rows in flight. `first_skipped` is the first unpublished row up to the
        // batch's last that is not known (one walk of the position index): batch rows before
        // it are admitted, and when there is none (a relay draining alone) nothing more is
        // done. Otherwise `blocked` finds, for each aggregate with batch rows after it, the
        // aggregate's first unpublished row that is not known (a walk of the aggregate's rows
        // in position order), and its batch rows before that one are admitted. NULL positions
        // and aggregates compare as unknown: such rows are admitted (and a NULL position is
        // quarantined).
        let head = format!(
            "WITH batch AS MATERIALIZED ( \
                 SELECT o.ctid AS sluice_ctid, o.{position} AS sluice_position, \
                        o.{aggregate} AS sluice_aggregate, o AS sluice_row \
                 FROM {table} o \
                 WHERE o.{published} IS NULL \
                 ORDER BY o.{position} \
                 LIMIT {limit} \
                 FOR UPDATE OF o SKIP LOCKED \
             ), \
             known AS MATERIALIZED ( \
                 SELECT sluice_ctid FROM batch UNION ALL SELECT unnest("
        );
        let middle = format!(
            ") \
             ), \
             first_skipped AS ( \
                 SELECT p.{position} AS sluice_position \
                 FROM {table} p \
                 WHERE p.{published} IS NULL \
                   AND p.{position} <= (SELECT max(sluice_position) FROM batch) \
                   AND p.ctid NOT IN (SELECT sluice_ctid FROM known) \
                 ORDER BY p.{position} \
                 LIMIT 1 \
             ), \
             blocked AS ( \
                 SELECT a.sluice_aggregate, f.sluice_position AS first_outside \
                 FROM (SELECT DISTINCT b.sluice_aggregate FROM batch b \
                       WHERE b.sluice_position > (SELECT sluice_position FROM first_skipped)) a \
                 CROSS JOIN LATERAL ( \
                     SELECT p.{position} AS sluice_position \
                     FROM {table} p \
                     WHERE p.{aggregate} = a.sluice_aggregate \
                       AND p.{published} IS NULL \
                       AND p.ctid NOT IN (SELECT sluice_ctid FROM known) \
                     ORDER BY p.{position} \
                     LIMIT 1 \
                 ) f \
             ) \
             SELECT b.sluice_ctid, \
                    coalesce(b.sluice_position < k.first_outside, true), \
                    (b.sluice_row)."
        );
        let tail = " FROM batch b \
             LEFT JOIN blocked k ON k.sluice_aggregate = b.sluice_aggregate \
             ORDER BY b.sluice_position";
        let read_row_head = format!(
            "SAVEPOINT sluice_row; SELECT o.ctid, true, o.* FROM {table} o WHERE o.ctid = '"
        );
        // `statement_timestamp()`, not `now()`: `now()` is when the batch was polled.
        let prepare = format!(
            "PREPARE sluice_poll(tid[]) AS {head}$1::tid[]{middle}*{tail}; \
             PREPARE sluice_mark(tid[]) AS \
             UPDATE {table} SET {published} = statement_timestamp() WHERE ctid = ANY($1)"
        );
        Statements {
            prepare,
            poll_positions: (
                format!("BEGIN ISOLATION LEVEL READ COMMITTED; {head}'"),
                format!("'::tid[]{middle}{position}{tail}"),
            ),
            read_row_head,
        }
    }

    /// Begins a batch and locks it; `in_flight` is a `tid[]` literal from [`tid_array`].
    fn poll(in_flight: &str) -> String {
        format!("BEGIN ISOLATION LEVEL READ COMMITTED; EXECUTE sluice_poll('{in_flight}')")
    }

    /// [`Statements::poll`] returning only positions, for reading the batch row by row.
    fn poll_positions(&self, in_flight: &str) -> String {
        let (head, tail) = &self.poll_positions;
        [head, in_flight, tail].concat()
    }

    /// Reads one locked row in a savepoint, so that failing to read it spares the batch.
    fn read_row(&self, ctid: Ctid) -> String {
        format!(
            "{}{ctid}'; RELEASE SAVEPOINT sluice_row",
            self.read_row_head
        )
    }

    /// Marks `rows` and commits, asynchronously: the commit does not wait for the WAL flush,
    /// which keeps the relay's commits from competing with the application's for it. A server
    /// crash may lose the last marks, and their rows are delivered again: never a loss, since
    /// the events were acknowledged before.
    fn mark(rows: &[Ctid]) -> String {
        format!(
            "SET LOCAL synchronous_commit = off; EXECUTE sluice_mark('{}'); COMMIT",
            tid_array(rows)
        )
    }
}

/// `ctids` as the text of a `tid[]` literal: `{"(0,1)","(0,2)"}`.
fn tid_array<'a>(ctids: impl IntoIterator<Item = &'a Ctid>) -> String {
    let mut text = String::from("{");
    for (i, ctid) in ctids.into_iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        // Writing to a String cannot fail.
        let _ = write!(text, "\"{ctid}\"");
    }
    text.push('}');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctids_round_trip_and_refuse_anything_else() {
        let ctid: Ctid = "(4294967295,65535)".parse().unwrap();
        assert_eq!(ctid.to_string(), "(4294967295,65535)");
        for bad in [
            "",
            "(1,2",
            "1,2",
            "(1;2)",
            "(-1,2)",
            "(1,65536)",
            "(1,2);DROP",
            "(a,b)",
        ] {
            assert!(bad.parse::<Ctid>().is_err(), "{bad}");
        }
    }

    #[test]
    fn event_ids_are_non_negative_positions() {
        let id = |v: Option<&str>| event_id("seq", v.map(Text::from).as_ref());
        assert_eq!(id(Some("42")).unwrap(), "42");
        assert_eq!(id(None).unwrap_err(), "position column seq is null");
        assert_eq!(
            id(Some("-3")).unwrap_err(),
            "position column seq is not a non-negative integer"
        );
    }

    fn config(extra: &str) -> PollConfig {
        let text = format!("url = \"postgres://u@h/db\"\n{extra}");
        sluice_pipeline::config::deserialize(toml::from_str(&text).unwrap()).unwrap()
    }

    #[test]
    fn statements_quote_names_and_carry_the_values() {
        let config = config(
            "position_column = \"Seq\"\npublished_column = \"sent \\\"at\\\"\"\nbatch_size = 7",
        );
        let statements = Statements::new("\"app\".\"outbox\"", &config);
        let a: Ctid = "(0,1)".parse().unwrap();
        let b: Ctid = "(3,2)".parse().unwrap();
        let prepare = &statements.prepare;
        assert!(
            prepare.starts_with("PREPARE sluice_poll(tid[]) AS WITH batch"),
            "{prepare}"
        );
        assert!(prepare.contains("ORDER BY o.\"Seq\" LIMIT 7 FOR UPDATE OF o SKIP LOCKED"));
        assert!(
            prepare.contains("o.\"sent \"\"at\"\"\" IS NULL"),
            "{prepare}"
        );
        assert!(prepare.contains("unnest($1::tid[])"), "{prepare}");
        assert!(
            prepare.contains("(b.sluice_row).* FROM batch b"),
            "{prepare}"
        );
        assert!(prepare.ends_with(
            "PREPARE sluice_mark(tid[]) AS UPDATE \"app\".\"outbox\" \
             SET \"sent \"\"at\"\"\" = statement_timestamp() WHERE ctid = ANY($1)"
        ));
        assert_eq!(
            Statements::poll(&tid_array([&a, &b])),
            r#"BEGIN ISOLATION LEVEL READ COMMITTED; EXECUTE sluice_poll('{"(0,1)","(3,2)"}')"#
        );
        assert_eq!(
            Statements::mark(&[a]),
            r#"SET LOCAL synchronous_commit = off; EXECUTE sluice_mark('{"(0,1)"}'); COMMIT"#
        );
        let positions = statements.poll_positions(&tid_array([]));
        assert!(positions.starts_with("BEGIN ISOLATION LEVEL READ COMMITTED; WITH batch"));
        assert!(positions.contains("unnest('{}'::tid[])"), "{positions}");
        assert!(
            positions.contains("(b.sluice_row).\"Seq\" FROM batch b"),
            "{positions}"
        );
        assert_eq!(
            statements.read_row(b),
            "SAVEPOINT sluice_row; SELECT o.ctid, true, o.* FROM \"app\".\"outbox\" o \
             WHERE o.ctid = '(3,2)'; RELEASE SAVEPOINT sluice_row"
        );
    }
}
