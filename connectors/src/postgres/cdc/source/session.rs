//! One session of the source: the slot prepared, the cleanups started, what the slot needs
//! delivered first, then the replication stream read until shutdown or an error.

use pgwire_replication::ReplicationClient;
use sluice_pipeline::{Error, ErrorKind, SourceContext};
use tokio::task::JoinError;
use tokio_postgres::Client;
use tracing::Instrument;

use super::super::slot;
use super::{PostgresCdc, Stream};
use crate::postgres::cleanup::{Cleanup, Delivered};
use crate::postgres::connect::Sessions;
use crate::postgres::table::Table;

impl PostgresCdc {
    /// One run: leaves the replication client in `client` once connected, so that the caller
    /// can confirm the final position on it whatever the outcome.
    pub(super) async fn session(
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
                let table = Table::resolve(&sql, &table.to_string()).await?;
                let delivered = Delivered::CreatedBefore {
                    column: self.config.created_column.clone(),
                    confirmed: stream.confirmed_commit.subscribe(),
                };
                let cleanup = Cleanup::prepare(&sql, &table, delivered, cleanup).await?;
                let span = tracing::info_span!("outbox_cleanup", table = %table.qualified_name());
                let run = cleanup.run(self.database.clone(), cx.id().to_owned());
                stream.cleanups.spawn(run.instrument(span));
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
}

impl Stream {
    /// Reads the stream until shutdown or an error, emitting in batches that grow with what is
    /// already received, and confirming as the checkpoint moves.
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
                Some(ended) = self.cleanups.join_next() => cleanup_ended(ended),
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

/// Reports a cleanup task that ended. A cleanup runs until it is aborted, logging and counting
/// its own failures, so one that ends has panicked: the outbox is no longer cleaned until the
/// source restarts, which the log says rather than letting the panic go unnoticed.
fn cleanup_ended(ended: Result<(), JoinError>) {
    if let Err(error) = ended {
        tracing::error!(%error, "outbox cleanup stopped; it resumes when the source restarts");
    }
}
