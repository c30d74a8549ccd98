//! sluice unique ids (DESIGN.md §6): every method the seed compares, built for real and
//! usable on their own, without the engine or a coordination client.
//!
//! - [`snowflake`]: 64-bit time-ordered ids per (datacenter, worker), lock-free, with a
//!   validated layout, clock-rollback handling and the [`WorkerClaim`](snowflake::WorkerClaim)
//!   seam through which a leased worker id plugs in (`snowflake::lease`, feature `coord`).
//! - [`random`]: UUID v4, monotonic UUID v7 and ULID.
//! - `sequence` (feature `postgres`): PostgreSQL sequences with offset/increment across nodes
//!   and block (hi/lo) allocation.
//! - `counter` (feature `redis`): Redis `INCRBY` day counters rendered with a date prefix.
//! - [`clock`]: the clock they read, and one tests move by hand; [`calendar`]: UTC dates.
//! - [`Id`]: one id of any kind; [`IdGenerator`]: any generator behind one call.
//! - With feature `pipeline`: the `[ids]` resource (named generators, the
//!   `GET /ids/{generator}` endpoint; with `coord` too, Snowflake pairs leased through
//!   `[coord]`) and the `id` transform.
//!
//! Choosing between them, the layouts' dates and the measured speeds: `docs/ids.md`.

pub mod calendar;
pub mod clock;
#[cfg(feature = "pipeline")]
pub mod config;
#[cfg(feature = "redis")]
pub mod counter;
#[cfg(feature = "pipeline")]
pub mod endpoint;
mod error;
mod generator;
mod id;
#[cfg(feature = "pipeline")]
pub mod metrics;
pub mod random;
#[cfg(feature = "pipeline")]
pub mod resource;
#[cfg(feature = "postgres")]
pub mod sequence;
pub mod snowflake;
#[cfg(feature = "pipeline")]
pub mod transform;

pub use error::IdError;
pub use generator::IdGenerator;
pub use id::Id;
