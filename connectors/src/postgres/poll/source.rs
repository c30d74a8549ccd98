//! The running `postgres_poll` source: polls batches on connections of its own, keeps each
//! batch's transaction open until the checkpoint passes it, then marks and commits it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use sluice_pipeline::backoff::Backoff;
use sluice_pipeline::error::chain;
use sluice_pipeline::{Error, Output, Position, Shutdown, Source, SourceContext};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tracing::Instrument;

use super::backlog::Backlog;
use super::batch::{Ctid, Poller, Session};
use super::config::PollConfig;
use super::listen::Listener;
use super::metrics::PollMetrics;
use crate::postgres::cleanup::{Cleanup, Delivered};
use crate::postgres::connect::{Database, Sessions};

/// The running `postgres_poll` source.
#[derive(Debug)]
pub struct PollSource {
    config: PollConfig,
    database: Database,
}

impl PollSource {
    /// A source with `config` (validated), polling `database` (parsed from its `url`).
    pub fn new(config: PollConfig, database: Database) -> Self {
        PollSource { config, database }
    }
}

impl Source for PollSource {
    /// Connects, checks the table and starts listening (a retryable failure there is retried
    /// by the runtime), then polls until shutdown and drains.
    async fn run(&mut self, cx: &mut SourceContext) -> Result<(), Error> {
        let shutdown = cx.shutdown().clone();
        let metrics = PollMetrics::new(cx.id(), self.config.max_batches_in_flight);
        let Started {
            mut relay,
            listener,
            cleanup,
            backlog,
        } = try_start(self, &metrics, cx.backoff())
            .await
            .inspect_err(|error| metrics.error(error.kind()))?;
        // Background tasks end when this set is dropped, however `run` returns.
        let mut tasks = JoinSet::new();
        let wake = Arc::new(Notify::new());
        if let (Some(listener), Some(channel)) = (listener, &self.config.notify_channel) {
            let wake = Arc::clone(&wake);
            let run = listener.run(
                self.database.clone(),
                channel.clone(),
                wake,
                metrics,
                cx.backoff(),
            );
            tasks.spawn(run.in_current_span());
        }
        if let Some(cleanup) = cleanup {
            let run = cleanup.run(self.database.clone(), cx.id().to_owned());
            tasks.spawn(run.in_current_span());
        }
        let run = backlog.run(self.database.clone(), relay.metrics.clone());
        tasks.spawn(run.in_current_span());
        cx.set_ready(true);
        tracing::info!(
            table = %relay.poller.table().qualified_name(),
            notify = self.config.notify_channel.is_some(),
            cleanup = self.config.cleanup.is_some(),
            "polling the outbox"
        );
        relay.run(cx, &shutdown, &wake).await?;
        tasks.abort_all();
        relay.finish(cx).await
    }
}

/// What connecting produced: the relay, and the pieces that run beside it.
struct Started {
    relay: Relay,
    listener: Option<Listener>,
    cleanup: Option<Cleanup>,
    backlog: Backlog,
}

/// Connects, checks the table, prepares the cleanup and starts listening; the first failure is
/// returned.
async fn try_start(
    source: &PollSource,
    metrics: &PollMetrics,
    backoff: Backoff,
) -> Result<Started, Error> {
    let config = &source.config;
    let client = source.database.connect().await?;
    let poller = Poller::resolve(&client, config).await?;
    let cleanup = match &config.cleanup {
        Some(cleanup) => {
            let delivered = Delivered::Published {
                column: config.published_column.clone(),
            };
            Some(Cleanup::prepare(&client, poller.table(), delivered, cleanup).await?)
        }
        None => None,
    };
    // Listening before the source reports ready: from then on, no insert goes unnoticed.
    let listener = match &config.notify_channel {
        Some(channel) => Some(Listener::start(&source.database, channel).await?),
        None => None,
    };
    let session = poller.session(client).await?;
    let backlog = Backlog::prepare(poller.table(), config);
    Ok(Started {
        relay: Relay {
            config: config.clone(),
            database: source.database.clone(),
            poller,
            metrics: metrics.clone(),
            idle: vec![session],
            open: VecDeque::new(),
            next_position: 1,
            backoff,
            retry_at: None,
        },
        listener,
        cleanup,
        backlog,
    })
}

/// A batch that was emitted and is not yet marked: its connection, whose transaction holds the
/// rows' locks, and the rows to mark.
struct OpenBatch {
    position: Position,
    session: Session,
    rows: Vec<Ctid>,
}

/// What a poll found, for deciding when to poll next.
#[derive(Default)]
struct Polled {
    /// A full batch was admitted: more rows are probably waiting.
    more: bool,
    /// Rows were deferred behind an earlier row of their aggregate; marking a batch may free them.
    deferred: bool,
}

/// How the relay loop was woken.
enum Wake {
    /// A poll is due and there is room for its events.
    Poll,
    /// A notification, the interval: a poll is due.
    Due,
    /// Something resolved (acknowledgements, a retry delay): look again.
    Look,
}

/// The polling state: idle connections, open batches in position order, and the next
/// batch's position.
struct Relay {
    config: PollConfig,
    database: Database,
    poller: Poller,
    metrics: PollMetrics,
    idle: Vec<Session>,
    open: VecDeque<OpenBatch>,
    next_position: u64,
    backoff: Backoff,
    /// After a failure, no poll before this instant.
    retry_at: Option<Instant>,
}

impl Relay {
    /// Polls, emits and marks until shutdown is requested.
    async fn run(
        &mut self,
        cx: &mut SourceContext,
        shutdown: &Shutdown,
        wake: &Notify,
    ) -> Result<(), Error> {
        let mut tick = tokio::time::interval(self.config.interval.get());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut due = true;
        let mut poll_after_marking = false;
        loop {
            if self.mark_acknowledged(cx).await? && poll_after_marking {
                due = true;
                poll_after_marking = false;
            }
            let now = Instant::now();
            let waiting_to_retry = self.retry_at.filter(|at| *at > now);
            let can_poll = due
                && waiting_to_retry.is_none()
                && self.open.len() < self.config.max_batches_in_flight;
            let batch_size = self.config.batch_size;
            let context = &mut *cx;
            let ready = async move {
                if can_poll {
                    context.capacity(batch_size).await;
                    Wake::Poll
                } else {
                    context.progressed().await;
                    Wake::Look
                }
            };
            let woke = tokio::select! {
                biased;
                () = shutdown.requested() => return Ok(()),
                woke = ready => woke,
                () = wake.notified() => Wake::Due,
                _ = tick.tick() => Wake::Due,
                () = tokio::time::sleep_until(waiting_to_retry.unwrap_or(now).into()),
                    if waiting_to_retry.is_some() => Wake::Look,
            };
            match woke {
                Wake::Poll => {
                    let polled = self.poll(cx).await?;
                    due = polled.more;
                    poll_after_marking |= polled.deferred;
                }
                Wake::Due => due = true,
                Wake::Look => {}
            }
        }
    }

    /// Locks and emits one batch. Only a failure that retrying cannot fix is returned.
    async fn poll(&mut self, cx: &mut SourceContext) -> Result<Polled, Error> {
        let session = match self.idle.pop().filter(|s| !s.is_closed()) {
            Some(session) => session,
            None => match self.connect().await {
                Ok(session) => session,
                Err(error) => return self.failed(cx, error),
            },
        };
        let position = Position(self.next_position);
        let started = Instant::now();
        let in_flight = self.open.iter().flat_map(|batch| &batch.rows);
        let batch = match self.poller.lock_batch(&session, position, in_flight).await {
            Ok(batch) => batch,
            Err(error) => return self.failed(cx, error.into()),
        };
        self.metrics
            .polled(batch.locked(), batch.deferred, started.elapsed());
        self.backoff.reset();
        self.retry_at = None;
        cx.set_ready(true);
        let polled = Polled {
            more: batch.rows.len() == self.config.batch_size,
            deferred: batch.deferred > 0,
        };
        if batch.rows.is_empty() {
            match self.poller.release(&session).await {
                Ok(()) => self.idle.push(session),
                Err(error) => return self.failed(cx, error.into()),
            }
            return Ok(polled);
        }
        self.next_position += 1;
        let mut out = Output::with_capacity(batch.rows.len());
        let mut rows = Vec::with_capacity(batch.rows.len());
        for row in batch.rows {
            rows.push(row.ctid);
            match row.problem {
                Some(reason) => out.reject(row.event, reason),
                None => out.push(row.event),
            }
        }
        cx.emit(out).await?;
        self.open.push_back(OpenBatch {
            position,
            session,
            rows,
        });
        self.metrics.open_batches(self.open.len());
        Ok(polled)
    }

    /// A new connection, ready for polling.
    async fn connect(&self) -> Result<Session, Error> {
        let client = self.database.connect().await?;
        Ok(self.poller.session(client).await?)
    }

    /// Handles a failed connect or poll: a retryable failure drops the connection, marks the
    /// source not ready and delays the next poll; any other fails the source.
    fn failed(&mut self, cx: &SourceContext, error: Error) -> Result<Polled, Error> {
        let kind = error.kind();
        if !kind.is_retryable() {
            return Err(error);
        }
        self.metrics.error(kind);
        let delay = self.backoff.failed();
        tracing::warn!(error = %chain(&error), retry_in = ?delay, "polling failed; reconnecting");
        cx.set_ready(false);
        self.retry_at = Some(Instant::now() + delay);
        Ok(Polled::default())
    }

    /// Marks and commits, in position order, every open batch the checkpoint has passed:
    /// all of its events (and all before them) are acknowledged. Returns whether any was.
    async fn mark_acknowledged(&mut self, cx: &mut SourceContext) -> Result<bool, Error> {
        let Some(checkpoint) = cx.checkpoint() else {
            return Ok(false);
        };
        let mut marked = false;
        while self
            .open
            .front()
            .is_some_and(|batch| batch.position <= checkpoint)
        {
            if let Some(batch) = self.open.pop_front() {
                self.mark(batch).await?;
                marked = true;
            }
        }
        self.metrics.open_batches(self.open.len());
        Ok(marked)
    }

    async fn mark(&mut self, batch: OpenBatch) -> Result<(), Error> {
        match self.poller.mark(&batch.session, &batch.rows).await {
            Ok(updated) => {
                if updated != batch.rows.len() as u64 {
                    tracing::warn!(
                        expected = batch.rows.len(),
                        updated,
                        "marking updated a different number of rows than the batch held"
                    );
                }
                self.metrics.marked(batch.rows.len());
                self.idle.push(batch.session);
                Ok(())
            }
            Err(error) if error.kind().is_retryable() => {
                // The transaction is gone, and its locks with it: the rows are unmarked and
                // will be polled again (by this relay or another), delivering them twice.
                self.metrics.error(error.kind());
                self.metrics.abandoned(batch.rows.len());
                tracing::warn!(
                    rows = batch.rows.len(),
                    error = %chain(&error),
                    "lost a batch's transaction before marking it; its rows will be polled again"
                );
                Ok(())
            }
            Err(error) => Err(error.into()),
        }
    }

    /// After shutdown: waits for the open batches' events, marking batches as they complete,
    /// then ends. Batches holding failed events are not marked; their transactions roll back
    /// as the connections close.
    async fn finish(mut self, cx: &mut SourceContext) -> Result<(), Error> {
        tracing::info!(open_batches = self.open.len(), "draining open batches");
        while !self.open.is_empty() && cx.in_flight_events() > 0 {
            cx.progressed().await;
            self.mark_acknowledged(cx).await?;
        }
        cx.drain().await;
        self.mark_acknowledged(cx).await?;
        if !self.open.is_empty() {
            tracing::warn!(
                batches = self.open.len(),
                "batches with failed events were not marked; their rows will be polled again"
            );
        }
        tracing::info!("postgres_poll stopped");
        Ok(())
    }
}
