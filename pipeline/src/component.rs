//! The three roles a component plays (source, transform, sink), their configs, and the
//! contexts the engine hands them.
//!
//! A component type is a config struct (serde, `deny_unknown_fields`, one doc comment per field)
//! implementing [`Validate`] and one of [`SourceConfig`], [`TransformConfig`] or [`SinkConfig`],
//! plus the running component implementing [`Source`], [`Transform`] or [`Sink`]. Validation is
//! pure; building does no I/O either: connecting happens when the component runs, so that
//! `sluice check` never touches a server it was not asked to.

use std::fmt::Debug;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::mpsc;

use crate::ack::{Receipt, Tracker};
use crate::backoff::{Backoff, BackoffConfig};
use crate::checkpoint::CheckpointStore;
use crate::config::FieldErrors;
use crate::error::{Error, ErrorKind};
use crate::event::{Batch, Event, Position, Text};
use crate::health::ReadyFlag;
use crate::leadership::{LeaderView, Term};
use crate::metrics::{ComponentMetrics, SourceMetrics};
use crate::resource::Resources;
use crate::runtime::{Fanout, QuarantineSender};
use crate::shutdown::Shutdown;

/// A boxed, sendable future: what the engine runs for a component.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Checks on a component's config that need no I/O.
pub trait Validate {
    /// Checks rules the types alone do not express, and reports every problem found, not only
    /// the first (collect them with [`FieldErrors::add`]; `?` on a single
    /// [`FieldError`](crate::FieldError) also works). Paths are relative to the component
    /// (`count`, not `sources.gen.count`).
    fn validate(&self) -> Result<(), FieldErrors> {
        Ok(())
    }
}

/// What a component config may use to build its component.
#[derive(Debug, Clone)]
pub struct BuildContext {
    /// The component's id in the config (for a resource, its section's name).
    pub id: String,
    /// The pipeline's data directory.
    pub data_dir: PathBuf,
    /// The election the pipeline's sources run under (`[pipeline] leader`), if any.
    pub leader: Option<String>,
    /// What the process's resources provide (while resources themselves are built: what the
    /// resources built before this one provide, in the registry's order).
    pub resources: Resources,
}

/// How a live check went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// As required.
    Ok,
    /// Works, but deserves attention.
    Warn,
    /// Will not work until fixed.
    Fail,
}

/// One result of a live check (`sluice check`): what was checked and, unless it is fine, the
/// exact remedy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// How it went.
    pub level: Level,
    /// What was found, and what to do about it.
    pub message: String,
}

impl Finding {
    /// A check that passed.
    pub fn ok(message: impl Into<String>) -> Self {
        Finding {
            level: Level::Ok,
            message: message.into(),
        }
    }

    /// A check that passed with a caveat.
    pub fn warn(message: impl Into<String>) -> Self {
        Finding {
            level: Level::Warn,
            message: message.into(),
        }
    }

    /// A check that failed, with its remedy.
    pub fn fail(message: impl Into<String>) -> Self {
        Finding {
            level: Level::Fail,
            message: message.into(),
        }
    }
}

/// A source type's config.
pub trait SourceConfig: Validate + Debug + Send + Sync + 'static {
    /// Builds the source. No I/O: connect in [`Source::run`].
    fn build(&self, cx: &BuildContext) -> Result<Box<dyn DynSource>, Error>;

    /// Checks the servers the source would use (`sluice check`); none by default.
    fn check(&self) -> BoxFuture<'_, Vec<Finding>> {
        Box::pin(std::future::ready(Vec::new()))
    }
}

/// A transform type's config.
pub trait TransformConfig: Validate + Debug + Send + Sync + 'static {
    /// Builds the transform. No I/O.
    fn build(&self, cx: &BuildContext) -> Result<Box<dyn DynTransform>, Error>;
}

/// A sink type's config.
pub trait SinkConfig: Validate + Debug + Send + Sync + 'static {
    /// Builds the sink. No I/O: connect in [`Sink::run`].
    fn build(&self, cx: &BuildContext) -> Result<Box<dyn DynSink>, Error>;

    /// Checks the servers the sink would use (`sluice check`); none by default.
    fn check(&self) -> BoxFuture<'_, Vec<Finding>> {
        Box::pin(std::future::ready(Vec::new()))
    }
}

/// Produces events.
///
/// Guarantees a source must keep:
/// - **Positions never go backwards** within one run. Events are emitted in position order;
///   several events may share a position (one transaction), and a position may continue into
///   the next batch only through [`SourceContext::emit_open`].
/// - **Only the checkpoint is made durable.** A source records (to its server or through
///   [`SourceContext::checkpoint_store`]) only positions returned by
///   [`SourceContext::checkpoint`], so a crash at any moment re-reads rather than loses.
/// - **Each run resumes from what was recorded.** The runtime calls `run` again after a
///   retryable failure, after events failed downstream, and each time leadership is won back;
///   every run gets a fresh context whose checkpoint starts empty, and only once everything
///   the previous run emitted is resolved. A run therefore starts from the position its source
///   recorded (on its server or in its checkpoint store), never from memory of a past run.
/// - **Shutdown drains.** When [`SourceContext::shutdown`] fires (the process stops, the
///   leadership is lost, or events failed downstream), or its input ends, the source stops
///   emitting, awaits [`SourceContext::drain`] and records the checkpoint it returns.
///
/// The engine runs `run` on a task of its own; `Ok` means the input ended or shutdown was
/// asked for.
pub trait Source: Send + 'static {
    /// Runs until the input ends or shutdown is requested.
    fn run(&mut self, cx: &mut SourceContext) -> impl Future<Output = Result<(), Error>> + Send;

    /// Whether the source can read again what failed downstream (it resumes from a recorded
    /// position). A source that serves requests answers each through its [`Receipt`] instead,
    /// and says `false`: the runtime then does not stop it when its events fail.
    fn replays(&self) -> bool {
        true
    }
}

/// Maps, filters, splits or enriches batches of events.
///
/// Each event received must end in exactly one place: pushed to the output (possibly as
/// several children made with `clone`), dropped with [`Output::drop_event`], or rejected to
/// the quarantine with [`Output::reject`]. `process` calls are sequential; order within and
/// across batches is the order events are pushed.
///
/// `start` runs before the first batch and again after a retryable failure (once `stop` has
/// run and the backoff is over); `stop` runs when the input has ended or `process` failed.
/// They are where I/O belongs (a lease to take, a connection to open); building does none.
/// When `process` fails, the events of that batch fail, and their sources read them again.
pub trait Transform: Send + 'static {
    /// Prepares the transform; none by default.
    fn start(&mut self) -> impl Future<Output = Result<(), Error>> + Send {
        std::future::ready(Ok(()))
    }

    /// Processes one batch.
    fn process(
        &mut self,
        events: Batch,
        out: &mut Output,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Releases what `start` took; nothing by default.
    fn stop(&mut self) -> impl Future<Output = ()> + Send {
        std::future::ready(())
    }
}

/// Delivers events.
///
/// A sink acknowledges an event ([`Event::ack`]) only once the destination holds it durably
/// (a broker's publisher confirm, an fsync), rejects events the destination refuses for good
/// through [`SinkContext::reject`], and retries what may succeed later. It runs until its input
/// ends, having answered every event it received.
///
/// `start` (connect) runs before `run` and `stop` (close) after it. When `start` or `run`
/// fails with a retryable error, the runtime calls `stop`, waits out its backoff and calls
/// `start` and `run` again on the same sink, which keeps the events it holds: what it had not
/// answered is still its to deliver.
pub trait Sink: Send + 'static {
    /// Prepares the sink (connects); nothing by default.
    fn start(&mut self, cx: &mut SinkContext) -> impl Future<Output = Result<(), Error>> + Send {
        let _ = cx;
        std::future::ready(Ok(()))
    }

    /// Runs until the input ends.
    fn run(&mut self, cx: &mut SinkContext) -> impl Future<Output = Result<(), Error>> + Send;

    /// Releases what `start` opened; nothing by default.
    fn stop(&mut self) -> impl Future<Output = ()> + Send {
        std::future::ready(())
    }
}

/// Object-safe form of [`Source`], implemented for every source.
pub trait DynSource: Send {
    /// Runs the source.
    fn run_boxed<'a>(&'a mut self, cx: &'a mut SourceContext) -> BoxFuture<'a, Result<(), Error>>;

    /// See [`Source::replays`].
    fn replays_boxed(&self) -> bool;
}

impl<S: Source> DynSource for S {
    fn run_boxed<'a>(&'a mut self, cx: &'a mut SourceContext) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(self.run(cx))
    }

    fn replays_boxed(&self) -> bool {
        self.replays()
    }
}

/// Object-safe form of [`Transform`], implemented for every transform.
pub trait DynTransform: Send {
    /// Prepares the transform.
    fn start_boxed(&mut self) -> BoxFuture<'_, Result<(), Error>>;

    /// Processes one batch.
    fn process_boxed<'a>(
        &'a mut self,
        events: Batch,
        out: &'a mut Output,
    ) -> BoxFuture<'a, Result<(), Error>>;

    /// Releases what `start` took.
    fn stop_boxed(&mut self) -> BoxFuture<'_, ()>;
}

impl<T: Transform> DynTransform for T {
    fn start_boxed(&mut self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(self.start())
    }

    fn process_boxed<'a>(
        &'a mut self,
        events: Batch,
        out: &'a mut Output,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(self.process(events, out))
    }

    fn stop_boxed(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(self.stop())
    }
}

/// Object-safe form of [`Sink`], implemented for every sink.
pub trait DynSink: Send {
    /// Prepares the sink.
    fn start_boxed<'a>(&'a mut self, cx: &'a mut SinkContext) -> BoxFuture<'a, Result<(), Error>>;

    /// Runs the sink.
    fn run_boxed<'a>(&'a mut self, cx: &'a mut SinkContext) -> BoxFuture<'a, Result<(), Error>>;

    /// Releases what `start` opened.
    fn stop_boxed(&mut self) -> BoxFuture<'_, ()>;
}

impl<S: Sink> DynSink for S {
    fn start_boxed<'a>(&'a mut self, cx: &'a mut SinkContext) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(self.start(cx))
    }

    fn run_boxed<'a>(&'a mut self, cx: &'a mut SinkContext) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(self.run(cx))
    }

    fn stop_boxed(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(self.stop())
    }
}

/// What a transform (or a source) produces from a batch: events to pass on, in order, some of
/// them marked for the quarantine, and a count of those dropped on purpose.
#[derive(Debug, Default)]
pub struct Output {
    events: Vec<Event>,
    /// Indices into `events` of rejected events, with the reason.
    rejects: Vec<(usize, Text)>,
    dropped: u64,
}

impl Output {
    /// An empty output with room for `n` events.
    pub fn with_capacity(n: usize) -> Self {
        Output {
            events: Vec::with_capacity(n),
            ..Output::default()
        }
    }

    /// Passes `event` on.
    pub fn push(&mut self, event: Event) {
        self.events.push(event);
    }

    /// Sends `event` to the quarantine with `reason` (what is wrong with it, for a person).
    pub fn reject(&mut self, event: Event, reason: impl Into<Text>) {
        self.rejects.push((self.events.len(), reason.into()));
        self.events.push(event);
    }

    /// Drops `event` on purpose: it is acknowledged and counted.
    pub fn drop_event(&mut self, event: Event) {
        event.ack_dropped();
        self.dropped += 1;
    }

    /// Events pushed or rejected so far.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether nothing was pushed or rejected.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    pub(crate) fn events_mut(&mut self) -> &mut [Event] {
        &mut self.events
    }

    /// Splits into (events to pass on, rejected events with reasons, dropped count): what the
    /// engine does with an output, and what a transform's tests look at.
    pub fn split(self) -> (Batch, Vec<(Event, Text)>, u64) {
        if self.rejects.is_empty() {
            return (self.events, Vec::new(), self.dropped);
        }
        let mut kept = Vec::with_capacity(self.events.len() - self.rejects.len());
        let mut rejected = Vec::with_capacity(self.rejects.len());
        let mut rejects = self.rejects.into_iter().peekable();
        for (index, event) in self.events.into_iter().enumerate() {
            match rejects.next_if(|(i, _)| *i == index) {
                Some((_, reason)) => rejected.push((event, reason)),
                None => kept.push(event),
            }
        }
        (kept, rejected, self.dropped)
    }
}

impl From<Batch> for Output {
    fn from(events: Batch) -> Self {
        Output {
            events,
            ..Output::default()
        }
    }
}

/// What a running source uses: emitting, its checkpoint, shutdown, readiness and its term.
pub struct SourceContext {
    pub(crate) id: Arc<str>,
    pub(crate) tracker: Tracker,
    pub(crate) output: Fanout,
    pub(crate) quarantine: QuarantineSender,
    pub(crate) shutdown: Shutdown,
    pub(crate) ready: ReadyFlag,
    pub(crate) data_dir: PathBuf,
    pub(crate) metrics: SourceMetrics,
    pub(crate) term: Option<Arc<dyn Term>>,
    pub(crate) restart: BackoffConfig,
    pub(crate) emitter: Option<Emitter>,
}

impl SourceContext {
    /// The source's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The term this run belongs to, when the pipeline runs under `[pipeline] leader`: its
    /// fencing token, and whether it is still valid (check before an act that must not be done
    /// by two leaders).
    pub fn term(&self) -> Option<&Arc<dyn Term>> {
        self.term.as_ref()
    }

    /// Starts the checkpoint at `position`, the one this source recorded last time. Call it
    /// before emitting anything.
    pub fn resume_from(&mut self, position: Position) -> Result<(), Error> {
        self.tracker.resume_from(position).map_err(|e| {
            Error::new(ErrorKind::Internal, "resuming after events were emitted").with_source(e)
        })
    }

    /// Waits until `events` more events fit the in-flight budget. Cancel-safe, so a source can
    /// wait for room and for its own timers at once; [`SourceContext::emit`] waits by itself
    /// too.
    pub async fn capacity(&mut self, events: usize) {
        self.tracker.reserve(events, 0).await;
    }

    /// Emits events (and rejects) whose highest position is complete: no event at or below it
    /// comes later. Waits while the in-flight budget is used up.
    pub async fn emit(&mut self, out: impl Into<Output>) -> Result<(), Error> {
        self.emit_inner(out.into(), false).await
    }

    /// Emits events whose highest position may continue in the next call (a large transaction
    /// emitted in parts). The checkpoint stays below that position until it is complete.
    pub async fn emit_open(&mut self, out: impl Into<Output>) -> Result<(), Error> {
        self.emit_inner(out.into(), true).await
    }

    async fn emit_inner(&mut self, mut out: Output, open: bool) -> Result<(), Error> {
        if out.is_empty() {
            return Ok(());
        }
        let bytes = out.events.iter().map(Event::byte_size).sum();
        self.tracker.reserve(out.len(), bytes).await;
        let registered = if open {
            self.tracker.register_open(out.events_mut())
        } else {
            self.tracker.register(out.events_mut())
        };
        registered.map_err(|e| {
            Error::new(ErrorKind::Internal, "registering emitted events").with_source(e)
        })?;
        let (events, rejected, _) = out.split();
        self.metrics.emitted(events.len(), bytes);
        self.metrics.in_flight(&self.tracker);
        self.quarantine.send(rejected).await;
        self.output.send(events).await;
        Ok(())
    }

    /// Declares complete a position left open by [`SourceContext::emit_open`], when no more
    /// events of it will be emitted.
    pub fn seal(&mut self) {
        self.tracker.seal();
    }

    /// The checkpoint: the highest position at or before which every emitted event is
    /// acknowledged (or the start position). Only this may be recorded as done.
    pub fn checkpoint(&mut self) -> Option<Position> {
        let checkpoint = self.tracker.checkpoint();
        self.metrics.checkpoint(checkpoint, &self.tracker);
        checkpoint
    }

    /// Waits until some emitted batch is resolved, so the checkpoint may have moved.
    pub async fn progressed(&mut self) {
        self.tracker.progressed().await;
    }

    /// Waits until every emitted event is resolved, then returns the checkpoint.
    pub async fn drain(&mut self) -> Option<Position> {
        self.tracker.drain().await;
        self.checkpoint()
    }

    /// Events emitted and not yet resolved.
    pub fn in_flight_events(&self) -> usize {
        self.tracker.in_flight_events()
    }

    /// Fires when the pipeline is asked to stop.
    pub fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    /// Marks the source ready (started and connected) or not, for `/ready`.
    pub fn set_ready(&self, ready: bool) {
        self.ready.set(ready);
    }

    /// Reports a figure of the source's own for `/status` and `sluice status` (such as
    /// `lag_bytes`), beside the engine's in-flight events and checkpoint.
    pub fn report(&self, name: &'static str, value: f64) {
        self.metrics.figures.report(name, value);
    }

    /// A file-backed store for this source's checkpoint, for sources whose input has no
    /// server-side place to keep it.
    pub fn checkpoint_store(&self) -> CheckpointStore {
        CheckpointStore::new(&self.data_dir, &self.id)
    }

    /// The pipeline's data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// A backoff with the pipeline's restart settings, for a retry the source does itself (a
    /// side connection whose loss must not stop it).
    pub fn backoff(&self) -> Backoff {
        Backoff::new(self.restart)
    }

    /// The emitter of this run, for a source that serves requests: cloneable, usable from many
    /// tasks, refusing rather than waiting when the in-flight budget is full, and giving a
    /// [`Receipt`] per event. It stops accepting when the run ends.
    pub fn emitter(&mut self) -> Emitter {
        self.emitter
            .get_or_insert_with(|| Emitter {
                inner: Arc::new(EmitterInner {
                    state: Mutex::new(EmitterState {
                        tracker: Tracker::new(self.tracker.budget(), None),
                        next: 1,
                        closed: false,
                    }),
                    output: self.output.clone(),
                    metrics: self.metrics.clone(),
                }),
            })
            .clone()
    }

    /// Ends the run: the emitter accepts no more, and everything emitted resolves.
    pub(crate) async fn finish(&mut self) {
        if let Some(emitter) = &self.emitter {
            let mut tracker = emitter.close();
            tracker.drain().await;
        }
        self.tracker.drain().await;
    }
}

/// Why an [`Emitter`] refused events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The in-flight budget is full: try again later (an HTTP source answers 503).
    #[error("the pipeline's in-flight budget is full")]
    Full,
    /// The source's run has ended (shutdown, lost leadership).
    #[error("the source is stopping")]
    Closed,
}

/// Emits events from any task of a source that serves requests (see
/// [`SourceContext::emitter`]). Positions are assigned in the order of calls; there is no
/// checkpoint to resume from, each event's [`Receipt`] tells its outcome.
#[derive(Clone)]
pub struct Emitter {
    inner: Arc<EmitterInner>,
}

struct EmitterInner {
    state: Mutex<EmitterState>,
    output: Fanout,
    metrics: SourceMetrics,
}

struct EmitterState {
    tracker: Tracker,
    next: u64,
    closed: bool,
}

impl Emitter {
    /// Emits `events` (their positions are overwritten) if they fit the in-flight budget now,
    /// and returns a receipt per event, in order; refuses without waiting otherwise. Waits
    /// only while the next stage's input is full.
    pub async fn try_emit(&self, mut events: Vec<Event>) -> Result<Vec<Receipt>, Refused> {
        let bytes = events.iter().map(Event::byte_size).sum();
        let receipts = {
            let mut state = self
                .inner
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if state.closed {
                return Err(Refused::Closed);
            }
            if !state.tracker.has_room(events.len(), bytes) {
                return Err(Refused::Full);
            }
            for event in &mut events {
                event.meta.position = Position(state.next);
                state.next += 1;
            }
            // Positions were just assigned in increasing order under the lock.
            state
                .tracker
                .register_with_receipts(&mut events)
                .map_err(|_| Refused::Closed)?
        };
        self.inner.metrics.emitted(events.len(), bytes);
        self.inner.output.send(events).await;
        Ok(receipts)
    }

    /// Stops accepting and hands back the tracker, to drain.
    fn close(&self) -> Tracker {
        let mut state = self
            .inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        state.closed = true;
        let budget = state.tracker.budget();
        std::mem::replace(&mut state.tracker, Tracker::new(budget, None))
    }
}

impl Debug for Emitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Emitter")
    }
}

/// What a running sink uses: its input, the quarantine, readiness and the pipeline's leader.
pub struct SinkContext {
    pub(crate) id: Arc<str>,
    pub(crate) input: mpsc::Receiver<Batch>,
    pub(crate) quarantine: QuarantineSender,
    pub(crate) ready: ReadyFlag,
    pub(crate) metrics: ComponentMetrics,
    pub(crate) leader: LeaderView,
    pub(crate) restart: BackoffConfig,
}

impl SinkContext {
    /// The sink's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The pipeline's current term while this process leads its election (and the term is
    /// still valid); `None` otherwise, and always for a pipeline without `leader`.
    pub fn term(&self) -> Option<Arc<dyn Term>> {
        self.leader.term()
    }

    /// The next batch, or `None` once every input has ended.
    pub async fn next(&mut self) -> Option<Batch> {
        let batch = self.input.recv().await?;
        self.metrics.received(&batch);
        Some(batch)
    }

    /// The next batch if one is already waiting (to gather several before a flush).
    pub fn try_next(&mut self) -> Option<Batch> {
        let batch = self.input.try_recv().ok()?;
        self.metrics.received(&batch);
        Some(batch)
    }

    /// Sends events the destination refused for good to the quarantine, each with its reason.
    /// They are acknowledged once the quarantine holds them.
    pub async fn reject(&self, rejected: Vec<(Event, Text)>) {
        self.quarantine.send(rejected).await;
    }

    /// Marks the sink ready (connected) or not, for `/ready`.
    pub fn set_ready(&self, ready: bool) {
        self.ready.set(ready);
    }

    /// A backoff with the pipeline's restart settings, for a retry the sink does itself (a
    /// message the destination refused for now).
    pub fn backoff(&self) -> Backoff {
        Backoff::new(self.restart)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn event(id: &str) -> Event {
        Event::new(id, Position(1), Bytes::new())
    }

    #[test]
    fn split_keeps_order_and_separates_rejects() {
        let mut out = Output::default();
        out.push(event("a"));
        out.reject(event("b"), "bad");
        out.push(event("c"));
        out.reject(event("d"), "worse");
        out.drop_event(event("e"));
        let (kept, rejected, dropped) = out.split();
        let ids: Vec<_> = kept.iter().map(|e| e.id.to_string()).collect();
        assert_eq!(ids, ["a", "c"]);
        let rejected: Vec<_> = rejected
            .iter()
            .map(|(e, r)| (e.id.to_string(), r.to_string()))
            .collect();
        assert_eq!(
            rejected,
            [("b".into(), "bad".into()), ("d".into(), "worse".into())]
        );
        assert_eq!(dropped, 1);
    }
}
