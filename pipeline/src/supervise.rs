//! The restart policy, in one place: how the runtime runs each component, restarts it after a
//! retryable failure with one backoff, and gates sources on leadership.
//!
//! - A **source** runs in runs ("incarnations"). Each run gets a fresh context whose
//!   checkpoint starts empty, and starts only once everything the previous run emitted is
//!   resolved, so it resumes from what its source recorded and never from a position the
//!   checkpoint did not reach. A run ends when its input ends, when the pipeline stops, when
//!   the term it runs in ends, or when one of its events fails downstream (the runtime stops
//!   it and runs it again from its checkpoint, so a failed event is read again, not lost).
//! - A **sink** keeps its state across failures: `stop`, the backoff, then `start` and `run`
//!   again on the same value, which still holds the events it had not answered.
//! - A **transform** whose `process` fails loses that batch (its events fail, so their sources
//!   read them again); `stop`, the backoff and `start` follow, then the next batch.
//! - A **resource** is restarted like a sink.
//!
//! A non-retryable error stops the pipeline. Every wait doubles from `[pipeline.restart]
//! initial` to `max`, and starts over once the component has turned ready again.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::ack::{Budget, Tracker};
use crate::backoff::{Backoff, BackoffConfig};
use crate::component::{DynSink, DynSource, DynTransform, Output, SinkContext, SourceContext};
use crate::error::{Error, ErrorKind, chain};
use crate::event::Batch;
use crate::health::ReadyFlag;
use crate::leadership::{Election, Enlistment, Leadership, Term};
use crate::metrics::{ComponentMetrics, SourceMetrics, error_counter, restart_counter};
use crate::resource::{Resource, ResourceContext};
use crate::runtime::{Fanout, QuarantineSender};
use crate::shutdown::{Shutdown, ShutdownTrigger};

/// Why the runtime restarts a component (the `reason` label of the restart counter).
#[derive(Debug, Clone, Copy)]
enum Restart {
    /// It failed with a retryable error.
    Error,
    /// A source's events failed downstream: it reads again from its checkpoint.
    FailedEvents,
}

impl Restart {
    fn as_str(self) -> &'static str {
        match self {
            Restart::Error => "error",
            Restart::FailedEvents => "failed_events",
        }
    }
}

/// Counts a restart and says when it will happen.
fn restarting(
    kind: &'static str,
    id: &str,
    why: Restart,
    error: Option<&Error>,
    wait: std::time::Duration,
) {
    restart_counter(kind, id, why.as_str()).increment(1);
    match (why, error) {
        (Restart::Error, Some(error)) => {
            error_counter(kind, id, error.kind().as_str()).increment(1);
            tracing::warn!(error = %chain(error), retry_in = ?wait, "failed; restarting");
        }
        _ => tracing::warn!(
            retry_in = ?wait,
            "events failed downstream; reading again from the checkpoint"
        ),
    }
}

/// Waits `wait`, or less if `stop` fires first; says whether the whole wait passed.
async fn wait_unless(wait: std::time::Duration, stop: &Shutdown) -> bool {
    tokio::select! {
        () = tokio::time::sleep(wait) => true,
        () = stop.requested() => false,
    }
}

/// A source and what each of its runs is given.
pub(crate) struct SourceSlot {
    pub(crate) id: Arc<str>,
    pub(crate) source: Box<dyn DynSource>,
    pub(crate) output: Fanout,
    pub(crate) quarantine: QuarantineSender,
    pub(crate) ready: ReadyFlag,
    pub(crate) metrics: SourceMetrics,
    pub(crate) data_dir: PathBuf,
    pub(crate) budget: Budget,
    pub(crate) backoff: Backoff,
    /// Its input ended: it is not run again.
    pub(crate) finished: bool,
}

/// How a source's runs ended.
enum Ended {
    /// Its input ended.
    Finished,
    /// It was asked to stop.
    Stopped,
}

/// Runs `slot`'s source in `term` until its input ends or `stop` fires, running it again after
/// retryable failures and after events failed downstream.
async fn supervise_source(
    slot: &mut SourceSlot,
    term: Option<Arc<dyn Term>>,
    stop: Shutdown,
) -> Result<Ended, Error> {
    loop {
        let this_run = ShutdownTrigger::new();
        let mut cx = SourceContext {
            id: Arc::clone(&slot.id),
            tracker: Tracker::new(slot.budget, None),
            output: slot.output.clone(),
            quarantine: slot.quarantine.clone(),
            shutdown: this_run.subscribe(),
            ready: slot.ready.clone(),
            data_dir: slot.data_dir.clone(),
            metrics: slot.metrics.clone(),
            term: term.clone(),
            restart: slot.backoff.config(),
            emitter: None,
        };
        let mut failures = cx.tracker.failures();
        let replays = slot.source.replays_boxed();
        let ready_before = slot.ready.times_ready();
        let mut rewind = false;
        let result = {
            let run = slot.source.run_boxed(&mut cx);
            tokio::pin!(run);
            let mut stopping = false;
            loop {
                tokio::select! {
                    result = &mut run => break result,
                    () = stop.requested(), if !stopping => {
                        stopping = true;
                        this_run.trigger();
                    }
                    () = failures.failed(), if !stopping && replays => {
                        stopping = true;
                        rewind = true;
                        this_run.trigger();
                    }
                }
            }
        };
        slot.ready.set(false);
        // Everything this run emitted resolves before another run reads again, so no two runs
        // ever have events in flight at once.
        cx.finish().await;
        drop(cx);
        if slot.ready.times_ready() != ready_before {
            slot.backoff.reset();
        }
        let (why, error) = match result {
            Ok(()) if stop.is_requested() => return Ok(Ended::Stopped),
            Ok(()) if rewind => (Restart::FailedEvents, None),
            Ok(()) => return Ok(Ended::Finished),
            Err(error) if !error.is_retryable() => return Err(error),
            Err(error) if stop.is_requested() => {
                tracing::warn!(error = %chain(&error), "failed while stopping");
                return Ok(Ended::Stopped);
            }
            Err(error) => (Restart::Error, Some(error)),
        };
        let wait = slot.backoff.failed();
        restarting("source", &slot.id, why, error.as_ref(), wait);
        if !wait_unless(wait, &stop).await {
            return Ok(Ended::Stopped);
        }
    }
}

/// A pipeline's election, when it has `leader`.
pub(crate) struct Gate {
    pub(crate) leadership: Arc<dyn Leadership>,
    pub(crate) election: Arc<Election>,
    /// Keeps this process enlisted in the election for as long as the pipeline runs, so that
    /// it is counted as a candidate between its terms too.
    pub(crate) _enlisted: Enlistment,
}

impl Gate {
    /// Campaigns until this process leads, retrying after the backoff while the coordination
    /// service cannot be reached; `None` if `shutdown` came first.
    async fn campaign(
        &self,
        shutdown: &Shutdown,
        backoff: &mut Backoff,
    ) -> Result<Option<Arc<dyn Term>>, Error> {
        let name = self.election.name();
        loop {
            tracing::info!(election = name, "campaigning");
            let result = tokio::select! {
                result = self.leadership.campaign(name) => result,
                () = shutdown.requested() => return Ok(None),
            };
            match result {
                Ok(term) => {
                    backoff.reset();
                    tracing::info!(election = name, token = %term.token(), "leading: starting the sources");
                    self.election.won(Arc::clone(&term));
                    return Ok(Some(term));
                }
                Err(error) if error.is_retryable() => {
                    let wait = backoff.failed();
                    tracing::warn!(election = name, error = %chain(&error), retry_in = ?wait, "cannot campaign; standing by");
                    if !wait_unless(wait, shutdown).await {
                        return Ok(None);
                    }
                }
                Err(error) => return Err(error),
            }
        }
    }
}

/// A source that failed for good, or the election that did.
pub(crate) type SourceFailure = (Arc<str>, Error);

/// Runs the pipeline's sources: at once and until they finish or `shutdown` fires, or, with a
/// `gate`, during each term this process wins, stopping them (drained) when a term ends and
/// campaigning again.
pub(crate) async fn run_sources(
    mut slots: Vec<SourceSlot>,
    gate: Option<Gate>,
    shutdown: Shutdown,
    restart: BackoffConfig,
) -> Result<(), SourceFailure> {
    let mut campaign_backoff = Backoff::new(restart);
    loop {
        let term = match &gate {
            None => None,
            Some(gate) => match gate.campaign(&shutdown, &mut campaign_backoff).await {
                Ok(Some(term)) => Some(term),
                Ok(None) => return Ok(()),
                Err(error) => return Err((Arc::from(gate.election.name()), error)),
            },
        };
        let stop = ShutdownTrigger::new();
        let mut running = JoinSet::new();
        for mut slot in slots.drain(..) {
            if slot.finished {
                running.spawn(async move { (slot, Ok(Ended::Finished)) });
                continue;
            }
            let span = tracing::info_span!("component", id = %slot.id, kind = "source");
            let term = term.clone();
            let stop = stop.subscribe();
            running.spawn(
                async move {
                    let result = supervise_source(&mut slot, term, stop).await;
                    (slot, result)
                }
                .instrument(span),
            );
        }
        let ended = async {
            match &term {
                Some(term) => term.ended().await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(ended);
        let mut failure: Option<SourceFailure> = None;
        let mut lost = false;
        let mut stopping = false;
        loop {
            tokio::select! {
                joined = running.join_next() => {
                    let Some(joined) = joined else { break };
                    let (mut slot, result) = match joined {
                        Ok(done) => done,
                        Err(e) => {
                            // The slot is gone with its task: the pipeline cannot go on.
                            let error = Error::new(ErrorKind::Internal, format!("source task panicked: {e}"));
                            failure.get_or_insert((Arc::from("sources"), error));
                            stop.trigger();
                            continue;
                        }
                    };
                    match result {
                        Ok(Ended::Finished) => slot.finished = true,
                        Ok(Ended::Stopped) => {}
                        Err(error) => {
                            failure.get_or_insert((Arc::clone(&slot.id), error));
                            stop.trigger();
                        }
                    }
                    slots.push(slot);
                }
                () = &mut ended, if !stopping => {
                    stopping = true;
                    lost = true;
                    tracing::warn!("leadership lost: stopping the sources, draining what is in flight");
                    stop.trigger();
                }
                () = shutdown.requested(), if !stopping => {
                    stopping = true;
                    stop.trigger();
                }
            }
        }
        let finished = slots.iter().all(|slot| slot.finished);
        if let (Some(gate), Some(term)) = (&gate, &term) {
            gate.election.lost();
            // Every term ends resigned, once its sources have drained: a term that ended
            // without losing its key (this process was asked to give it up) hands over now
            // rather than when its lease runs out; resigning a lost term changes nothing.
            term.resign().await;
            if lost {
                tracing::info!(
                    election = gate.election.name(),
                    "sources drained; standing by"
                );
            } else {
                tracing::info!(election = gate.election.name(), "resigned");
            }
        }
        if let Some(failure) = failure {
            return Err(failure);
        }
        if finished || shutdown.is_requested() || gate.is_none() {
            return Ok(());
        }
    }
}

/// Runs a sink until its input ends, restarting it (same value, same state) after retryable
/// failures.
pub(crate) async fn run_sink(
    mut sink: Box<dyn DynSink>,
    mut cx: SinkContext,
    restart: BackoffConfig,
) -> Result<(), Error> {
    let mut backoff = Backoff::new(restart);
    loop {
        let ready_before = cx.ready.times_ready();
        let result = match sink.start_boxed(&mut cx).await {
            Ok(()) => sink.run_boxed(&mut cx).await,
            Err(error) => Err(error),
        };
        sink.stop_boxed().await;
        cx.set_ready(false);
        let error = match result {
            Ok(()) => return Ok(()),
            Err(error) if !error.is_retryable() => return Err(error),
            Err(error) => error,
        };
        if cx.ready.times_ready() != ready_before {
            backoff.reset();
        }
        let wait = backoff.failed();
        restarting("sink", &cx.id, Restart::Error, Some(&error), wait);
        // A sink holds events its sources wait for: it keeps trying, even while the pipeline
        // drains (a second signal exits at once).
        tokio::time::sleep(wait).await;
    }
}

/// Runs `start` until it succeeds, waiting out the backoff after each retryable failure.
async fn start_transform(
    transform: &mut Box<dyn DynTransform>,
    id: &str,
    backoff: &mut Backoff,
) -> Result<(), Error> {
    loop {
        match transform.start_boxed().await {
            Ok(()) => return Ok(()),
            Err(error) if error.is_retryable() => {
                transform.stop_boxed().await;
                let wait = backoff.failed();
                restarting("transform", id, Restart::Error, Some(&error), wait);
                tokio::time::sleep(wait).await;
            }
            Err(error) => return Err(error),
        }
    }
}

/// The wiring of one transform.
pub(crate) struct TransformSlot {
    pub(crate) id: Arc<str>,
    pub(crate) transform: Box<dyn DynTransform>,
    pub(crate) input: mpsc::Receiver<Batch>,
    pub(crate) output: Fanout,
    pub(crate) quarantine: QuarantineSender,
    pub(crate) ready: ReadyFlag,
    pub(crate) metrics: ComponentMetrics,
}

/// Runs a transform over its input until the input ends, restarting it after a retryable
/// failure of `start` or `process`.
pub(crate) async fn run_transform(
    slot: TransformSlot,
    restart: BackoffConfig,
) -> Result<(), Error> {
    let TransformSlot {
        id,
        mut transform,
        mut input,
        output,
        quarantine,
        ready,
        metrics,
    } = slot;
    let mut backoff = Backoff::new(restart);
    start_transform(&mut transform, &id, &mut backoff).await?;
    ready.set(true);
    while let Some(batch) = input.recv().await {
        metrics.received(&batch);
        let mut out = Output::with_capacity(batch.len());
        match transform.process_boxed(batch, &mut out).await {
            Ok(()) => {
                backoff.reset();
                let (events, rejected, dropped) = out.split();
                metrics.sent_events.increment(events.len() as u64);
                metrics.dropped_events.increment(dropped);
                quarantine.send(rejected).await;
                output.send(events).await;
            }
            Err(error) if error.is_retryable() => {
                // The batch's events fail; their sources read them again.
                drop(out);
                ready.set(false);
                transform.stop_boxed().await;
                let wait = backoff.failed();
                restarting("transform", &id, Restart::Error, Some(&error), wait);
                tokio::time::sleep(wait).await;
                start_transform(&mut transform, &id, &mut backoff).await?;
                ready.set(true);
            }
            Err(error) => {
                transform.stop_boxed().await;
                return Err(error);
            }
        }
    }
    transform.stop_boxed().await;
    ready.set(false);
    Ok(())
}

/// Runs a resource until shutdown, restarting it after retryable failures.
pub(crate) async fn run_resource(
    resource: Arc<dyn Resource>,
    mut cx: ResourceContext,
    restart: BackoffConfig,
) -> Result<(), Error> {
    let mut backoff = Backoff::new(restart);
    loop {
        let ready_before = cx.ready.times_ready();
        let result = resource.run(&mut cx).await;
        cx.set_ready(false);
        let error = match result {
            Ok(()) => return Ok(()),
            Err(error) if !error.is_retryable() => return Err(error),
            Err(error) => error,
        };
        if cx.shutdown.is_requested() {
            tracing::warn!(error = %chain(&error), "failed while stopping");
            return Ok(());
        }
        if cx.ready.times_ready() != ready_before {
            backoff.reset();
        }
        let wait = backoff.failed();
        restarting("resource", &cx.name, Restart::Error, Some(&error), wait);
        if !wait_unless(wait, &cx.shutdown).await {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests;
