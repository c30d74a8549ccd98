//! sluice's sources and sinks.
//!
//! - [`generator`]: synthetic events with deterministic ids, for demos, tests and benchmarks.
//! - [`file`], [`stdout`]: events as JSON lines; [`blackhole`]: acknowledges and discards.
//! - [`codec`]: encodings shared by sinks.
//! - [`rabbitmq`]: RabbitMQ, persistent and confirmed, in order per key.
//!
//! Each connector is one module with its config struct (the documentation of its settings) and
//! its running component; the `sluice` binary registers them by type name.

pub mod blackhole;
pub mod codec;
pub mod file;
pub mod generator;
pub mod postgres;
pub mod rabbitmq;
pub mod stdout;
