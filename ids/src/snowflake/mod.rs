//! Snowflake ids: 64-bit, sortable by time, issued by many workers at once without talking to
//! each other, each worker owning a (datacenter, worker) pair.
//!
//! - [`Layout`]: the bit widths and epoch, validated, with `encode`/`decode` and the dates that
//!   matter for storing ids.
//! - [`Snowflake`]: the lock-free generator, its clock handling and [`SnowflakeStats`].
//! - [`WorkerClaim`]: where the pair comes from and how it is proven before each id
//!   ([`StaticWorker`], or [`lease::LeasedWorker`] through the coordination service with the
//!   `coord` feature).

mod generator;
mod layout;
#[cfg(feature = "coord")]
pub mod lease;
mod worker;

pub use generator::{DEFAULT_MAX_BACKWARD, OnBackward, Options, Snowflake, SnowflakeStats};
pub use layout::{
    DEFAULT_DATACENTER_BITS, DEFAULT_EPOCH_MS, DEFAULT_SEQUENCE_BITS, DEFAULT_TIMESTAMP_BITS,
    DEFAULT_WORKER_BITS, Layout, LayoutError, Parts,
};
pub use worker::{Node, PairRange, StaticWorker, WorkerClaim, parse_range};

#[cfg(test)]
mod tests;
