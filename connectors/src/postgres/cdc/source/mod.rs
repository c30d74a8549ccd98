//! The running `postgres_cdc` source, one module per role:
//! - `session`: one run of the source (prepare the slot, start the cleanups, deliver what the
//!   slot needs first, open the replication stream) and the stream's loop; the runtime runs a
//!   session again after a lost connection;
//! - `replay`: the rows read from the tables rather than the WAL before streaming (the initial
//!   snapshot, or the replay after a lost slot);
//! - `rows`: the stream's messages turned into row and message events, and their emission;
//! - `confirm`: what may be confirmed to PostgreSQL, and when.
//!
//! [`Stream`] holds the state those roles share across sessions.

mod confirm;
mod replay;
mod rows;
mod session;

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime};

use sluice_pipeline::{Error, Output, Source, SourceContext};
use tokio::sync::watch;
use tokio::task::JoinSet;

use self::rows::{Relation, Transaction};
use super::config::{Operation, PostgresCdcConfig};
use super::metrics::CdcMetrics;
use crate::postgres::connect::Database;
use crate::postgres::pgoutput::Lsn;
use crate::postgres::table::TableName;

/// The running `postgres_cdc` source.
#[derive(Debug)]
pub struct PostgresCdc {
    config: PostgresCdcConfig,
    database: Database,
    tables: Vec<TableName>,
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
        stream.cleanups.abort_all();
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

/// State of the stream across sessions: what was read, emitted and confirmed.
struct Stream {
    tables: Vec<TableName>,
    operations: Vec<Operation>,
    message_prefixes: Vec<String>,
    max_batch_events: usize,
    heartbeat: Option<Duration>,
    lag_interval: Duration,
    status_interval: Duration,
    slot: String,
    metrics: CdcMetrics,
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
    /// The running cleanups, one per table, each in a span naming its table; the stream's loop
    /// reports one that ends (a cleanup runs until aborted, so only by panicking).
    cleanups: JoinSet<()>,
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
            relations: HashMap::new(),
            transaction: None,
            pending: Output::default(),
            open: false,
            awaiting: VecDeque::new(),
            confirmed_commit: watch::channel(None).0,
            cleanups: JoinSet::new(),
            seen: Lsn(0),
            seen_time: None,
            delivered_until: None,
            confirmed: Lsn(0),
        }
    }
}
