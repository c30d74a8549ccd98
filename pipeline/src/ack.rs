//! End-to-end acknowledgements: how a source learns which of its events are safely delivered,
//! and the checkpoint that follows from it.
//!
//! A source registers each batch it emits with its [`Tracker`]. Every event then carries an
//! [`AckHandle`] pointing at one slot of that batch. Sinks answer the handle when the event is
//! durable; transforms answer it when they drop the event; clones (fan-out) add references to
//! the same slot, so the slot resolves when the last clone answers. A handle dropped without an
//! answer resolves the slot as failed.
//!
//! The tracker turns resolved slots into the checkpoint: the highest position at or before which
//! every registered event is resolved and none failed. Because the checkpoint is computed from
//! the slots, and a slot can only resolve through its handles, the checkpoint cannot run ahead
//! of delivery whatever a component does.
//!
//! The tracker also carries the source's in-flight budget (events and bytes registered but not
//! yet resolved): a source that emits faster than its sinks deliver waits in
//! [`Tracker::register`], so memory stays bounded however slow a sink is.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context as TaskContext, Poll};

use tokio::sync::{oneshot, watch};

use crate::event::{Event, Position, Text};

/// Set in a slot's reference count once any clone of its event failed.
const FAILED: u32 = 1 << 31;

/// State shared between a source's tracker and the handles of its in-flight events.
#[derive(Debug)]
struct Shared {
    in_flight_events: AtomicUsize,
    in_flight_bytes: AtomicUsize,
    peak_in_flight_events: AtomicUsize,
    failed_events: AtomicU64,
    /// Bumped whenever a batch resolves, to wake a waiting source.
    progress: watch::Sender<u64>,
    /// Bumped whenever an event fails, to wake the runtime (which runs the source again).
    failures: watch::Sender<u64>,
}

impl Shared {
    fn batch_resolved(&self, events: usize, bytes: usize) {
        self.in_flight_events.fetch_sub(events, Ordering::AcqRel);
        self.in_flight_bytes.fetch_sub(bytes, Ordering::AcqRel);
        self.progress.send_modify(|generation| *generation += 1);
    }
}

/// How one event ended, as its [`Receipt`] tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every sink it went to holds it durably.
    Delivered,
    /// A transform dropped it on purpose (filtered out, a duplicate).
    Dropped,
    /// It was quarantined, for this reason; the quarantine holds it durably.
    Quarantined(Text),
    /// It could not be delivered.
    Failed,
}

/// Resolves with the [`Outcome`] of one event emitted through an [`Emitter`](crate::Emitter): a request can be
/// answered by its own event's fate, not by its source's checkpoint.
#[derive(Debug)]
pub struct Receipt(oneshot::Receiver<Outcome>);

impl Future for Receipt {
    type Output = Outcome;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Outcome> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|answer| answer.unwrap_or(Outcome::Failed))
    }
}

/// What a receipt-bearing slot has learnt before it resolves.
#[derive(Debug, Default)]
struct ReceiptSlot {
    answer: Option<oneshot::Sender<Outcome>>,
    /// Set when a clone went to the quarantine, or was dropped on purpose.
    noted: Option<Outcome>,
}

/// The acknowledgement slots of one emitted batch.
#[derive(Debug)]
struct BatchSlots {
    positions: Box<[Position]>,
    /// Outstanding handles per event, with [`FAILED`] set once one of them failed.
    refs: Box<[AtomicU32]>,
    /// Per event, for batches emitted with receipts; empty otherwise.
    receipts: Box<[Mutex<ReceiptSlot>]>,
    /// Events not yet resolved.
    pending: AtomicUsize,
    bytes: usize,
    shared: Arc<Shared>,
}

impl BatchSlots {
    fn release(&self, index: usize, failed: bool) {
        let slot = &self.refs[index];
        if failed && slot.fetch_or(FAILED, Ordering::AcqRel) & FAILED == 0 {
            self.shared.failed_events.fetch_add(1, Ordering::Relaxed);
            self.shared.failures.send_modify(|count| *count += 1);
        }
        let before = slot.fetch_sub(1, Ordering::AcqRel);
        if before & !FAILED == 1 {
            if let Some(receipt) = self.receipts.get(index) {
                let mut receipt = receipt.lock().unwrap_or_else(PoisonError::into_inner);
                let outcome = if failed || before & FAILED != 0 {
                    Outcome::Failed
                } else {
                    receipt.noted.take().unwrap_or(Outcome::Delivered)
                };
                if let Some(answer) = receipt.answer.take() {
                    let _ = answer.send(outcome);
                }
            }
            if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
                self.shared.batch_resolved(self.positions.len(), self.bytes);
            }
        }
    }

    /// Remembers, for the receipt, that the event was quarantined or dropped.
    fn note(&self, index: usize, outcome: Outcome) {
        if let Some(receipt) = self.receipts.get(index) {
            let mut receipt = receipt.lock().unwrap_or_else(PoisonError::into_inner);
            // A quarantine anywhere is what the requester most needs to know.
            if !matches!(receipt.noted, Some(Outcome::Quarantined(_))) {
                receipt.noted = Some(outcome);
            }
        }
    }

    /// Whether the event at `index` resolved, and whether it failed.
    fn state(&self, index: usize) -> SlotState {
        let value = self.refs[index].load(Ordering::Acquire);
        if value & !FAILED != 0 {
            SlotState::Pending
        } else if value & FAILED != 0 {
            SlotState::Failed
        } else {
            SlotState::Acked
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum SlotState {
    Pending,
    Acked,
    Failed,
}

/// One event's acknowledgement obligation. Clones are children: the event resolves when every
/// clone has answered. Dropping a handle without answering fails the event.
#[derive(Debug)]
pub struct AckHandle {
    batch: Arc<BatchSlots>,
    index: u32,
    answered: bool,
}

impl AckHandle {
    /// The event is durable downstream, or was dropped on purpose.
    pub fn ack(self) {
        self.answer(false);
    }

    /// The event could not be delivered: its source's checkpoint will not pass it.
    pub fn fail(self) {
        self.answer(true);
    }

    fn answer(mut self, failed: bool) {
        self.batch.release(self.index as usize, failed);
        self.answered = true;
    }

    /// Notes, for the event's receipt, that it was sent to the quarantine for `reason`.
    pub(crate) fn note_quarantined(&self, reason: &Text) {
        self.batch
            .note(self.index as usize, Outcome::Quarantined(reason.clone()));
    }

    /// Notes, for the event's receipt, that it was dropped on purpose.
    pub(crate) fn note_dropped(&self) {
        self.batch.note(self.index as usize, Outcome::Dropped);
    }
}

impl Clone for AckHandle {
    fn clone(&self) -> Self {
        self.batch.refs[self.index as usize].fetch_add(1, Ordering::AcqRel);
        AckHandle {
            batch: Arc::clone(&self.batch),
            index: self.index,
            answered: false,
        }
    }
}

impl Drop for AckHandle {
    fn drop(&mut self) {
        if !self.answered {
            self.batch.release(self.index as usize, true);
        }
    }
}

/// Limits on what a source may have in flight (registered, not yet resolved).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Most events in flight.
    pub max_events: usize,
    /// Most payload and metadata bytes in flight.
    pub max_bytes: usize,
}

/// A source's view of its acknowledgements: registers emitted batches, waits for budget, and
/// computes the checkpoint.
#[derive(Debug)]
pub struct Tracker {
    shared: Arc<Shared>,
    budget: Budget,
    batches: VecDeque<Arc<BatchSlots>>,
    /// Index of the first event of the front batch not yet known resolved.
    scan: usize,
    /// Position of the last resolved event in registration order.
    last: Option<Position>,
    /// The highest resolved position strictly below `last`.
    below_last: Option<Position>,
    /// Highest position registered so far.
    registered: Option<Position>,
    /// A position whose events may not all be registered yet (see [`Tracker::register_open`]).
    open: Option<Position>,
    /// Whether anything was registered yet.
    emitted: bool,
    progress: watch::Receiver<u64>,
}

/// A batch was registered with a position lower than one already registered.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "event position {got} is lower than position {registered} already emitted: a source's positions must never go backwards"
)]
pub struct PositionRegression {
    /// The offending position.
    pub got: Position,
    /// The highest position registered before it.
    pub registered: Position,
}

impl Tracker {
    /// A tracker whose checkpoint starts at `start` (the position restored at start-up, if any).
    pub fn new(budget: Budget, start: Option<Position>) -> Self {
        let (progress, receiver) = watch::channel(0);
        Tracker {
            shared: Arc::new(Shared {
                in_flight_events: AtomicUsize::new(0),
                in_flight_bytes: AtomicUsize::new(0),
                peak_in_flight_events: AtomicUsize::new(0),
                failed_events: AtomicU64::new(0),
                progress,
                failures: watch::channel(0).0,
            }),
            budget,
            batches: VecDeque::new(),
            scan: 0,
            last: start,
            below_last: None,
            registered: start,
            open: None,
            emitted: false,
            progress: receiver,
        }
    }

    /// Restarts the checkpoint at `position`, restored from where the source keeps it. Only
    /// before anything is registered.
    pub fn resume_from(&mut self, position: Position) -> Result<(), PositionRegression> {
        if let (true, Some(registered)) = (self.emitted, self.registered) {
            return Err(PositionRegression {
                got: position,
                registered,
            });
        }
        self.last = Some(position);
        self.below_last = None;
        self.registered = Some(position);
        self.open = None;
        Ok(())
    }

    /// Waits until `events` more events and `bytes` more bytes fit the budget. A batch larger
    /// than the whole budget is let through when nothing else is in flight, so it cannot wait
    /// forever.
    pub async fn reserve(&mut self, events: usize, bytes: usize) {
        loop {
            self.progress.mark_unchanged();
            if self.has_room(events, bytes) {
                return;
            }
            // The sender lives in `shared`, which this tracker owns, so `changed` cannot fail.
            let _ = self.progress.changed().await;
        }
    }

    /// Registers a batch whose last position is complete: no event at or below the batch's
    /// highest position will be registered later. Attaches an [`AckHandle`] to each event.
    /// Call [`Tracker::reserve`] first to respect the budget.
    pub fn register(&mut self, events: &mut [Event]) -> Result<(), PositionRegression> {
        self.register_inner(events, false, None)
    }

    /// Registers a batch whose last position may continue in the next batch (a large
    /// transaction split across batches). The checkpoint stays below that position until a
    /// later [`Tracker::register`] moves past it.
    pub fn register_open(&mut self, events: &mut [Event]) -> Result<(), PositionRegression> {
        self.register_inner(events, true, None)
    }

    /// Registers a complete batch and returns a [`Receipt`] per event, in order.
    pub fn register_with_receipts(
        &mut self,
        events: &mut [Event],
    ) -> Result<Vec<Receipt>, PositionRegression> {
        let mut receipts = Vec::with_capacity(events.len());
        self.register_inner(events, false, Some(&mut receipts))?;
        Ok(receipts)
    }

    /// The budget it keeps.
    pub fn budget(&self) -> Budget {
        self.budget
    }

    /// Whether `events` more events and `bytes` more bytes fit the budget now (a batch larger
    /// than the whole budget fits when nothing is in flight).
    pub fn has_room(&self, events: usize, bytes: usize) -> bool {
        let in_events = self.shared.in_flight_events.load(Ordering::Acquire);
        let in_bytes = self.shared.in_flight_bytes.load(Ordering::Acquire);
        in_events == 0
            || (in_events + events <= self.budget.max_events
                && in_bytes + bytes <= self.budget.max_bytes)
    }

    fn register_inner(
        &mut self,
        events: &mut [Event],
        open: bool,
        receipts: Option<&mut Vec<Receipt>>,
    ) -> Result<(), PositionRegression> {
        let Some(first) = events.first() else {
            return Ok(());
        };
        let first = first.meta.position;
        // A position may repeat only if it was left open by the previous batch.
        if let Some(registered) = self.registered {
            let continues_open = self.open == Some(first);
            if first < registered || (first == registered && !continues_open) {
                return Err(PositionRegression {
                    got: first,
                    registered,
                });
            }
        }
        let mut positions = Vec::with_capacity(events.len());
        let mut bytes = 0;
        let mut previous = first;
        for event in events.iter() {
            let position = event.meta.position;
            if position < previous {
                return Err(PositionRegression {
                    got: position,
                    registered: previous,
                });
            }
            previous = position;
            positions.push(position);
            bytes += event.byte_size();
        }
        let count = events.len();
        let slots = match receipts {
            Some(receipts) => (0..count)
                .map(|_| {
                    let (answer, receipt) = oneshot::channel();
                    receipts.push(Receipt(receipt));
                    Mutex::new(ReceiptSlot {
                        answer: Some(answer),
                        noted: None,
                    })
                })
                .collect(),
            None => Box::default(),
        };
        let batch = Arc::new(BatchSlots {
            positions: positions.into_boxed_slice(),
            refs: (0..count).map(|_| AtomicU32::new(1)).collect(),
            receipts: slots,
            pending: AtomicUsize::new(count),
            bytes,
            shared: Arc::clone(&self.shared),
        });
        let in_flight = self
            .shared
            .in_flight_events
            .fetch_add(count, Ordering::AcqRel)
            + count;
        self.shared
            .in_flight_bytes
            .fetch_add(bytes, Ordering::AcqRel);
        self.shared
            .peak_in_flight_events
            .fetch_max(in_flight, Ordering::Relaxed);
        for (index, event) in events.iter_mut().enumerate() {
            event.ack = Some(AckHandle {
                batch: Arc::clone(&batch),
                index: index as u32,
                answered: false,
            });
        }
        self.registered = Some(previous);
        self.open = open.then_some(previous);
        self.emitted = true;
        self.batches.push_back(batch);
        Ok(())
    }

    /// Closes a position left open by [`Tracker::register_open`] when its remaining events
    /// turned out to be none (the rest of the transaction was filtered out).
    pub fn seal(&mut self) {
        self.open = None;
    }

    /// The checkpoint: the highest position at or before which every registered event is
    /// resolved and none failed, or the start position when nothing new is.
    pub fn checkpoint(&mut self) -> Option<Position> {
        let blocking = self.advance();
        match blocking.or(self.open) {
            Some(p) if self.last == Some(p) => self.below_last,
            _ => self.last,
        }
    }

    /// Consumes resolved events from the front and returns the position of the first event
    /// that is pending or failed, if any.
    fn advance(&mut self) -> Option<Position> {
        while let Some(batch) = self.batches.front() {
            while self.scan < batch.positions.len() {
                let position = batch.positions[self.scan];
                // A failed slot never resolves further, so the scan stops on it for good.
                if batch.state(self.scan) != SlotState::Acked {
                    return Some(position);
                }
                if self.last != Some(position) {
                    self.below_last = self.last;
                    self.last = Some(position);
                }
                self.scan += 1;
            }
            self.batches.pop_front();
            self.scan = 0;
        }
        None
    }

    /// Whether every registered event has resolved (delivered, dropped or failed).
    pub fn is_idle(&self) -> bool {
        self.shared.in_flight_events.load(Ordering::Acquire) == 0
    }

    /// Waits until some batch resolves (or returns at once if one did since the last call).
    pub async fn progressed(&mut self) {
        let _ = self.progress.changed().await;
    }

    /// Waits until every registered event has resolved, then returns the checkpoint.
    pub async fn drain(&mut self) -> Option<Position> {
        loop {
            self.progress.mark_unchanged();
            if self.is_idle() {
                return self.checkpoint();
            }
            let _ = self.progress.changed().await;
        }
    }

    /// Events registered and not yet resolved.
    pub fn in_flight_events(&self) -> usize {
        self.shared.in_flight_events.load(Ordering::Acquire)
    }

    /// Payload and metadata bytes registered and not yet resolved.
    pub fn in_flight_bytes(&self) -> usize {
        self.shared.in_flight_bytes.load(Ordering::Acquire)
    }

    /// The most events ever in flight at once.
    pub fn peak_in_flight_events(&self) -> usize {
        self.shared.peak_in_flight_events.load(Ordering::Relaxed)
    }

    /// Events that failed (their checkpoint is held before them).
    pub fn failed_events(&self) -> u64 {
        self.shared.failed_events.load(Ordering::Relaxed)
    }

    /// A watch that resolves when an event registered with this tracker fails from now on.
    pub fn failures(&self) -> Failures {
        Failures(self.shared.failures.subscribe())
    }
}

/// Wakes when an event of a tracker fails (see [`Tracker::failures`]).
#[derive(Debug)]
pub struct Failures(watch::Receiver<u64>);

impl Failures {
    /// Waits until an event fails after this watch was made (or after the last wake).
    pub async fn failed(&mut self) {
        // The sender lives as long as the tracker's events; without them nothing can fail.
        if self.0.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use proptest::prelude::*;
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    const BIG: Budget = Budget {
        max_events: usize::MAX,
        max_bytes: usize::MAX,
    };

    fn events(positions: &[u64]) -> Vec<Event> {
        positions
            .iter()
            .map(|p| {
                Event::new(
                    format!("e{p}"),
                    Position(*p),
                    Bytes::from_static(b"12345678"),
                )
            })
            .collect()
    }

    fn handles(events: &mut [Event]) -> Vec<AckHandle> {
        events.iter_mut().map(|e| e.ack.take().unwrap()).collect()
    }

    fn poll_once<F: Future>(future: Pin<&mut F>) -> Poll<F::Output> {
        future.poll(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn checkpoint_stops_before_the_first_unacked_event() {
        let mut t = Tracker::new(BIG, None);
        let mut batch = events(&[1, 2, 2, 3]);
        t.register(&mut batch).unwrap();
        let mut h = handles(&mut batch);
        assert_eq!(t.checkpoint(), None);
        let h3 = h.pop().unwrap();
        let h2b = h.pop().unwrap();
        h.pop().unwrap().ack(); // first event at 2
        assert_eq!(t.checkpoint(), None, "event at 1 still pending");
        h.pop().unwrap().ack();
        assert_eq!(t.checkpoint(), Some(Position(1)), "2 is half acked");
        h3.ack();
        assert_eq!(t.checkpoint(), Some(Position(1)));
        h2b.ack();
        assert_eq!(t.checkpoint(), Some(Position(3)));
        assert!(t.is_idle());
    }

    #[test]
    fn a_failed_or_forgotten_event_holds_the_checkpoint_for_good() {
        let mut t = Tracker::new(BIG, Some(Position(10)));
        let mut batch = events(&[11, 12, 13]);
        t.register(&mut batch).unwrap();
        let mut h = handles(&mut batch).into_iter();
        h.next().unwrap().ack();
        drop(h.next().unwrap()); // never answered
        h.next().unwrap().ack();
        assert_eq!(t.checkpoint(), Some(Position(11)));
        assert_eq!(t.failed_events(), 1);
        assert!(t.is_idle(), "a failure still resolves the event");
        let mut later = events(&[14]);
        t.register(&mut later).unwrap();
        handles(&mut later).pop().unwrap().ack();
        assert_eq!(t.checkpoint(), Some(Position(11)));
    }

    #[test]
    fn fan_out_resolves_when_every_child_answers() {
        let mut t = Tracker::new(BIG, None);
        let mut batch = events(&[5]);
        t.register(&mut batch).unwrap();
        let parent = handles(&mut batch).pop().unwrap();
        let child = parent.clone();
        parent.ack();
        assert_eq!(t.checkpoint(), None);
        child.ack();
        assert_eq!(t.checkpoint(), Some(Position(5)));
    }

    #[test]
    fn an_open_position_is_not_a_checkpoint_until_closed() {
        let mut t = Tracker::new(BIG, Some(Position(1)));
        let mut first = events(&[2, 3]);
        t.register_open(&mut first).unwrap();
        handles(&mut first).into_iter().for_each(AckHandle::ack);
        assert_eq!(t.checkpoint(), Some(Position(2)));
        let mut more = events(&[3]);
        t.register_open(&mut more).unwrap();
        handles(&mut more).into_iter().for_each(AckHandle::ack);
        assert_eq!(t.checkpoint(), Some(Position(2)));
        let mut rest = events(&[3, 3]);
        t.register(&mut rest).unwrap();
        handles(&mut rest).into_iter().for_each(AckHandle::ack);
        assert_eq!(t.checkpoint(), Some(Position(3)));
        // A position whose remaining events were all filtered out is sealed without events.
        let mut last = events(&[4]);
        t.register_open(&mut last).unwrap();
        handles(&mut last).into_iter().for_each(AckHandle::ack);
        assert_eq!(t.checkpoint(), Some(Position(3)));
        t.seal();
        assert_eq!(t.checkpoint(), Some(Position(4)));
    }

    #[test]
    fn positions_must_not_go_backwards() {
        let mut t = Tracker::new(BIG, Some(Position(5)));
        assert_eq!(
            t.register(&mut events(&[5])),
            Err(PositionRegression {
                got: Position(5),
                registered: Position(5)
            })
        );
        assert!(t.register(&mut events(&[7, 6])).is_err());
        t.register(&mut events(&[8])).unwrap();
        assert!(t.register(&mut events(&[8])).is_err());
    }

    #[test]
    fn reserve_waits_for_the_budget_and_resumes_on_release() {
        let mut t = Tracker::new(
            Budget {
                max_events: 2,
                max_bytes: usize::MAX,
            },
            None,
        );
        let mut batch = events(&[1, 2]);
        t.register(&mut batch).unwrap();
        let h = handles(&mut batch);
        assert_eq!(t.in_flight_events(), 2);
        {
            let mut wait = pin!(t.reserve(1, 0));
            assert!(poll_once(wait.as_mut()).is_pending());
            h.into_iter().for_each(AckHandle::ack);
            assert!(poll_once(wait.as_mut()).is_ready());
        }
        assert_eq!(t.in_flight_events(), 0);
        assert_eq!(t.peak_in_flight_events(), 2);
        // A batch bigger than the whole budget passes when nothing is in flight.
        assert!(poll_once(pin!(t.reserve(10, 0))).is_ready());
    }

    /// One step of a random interleaving.
    #[derive(Debug, Clone)]
    enum Op {
        /// Register events at positions `previous + step` for each step; `open` leaves the last
        /// position open.
        Register { steps: Vec<u64>, open: bool },
        /// Fan out: clone the handle at this index.
        Clone(usize),
        /// Acknowledge the handle at this index.
        Ack(usize),
        /// Fail it explicitly.
        Fail(usize),
        /// Drop it unanswered.
        Forget(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (prop::collection::vec(0u64..3, 1..6), any::<bool>())
                .prop_map(|(steps, open)| Op::Register { steps, open }),
            2 => any::<usize>().prop_map(Op::Clone),
            6 => any::<usize>().prop_map(Op::Ack),
            1 => any::<usize>().prop_map(Op::Fail),
            1 => any::<usize>().prop_map(Op::Forget),
        ]
    }

    /// What the checkpoint must be, computed from first principles: the highest position (or
    /// the start) such that every event at or before it is acknowledged without failure, and
    /// which is not a position still open for more events.
    fn expected(
        start: Option<Position>,
        model: &[(Position, usize, bool)],
        open: Option<Position>,
    ) -> Option<Position> {
        let mut best = start;
        for &(position, _, _) in model {
            let complete = model
                .iter()
                .filter(|(p, _, _)| *p <= position)
                .all(|(_, outstanding, failed)| *outstanding == 0 && !failed);
            if complete && open != Some(position) {
                best = best.max(Some(position));
            }
        }
        best
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Random batches, fan-out, acks, failures and forgotten events, in any interleaving:
        /// the checkpoint is exactly the highest fully acknowledged position, so it never passes
        /// an unacknowledged event, never goes backwards, and when everything is acknowledged it
        /// reaches the last position.
        #[test]
        fn checkpoint_never_passes_an_unacked_event(
            start in prop::option::of(0u64..5),
            ops in prop::collection::vec(op(), 1..60),
            allow_failures in any::<bool>(),
        ) {
            let start = start.map(Position);
            let mut tracker = Tracker::new(BIG, start);
            // Per event: position, outstanding handles, failed.
            let mut model: Vec<(Position, usize, bool)> = Vec::new();
            let mut live: Vec<(usize, AckHandle)> = Vec::new();
            let mut next = start.map_or(0, |p| p.0 + 1);
            let mut open: Option<Position> = None;
            let mut reported: Option<Position> = None;
            let pick = |i: usize, len: usize| i % len;

            let run = |op: Op,
                           tracker: &mut Tracker,
                           model: &mut Vec<(Position, usize, bool)>,
                           live: &mut Vec<(usize, AckHandle)>,
                           next: &mut u64,
                           open: &mut Option<Position>| {
                match op {
                    Op::Register { steps, open: leave_open } => {
                        // Continue an open position first, or start past the last one.
                        let mut position = match *open {
                            Some(p) => p.0,
                            None => *next,
                        };
                        let mut positions = Vec::new();
                        for (i, step) in steps.iter().enumerate() {
                            if i > 0 || open.is_none() {
                                position += step;
                            }
                            positions.push(position);
                        }
                        let mut batch = events(&positions);
                        if leave_open {
                            tracker.register_open(&mut batch).unwrap();
                        } else {
                            tracker.register(&mut batch).unwrap();
                        }
                        let last = *positions.last().unwrap();
                        *open = leave_open.then_some(Position(last));
                        *next = last + 1;
                        for (h, p) in handles(&mut batch).into_iter().zip(positions) {
                            model.push((Position(p), 1, false));
                            live.push((model.len() - 1, h));
                        }
                    }
                    Op::Clone(i) if !live.is_empty() => {
                        let (event, h) = &live[pick(i, live.len())];
                        let (event, h) = (*event, h.clone());
                        model[event].1 += 1;
                        live.push((event, h));
                    }
                    Op::Ack(i) if !live.is_empty() => {
                        let (event, h) = live.swap_remove(pick(i, live.len()));
                        model[event].1 -= 1;
                        h.ack();
                    }
                    Op::Fail(i) | Op::Forget(i) if !live.is_empty() && allow_failures => {
                        let (event, h) = live.swap_remove(pick(i, live.len()));
                        model[event].1 -= 1;
                        model[event].2 = true;
                        if matches!(op, Op::Fail(_)) { h.fail() } else { drop(h) }
                    }
                    _ => {}
                }
            };

            for op in ops {
                run(op, &mut tracker, &mut model, &mut live, &mut next, &mut open);
                let checkpoint = tracker.checkpoint();
                prop_assert_eq!(checkpoint, expected(start, &model, open));
                prop_assert!(checkpoint >= reported, "checkpoint went backwards");
                reported = checkpoint;
            }

            // Close any open position, answer everything: the checkpoint reaches the end
            // unless something failed, in which case it stays before the first failure.
            run(Op::Register { steps: vec![1], open: false }, &mut tracker, &mut model, &mut live, &mut next, &mut open);
            while !live.is_empty() {
                run(Op::Ack(0), &mut tracker, &mut model, &mut live, &mut next, &mut open);
            }
            prop_assert!(tracker.is_idle());
            let checkpoint = tracker.checkpoint();
            prop_assert_eq!(checkpoint, expected(start, &model, open));
            if model.iter().all(|e| !e.2) {
                prop_assert_eq!(checkpoint, Some(Position(next - 1)));
            }
        }
    }
}
