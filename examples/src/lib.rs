//! Example apps that go with the pipeline configs in this folder (`*.toml`).
//!
//! The configs run with `sluice run examples/<name>.toml`. The order service and the
//! idempotent consumer of the outbox demo will live here as binaries.
