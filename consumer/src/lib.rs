//! The sluice consumer kit: process messages from RabbitMQ **exactly once in effect**.
//!
//! sluice delivers each outbox event at least once, with the outbox id as the AMQP
//! `message_id`. A redelivery (after a crash or a reconnect) or a replay repeats a message; the
//! kit makes the repeat change nothing. For each delivery it:
//!
//! 1. opens a transaction on the consumer's own PostgreSQL database;
//! 2. records the `message_id` in an [`Inbox`] table in that transaction — if it is already
//!    there, the message was processed before, and the handler is skipped;
//! 3. runs the [`Handler`] inside the same transaction (its writes and the inbox row commit or
//!    roll back together);
//! 4. commits, and only then acknowledges the delivery.
//!
//! A crash before the commit rolls everything back and the broker redelivers; a crash after the
//! commit but before the acknowledgement redelivers a message the inbox already has. Old inbox
//! rows are deleted by age ([`Inbox::cleanup`], run by the consumer every
//! [`ConsumerConfig::cleanup_interval`]): keep them longer than any redelivery or replay can
//! arrive late.
//!
//! Both connections may run over TLS, read from the URLs as the relay reads them:
//! `amqps://…?cacertfile=ca.pem` (client certificates and `auth_mechanism=external` too) and
//! `postgres://…?sslmode=verify-full&sslrootcert=ca.pem`. The URLs never show their passwords,
//! in `Debug` or in errors. `docs/consumer.md` lists every parameter.
//!
//! ```no_run
//! use sluice_consumer::{Consumer, ConsumerConfig, Handler, Message, BoxError};
//! use tokio_postgres::Transaction;
//!
//! struct Orders;
//!
//! impl Handler for Orders {
//!     async fn handle(&mut self, tx: &Transaction<'_>, message: &Message) -> Result<(), BoxError> {
//!         tx.execute("UPDATE stats SET orders = orders + 1", &[]).await?;
//!         Ok(())
//!     }
//! }
//!
//! # async fn run() -> Result<(), sluice_consumer::Error> {
//! let config = ConsumerConfig::new("amqp://guest:guest@127.0.0.1:5672/%2f", "orders",
//!     "postgres://postgres@127.0.0.1:5432/shop");
//! Consumer::connect(config).await?.run(Orders).await
//! # }
//! ```

mod broker;
mod consumer;
mod error;
mod inbox;

pub use consumer::{
    Consumer, ConsumerConfig, DEFAULT_CLEANUP_INTERVAL, DEFAULT_PREFETCH, DEFAULT_RETAIN,
    DEFAULT_RETRY_DELAY, Handler, Message, Stats,
};
pub use error::{BoxError, Error};
pub use inbox::{DEFAULT_INBOX_TABLE, Inbox};
