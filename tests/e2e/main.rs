//! End-to-end tests of the `sluice` binary: each runs the real process on a config of its own,
//! against real files and, where the pipeline needs them, the real servers that
//! `scripts/services.sh` provides.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod api;
mod check;
mod cli;
mod config_errors;
#[cfg(feature = "gateway")]
mod console;
mod coord;
#[cfg(feature = "gateway")]
mod dashboards;
mod engine;
#[cfg(feature = "gateway")]
mod gateway;
#[cfg(feature = "gateway")]
mod gateway_discovery;
#[cfg(feature = "gateway")]
mod gateway_pipeline;
#[cfg(feature = "gateway")]
mod gateway_upstreams;
mod ids;
mod outbox;
mod postgres_cdc;
mod postgres_poll;
mod rabbitmq;
mod snapshot;
mod tap;

use sluice_tests::Binary;

/// The binary built for these tests.
fn sluice() -> Binary {
    Binary(env!("CARGO_BIN_EXE_sluice").into())
}
