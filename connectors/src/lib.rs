//! sluice's sources and sinks.
//!
//! - [`postgres`]: the outbox sources (`postgres_cdc`), the pgoutput decoder, connections.
//! - [`outbox`]: the outbox event router, from rows to events.
//! - [`generator`]: synthetic events with deterministic ids, for demos, tests and benchmarks.
//! - [`file`](mod@file), [`stdout`]: events as JSON lines; [`blackhole`]: acknowledges and discards.
//! - [`rabbitmq`]: RabbitMQ, persistent and confirmed, in order per key.
//! - [`codec`]: encodings shared by sinks.
//! - [`tls`]: TLS client settings shared by the PostgreSQL and RabbitMQ connections;
//!   [`ConnectionUrl`]: their URLs in configs, never shown with the password (both live in
//!   `sluice-connect`, which the consumer kit and the id generators use too).
//!
//! Each connector is one module with its config struct (the documentation of its settings) and
//! its running component; the `sluice` binary registers them by type name.

pub mod blackhole;
pub mod codec;
pub mod file;
pub mod generator;
pub mod outbox;
pub mod postgres;
pub mod rabbitmq;
pub mod stdout;

pub use sluice_connect::{ConnectionUrl, ParseUrl, tls};
