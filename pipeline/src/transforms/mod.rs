//! The engine's own transforms: `filter` keeps, drops or quarantines events by a condition on
//! one field, `dedupe` drops events whose id it has seen recently, `throttle` limits the rate.

mod dedupe;
mod filter;
mod throttle;

pub use dedupe::{DEFAULT_MAX_IDS, Dedupe, DedupeConfig};
pub use filter::{Filter, FilterAction, FilterConfig};
pub use throttle::{Throttle, ThrottleConfig};

use crate::registry::Registry;

pub(crate) fn register(registry: &mut Registry) {
    registry
        .transform::<FilterConfig>("filter")
        .transform::<DedupeConfig>("dedupe")
        .transform::<ThrottleConfig>("throttle");
}
