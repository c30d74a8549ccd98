//! Worker pairs leased through the coordination service (cargo feature `coord`): a process
//! takes a free (datacenter, worker) pair as a lock of the service, holds it for as long as its
//! session is renewed, and stops issuing the moment it cannot prove it still holds it.
//!
//! Pair `D`/`W` is the lock `ids-worker-D-W` (on etcd, `etcdctl lock ids-worker-D-W` shows and
//! takes the same). A process tries the pairs of its range in turn, starting at a place drawn
//! from its node name so that processes starting together spread out, and takes the first
//! whose lock it gets within [`ATTEMPT`]. With every pair of the range held, it says so once
//! and tries again until one is freed.
//!
//! **The guard time.** A pair freed by a process that died was held until its lease expired on
//! the server, and that process stopped issuing before then (a claim is valid only within its
//! session's deadline). Its last ids carry timestamps up to that moment on *its* clock. So a
//! new holder issues nothing until `guard` — at least the lease TTL plus the clock step the
//! deployment allows between machines — has passed since it took the pair: by then the ids it
//! issues have timestamps later than any the previous holder could have issued, on any clock
//! within the allowed step. A pair never used before needs no wait; a marker key
//! `ids/workers/D-W` records that a pair has been used.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_coord::{Coord, LockGuard};

use super::worker::{Node, PairRange, WorkerClaim};
use crate::error::IdError;

/// How long one pair's lock may take before the next pair is tried.
pub const ATTEMPT: Duration = Duration::from_millis(300);
/// The default guard time's margin over the lease TTL, for the clock step allowed between
/// machines.
pub const GUARD_MARGIN: Duration = Duration::from_secs(1);

/// The guard time for pairs leased with sessions of `ttl`: `given`, or the TTL plus
/// [`GUARD_MARGIN`]. One that is not above the TTL is refused: a reused pair could then issue
/// ids its previous holder issued.
pub fn guard_time(ttl: Duration, given: Option<Duration>) -> Result<Duration, String> {
    let guard = given.unwrap_or(ttl + GUARD_MARGIN);
    if guard <= ttl {
        return Err(format!(
            "{guard:?} is not above the coordination TTL ({ttl:?}): a reused pair could issue ids the previous holder issued; set it above the TTL plus the clock step allowed between machines"
        ));
    }
    Ok(guard)
}

/// A pair held as a lock of the coordination service.
pub struct LeasedWorker {
    node: Node,
    guard: LockGuard,
    /// Ids may be issued from this instant on (the guard time after a reused pair).
    usable_from: Instant,
}

impl std::fmt::Debug for LeasedWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeasedWorker")
            .field("node", &self.node)
            .field("token", &self.guard.token())
            .finish()
    }
}

impl LeasedWorker {
    /// Takes a free pair of `range` (waiting while all are held), then waits out `guard` if
    /// the pair was used before.
    pub async fn lease(
        coord: &Coord,
        range: &PairRange,
        guard: Duration,
    ) -> Result<Arc<Self>, IdError> {
        let pairs = range.pairs();
        let start = start_index(coord.node(), pairs.len());
        let mut said_full = false;
        loop {
            for node in pairs.iter().cycle().skip(start).take(pairs.len()) {
                let name = format!("ids-worker-{}-{}", node.datacenter, node.worker);
                let Ok(taken) = tokio::time::timeout(ATTEMPT, coord.lock(&name)).await else {
                    continue;
                };
                let guard_lock = taken.map_err(|e| IdError::WorkerNotHeld {
                    reason: format!("taking {name}: {e}"),
                })?;
                let taken_at = Instant::now();
                let marker = format!("ids/workers/{}-{}", node.datacenter, node.worker);
                let backend = coord.backend().ok_or_else(|| IdError::WorkerNotHeld {
                    reason: "the coordination service is not connected".to_owned(),
                })?;
                let used = backend
                    .get(&marker)
                    .await
                    .map_err(|e| IdError::WorkerNotHeld {
                        reason: format!("reading {marker}: {e}"),
                    })?;
                backend
                    .put(&marker, coord.node().to_owned().into(), None)
                    .await
                    .map_err(|e| IdError::WorkerNotHeld {
                        reason: format!("marking {marker}: {e}"),
                    })?;
                let usable_from = if used.is_some() {
                    taken_at + guard
                } else {
                    taken_at
                };
                tracing::info!(
                    datacenter = node.datacenter,
                    worker = node.worker,
                    token = %guard_lock.token(),
                    reused = used.is_some(),
                    "leased a Snowflake worker pair"
                );
                let leased = Arc::new(LeasedWorker {
                    node: *node,
                    guard: guard_lock,
                    usable_from,
                });
                tokio::time::sleep_until(usable_from.into()).await;
                return Ok(leased);
            }
            if !said_full {
                said_full = true;
                tracing::warn!(
                    pairs = pairs.len(),
                    "every Snowflake worker pair of the range is held by a live process: waiting for one to be freed (widen the range or stop a process)"
                );
                eprintln!(
                    "sluice: all {} Snowflake worker pairs of the range are held by live processes; waiting for one to be freed",
                    pairs.len()
                );
            }
        }
    }

    /// Resolves once the pair's lock is lost (its claim already fails by then).
    pub async fn lost(&self) {
        self.guard.lost().await;
    }

    /// The lock's fencing token.
    pub fn token(&self) -> u64 {
        self.guard.token().0
    }

    /// Gives the pair back (its marker stays: the next holder waits the guard time).
    pub async fn release(self: Arc<Self>) {
        if let Ok(this) = Arc::try_unwrap(self) {
            let _ = this.guard.unlock().await;
        }
    }
}

impl WorkerClaim for LeasedWorker {
    fn node(&self) -> Node {
        self.node
    }

    fn check(&self) -> Result<(), IdError> {
        if Instant::now() < self.usable_from {
            return Err(IdError::WorkerNotHeld {
                reason: "the pair's guard time has not passed".to_owned(),
            });
        }
        if !self.guard.is_valid() {
            return Err(IdError::WorkerNotHeld {
                reason: format!(
                    "the lease of datacenter {} worker {} cannot be proven any more",
                    self.node.datacenter, self.node.worker
                ),
            });
        }
        Ok(())
    }
}

/// Where a process named `node` starts trying among `n` pairs.
fn start_index(node: &str, n: usize) -> usize {
    // FNV-1a: stable across runs and platforms, unlike the std hasher.
    let hash = node.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    usize::try_from(hash % n.max(1) as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snowflake::Layout;

    #[test]
    fn the_guard_time_defaults_above_the_ttl_and_must_exceed_it() {
        let ttl = Duration::from_secs(2);
        assert_eq!(guard_time(ttl, None), Ok(Duration::from_secs(3)));
        assert_eq!(
            guard_time(ttl, Some(Duration::from_secs(6))),
            Ok(Duration::from_secs(6))
        );
        for given in [Duration::ZERO, ttl] {
            let error = guard_time(ttl, Some(given)).unwrap_err();
            assert!(
                error.contains("is not above the coordination TTL (2s)"),
                "{error}"
            );
        }
    }

    #[test]
    fn ranges_list_their_pairs_and_must_fit_the_layout() {
        let layout = Layout::default();
        let range = PairRange {
            datacenters: 1..=1,
            workers: 0..=2,
        };
        assert_eq!(range.pairs().len(), 3);
        assert!(range.check(&layout).is_ok());
        assert_eq!(PairRange::all(&layout).pairs().len(), 1024);
        let too_wide = PairRange {
            datacenters: 0..=0,
            workers: 0..=32,
        };
        assert!(too_wide.check(&layout).is_err());
        assert!(start_index("node-a", 32) < 32);
        assert_ne!(start_index("node-a", 1024), start_index("node-b", 1024));
    }
}
