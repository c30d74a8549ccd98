//! Connecting to the servers sluice talks to, shared by the relay's connectors, the consumer
//! kit and the id generators, so that each reads a URL the same way and none of them shows a
//! password.
//!
//! - [`ConnectionUrl`]: a URL as written in a config, whose `Debug` never shows the password.
//! - [`tls`]: rustls client settings from the PEM files a URL names, one verifier per level
//!   of checking, and failures explained by the URL parameter that fixes them.
//! - [`postgres`] (feature `postgres`): PostgreSQL URLs with libpq's `sslmode`, `sslrootcert`,
//!   `sslcert` and `sslkey`, and SQL sessions over rustls.
//! - [`amqp`] (feature `amqp`): `amqp://` and `amqps://` URLs with RabbitMQ's TLS parameters.
//!
//! It depends on no part of the engine: a program that only consumes messages or issues ids
//! links rustls and its driver, nothing more.

#[cfg(feature = "amqp")]
pub mod amqp;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod tls;
mod url;

pub use url::{ConnectionUrl, ParseUrl};

/// An error with its whole cause chain, `outer: cause: root cause`.
#[cfg(feature = "postgres")]
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
