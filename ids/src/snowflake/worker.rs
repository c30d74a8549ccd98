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
//! - `lease::LeasedWorker` (feature `coord`): a pair claimed as a lock of the coordination
//!   service, whose `check` fails once the lock's session cannot be proven any more (before
//!   the lease can expire on the server); [`PairRange`] is the range it is leased in.

use std::fmt::Debug;
use std::ops::RangeInclusive;

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

/// The pairs a process may lease: datacenters and workers, both inclusive ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairRange {
    /// The datacenters.
    pub datacenters: RangeInclusive<u64>,
    /// The workers within each datacenter.
    pub workers: RangeInclusive<u64>,
}

impl PairRange {
    /// Every pair `layout` can hold.
    pub fn all(layout: &Layout) -> Self {
        PairRange {
            datacenters: 0..=layout.max_datacenter(),
            workers: 0..=layout.max_worker(),
        }
    }

    /// The range to lease in: the `datacenters` given, else the one `datacenter` given, else
    /// every one `layout` holds; the `workers` given, else all; checked against `layout`.
    pub fn resolve(
        layout: &Layout,
        datacenter: Option<u64>,
        datacenters: Option<RangeInclusive<u64>>,
        workers: Option<RangeInclusive<u64>>,
    ) -> Result<Self, IdError> {
        let all = PairRange::all(layout);
        let range = PairRange {
            datacenters: datacenters
                .or(datacenter.map(|d| d..=d))
                .unwrap_or(all.datacenters),
            workers: workers.unwrap_or(all.workers),
        };
        range.check(layout)?;
        Ok(range)
    }

    /// The pairs, datacenter by datacenter.
    pub fn pairs(&self) -> Vec<Node> {
        self.datacenters
            .clone()
            .flat_map(|datacenter| {
                self.workers
                    .clone()
                    .map(move |worker| Node { datacenter, worker })
            })
            .collect()
    }

    /// Checks that every pair fits `layout`.
    pub fn check(&self, layout: &Layout) -> Result<(), IdError> {
        let fits = |field, range: &RangeInclusive<u64>| {
            if range.is_empty() {
                return Err(IdError::Setup(format!("the {field} range is empty")));
            }
            layout
                .check_field(field, *range.end())
                .map(drop)
                .map_err(|e| IdError::Setup(e.to_string()))
        };
        fits("datacenter", &self.datacenters)?;
        fits("worker", &self.workers)
    }
}

/// An inclusive range written `A-B`, or one number `N` for `N-N`.
pub fn parse_range(text: &str) -> Result<RangeInclusive<u64>, String> {
    let parse = |n: &str| {
        n.trim()
            .parse::<u64>()
            .map_err(|_| format!("{text:?}: expected A-B with whole numbers"))
    };
    match text.split_once('-') {
        Some((a, b)) => Ok(parse(a)?..=parse(b)?),
        None => parse(text).map(|n| n..=n),
    }
}
