//! The gateway's serving threads: each runs a single-threaded runtime, and what must be driven
//! by the thread that uses it (pooled upstream connections, the Redis connection) is kept per
//! thread, so a request's wake-ups never cross threads.

use std::cell::Cell;
use std::sync::OnceLock;

/// Serving threads beyond this share their slots.
pub const MAX_WORKERS: usize = 64;

thread_local! {
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// Names the calling thread serving thread `n` (from 1; every other thread is 0).
pub fn set(n: usize) {
    WORKER.with(|w| w.set(n));
}

/// One `T` per serving thread, made at its first use on that thread.
pub struct PerWorker<T> {
    slots: Box<[OnceLock<T>]>,
}

impl<T> Default for PerWorker<T> {
    fn default() -> Self {
        PerWorker {
            slots: (0..MAX_WORKERS).map(|_| OnceLock::new()).collect(),
        }
    }
}

impl<T> PerWorker<T> {
    /// The calling thread's `T`, made with `make` if it has none yet.
    pub fn get_or_init(&self, make: impl FnOnce() -> T) -> &T {
        let worker = WORKER.with(Cell::get) % MAX_WORKERS;
        self.slots[worker].get_or_init(make)
    }

    /// The calling thread's `T`, if made.
    pub fn get(&self) -> Option<&T> {
        let worker = WORKER.with(Cell::get) % MAX_WORKERS;
        self.slots[worker].get()
    }
}
