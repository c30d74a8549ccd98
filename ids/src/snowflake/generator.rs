//! The Snowflake generator: one atomic word of state, shared by any number of threads.
//!
//! The state is the last issued (timestamp, sequence) pair packed as
//! `timestamp << sequence_bits | sequence`, a number that only grows. Issuing is a
//! compare-and-swap from the last pair to the next one, so ids of one generator are unique and
//! strictly increasing in the order they were issued, across all threads, without a lock; a
//! batch reserves up to a whole millisecond's remaining sequence numbers in one swap.
//!
//! - **Sequence exhausted** within a millisecond: wait for the next one (a spin of under a
//!   millisecond, bounded; a clock that does not get there is an error, never a reuse).
//! - **Clock moved back** by `step` ms behind the last id: with [`OnBackward::Wait`], wait for
//!   it to catch up if `step <= max_backward`, else refuse with [`IdError::ClockMovedBack`];
//!   with [`OnBackward::Continue`], keep issuing from the last timestamp (see its docs for the
//!   trade-off). Each case is counted in [`SnowflakeStats`].
//! - **A new generator** starts in the millisecond after it was created, so a process that
//!   restarts with the same worker cannot reuse the previous one's last millisecond.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::calendar;
use crate::clock::{Clock, SystemClock};
use crate::error::IdError;
use crate::snowflake::{Layout, LayoutError, Node, Parts, WorkerClaim};

/// Default for [`Options::max_backward`]: steps back of up to 5 ms (an NTP slew's worth, or a
/// leap-second smear's rounding) are waited out, as Leaf does.
pub const DEFAULT_MAX_BACKWARD: Duration = Duration::from_millis(5);

/// How long past the expected time a wait may go before the clock counts as stalled. A thread
/// descheduled for longer still succeeds: the clock is read again when it wakes.
const WAIT_SLACK: Duration = Duration::from_millis(50);

/// What to do when the clock reads earlier than the last issued id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnBackward {
    /// Wait for the clock to catch up if the step is at most `max_backward`, else refuse
    /// (Twitter's and Leaf's behaviour). Ids always carry the time they were issued at.
    #[default]
    Wait,
    /// Keep issuing from the last timestamp, moving it one millisecond ahead of the clock
    /// whenever its sequence runs out (Sonyflake's behaviour). Never waits or fails on a step
    /// back, but: ids then carry a time later than the real one; the id rate is not held to
    /// the cap while the clock is behind; and a process restarted before the clock has caught
    /// up starts from the clock, behind ids it already issued, so it can issue duplicates.
    /// Choose it only where a restart takes longer than any step back the clock can make.
    Continue,
}

/// How a generator handles its clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// The largest step back that is waited out with [`OnBackward::Wait`].
    pub max_backward: Duration,
    /// What to do on a step back.
    pub on_backward: OnBackward,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_backward: DEFAULT_MAX_BACKWARD,
            on_backward: OnBackward::Wait,
        }
    }
}

/// What a generator met since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SnowflakeStats {
    /// Ids issued.
    pub issued: u64,
    /// Waits for the next millisecond because its sequence was used up.
    pub exhausted_waits: u64,
    /// Steps back that were waited out.
    pub backward_waits: u64,
    /// Steps back larger than `max_backward` that refused ids.
    pub backward_refusals: u64,
    /// Issues made from the last timestamp while the clock was behind it
    /// ([`OnBackward::Continue`]).
    pub backward_continued: u64,
    /// The largest step back seen, in milliseconds.
    pub largest_step_back_ms: u64,
}

#[derive(Debug, Default)]
struct Counters {
    issued: AtomicU64,
    exhausted_waits: AtomicU64,
    backward_waits: AtomicU64,
    backward_refusals: AtomicU64,
    backward_continued: AtomicU64,
    largest_step_back_ms: AtomicU64,
}

impl Counters {
    fn stepped_back(&self, step_ms: u64, outcome: &AtomicU64) {
        outcome.fetch_add(1, Ordering::Relaxed);
        self.largest_step_back_ms
            .fetch_max(step_ms, Ordering::Relaxed);
    }
}

/// A Snowflake generator for one (datacenter, worker) pair. Share it (`Arc`) between every
/// task of the process that issues ids for that pair: two generators with one pair issue
/// duplicates.
#[derive(Debug)]
pub struct Snowflake<C: Clock = SystemClock> {
    layout: Layout,
    /// The datacenter and worker fields, in place.
    node_bits: u64,
    /// Width of the datacenter and worker fields together.
    node_width: u32,
    sequence_mask: u64,
    /// `timestamp << sequence_bits | sequence` of the last issued id.
    state: AtomicU64,
    claim: Arc<dyn WorkerClaim>,
    options: Options,
    clock: C,
    counters: Counters,
}

/// A run of consecutive ids reserved in one swap: `count` ids from the packed state `first`.
#[derive(Debug, Clone, Copy)]
struct Reserved {
    first: u64,
    count: u64,
}

impl Snowflake<SystemClock> {
    /// A generator on the system clock.
    pub fn new(
        layout: Layout,
        claim: Arc<dyn WorkerClaim>,
        options: Options,
    ) -> Result<Self, IdError> {
        Snowflake::with_clock(layout, claim, options, SystemClock)
    }
}

impl<C: Clock> Snowflake<C> {
    /// A generator reading `clock`. Fails if the pair does not fit the layout, if the epoch is
    /// later than the clock, or if the layout's timestamp has already run out.
    pub fn with_clock(
        layout: Layout,
        claim: Arc<dyn WorkerClaim>,
        options: Options,
        clock: C,
    ) -> Result<Self, IdError> {
        let node = claim.node();
        node.check(&layout)?;
        let now = clock.now_ms();
        if now < layout.epoch_ms() {
            return Err(LayoutError::EpochInFuture {
                epoch: calendar::rfc3339(layout.epoch_ms()),
                now: calendar::rfc3339(now),
            }
            .into());
        }
        let tick = now - layout.epoch_ms();
        if tick > layout.max_timestamp() {
            return Err(timestamp_exhausted(&layout));
        }
        let sequence_bits = u32::from(layout.sequence_bits());
        let sequence_mask = layout.max_sequence();
        let node_bits = layout.encode(Parts {
            timestamp: 0,
            datacenter: node.datacenter,
            worker: node.worker,
            sequence: 0,
        })?;
        Ok(Snowflake {
            layout,
            node_bits,
            node_width: layout.timestamp_shift() - sequence_bits,
            sequence_mask,
            // The creation millisecond with its sequence used up: the first id waits for the
            // next millisecond, which no previous process with this pair can have used.
            state: AtomicU64::new(tick << sequence_bits | sequence_mask),
            claim,
            options,
            clock,
            counters: Counters::default(),
        })
    }

    /// The layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The (datacenter, worker) pair.
    pub fn node(&self) -> Node {
        self.claim.node()
    }

    /// The clock options.
    pub fn options(&self) -> Options {
        self.options
    }

    /// What the generator met so far.
    pub fn stats(&self) -> SnowflakeStats {
        let c = &self.counters;
        SnowflakeStats {
            issued: c.issued.load(Ordering::Relaxed),
            exhausted_waits: c.exhausted_waits.load(Ordering::Relaxed),
            backward_waits: c.backward_waits.load(Ordering::Relaxed),
            backward_refusals: c.backward_refusals.load(Ordering::Relaxed),
            backward_continued: c.backward_continued.load(Ordering::Relaxed),
            largest_step_back_ms: c.largest_step_back_ms.load(Ordering::Relaxed),
        }
    }

    /// Issues one id.
    pub fn next_id(&self) -> Result<u64, IdError> {
        let reserved = self.reserve(1)?;
        self.counters.issued.fetch_add(1, Ordering::Relaxed);
        Ok(self.compose(reserved.first))
    }

    /// Issues `count` ids into `out`, in increasing order. On an error, the ids issued before
    /// it stay in `out` (they are spent either way) and the error says why the rest were not.
    pub fn fill(&self, count: usize, out: &mut Vec<u64>) -> Result<(), IdError> {
        out.reserve(count);
        let mut left = count as u64;
        let result = loop {
            if left == 0 {
                break Ok(());
            }
            match self.reserve(left) {
                Ok(reserved) => {
                    out.extend(
                        (reserved.first..reserved.first + reserved.count).map(|s| self.compose(s)),
                    );
                    left -= reserved.count;
                }
                Err(e) => break Err(e),
            }
        };
        self.counters
            .issued
            .fetch_add(count as u64 - left, Ordering::Relaxed);
        result
    }

    /// Decodes an id of this generator's layout.
    pub fn decode(&self, id: u64) -> Result<Parts, LayoutError> {
        self.layout.decode(id)
    }

    /// The id of a packed (timestamp, sequence) state.
    fn compose(&self, packed: u64) -> u64 {
        ((packed & !self.sequence_mask) << self.node_width)
            | self.node_bits
            | (packed & self.sequence_mask)
    }

    /// Reserves between 1 and `want` consecutive ids of one millisecond.
    fn reserve(&self, want: u64) -> Result<Reserved, IdError> {
        let sequence_bits = u32::from(self.layout.sequence_bits());
        let epoch = self.layout.epoch_ms();
        let per_ms = self.sequence_mask + 1;
        let mut current = self.state.load(Ordering::Acquire);
        loop {
            self.claim.check()?;
            let last_tick = current >> sequence_bits;
            let last_sequence = current & self.sequence_mask;
            let now = self.clock.now_ms();
            let (first, count) = match now.checked_sub(epoch) {
                Some(tick) if tick > last_tick => {
                    if tick > self.layout.max_timestamp() {
                        return Err(timestamp_exhausted(&self.layout));
                    }
                    (tick << sequence_bits, want.min(per_ms))
                }
                _ => {
                    // The clock is in the last id's millisecond (step 0) or behind it.
                    let step = (epoch + last_tick).saturating_sub(now);
                    if step > 0 {
                        match self.options.on_backward {
                            OnBackward::Wait => {
                                current = self.wait_out_step(step, epoch + last_tick)?;
                                continue;
                            }
                            OnBackward::Continue => self
                                .counters
                                .stepped_back(step, &self.counters.backward_continued),
                        }
                    }
                    if last_sequence < self.sequence_mask {
                        (current + 1, want.min(self.sequence_mask - last_sequence))
                    } else if step > 0 {
                        // Continue: borrow the next millisecond rather than wait for a clock
                        // that is behind.
                        if last_tick + 1 > self.layout.max_timestamp() {
                            return Err(timestamp_exhausted(&self.layout));
                        }
                        ((last_tick + 1) << sequence_bits, want.min(per_ms))
                    } else {
                        self.counters
                            .exhausted_waits
                            .fetch_add(1, Ordering::Relaxed);
                        let target = epoch + last_tick + 1;
                        let reached = self
                            .clock
                            .wait_until(target, Duration::from_millis(1) + WAIT_SLACK);
                        if reached < target && reached >= epoch + last_tick {
                            return Err(IdError::ClockStalled {
                                target_ms: target,
                                now_ms: reached,
                                limit: Duration::from_millis(1) + WAIT_SLACK,
                            });
                        }
                        // Reached, or stepped back meanwhile: decide again from the top.
                        current = self.state.load(Ordering::Acquire);
                        continue;
                    }
                }
            };
            let last = first + count - 1;
            match self.state.compare_exchange_weak(
                current,
                last,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(Reserved { first, count }),
                Err(actual) => current = actual,
            }
        }
    }

    /// With [`OnBackward::Wait`]: waits for a clock `step` ms behind `last_ms` to reach it, or
    /// refuses. Returns the state to decide again from.
    fn wait_out_step(&self, step: u64, last_ms: u64) -> Result<u64, IdError> {
        let max = self.options.max_backward.as_millis() as u64;
        if step > max {
            self.counters
                .stepped_back(step, &self.counters.backward_refusals);
            return Err(IdError::ClockMovedBack {
                step_ms: step,
                max_backward_ms: max,
            });
        }
        self.counters
            .stepped_back(step, &self.counters.backward_waits);
        let limit = Duration::from_millis(step) + WAIT_SLACK;
        let reached = self.clock.wait_until(last_ms, limit);
        if reached < last_ms && reached + step >= last_ms {
            // No progress at all: a stopped clock, not a new step.
            return Err(IdError::ClockStalled {
                target_ms: last_ms,
                now_ms: reached,
                limit,
            });
        }
        Ok(self.state.load(Ordering::Acquire))
    }
}

fn timestamp_exhausted(layout: &Layout) -> IdError {
    IdError::TimestampExhausted {
        bits: layout.timestamp_bits(),
        date: calendar::rfc3339(layout.runs_out_ms()),
    }
}
