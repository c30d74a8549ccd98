//! `rabbitmq`: publishes events to RabbitMQ, persistent and confirmed, in order per key.
//!
//! ```toml
//! [sinks.broker]
//! type = "rabbitmq"
//! inputs = ["events"]
//! url = "${AMQP_URL}"
//! exchange = "outbox.{aggregatetype}"
//! routing_key = "{type}"
//! quarantine_exchange = "sluice.quarantine"
//! ```
//!
//! An event is acknowledged only once the broker confirms its message; an unroutable message
//! is quarantined (and acknowledged once the quarantine has it); a nacked one is retried with
//! backoff while its key waits; after a lost connection everything unconfirmed is published
//! again, in order, before anything new — on the next node of a cluster when `urls` lists
//! several. `docs/rabbitmq.md` documents every setting, the message format and the guarantees.
//!
//! - [`config`]: the settings; [`Endpoint`]: a broker URL, parsed by `sluice-connect`.
//! - `message`, `avro`, `cloudevents`: from an event to a message.
//! - `lane`: one publishing channel and its messages in flight.
//! - `wire`: sluice's own AMQP connection: socket, frames, handshake (ADR 0009).
//! - `broker`: the connection as the sink uses it: topology, exchanges, publishes, answers.
//! - `order`: the order of each key's events, across settles, nacks and retries.
//! - `quarantine`: where an event that cannot be delivered goes.
//! - `retry`: when nacked records go out again.
//! - `sink`: the running sink.
//! - [`metrics`]: metric names.

mod avro;
mod broker;
mod check;
mod cloudevents;
pub mod config;
mod lane;
mod management;
mod message;
pub mod metrics;
mod order;
mod quarantine;
mod retry;
mod sink;
mod wire;

pub use config::{DEFAULT_CHANNELS, DEFAULT_CONFIRM_WINDOW, OptionalProperty, RabbitmqSinkConfig};
pub use sink::RabbitmqSink;
pub use sluice_connect::amqp::Endpoint;
