//! The sluice engine: a pipeline of stages (sources, transforms, sinks) declared in a TOML
//! file, moving [`Event`]s in batches over bounded channels, with end-to-end acknowledgements
//! so that each source's checkpoint never passes an event that is not durably delivered.
//!
//! - [`event`]: the envelope and its cheap shared text.
//! - [`ack`]: acknowledgements, checkpoints and the in-flight budget.
//! - [`component`]: the `Source`, `Transform` and `Sink` traits and their contexts.
//! - [`config`], [`registry`], [`topology`]: from a file to a checked graph.
//! - [`template`]: `{field}` templates over event values, for keys, exchanges and routes.
//! - [`runtime`]: running it, with shutdown that drains; [`supervise`]: the one restart policy
//!   and the leadership gate; [`api`]: `/metrics`, `/health`, `/ready`.
//! - [`resource`]: clients shared by a process's components (`[coord]`); [`leadership`]: the
//!   elections sources run under; [`backoff`]: the one backoff.
//! - [`transforms`]: the engine's own `filter` and `dedupe`.
//! - [`tap`] and [`quarantined`]: what people watch live, events leaving a component and the
//!   latest quarantined ones.

pub mod ack;
pub mod api;
pub mod backoff;
pub mod checkpoint;
pub mod component;
pub mod config;
pub mod error;
pub mod event;
pub mod health;
pub mod leadership;
pub mod metrics;
pub mod pace;
pub mod quarantined;
pub mod registry;
pub mod resource;
pub mod runtime;
pub mod shutdown;
pub mod supervise;
pub mod tap;
pub mod template;
#[cfg(test)]
pub(crate) mod testing;
pub mod topology;
pub mod transforms;

pub use ack::{Outcome, Receipt};
pub use component::{
    BuildContext, Emitter, Finding, Level, Output, Refused, Sink, SinkConfig, SinkContext, Source,
    SourceConfig, SourceContext, Transform, TransformConfig, Validate,
};
pub use config::{Config, ConfigErrors, FieldError, FieldErrors, HumanDuration};
pub use error::{Error, ErrorKind};
pub use event::{Batch, Event, Fields, Position, SourceMeta, Text};
pub use leadership::{FencingToken, LeaderView, Leadership, Term};
pub use registry::Registry;
pub use resource::{Resource, ResourceConfig, ResourceContext, Resources};
pub use runtime::{PipelineSpec, check_together, run, run_process, run_reloading, try_build};
pub use shutdown::{Shutdown, ShutdownTrigger};
