//! The one backoff of the engine: doubling waits between a first and a longest delay, used by
//! the runtime to restart failed components and by components for their own retries (a nacked
//! message, a lost side connection).

use std::time::Duration;

use serde::Deserialize;

use crate::config::HumanDuration;

/// Default for [`BackoffConfig::initial`].
pub const DEFAULT_INITIAL: HumanDuration = HumanDuration::from_millis(500);
/// Default for [`BackoffConfig::max`].
pub const DEFAULT_MAX: HumanDuration = HumanDuration::from_secs(30);

/// How long to wait between attempts: `initial`, then twice as long each time, up to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackoffConfig {
    /// The first wait.
    pub initial: HumanDuration,
    /// The longest wait.
    pub max: HumanDuration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            initial: DEFAULT_INITIAL,
            max: DEFAULT_MAX,
        }
    }
}

impl BackoffConfig {
    /// The wait after the `n`th failure in a row (`n` ≥ 1; 0 counts as 1).
    pub fn after(&self, n: u32) -> Duration {
        let doublings = n.saturating_sub(1).min(31);
        self.initial
            .get()
            .saturating_mul(1u32 << doublings)
            .min(self.max.get())
    }

    /// `max` is not below `initial`, and `initial` is not zero; the error says which rule broke.
    pub fn check(&self) -> Result<(), &'static str> {
        if self.initial.get().is_zero() {
            Err("`initial` must be more than zero")
        } else if self.max < self.initial {
            Err("`max` must not be below `initial`")
        } else {
            Ok(())
        }
    }
}

/// Failures in a row and the waits they earn; a success starts over.
#[derive(Debug, Clone)]
pub struct Backoff {
    config: BackoffConfig,
    failures: u32,
}

impl Backoff {
    /// A backoff with no failure yet.
    pub fn new(config: BackoffConfig) -> Self {
        Backoff {
            config,
            failures: 0,
        }
    }

    /// Counts a failure and returns how long to wait before the next attempt.
    pub fn failed(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.config.after(self.failures)
    }

    /// The waits it follows.
    pub fn config(&self) -> BackoffConfig {
        self.config
    }

    /// Failures counted since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Starts over after a success.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(BackoffConfig::default());
        let waits: Vec<_> = (0..8).map(|_| b.failed().as_millis()).collect();
        assert_eq!(waits, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]);
        assert_eq!(b.failures(), 8);
        b.reset();
        assert_eq!(b.failed(), Duration::from_millis(500));
    }

    #[test]
    fn many_failures_do_not_overflow() {
        let config = BackoffConfig::default();
        assert_eq!(config.after(0), Duration::from_millis(500));
        assert_eq!(config.after(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn check_names_the_rule() {
        let zero = BackoffConfig {
            initial: HumanDuration::from_millis(0),
            ..BackoffConfig::default()
        };
        assert_eq!(zero.check(), Err("`initial` must be more than zero"));
        let inverted = BackoffConfig {
            initial: HumanDuration::from_secs(10),
            max: HumanDuration::from_secs(1),
        };
        assert_eq!(inverted.check(), Err("`max` must not be below `initial`"));
        assert_eq!(BackoffConfig::default().check(), Ok(()));
    }
}
