//! The generator on a clock the tests move: bursts, exhaustion and steps back.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::clock::{Clock, ManualClock};
use crate::error::IdError;

const T0: u64 = DEFAULT_EPOCH_MS + 1_000_000;

fn generator(layout: Layout, options: Options, clock: &ManualClock) -> Snowflake<ManualClock> {
    let claim = Arc::new(StaticWorker(Node {
        datacenter: 1,
        worker: 1,
    }));
    Snowflake::with_clock(layout, claim, options, clock.clone()).unwrap()
}

fn tiny() -> Layout {
    // Four ids per millisecond, so a handful of ids exhausts a millisecond.
    Layout::new(41, 5, 5, 2, DEFAULT_EPOCH_MS).unwrap()
}

#[test]
fn the_first_id_is_issued_in_the_millisecond_after_creation() {
    let clock = ManualClock::new(T0);
    let g = generator(Layout::SEED, Options::default(), &clock);
    let parts = g.decode(g.next_id().unwrap()).unwrap();
    assert_eq!(g.layout().unix_ms(parts.timestamp), T0 + 1);
    assert_eq!((parts.datacenter, parts.worker, parts.sequence), (1, 1, 0));
}

#[test]
fn an_exhausted_millisecond_is_waited_out_never_reused() {
    let clock = ManualClock::new(T0);
    let g = generator(tiny(), Options::default(), &clock);
    let mut ids = Vec::new();
    g.fill(10, &mut ids).unwrap();
    let parts: Vec<_> = ids.iter().map(|id| g.decode(*id).unwrap()).collect();
    let stamped: Vec<_> = parts
        .iter()
        .map(|p| (g.layout().unix_ms(p.timestamp) - T0, p.sequence))
        .collect();
    assert_eq!(
        stamped,
        [
            (1, 0),
            (1, 1),
            (1, 2),
            (1, 3),
            (2, 0),
            (2, 1),
            (2, 2),
            (2, 3),
            (3, 0),
            (3, 1)
        ]
    );
    assert_eq!(g.stats().issued, 10);
    // One wait at creation's millisecond, then one per full millisecond.
    assert_eq!(g.stats().exhausted_waits, 3);
}

#[test]
fn a_stopped_clock_is_an_error_not_an_endless_spin() {
    let clock = ManualClock::new(T0);
    let g = generator(tiny(), Options::default(), &clock);
    clock.freeze(true);
    let error = g.next_id().unwrap_err();
    assert!(matches!(error, IdError::ClockStalled { .. }), "{error}");
    clock.advance(1);
    let mut ids = Vec::new();
    let error = g.fill(6, &mut ids).unwrap_err();
    assert!(matches!(error, IdError::ClockStalled { .. }), "{error}");
    // What was issued before the stall is kept, and counted.
    assert_eq!(ids.len(), 4);
    assert_eq!(g.stats().issued, 4);
}

#[test]
fn a_small_step_back_is_waited_out() {
    let clock = ManualClock::new(T0);
    let g = generator(Layout::SEED, Options::default(), &clock);
    let before = g.next_id().unwrap();
    clock.step_back(5);
    let after = g.next_id().unwrap();
    assert!(after > before);
    let stats = g.stats();
    assert_eq!((stats.backward_waits, stats.largest_step_back_ms), (1, 5));
    // The wait brought the clock back to the last id's millisecond.
    assert_eq!(clock.now_ms(), T0 + 1);
}

#[test]
fn a_large_step_back_is_refused_with_the_step_and_counted() {
    let clock = ManualClock::new(T0);
    let g = generator(Layout::SEED, Options::default(), &clock);
    let before = g.next_id().unwrap();
    clock.step_back(7);
    let error = g.next_id().unwrap_err();
    assert_eq!(
        error.to_string(),
        "the clock moved back 7 ms, more than max_backward (5 ms) allows: refusing to issue ids until it catches up"
    );
    assert!(error.is_retryable());
    assert_eq!(g.stats().backward_refusals, 1);
    assert_eq!(g.stats().issued, 1);
    clock.advance(7);
    assert!(g.next_id().unwrap() > before);
}

#[test]
fn continue_keeps_issuing_from_the_last_timestamp() {
    let clock = ManualClock::new(T0);
    let options = Options {
        on_backward: OnBackward::Continue,
        ..Options::default()
    };
    let g = generator(tiny(), options, &clock);
    let first = g.next_id().unwrap();
    clock.step_back(60_000);
    let mut ids = Vec::new();
    g.fill(9, &mut ids).unwrap();
    assert!(ids.windows(2).all(|w| w[0] < w[1]) && ids[0] > first);
    // The clock did not move: the generator borrowed two milliseconds ahead of it.
    assert_eq!(clock.now_ms(), T0 + 1 - 60_000);
    let last = g.decode(ids[8]).unwrap();
    assert_eq!(g.layout().unix_ms(last.timestamp), T0 + 3);
    assert!(g.stats().backward_continued >= 3);
}

#[test]
fn bad_setups_are_refused_before_any_id() {
    let clock = ManualClock::new(T0);
    let claim = |worker| {
        Arc::new(StaticWorker(Node {
            datacenter: 0,
            worker,
        }))
    };
    let out_of_range =
        Snowflake::with_clock(Layout::SEED, claim(32), Options::default(), clock.clone())
            .unwrap_err();
    assert_eq!(
        out_of_range.to_string(),
        "worker 32 is out of range: the 5-bit field holds 0 to 31"
    );
    let future = Layout::SEED.with_epoch(T0 + 86_400_000);
    let error =
        Snowflake::with_clock(future, claim(0), Options::default(), clock.clone()).unwrap_err();
    assert!(
        error.to_string().starts_with("the epoch ") && error.to_string().contains("in the future"),
        "{error}"
    );
    // A 1-bit timestamp from 3 ms ago has already run out.
    let short = Layout::new(1, 1, 1, 1, T0 - 3).unwrap();
    let error = Snowflake::with_clock(short, claim(0), Options::default(), clock).unwrap_err();
    assert!(matches!(error, IdError::TimestampExhausted { bits: 1, .. }));
}

#[derive(Debug, Clone)]
enum Step {
    Burst(usize),
    Advance(u64),
    Back(u64),
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        prop_oneof![
            4 => (1usize..3000).prop_map(Step::Burst),
            2 => (0u64..4).prop_map(Step::Advance),
            2 => (0u64..12).prop_map(Step::Back),
        ],
        1..40,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever the clock does, a generator's ids are unique and strictly increasing, and it
    /// refuses only steps back larger than `max_backward`.
    #[test]
    fn ids_stay_unique_and_increasing_through_bursts_exhaustion_and_steps(
        steps in steps(),
        sequence_bits in 1u8..=13,
        continue_on_backward in any::<bool>(),
    ) {
        let layout = Layout::new(41, 5, 5, sequence_bits, DEFAULT_EPOCH_MS).unwrap();
        let options = Options {
            max_backward: Duration::from_millis(5),
            on_backward: if continue_on_backward { OnBackward::Continue } else { OnBackward::Wait },
        };
        let clock = ManualClock::new(T0);
        let g = generator(layout, options, &clock);
        let mut ids: Vec<u64> = Vec::new();
        // The millisecond of the last id, starting with the creation's.
        let mut last_ms = T0;
        for step in steps {
            match step {
                Step::Advance(ms) => clock.advance(ms),
                Step::Back(ms) => clock.step_back(ms),
                Step::Burst(n) => {
                    let behind = last_ms.saturating_sub(clock.now_ms());
                    let mut batch = Vec::new();
                    match g.fill(n, &mut batch) {
                        Ok(()) => prop_assert_eq!(batch.len(), n),
                        Err(IdError::ClockMovedBack { step_ms, .. }) => {
                            prop_assert!(!continue_on_backward);
                            prop_assert!(step_ms > 5 && step_ms == behind, "step {} behind {}", step_ms, behind);
                            prop_assert!(batch.is_empty());
                            // Let the clock catch up, as a real one would.
                            clock.advance(step_ms);
                        }
                        Err(other) => prop_assert!(false, "unexpected error: {}", other),
                    }
                    if let Some(id) = batch.last() {
                        last_ms = layout.unix_ms(layout.decode(*id).unwrap().timestamp);
                    }
                    ids.extend(batch);
                }
            }
        }
        prop_assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids not strictly increasing");
        prop_assert_eq!(g.stats().issued, ids.len() as u64);
        for id in &ids {
            let parts = layout.decode(*id).unwrap();
            prop_assert_eq!((parts.datacenter, parts.worker), (1, 1));
        }
    }
}

/// A claim the test revokes, as a lease's keepalive would on a failed renewal.
#[derive(Debug, Default)]
struct Revocable {
    revoked: std::sync::atomic::AtomicBool,
}

impl WorkerClaim for Revocable {
    fn node(&self) -> Node {
        Node {
            datacenter: 2,
            worker: 9,
        }
    }

    fn check(&self) -> Result<(), IdError> {
        if self.revoked.load(std::sync::atomic::Ordering::SeqCst) {
            Err(IdError::WorkerNotHeld {
                reason: "the lease was not renewed in time".into(),
            })
        } else {
            Ok(())
        }
    }
}

#[test]
fn a_claim_that_can_no_longer_be_proven_stops_issuing_at_once() {
    let clock = ManualClock::new(T0);
    let claim = Arc::new(Revocable::default());
    let g = Snowflake::with_clock(
        tiny(),
        Arc::clone(&claim) as Arc<dyn WorkerClaim>,
        Options::default(),
        clock.clone(),
    )
    .unwrap();
    let parts = g.decode(g.next_id().unwrap()).unwrap();
    assert_eq!((parts.datacenter, parts.worker), (2, 9));
    claim
        .revoked
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let error = g.next_id().unwrap_err();
    assert_eq!(
        error.to_string(),
        "the worker id is no longer held: the lease was not renewed in time"
    );
    assert!(error.is_retryable());
    let mut ids = Vec::new();
    assert!(g.fill(100, &mut ids).is_err());
    assert!(ids.is_empty());
    assert_eq!(g.stats().issued, 1);
}
