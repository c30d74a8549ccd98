//! The engine's own transforms: `filter` keeps or drops events by a condition on one field,
//! `dedupe` drops events whose id it has seen recently.

mod dedupe;
mod filter;

pub use dedupe::{DEFAULT_MAX_IDS, Dedupe, DedupeConfig};
pub use filter::{Filter, FilterAction, FilterConfig};

use crate::registry::Registry;

pub(crate) fn register(registry: &mut Registry) {
    registry
        .transform::<FilterConfig>("filter")
        .transform::<DedupeConfig>("dedupe");
}
