//! The running `postgres_cdc` source: a session (prepare the slot, deliver the snapshot or
//! the replay the slot needs first, stream) per run — the runtime runs it again after a lost
//! connection — and the stream itself: decoding, batching and confirming.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use pgwire_replication::{ReplicationClient, ReplicationEvent};
use sluice_pipeline::{
    Error, ErrorKind, Event, Fields, Output, Position, Source, SourceContext, Text,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::Client;

use super::config::{HEARTBEAT_PREFIX, Operation, PostgresCdcConfig};
use super::metrics::CdcMetrics;
use super::read::TableRead;
use super::slot::{self, CatchUp};
use crate::postgres::cleanup::{Cleanup, Delivered};
use crate::postgres::connect::Database;
use crate::postgres::pgoutput::{
    self as pgoutput, Column, Decoder, Lsn, Message, PgTimestamp, ProtocolVersion, TupleData,
};
use crate::postgres::row::{self, MESSAGE_PREFIX_HEADER};
use crate::postgres::table::Table;

/// How long shutdown waits for the final confirmation to be sent, beyond `status_interval`.
const FINAL_CONFIRM_GRACE: Duration = Duration::from_secs(1);

/// The running `postgres_cdc` source.
#[derive(Debug)]
pub struct PostgresCdc {
    config: PostgresCdcConfig,
    database: Database,
    tables: Vec<String>,
}

impl PostgresCdc {
    /// A source for `config` on `database`.
    pub fn new(config: PostgresCdcConfig, database: Database) -> Self {
        let tables = config.qualified_tables();
        PostgresCdc {
            config,
            database,
            tables,
        }
    }
}

impl Source for PostgresCdc {
    /// One session: SQL connection, slot, optional replay, replication stream until shutdown
    /// or an error; then what was emitted drains and the checkpoint is confirmed. The runtime
    /// runs it again after a retryable error, and the next session starts from the slot.
    async fn run(&mut self, cx: &mut SourceContext) -> Result<(), Error> {
        let mut stream = Stream::new(self, CdcMetrics::new(cx.id()));
        let mut client = None;
        let result = self.session(cx, &mut stream, &mut client).await;
        cx.set_ready(false);
        stream.cleanups.iter().for_each(JoinHandle::abort);
        if let Err(error) = &result
            && error.is_retryable()
        {
            stream.metrics.reconnects.increment(1);
        }
        cx.drain().await;
        stream.confirm(cx, client.as_ref());
        if let Some(mut client) = client {
            stream.flush_confirmation(&client).await;
            let _ = client.shutdown().await;
        }
        tracing::info!(confirmed = %stream.confirmed, "postgres_cdc stopped");
        result
    }
}

impl PostgresCdc {
    async fn session(
        &self,
        cx: &mut SourceContext,
        stream: &mut Stream,
        client: &mut Option<ReplicationClient>,
    ) -> Result<(), Error> {
        let sql = self.database.connect().await?;
        let start =
            slot::prepare(&sql, &self.database, &self.config, cx.term().map(|t| &**t)).await?;
        stream.confirmed = start.lsn;
        if let Some(cleanup) = &self.config.cleanup {
            for table in &self.tables {
                let table = Table::resolve(&sql, table).await?;
                let delivered = Delivered::CreatedBefore {
                    column: self.config.created_column.clone(),
                    confirmed: stream.confirmed_commit.subscribe(),
                };
                let cleanup = Cleanup::prepare(&sql, &table, delivered, cleanup).await?;
                let run = cleanup.run(self.database.clone(), cx.id().to_owned());
                stream.cleanups.push(tokio::spawn(run));
            }
        }
        if let Some(catch_up) = start.catch_up {
            if !self.catch_up(cx, stream, catch_up, start.lsn).await? {
                // Stopped before every row was delivered: the next session reads them again.
                return Ok(());
            }
            slot::caught_up(&sql, &self.config).await?;
        }
        let pg_lsn = pgwire_replication::Lsn::from_u64(stream.confirmed.0);
        let settings = self
            .database
            .replication(&self.config.slot, &self.config.publication)?
            .with_start_lsn(pg_lsn)
            .with_ack_lsn(pg_lsn)
            .with_status_interval(self.config.status_interval.get());
        let mut replication = ReplicationClient::connect(settings)
            .await
            .map_err(replication_error("connecting the replication stream"))?;
        replication
            .wait_started()
            .await
            .map_err(replication_error("starting replication"))?;
        tracing::info!(slot = %self.config.slot, from = %stream.confirmed, "streaming");
        cx.set_ready(true);
        let replication = client.insert(replication);
        stream.run(&sql, replication, cx).await
    }

    /// Delivers the rows of the tables the stream cannot (see [`CatchUp`]), at a position just
    /// below the slot's `consistent_point`, so they precede everything the slot streams, and
    /// returns once they are all delivered (true), or once asked to stop before that (false).
    async fn catch_up(
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

fn replication_error(context: &'static str) -> impl Fn(pgwire_replication::PgWireError) -> Error {
    move |e| {
        let kind = match e {
            pgwire_replication::PgWireError::Auth(_) | pgwire_replication::PgWireError::Tls(_) => {
                ErrorKind::Config
            }
            _ => ErrorKind::Connect,
        };
        Error::new(kind, context).with_source(e)
    }
}

/// A relation (table) as its last Relation message described it.
#[derive(Debug)]
struct Relation {
    name: Text,
    columns: Vec<Text>,
    /// Whether its rows become events (it is one of the configured tables).
    included: bool,
}

/// The transaction being read.
#[derive(Debug)]
struct Transaction {
    commit: Lsn,
    xid: u32,
    commit_time: Option<SystemTime>,
    /// Events read from it so far.
    events: u32,
}

/// State of the stream across sessions: what was read, emitted and confirmed.
struct Stream {
    tables: Vec<String>,
    operations: Vec<Operation>,
    message_prefixes: Vec<String>,
    max_batch_events: usize,
    heartbeat: Option<Duration>,
    lag_interval: Duration,
    status_interval: Duration,
    slot: String,
    metrics: CdcMetrics,
    decoder: Decoder,
    relations: HashMap<u32, Relation>,
    transaction: Option<Transaction>,
    /// Events read and not yet emitted (the tail of the stream).
    pending: Output,
    /// Whether the last emission left its position open (a transaction emitted in parts).
    open: bool,
    /// Emitted positions not yet passed by the checkpoint, each with the LSN that confirms it
    /// and its transaction's commit time.
    awaiting: VecDeque<(Lsn, Lsn, Option<SystemTime>)>,
    /// The commit time of the last confirmed transaction, for the cleanup.
    confirmed_commit: watch::Sender<Option<SystemTime>>,
    /// The running cleanups, one per table.
    cleanups: Vec<JoinHandle<()>>,
    /// The furthest position read with nothing after it left to deliver (a keepalive, the end
    /// of a transaction without events, a heartbeat): confirmable once nothing is in flight.
    seen: Lsn,
    /// The server time of `seen`, when known (a commit time, a heartbeat's write time).
    seen_time: Option<SystemTime>,
    /// The newest server time before which everything is confirmed, for the lag in seconds.
    delivered_until: Option<SystemTime>,
    /// The position confirmed to PostgreSQL.
    confirmed: Lsn,
}

impl Stream {
    fn new(source: &PostgresCdc, metrics: CdcMetrics) -> Self {
        let c = &source.config;
        Stream {
            tables: source.tables.clone(),
            operations: c.operations.clone(),
            message_prefixes: c.message_prefixes.clone(),
            max_batch_events: c.max_batch_events,
            heartbeat: c.heartbeat.map(|h| h.get()),
            lag_interval: c.lag_interval.get(),
            status_interval: c.status_interval.get(),
            slot: c.slot.clone(),
            metrics,
            decoder: Decoder::new(ProtocolVersion::V1),
            relations: HashMap::new(),
            transaction: None,
            pending: Output::default(),
            open: false,
            awaiting: VecDeque::new(),
            confirmed_commit: watch::channel(None).0,
            cleanups: Vec::new(),
            seen: Lsn(0),
            seen_time: None,
            delivered_until: None,
            confirmed: Lsn(0),
        }
    }

    async fn run(
        &mut self,
        sql: &Client,
        client: &mut ReplicationClient,
        cx: &mut SourceContext,
    ) -> Result<(), Error> {
        let shutdown = cx.shutdown().clone();
        let mut heartbeat = self.heartbeat.map(tokio::time::interval);
        let mut lag = tokio::time::interval(self.lag_interval);
        loop {
            tokio::select! {
                biased;
                () = shutdown.requested() => return Ok(()),
                () = cx.progressed() => self.confirm(cx, Some(client)),
                event = client.recv() => {
                    let mut event = event;
                    loop {
                        match event.map_err(replication_error("reading the replication stream"))? {
                            Some(e) => self.handle(e),
                            None => return Err(Error::new(ErrorKind::Connect, "the replication stream ended")),
                        }
                        if self.pending.len() >= self.max_batch_events {
                            break;
                        }
                        // Take what is already there without waiting: batches grow under load
                        // and stay single events when idle.
                        let ready = tokio::select! {
                            biased;
                            e = client.recv() => Some(e),
                            () = std::future::ready(()) => None,
                        };
                        match ready {
                            Some(e) => event = e,
                            None => break,
                        }
                    }
                    self.flush(cx).await?;
                    self.confirm(cx, Some(client));
                }
                Some(_) = async { Some(heartbeat.as_mut()?.tick().await) } => {
                    slot::heartbeat(sql).await?;
                    self.metrics.heartbeats.increment(1);
                }
                _ = lag.tick() => {
                    if let Some(bytes) = slot::lag_bytes(sql, &self.slot).await? {
                        self.metrics.lag.set(bytes as f64);
                        cx.report("lag_bytes", bytes as f64);
                    }
                    if let Some(seconds) = self.lag_seconds() {
                        cx.report("lag_seconds", seconds);
                    }
                }
            }
        }
    }

    fn handle(&mut self, event: ReplicationEvent) {
        match event {
            ReplicationEvent::KeepAlive { wal_end, .. } => {
                if self.transaction.is_none() {
                    self.seen = self.seen.max(Lsn(wal_end.as_u64()));
                }
            }
            ReplicationEvent::Begin {
                final_lsn,
                xid,
                commit_time_micros,
            } => {
                self.transaction = Some(Transaction {
                    commit: Lsn(final_lsn.as_u64()),
                    xid,
                    commit_time: PgTimestamp(commit_time_micros).to_system_time(),
                    events: 0,
                });
            }
            ReplicationEvent::XLogData { data, .. } => {
                self.metrics.bytes.increment(data.len() as u64);
                self.change(data);
            }
            ReplicationEvent::Message {
                transactional,
                lsn,
                prefix,
                content,
            } => self.message(transactional, Lsn(lsn.as_u64()), prefix, content),
            ReplicationEvent::Commit {
                end_lsn,
                commit_time_micros,
                ..
            } => {
                self.metrics.transactions.increment(1);
                if let Some(time) = PgTimestamp(commit_time_micros).to_system_time()
                    && let Ok(since) = time.duration_since(std::time::UNIX_EPOCH)
                {
                    self.metrics.last_commit.set(since.as_secs_f64());
                }
                let end = Lsn(end_lsn.as_u64());
                match self.transaction.take() {
                    Some(t) if t.events > 0 => {
                        self.awaiting.push_back((t.commit, end, t.commit_time));
                    }
                    Some(t) => self.saw(end, t.commit_time),
                    None => self.saw(end, None),
                }
            }
            ReplicationEvent::StoppedAt { .. } => {}
        }
    }

    /// A pgoutput change message inside a transaction.
    fn change(&mut self, data: Bytes) {
        let message = match self.decoder.decode(data.clone()) {
            Ok(message) => message,
            Err(e) => {
                self.metrics.decode_errors.increment(1);
                self.reject_raw(data, format!("undecodable pgoutput message: {e}"));
                return;
            }
        };
        let (relation_id, operation, tuple) = match message {
            Message::Relation(relation) => return self.relation(relation),
            Message::Insert(insert) => (insert.relation_id, Operation::Insert, insert.new),
            Message::Update(update) => (update.relation_id, Operation::Update, update.new),
            Message::Delete(delete) => {
                let old = match delete.old {
                    pgoutput::OldTuple::Key(t) | pgoutput::OldTuple::Full(t) => t,
                };
                (delete.relation_id, Operation::Delete, old)
            }
            Message::Truncate(_) => {
                self.metrics.ignored.increment(1);
                tracing::warn!("a published table was truncated; truncates are not events");
                return;
            }
            _ => return,
        };
        if !self.operations.contains(&operation) {
            self.metrics.ignored.increment(1);
            return;
        }
        self.row(relation_id, operation, tuple, data);
    }

    fn relation(&mut self, relation: pgoutput::Relation) {
        let name = format!("{}.{}", relation.namespace, relation.name);
        let included = self.tables.contains(&name);
        self.relations.insert(
            relation.id,
            Relation {
                name: Text::from(name),
                columns: relation.columns.into_iter().map(|c| c.name).collect(),
                included,
            },
        );
    }

    fn row(&mut self, relation_id: u32, operation: Operation, tuple: TupleData, raw: Bytes) {
        let Some(table) = self.relations.get(&relation_id) else {
            self.reject_raw(
                raw,
                format!("row of relation {relation_id}, which no Relation message described"),
            );
            return;
        };
        if !table.included {
            self.metrics.ignored.increment(1);
            return;
        }
        let mut problem = None;
        if table.columns.len() != tuple.columns.len() {
            problem = Some(format!(
                "{} has {} columns but the row has {}",
                table.name,
                table.columns.len(),
                tuple.columns.len()
            ));
        }
        let mut fields = Fields::with_capacity(table.columns.len());
        for (name, column) in table.columns.iter().zip(tuple.columns) {
            let value = match column {
                Column::Null => None,
                Column::Text(bytes) => match Text::from_utf8(bytes) {
                    Ok(text) => Some(text),
                    Err(_) => {
                        problem.get_or_insert_with(|| format!("column {name} is not valid UTF-8"));
                        None
                    }
                },
                Column::UnchangedToast => {
                    problem.get_or_insert_with(|| format!(
                        "column {name} arrived as an unchanged TOAST value, so its content is unknown (keep the outbox insert-only, or set REPLICA IDENTITY FULL)"
                    ));
                    None
                }
                Column::Binary(_) => {
                    problem
                        .get_or_insert_with(|| format!("column {name} arrived in binary format"));
                    None
                }
            };
            fields.push(name.clone(), value);
        }
        let kind = match operation {
            Operation::Insert => row::INSERT,
            Operation::Update => row::UPDATE,
            Operation::Delete => row::DELETE,
        };
        let table = table.name.clone();
        let Some(event) = self.event(kind, table, fields) else {
            return;
        };
        match problem {
            Some(reason) => self.pending.reject(event, reason),
            None => self.pending.push(event),
        }
    }

    /// A logical decoding message: a heartbeat, an outbox message, or something ignored.
    fn message(&mut self, transactional: bool, lsn: Lsn, prefix: String, content: Bytes) {
        let wanted = self.message_prefixes.contains(&prefix);
        if !transactional && (prefix == HEARTBEAT_PREFIX || !wanted) {
            if self.transaction.is_none() {
                let written = (prefix == HEARTBEAT_PREFIX)
                    .then(|| heartbeat_time(&content))
                    .flatten();
                self.saw(lsn, written);
            }
            return;
        }
        if !wanted {
            return;
        }
        let mut event = if transactional {
            match self.event(row::MESSAGE, Text::default(), Fields::new()) {
                Some(event) => event,
                None => return,
            }
        } else {
            self.metrics.events.increment(1);
            self.awaiting.push_back((lsn, lsn, None));
            Event::new(format!("{lsn}/0"), Position(lsn.0), Bytes::new())
        };
        event.event_type = row::MESSAGE;
        event.headers = Fields::new();
        event.headers.push(
            Text::from_static(MESSAGE_PREFIX_HEADER),
            Some(Text::from(prefix)),
        );
        event.payload = content;
        self.pending.push(event);
    }

    /// A new event of the current transaction, with its id and metadata; `None` (after
    /// quarantining nothing: there is no event to quarantine) outside a transaction, which the
    /// protocol does not allow.
    fn event(&mut self, kind: Text, table: Text, fields: Fields) -> Option<Event> {
        let Some(transaction) = self.transaction.as_mut() else {
            tracing::error!("pgoutput sent a change outside a transaction; ignoring it");
            self.metrics.decode_errors.increment(1);
            return None;
        };
        let ordinal = transaction.events;
        transaction.events += 1;
        let id = Text::from(format!("{}/{ordinal}", transaction.commit));
        let mut event = row::row_event(id, kind, table, fields, Position(transaction.commit.0));
        event.meta.commit_time = transaction.commit_time;
        event.meta.transaction = Some(u64::from(transaction.xid));
        self.metrics.events.increment(1);
        Some(event)
    }

    /// Passes `lsn`, with nothing to deliver up to it, written at server time `time` when known.
    fn saw(&mut self, lsn: Lsn, time: Option<SystemTime>) {
        self.seen = self.seen.max(lsn);
        self.seen_time = self.seen_time.max(time);
    }

    /// Sets the lag in seconds: from the commit of the oldest transaction awaiting delivery,
    /// or, with none, from the newest time everything before which is delivered.
    fn lag_seconds(&self) -> Option<f64> {
        let oldest = self.awaiting.front().and_then(|&(_, _, time)| time);
        self.metrics.lag_seconds(oldest.or(self.delivered_until))
    }

    /// Quarantines bytes that could not become a row, keeping them as the payload.
    fn reject_raw(&mut self, raw: Bytes, reason: String) {
        if let Some(mut event) = self.event(row::INSERT, Text::default(), Fields::new()) {
            event.payload = raw;
            self.pending.reject(event, reason);
        }
    }

    /// Emits what was read: complete when no transaction is in progress, open otherwise.
    async fn flush(&mut self, cx: &mut SourceContext) -> Result<(), Error> {
        let in_transaction = self.transaction.is_some();
        if self.pending.is_empty() {
            if self.open && !in_transaction {
                cx.seal();
                self.open = false;
            }
            return Ok(());
        }
        let out = std::mem::take(&mut self.pending);
        if in_transaction {
            cx.emit_open(out).await?;
        } else {
            cx.emit(out).await?;
        }
        self.open = in_transaction;
        Ok(())
    }

    /// Confirms to PostgreSQL the end of every transaction the checkpoint has passed, or, with
    /// nothing in flight, the furthest position seen.
    fn confirm(&mut self, cx: &mut SourceContext, client: Option<&ReplicationClient>) {
        let checkpoint = cx.checkpoint().map(|p| Lsn(p.0));
        let mut target = self.confirmed;
        let mut committed = None;
        while let Some(&(position, confirms, commit_time)) = self.awaiting.front() {
            if checkpoint.is_none_or(|c| c < position) {
                break;
            }
            target = target.max(confirms);
            committed = commit_time.or(committed);
            self.awaiting.pop_front();
        }
        if let Some(time) = committed {
            self.confirmed_commit.send_if_modified(|last| {
                let newer = last.is_none_or(|l| l < time);
                if newer {
                    *last = Some(time);
                }
                newer
            });
        }
        self.delivered_until = self.delivered_until.max(committed);
        if self.awaiting.is_empty() && self.pending.is_empty() && self.transaction.is_none() {
            target = target.max(self.seen);
            self.delivered_until = self.delivered_until.max(self.seen_time);
        }
        self.lag_seconds();
        if target > self.confirmed {
            self.confirmed = target;
            self.metrics.confirmed.set(target.0 as f64);
            if let Some(client) = client {
                client.update_applied_lsn(pgwire_replication::Lsn::from_u64(target.0));
            }
        }
    }

    /// Waits (briefly) until the confirmed position has been sent to the server, so a clean
    /// shutdown leaves the slot exactly at the checkpoint.
    async fn flush_confirmation(&self, client: &ReplicationClient) {
        client.update_applied_lsn(pgwire_replication::Lsn::from_u64(self.confirmed.0));
        let metrics = client.metrics();
        let deadline = tokio::time::Instant::now() + self.status_interval + FINAL_CONFIRM_GRACE;
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        while metrics.last_applied_lsn().as_u64() < self.confirmed.0
            && tokio::time::Instant::now() < deadline
            && client.is_running()
        {
            tick.tick().await;
        }
    }
}

/// The write time a heartbeat carries (see [`slot::heartbeat`]); `None` for one written
/// without it.
fn heartbeat_time(content: &[u8]) -> Option<SystemTime> {
    let micros: u64 = std::str::from_utf8(content).ok()?.parse().ok()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_micros(micros))
}
