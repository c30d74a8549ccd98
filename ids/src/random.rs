//! Ids that need no coordination at all: UUID v4 (random), UUID v7 (RFC 9562, time-ordered)
//! and ULID (time-ordered, 26-character Crockford base32), made with the `uuid` and `ulid`
//! crates.
//!
//! The v7 and ULID generators are monotonic per generator: within one millisecond, and across a
//! clock that steps back, each id is greater than the one before (the `uuid` crate's 42-bit
//! counter, reseeded each millisecond; the `ulid` crate's increment of the 80 random bits).
//! They read the time through [`Clock`], so tests can step it. Their binary form is 16 bytes
//! that sort like the text.

use std::sync::{Mutex, PoisonError};

use uuid::{ContextV7, Timestamp, Uuid};

use crate::clock::{Clock, SystemClock};

/// A random (version 4) UUID.
pub fn uuid4() -> Uuid {
    Uuid::new_v4()
}

/// UUID version 7 ids, monotonic per generator. Share one generator between the tasks whose
/// ids must sort in issue order.
#[derive(Debug)]
pub struct Uuid7<C: Clock = SystemClock> {
    // The `uuid` crate's own shared context is exactly this, a counter behind a mutex, plus
    // the latest millisecond handed to it.
    context: Mutex<(ContextV7, u64)>,
    clock: C,
}

impl Uuid7<SystemClock> {
    /// A generator on the system clock.
    pub fn new() -> Self {
        Uuid7::with_clock(SystemClock)
    }
}

impl Default for Uuid7<SystemClock> {
    fn default() -> Self {
        Uuid7::new()
    }
}

impl<C: Clock> Uuid7<C> {
    /// A generator reading `clock`.
    pub fn with_clock(clock: C) -> Self {
        Uuid7 {
            context: Mutex::new((ContextV7::new(), 0)),
            clock,
        }
    }

    /// The next id: greater than every id this generator issued before.
    pub fn next_id(&self) -> Uuid {
        let now = self.clock.now_ms();
        let mut guard = self.context.lock().unwrap_or_else(PoisonError::into_inner);
        let (context, latest) = &mut *guard;
        // The context is never shown a step back. `uuid` 1.26's `ContextV7` keeps the last
        // second but takes the incoming sub-second part on one, so a step back across a second
        // boundary moves its time up to 999 ms ahead and a later id sorts before an earlier
        // one (the property test below found it; fixed in `uuid` 1.29, which needs Rust 1.89).
        let ms = now.max(*latest);
        *latest = ms;
        Uuid::new_v7(Timestamp::from_unix(
            &*context,
            ms / 1000,
            (ms % 1000) as u32 * 1_000_000,
        ))
    }
}

/// ULIDs, monotonic per generator.
#[derive(Debug)]
pub struct Ulids<C: Clock = SystemClock> {
    generator: Mutex<ulid::Generator>,
    clock: C,
}

impl Ulids<SystemClock> {
    /// A generator on the system clock.
    pub fn new() -> Self {
        Ulids::with_clock(SystemClock)
    }
}

impl Default for Ulids<SystemClock> {
    fn default() -> Self {
        Ulids::new()
    }
}

impl<C: Clock> Ulids<C> {
    /// A generator reading `clock`.
    pub fn with_clock(clock: C) -> Self {
        Ulids {
            generator: Mutex::new(ulid::Generator::new()),
            clock,
        }
    }

    /// The next id: greater than every id this generator issued before. In the (2^-80 a
    /// millisecond) case that the random part would overflow, the id moves into the next
    /// millisecond instead of failing, as RFC 9562 allows for UUIDv7: order and uniqueness
    /// hold, the id's time runs 1 ms ahead.
    pub fn next_id(&self) -> ulid::Ulid {
        let at = self.clock.now();
        let mut generator = self
            .generator
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match generator.generate_from_datetime(at) {
            Ok(id) => id,
            Err(overflow) => overflow.commit_overflow_increment(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use proptest::prelude::*;

    const T0: u64 = 1_768_435_200_000;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// Bursts within a millisecond and steps of the clock either way: every id greater
        /// than the one before, for both time-ordered kinds.
        #[test]
        fn v7_and_ulid_stay_monotonic_through_steps(
            moves in prop::collection::vec((0usize..300, -20i64..20), 1..30),
        ) {
            let clock = ManualClock::new(T0);
            let v7 = Uuid7::with_clock(clock.clone());
            let ulids = Ulids::with_clock(clock.clone());
            let (mut last_v7, mut last_ulid) = (Uuid::nil(), ulid::Ulid::nil());
            for (burst, step) in moves {
                for _ in 0..burst {
                    let (a, b) = (v7.next_id(), ulids.next_id());
                    prop_assert!(a > last_v7 && b > last_ulid);
                    prop_assert_eq!(a.get_version_num(), 7);
                    (last_v7, last_ulid) = (a, b);
                }
                if step >= 0 { clock.advance(step as u64) } else { clock.step_back(step.unsigned_abs()) }
            }
        }
    }

    #[test]
    fn text_and_binary_forms_round_trip() {
        let clock = ManualClock::new(T0);
        let id = Uuid7::with_clock(clock.clone()).next_id();
        assert_eq!(Uuid::from_bytes(*id.as_bytes()), id);
        assert_eq!(id.to_string().parse::<Uuid>().unwrap(), id);
        assert_eq!(id.get_timestamp().unwrap().to_unix().0, T0 / 1000);
        let u = Ulids::with_clock(clock).next_id();
        assert_eq!(u.timestamp_ms(), T0);
        assert_eq!(u.to_string().len(), 26);
        assert_eq!(ulid::Ulid::from_string(&u.to_string()).unwrap(), u);
        assert_eq!(ulid::Ulid::from_bytes(u.to_bytes()), u);
        assert_eq!(uuid4().get_version_num(), 4);
    }
}
