//! Where a generator's (datacenter, worker) pair comes from, and how it proves, before every
//! id, that the pair is still its own.
//!
//! Two live generators with one pair issue the same ids, so the pair is not just a number: it
//! is a claim that must hold for as long as ids are issued under it. A [`WorkerClaim`] gives
//! the pair and answers [`WorkerClaim::check`] before each issue; the generator stops issuing
//! the moment `check` fails.
//!
//! - [`StaticWorker`]: the pair from config or the environment (a StatefulSet ordinal, a
//!   deployment's own numbering). The operator guarantees its uniqueness; it always holds.
//! - **Leased (not yet built)**: a pair claimed under a coordination lease (`[coord]`), whose
//!   `check` compares the monotonic clock with a deadline the lease's keepalive pushes forward
//!   (the last renewal plus the TTL minus a safety margin), so that it fails before the lease
//!   can expire on the server. It implements this trait; the generator needs no change.

use std::fmt::Debug;

use crate::error::IdError;
use crate::snowflake::{Layout, LayoutError};

/// A (datacenter, worker) pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Node {
    /// The datacenter.
    pub datacenter: u64,
    /// The worker within the datacenter.
    pub worker: u64,
}

impl Node {
    /// Checks that both numbers fit `layout`.
    pub fn check(&self, layout: &Layout) -> Result<(), LayoutError> {
        layout.check_field("datacenter", self.datacenter)?;
        layout.check_field("worker", self.worker)?;
        Ok(())
    }
}

/// A generator's right to issue ids under one (datacenter, worker) pair.
///
/// `check` runs before every issue (once per call, and again after each wait inside one), on
/// the caller's thread: it must be cheap — an atomic load and a clock read, never I/O — and
/// must fail as soon as the pair can no longer be proven this process's. The pair itself does
/// not change during a claim's life; a new pair is a new claim and a new generator.
pub trait WorkerClaim: Send + Sync + Debug + 'static {
    /// The pair.
    fn node(&self) -> Node;

    /// `Ok` while the pair is provably held; [`IdError::WorkerNotHeld`] once it is not.
    fn check(&self) -> Result<(), IdError>;
}

/// A pair set by the operator (config or environment): held for the process's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaticWorker(pub Node);

impl WorkerClaim for StaticWorker {
    fn node(&self) -> Node {
        self.0
    }

    fn check(&self) -> Result<(), IdError> {
        Ok(())
    }
}
