//! The metric names of the `[ids]` resource, in one place.
//!
//! Every series carries `generator` (its name in `[ids.generators]`).

/// Ids issued through the resource (the `id` transform and the endpoint), by `kind`.
pub const ISSUED: &str = "sluice_ids_issued_total";
/// Calls that issued nothing, by `reason` (`clock_moved_back`, `postgres`, …).
pub const FAILURES: &str = "sluice_ids_failures_total";
/// Times a Snowflake generator's clock read earlier than its last id, by `outcome`:
/// `waited` (caught up within `max_backward`), `refused` (a larger step: no ids),
/// `continued` (`on_backward = "continue"`).
pub const CLOCK_STEPS_BACK: &str = "sluice_ids_clock_steps_back_total";
/// The largest step back of a Snowflake generator's clock, in milliseconds.
pub const LARGEST_STEP_BACK: &str = "sluice_ids_clock_largest_step_back_milliseconds";
/// Times a Snowflake generator waited for the next millisecond because its sequence was used
/// up (the generator running at its cap).
pub const EXHAUSTED_WAITS: &str = "sluice_ids_sequence_exhausted_waits_total";

/// Registers the help texts, once per process.
pub(crate) fn describe() {
    use metrics::{describe_counter, describe_gauge};
    describe_counter!(ISSUED, "Ids issued by the [ids] resource's generators.");
    describe_counter!(FAILURES, "Id requests that issued nothing, by reason.");
    describe_counter!(
        CLOCK_STEPS_BACK,
        "Times a Snowflake generator found its clock behind its last id, by outcome."
    );
    describe_gauge!(
        LARGEST_STEP_BACK,
        "The largest step back of a Snowflake generator's clock, in milliseconds."
    );
    describe_counter!(
        EXHAUSTED_WAITS,
        "Times a Snowflake generator waited for the next millisecond, its sequence used up."
    );
}
