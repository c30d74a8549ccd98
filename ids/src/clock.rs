//! The wall clock the time-based generators read, and a clock tests move by hand.
//!
//! Snowflake, UUIDv7, ULID and the Redis day counters all embed wall-clock time, and all of them
//! must behave when that clock stalls, steps back or crosses midnight. They read it through
//! [`Clock`], so that tests can drive exactly those cases with [`ManualClock`] instead of
//! waiting for them to happen.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A source of wall-clock time in milliseconds since the Unix epoch (UTC).
///
/// `now_ms` may go backwards (an NTP step, a VM migration): the generators decide what to do
/// about it. `wait_until` is how they let time pass; it must return by itself, at the latest
/// after `limit` of real (monotonic) time, whether or not the clock got there.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since 1970-01-01T00:00:00Z.
    fn now_ms(&self) -> u64;

    /// Waits until `now_ms() >= target_ms` or `limit` has passed, and returns `now_ms()`.
    fn wait_until(&self, target_ms: u64, limit: Duration) -> u64;

    /// The time as a `SystemTime`, for generators whose crates take one (ULID).
    fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.now_ms())
    }
}

/// The system's real-time clock (`CLOCK_REALTIME`).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

/// How close to the target [`SystemClock::wait_until`] stops sleeping and spins: a sleep
/// overshoots by tens of microseconds (more on a loaded machine), which at 8,192 ids per
/// millisecond is a good part of a millisecond's ids. Sleeping until then leaves the core to
/// others (and to other waiting threads) for the rest of the wait.
const SPIN_WINDOW: Duration = Duration::from_micros(100);

/// Nanoseconds since 1970 (a `u64` holds them until 2554); 0 before 1970.
fn unix_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| {
        d.as_secs() * 1_000_000_000 + u64::from(d.subsec_nanos())
    })
}

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        // A clock before 1970 reads as 0: every generator then sees it as a step back.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() * 1000 + u64::from(d.subsec_millis()))
    }

    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    fn wait_until(&self, target_ms: u64, limit: Duration) -> u64 {
        let deadline = Instant::now() + limit;
        let target_ns = target_ms.saturating_mul(1_000_000);
        loop {
            let now_ns = unix_ns();
            if now_ns >= target_ns {
                return now_ns / 1_000_000;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                // Read again: the thread may have been descheduled since `now_ns` was read.
                return self.now_ms();
            }
            let wanted = Duration::from_nanos(target_ns - now_ns);
            if wanted > SPIN_WINDOW {
                std::thread::sleep((wanted - SPIN_WINDOW).min(left));
            } else {
                std::hint::spin_loop();
            }
        }
    }
}

/// A clock that moves only when told to: for tests of bursts, exhaustion, steps back and day
/// boundaries without real waiting.
///
/// Clones share one time. By default a wait moves the clock forward to its target, as if the
/// time had passed; after [`ManualClock::freeze`] a wait returns at once with the clock where
/// it is (a clock that has stopped), so that a caller's bound on waiting can be tested.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<AtomicU64>,
    frozen: Arc<AtomicBool>,
}

impl ManualClock {
    /// A clock showing `unix_ms`.
    pub fn new(unix_ms: u64) -> Self {
        ManualClock {
            now: Arc::new(AtomicU64::new(unix_ms)),
            frozen: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Sets the time, forwards or backwards.
    pub fn set(&self, unix_ms: u64) {
        self.now.store(unix_ms, Ordering::SeqCst);
    }

    /// Moves the time forward by `ms`.
    pub fn advance(&self, ms: u64) {
        self.now.fetch_add(ms, Ordering::SeqCst);
    }

    /// Moves the time back by `ms` (not below 0).
    pub fn step_back(&self, ms: u64) {
        let _ = self
            .now
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| {
                Some(t.saturating_sub(ms))
            });
    }

    /// Stops waits from moving the clock (`true`) or lets them again (`false`).
    pub fn freeze(&self, frozen: bool) {
        self.frozen.store(frozen, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }

    fn wait_until(&self, target_ms: u64, _limit: Duration) -> u64 {
        if !self.frozen.load(Ordering::SeqCst) {
            self.now.fetch_max(target_ms, Ordering::SeqCst);
        }
        self.now_ms()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_clock_waits_for_the_next_millisecond_and_no_longer_than_the_limit() {
        let clock = SystemClock;
        let now = clock.now_ms();
        assert!(clock.wait_until(now + 1, Duration::from_secs(1)) > now);
        // A target a minute away with a 1 ms limit returns, short of the target.
        let started = Instant::now();
        let reached = clock.wait_until(now + 60_000, Duration::from_millis(1));
        assert!(reached < now + 60_000);
        assert!(started.elapsed() < Duration::from_secs(30));
    }

    #[test]
    fn a_manual_clock_moves_on_waits_unless_frozen() {
        let clock = ManualClock::new(1_000);
        assert_eq!(clock.wait_until(1_005, Duration::ZERO), 1_005);
        clock.step_back(10);
        assert_eq!(clock.now_ms(), 995);
        clock.freeze(true);
        assert_eq!(clock.wait_until(2_000, Duration::ZERO), 995);
        clock.freeze(false);
        clock.advance(5);
        assert_eq!(clock.now_ms(), 1_000);
    }
}
