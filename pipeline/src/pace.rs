//! A steady rate: when the n-th event is due, and how many are due by now. Shared by every
//! component that limits its rate (the generator, the blackhole sink, the throttle transform).

use std::time::{Duration, Instant};

/// Event `n` (counting from 0) is due `n / rate` seconds after the start.
#[derive(Debug, Clone)]
pub struct Pace {
    per_second: f64,
    started: Instant,
}

impl Pace {
    /// A pace of `rate` events per second, starting now. `rate` must be at least 1.
    pub fn new(rate: u64) -> Self {
        Pace {
            per_second: rate.max(1) as f64,
            started: Instant::now(),
        }
    }

    /// When event `n` is due.
    pub fn due(&self, n: u64) -> Instant {
        self.started + Duration::from_secs_f64(n as f64 / self.per_second)
    }

    /// How many events are due by now (event 0 is due at once).
    pub fn due_by_now(&self) -> u64 {
        (self.per_second * self.started.elapsed().as_secs_f64()) as u64 + 1
    }

    /// Waits until event `n` is due.
    pub async fn wait(&self, n: u64) {
        tokio::time::sleep_until(self.due(n).into()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_spread_evenly() {
        let pace = Pace::new(1000);
        assert_eq!(pace.due(0), pace.started);
        assert_eq!(pace.due(500) - pace.started, Duration::from_millis(500));
        assert!(pace.due_by_now() >= 1);
    }
}
