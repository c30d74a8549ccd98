//! Redis day counters on the real server, with the callers' clock controlled.

#![cfg(feature = "redis")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sluice_ids::calendar::{DAY_MS, Date};
use sluice_ids::clock::ManualClock;
use sluice_ids::counter::{CounterPlan, DayFormat, RedisCounter};

fn url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A key prefix of this test's own, and a connection to remove its keys afterwards.
struct Keys {
    prefix: String,
    connection: redis::aio::MultiplexedConnection,
}

impl Keys {
    async fn new(test: &str) -> Keys {
        let client = redis::Client::open(url()).unwrap();
        Keys {
            prefix: format!("sluice-test:ids:{test}:{}", std::process::id()),
            connection: client.get_multiplexed_async_connection().await.unwrap(),
        }
    }

    async fn exists(&mut self, key: &str) -> bool {
        redis::cmd("EXISTS")
            .arg(key)
            .query_async::<i64>(&mut self.connection)
            .await
            .unwrap()
            == 1
    }

    async fn expire_time_ms(&mut self, key: &str) -> i64 {
        redis::cmd("PEXPIRETIME")
            .arg(key)
            .query_async(&mut self.connection)
            .await
            .unwrap()
    }

    async fn clean(mut self) {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", self.prefix))
            .query_async(&mut self.connection)
            .await
            .unwrap();
        for key in keys {
            let _: i64 = redis::cmd("DEL")
                .arg(key)
                .query_async(&mut self.connection)
                .await
                .unwrap();
        }
    }
}

fn real_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test]
async fn crossing_midnight_gives_a_new_prefix_and_key_and_the_old_key_expires() {
    let mut keys = Keys::new("midnight").await;
    // The callers' clock stands 2 ms before the midnight that began today (real time), and
    // keys are kept just long enough past their day for yesterday's to expire 1.5 s from now.
    let real_now = real_now_ms();
    let midnight = real_now / DAY_MS * DAY_MS;
    let retain = Duration::from_millis(real_now - midnight + 1500);
    let clock = ManualClock::new(midnight - 2);
    let plan = CounterPlan {
        key: keys.prefix.clone(),
        format: DayFormat::default(),
        block: 10,
        retain,
    };
    let counter = RedisCounter::with_clock(&url(), plan, clock.clone()).unwrap();
    let (yesterday, today) = (
        Date::of(midnight - 1).compact(),
        Date::of(midnight).compact(),
    );

    let before = counter.next_ids(3).await.unwrap();
    assert_eq!(
        before,
        [1, 2, 3].map(|n| format!("{yesterday}-{n:06}")).to_vec()
    );
    let old_key = counter.key_for(midnight - 1);
    assert_eq!(old_key, format!("{}:{yesterday}", keys.prefix));
    assert_eq!(
        keys.expire_time_ms(&old_key).await,
        (midnight + retain.as_millis() as u64) as i64
    );

    clock.set(midnight);
    let after = counter.next_ids(2).await.unwrap();
    assert_eq!(after, [1, 2].map(|n| format!("{today}-{n:06}")).to_vec());
    let new_key = counter.key_for(midnight);
    assert!(keys.exists(&new_key).await);
    assert_eq!(
        keys.expire_time_ms(&new_key).await,
        (midnight + DAY_MS + retain.as_millis() as u64) as i64
    );

    // Redis removes yesterday's key on its own, and keeps today's.
    let mut check = Keys::new("midnight").await;
    let gone = async {
        loop {
            if !check.exists(&old_key).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(sluice_tests::PATIENCE, gone)
        .await
        .expect("yesterday's key expires");
    assert!(keys.exists(&new_key).await);
    keys.clean().await;
}

#[tokio::test]
async fn callers_in_several_processes_share_a_days_counter_without_repeats() {
    let keys = Keys::new("shared").await;
    let plan = CounterPlan {
        key: keys.prefix.clone(),
        format: DayFormat::default(),
        block: 50,
        retain: Duration::from_secs(60),
    };
    let clock = ManualClock::new(real_now_ms());
    let processes: Vec<_> = (0..3)
        .map(|_| Arc::new(RedisCounter::with_clock(&url(), plan.clone(), clock.clone()).unwrap()))
        .collect();
    let mut tasks = tokio::task::JoinSet::new();
    for (p, counter) in processes.iter().enumerate() {
        for t in 0..4 {
            let counter = Arc::clone(counter);
            tasks.spawn(async move {
                let mut ids = Vec::new();
                for call in 0..30 {
                    ids.extend(
                        counter
                            .next_ids(1 + (p * 5 + t * 3 + call) % 70)
                            .await
                            .unwrap(),
                    );
                }
                ids
            });
        }
    }
    let mut seen = HashSet::new();
    let prefix = Date::of(clock_now(&clock)).compact();
    while let Some(ids) = tasks.join_next().await {
        for id in ids.unwrap() {
            assert!(id.starts_with(&format!("{prefix}-")), "{id}");
            assert!(seen.insert(id.clone()), "{id} issued twice");
        }
    }
    assert!(seen.len() > 1000);
    keys.clean().await;
}

fn clock_now(clock: &ManualClock) -> u64 {
    use sluice_ids::clock::Clock;
    clock.now_ms()
}
