//! When nacked records go out again: each waits out a backoff that grows with its nacks in a
//! row, and its key retries all its nacked records together once the last of them is due
//! (see `order`); one timer wakes the sink for the earliest key due.
//!
//! With several brokers, a record nacked again and again moves the sink to the next one (see
//! [`NACKS_BEFORE_NEXT_NODE`]).

use std::collections::HashSet;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use sluice_pipeline::Text;
use sluice_pipeline::backoff::BackoffConfig;
use tokio::time::Sleep;

use super::order::{KeyOrder, Ordered};

/// With several brokers, the sink moves to the next one each time a message has been nacked
/// this many times: a node can go on nacking every publish of a connection to a queue that
/// lost its leader while the connection was being made (seen with quorum queues on RabbitMQ
/// 3.10), and the next connection is made after the queue has elected a new one.
pub(crate) const NACKS_BEFORE_NEXT_NODE: u32 = 3;

/// Whether a message nacked `nacks` times in a row moves a sink with `brokers` brokers to the
/// next one.
pub(crate) fn next_broker_after(nacks: u32, brokers: usize) -> bool {
    brokers > 1 && nacks.is_multiple_of(NACKS_BEFORE_NEXT_NODE)
}

/// The keys with nacked records waiting out a backoff, and the timer for the earliest.
pub(crate) struct Retries {
    backoff: BackoffConfig,
    keys: HashSet<Text>,
    timer: Pin<Box<Sleep>>,
    /// What the timer is set for: the earliest key's retry, if any key waits.
    at: Option<Instant>,
}

impl Retries {
    /// No key waiting; a nacked record waits as `backoff` says.
    pub fn new(backoff: BackoffConfig) -> Self {
        Retries {
            backoff,
            keys: HashSet::new(),
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            at: None,
        }
    }

    /// A record of `key` was nacked for the `nacks`th time in a row: how long it waits before
    /// it goes out again. Call [`Retries::arm`] once its key's order knows.
    pub fn nacked(&mut self, key: Text, nacks: u32) -> Duration {
        self.keys.insert(key);
        self.backoff.after(nacks)
    }

    /// Takes the keys whose retry is due at `now` in `order`; the others keep waiting. Call
    /// [`Retries::arm`] once they have gone out.
    pub fn due<R: Ordered>(&mut self, order: &KeyOrder<R>, now: Instant) -> Vec<Text> {
        let due: Vec<Text> = self
            .keys
            .iter()
            .filter(|key| order.retry_at(key).is_none_or(|at| at <= now))
            .cloned()
            .collect();
        for key in &due {
            self.keys.remove(key);
        }
        due
    }

    /// Sets the timer for the earliest retry of a waiting key in `order`.
    pub fn arm<R: Ordered>(&mut self, order: &KeyOrder<R>) {
        let next = self.keys.iter().filter_map(|key| order.retry_at(key)).min();
        if let Some(at) = next
            && self.at != Some(at)
        {
            self.timer.as_mut().reset(at.into());
        }
        self.at = next;
    }

    /// Ready once the earliest retry is due (never while no key waits).
    pub fn poll_due(&mut self, task: &mut Context<'_>) -> Poll<()> {
        match self.at {
            Some(_) => self.timer.as_mut().poll(task),
            None => Poll::Pending,
        }
    }

    /// Forgets every waiting key: their records go out again at once, on a new connection.
    pub fn clear(&mut self) {
        self.keys.clear();
        self.at = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_pipeline::config::HumanDuration;
    use std::future::poll_fn;
    use std::task::Waker;

    struct Item(Text, u64);

    impl Ordered for Item {
        fn key(&self) -> &Text {
            &self.0
        }

        fn seq(&self) -> u64 {
            self.1
        }
    }

    /// A backoff of 100ms doubling up to 350ms (its timer needs a runtime).
    fn retries() -> Retries {
        Retries::new(BackoffConfig {
            initial: HumanDuration::from_millis(100),
            max: HumanDuration::from_millis(350),
        })
    }

    /// `key`'s record `seq` nacked for the `nacks`th time at `now`, in `order` and `retries`.
    fn nack(
        order: &mut KeyOrder<Item>,
        retries: &mut Retries,
        key: &str,
        seq: u64,
        nacks: u32,
        now: Instant,
    ) -> Duration {
        let record = order.admit(Item(key.into(), seq)).unwrap();
        let wait = retries.nacked(key.into(), nacks);
        order.nacked(record, nacks == 1, now + wait);
        retries.arm(order);
        wait
    }

    fn is_due(retries: &mut Retries) -> bool {
        retries
            .poll_due(&mut Context::from_waker(Waker::noop()))
            .is_ready()
    }

    #[tokio::test]
    async fn the_backoff_doubles_with_each_nack_in_a_row_up_to_its_max() {
        let mut retries = retries();
        let waits: Vec<u128> = (1..=4)
            .map(|n| retries.nacked("k".into(), n).as_millis())
            .collect();
        assert_eq!(waits, [100, 200, 350, 350]);
    }

    #[tokio::test]
    async fn only_keys_whose_retry_is_due_are_taken() {
        let (mut order, mut retries) = (KeyOrder::new(None), retries());
        let now = Instant::now();
        nack(&mut order, &mut retries, "a", 0, 1, now);
        nack(&mut order, &mut retries, "b", 1, 2, now);
        assert!(retries.due(&order, now).is_empty());
        let soon = now + Duration::from_millis(100);
        assert_eq!(retries.due(&order, soon), [Text::from("a")]);
        assert!(retries.due(&order, soon).is_empty(), "a key is taken once");
        assert_eq!(
            retries.due(&order, now + Duration::from_millis(200)),
            [Text::from("b")]
        );
    }

    #[tokio::test]
    async fn the_timer_wakes_for_the_earliest_key_and_not_once_cleared() {
        let (mut order, mut retries) = (KeyOrder::new(None), retries());
        assert!(!is_due(&mut retries), "no key waits");
        // One key's retry is long due, the other's an hour away.
        let then = Instant::now() - Duration::from_secs(1);
        let later = Instant::now() + Duration::from_secs(3600);
        nack(&mut order, &mut retries, "late", 0, 3, later);
        nack(&mut order, &mut retries, "early", 1, 1, then);
        poll_fn(|task| retries.poll_due(task)).await;
        let due = retries.due(&order, Instant::now());
        assert_eq!(due, [Text::from("early")]);
        order.retry(&due[0]);
        retries.arm(&order);
        assert!(!is_due(&mut retries), "the other key's backoff is not over");
        retries.clear();
        assert!(!is_due(&mut retries), "nothing waits once cleared");
        assert!(retries.due(&order, Instant::now()).is_empty());
    }

    #[test]
    fn only_a_sink_with_several_brokers_moves_on_every_third_nack() {
        let moves = |brokers| {
            (1..=7)
                .filter(|&n| next_broker_after(n, brokers))
                .collect::<Vec<_>>()
        };
        assert!(moves(1).is_empty());
        assert_eq!(moves(2), [3, 6]);
    }
}
