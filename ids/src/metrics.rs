//! The metric names of the `[ids]` resource, in one place.
//!
//! Every series carries `generator` (its name in `[ids.generators]`).

sluice_pipeline::metric_families! {
    /// Ids issued through the resource (the `id` transform and the endpoint), by `kind`.
    counter ISSUED = "sluice_ids_issued_total";
    /// Calls that issued nothing, by `reason` (`clock_moved_back`, `postgres`, …).
    counter FAILURES = "sluice_ids_failures_total";
    /// Times a Snowflake generator's clock read earlier than its last id, by `outcome`:
    /// `waited` (caught up within `max_backward`), `refused` (a larger step: no ids),
    /// `continued` (`on_backward = "continue"`).
    counter CLOCK_STEPS_BACK = "sluice_ids_clock_steps_back_total";
    /// The largest step back of a Snowflake generator's clock, in milliseconds.
    gauge LARGEST_STEP_BACK = "sluice_ids_clock_largest_step_back_milliseconds";
    /// Times a Snowflake generator waited for the next millisecond because its sequence was used
    /// up (the generator running at its cap).
    counter EXHAUSTED_WAITS = "sluice_ids_sequence_exhausted_waits_total";
}
