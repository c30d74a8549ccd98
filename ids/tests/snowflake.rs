//! One Snowflake generator on the real clock, shared by many threads.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Instant;

use sluice_ids::snowflake::{Layout, Node, Options, Snowflake, StaticWorker};

/// Ten million ids from eight threads on one generator: no duplicate, and each thread's ids
/// strictly increasing. Ids are taken in batches of varied sizes and one at a time, so both
/// paths race on the one state word.
#[test]
fn many_threads_on_one_generator_issue_no_duplicate_in_ten_million_ids() {
    const THREADS: usize = 8;
    const PER_THREAD: usize = 1_250_000;
    let claim = Arc::new(StaticWorker(Node {
        datacenter: 3,
        worker: 17,
    }));
    let generator = Arc::new(Snowflake::new(Layout::SEED, claim, Options::default()).unwrap());
    let started = Instant::now();
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let generator = Arc::clone(&generator);
            std::thread::spawn(move || {
                let mut ids = Vec::with_capacity(PER_THREAD);
                let mut batch = Vec::new();
                while ids.len() < PER_THREAD {
                    let want = (1 + (ids.len() + t * 7) % 97).min(PER_THREAD - ids.len());
                    if want % 2 == 0 {
                        batch.clear();
                        generator.fill(want, &mut batch).unwrap();
                        ids.extend_from_slice(&batch);
                    } else {
                        for _ in 0..want {
                            ids.push(generator.next_id().unwrap());
                        }
                    }
                }
                assert!(ids.windows(2).all(|w| w[0] < w[1]), "thread {t} went back");
                ids
            })
        })
        .collect();
    let mut all: Vec<u64> = Vec::with_capacity(THREADS * PER_THREAD);
    for thread in threads {
        all.extend(thread.join().unwrap());
    }
    let generated = started.elapsed();
    assert_eq!(all.len(), THREADS * PER_THREAD);
    assert_eq!(generator.stats().issued, all.len() as u64);
    // With one (datacenter, worker), two ids are equal exactly when their (timestamp,
    // sequence) are: one bit per possible pair finds any duplicate in one pass, where sorting
    // ten million ids would take most of a debug build's minute.
    let layout = *generator.layout();
    let parts: Vec<_> = all.iter().map(|id| layout.decode(*id).unwrap()).collect();
    let first = parts.iter().map(|p| p.timestamp).min().unwrap();
    let last = parts.iter().map(|p| p.timestamp).max().unwrap();
    let per_ms = layout.ids_per_ms();
    let mut seen = vec![0u64; ((last - first + 1) * per_ms).div_ceil(64) as usize];
    let mut duplicates = 0;
    for p in &parts {
        assert_eq!((p.datacenter, p.worker), (3, 17));
        let bit = (p.timestamp - first) * per_ms + p.sequence;
        let (word, mask) = ((bit / 64) as usize, 1u64 << (bit % 64));
        if seen[word] & mask != 0 {
            duplicates += 1;
        }
        seen[word] |= mask;
    }
    assert_eq!(duplicates, 0);
    // The cap bounds the rate: 10 M ids need at least 10e6 / 8192 ms.
    let spanned = last - first;
    assert!(
        spanned + 1 >= (all.len() as u64).div_ceil(per_ms),
        "{spanned} ms"
    );
    eprintln!("10M ids in {generated:?} over {spanned} ms of timestamps");
}
