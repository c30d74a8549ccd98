//! The consumer loop: receive, claim in the inbox, handle, commit, acknowledge.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, BasicRejectOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties};
use sluice_connect::amqp::AmqpUrl;
use sluice_connect::postgres::PostgresUrl;
use tokio_postgres::{Client, Transaction};

use crate::broker;
use crate::error::{BoxError, Error};
use crate::inbox::{DEFAULT_INBOX_TABLE, Inbox};

/// Default for [`ConsumerConfig::prefetch`].
pub const DEFAULT_PREFETCH: u16 = 64;
/// Default for [`ConsumerConfig::retry_delay`].
pub const DEFAULT_RETRY_DELAY: Duration = Duration::from_secs(1);
/// Default for [`ConsumerConfig::retain`]: as long as NServiceBus keeps its dedupe data.
pub const DEFAULT_RETAIN: Duration = Duration::from_secs(7 * 24 * 3600);
/// Default for [`ConsumerConfig::cleanup_interval`].
pub const DEFAULT_CLEANUP_INTERVAL: Duration = Duration::from_secs(60);
/// Most inbox rows one cleanup round deletes.
const CLEANUP_BATCH: i64 = 10_000;

/// Where to consume from and where the inbox lives. Its `Debug` shows the URLs without their
/// passwords.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// RabbitMQ URL, `amqp://user:password@host:port/vhost`, or `amqps://` for TLS with
    /// RabbitMQ's URI parameters: `cacertfile` (the CA that signed the broker's certificate;
    /// the Mozilla roots without it), `certfile` and `keyfile` (a client certificate),
    /// `verify=verify_none`, `server_name_indication`, `auth_mechanism=external`.
    pub amqp_url: AmqpUrl,
    /// The queue to consume.
    pub queue: String,
    /// PostgreSQL URL of the consumer's own database (where the handler writes), with libpq's
    /// `sslmode` (`disable`, `prefer` by default, `require`, `verify-ca`, `verify-full`),
    /// `sslrootcert`, `sslcert` and `sslkey`.
    pub database_url: PostgresUrl,
    /// The inbox table.
    pub inbox_table: String,
    /// Deliveries the broker may send ahead of acknowledgements.
    pub prefetch: u16,
    /// How long to wait before handing back a message whose handler failed (it is redelivered).
    pub retry_delay: Duration,
    /// How long inbox rows are kept: longer than any duplicate can arrive late.
    pub retain: Duration,
    /// How often old inbox rows are deleted.
    pub cleanup_interval: Duration,
    /// Create the inbox table at start when it does not exist.
    pub create_inbox: bool,
}

impl ConsumerConfig {
    /// Defaults for consuming `queue` with the inbox in `database_url`.
    pub fn new(amqp_url: &str, queue: &str, database_url: &str) -> Self {
        ConsumerConfig {
            amqp_url: AmqpUrl::new(amqp_url),
            queue: queue.to_owned(),
            database_url: PostgresUrl::new(database_url),
            inbox_table: DEFAULT_INBOX_TABLE.to_owned(),
            prefetch: DEFAULT_PREFETCH,
            retry_delay: DEFAULT_RETRY_DELAY,
            retain: DEFAULT_RETAIN,
            cleanup_interval: DEFAULT_CLEANUP_INTERVAL,
            create_inbox: true,
        }
    }
}

/// A delivered message, as the handler sees it.
#[derive(Debug, Clone)]
pub struct Message {
    /// The AMQP `message_id`: the outbox id.
    pub id: String,
    /// The AMQP `type`: the event type.
    pub event_type: Option<String>,
    /// The exchange it was published to.
    pub exchange: String,
    /// Its routing key.
    pub routing_key: String,
    /// The AMQP `correlation_id`: the event's key, the outbox `aggregateid` (unset when the
    /// sink's `properties` leaves `correlation_id` out).
    pub key: Option<String>,
    /// Headers with text values (such as `traceparent`).
    pub headers: BTreeMap<String, String>,
    /// The body.
    pub body: Vec<u8>,
    /// Whether the broker delivered it before (the inbox decides what that means).
    pub redelivered: bool,
}

/// What the consumer does with each new message, inside the inbox's transaction. Writes made
/// through `transaction` commit together with the inbox row, or not at all.
pub trait Handler: Send {
    /// Handles one message. An error rolls the transaction back and the message is delivered
    /// again after [`ConsumerConfig::retry_delay`].
    fn handle(
        &mut self,
        transaction: &Transaction<'_>,
        message: &Message,
    ) -> impl Future<Output = Result<(), BoxError>> + Send;
}

/// Counters of a running consumer.
#[derive(Debug, Default)]
pub struct Stats {
    /// Messages handled (committed with their inbox row).
    pub handled: AtomicU64,
    /// Deliveries skipped because the inbox already had their id.
    pub duplicates: AtomicU64,
    /// Handler failures (each followed by a redelivery).
    pub failures: AtomicU64,
    /// Deliveries refused for lacking a `message_id`.
    pub refused: AtomicU64,
}

/// A connected consumer.
pub struct Consumer {
    config: ConsumerConfig,
    connection: Connection,
    channel: lapin::Channel,
    database: Client,
    inbox: Inbox,
    stats: Arc<Stats>,
}

impl Consumer {
    /// Connects to RabbitMQ and PostgreSQL (over TLS when their URLs ask for it) and creates
    /// the inbox table if asked to.
    pub async fn connect(config: ConsumerConfig) -> Result<Consumer, Error> {
        let endpoint = config.amqp_url.parse().map_err(|problem| Error::Url {
            field: "amqp_url",
            problem,
        })?;
        let database = config.database_url.parse().map_err(|problem| Error::Url {
            field: "database_url",
            problem,
        })?;
        let database = database.open().await.map_err(Error::DatabaseConnect)?;
        let inbox = Inbox::new(&config.inbox_table);
        if config.create_inbox {
            inbox.create(&database).await?;
        }
        let connection = broker::connect(&endpoint, ConnectionProperties::default()).await?;
        let channel = connection
            .create_channel()
            .await
            .map_err(Error::broker("opening a channel"))?;
        channel
            .basic_qos(config.prefetch, BasicQosOptions::default())
            .await
            .map_err(Error::broker("setting the prefetch"))?;
        Ok(Consumer {
            config,
            connection,
            channel,
            database,
            inbox,
            stats: Arc::default(),
        })
    }

    /// The consumer's counters (shared: read them while it runs).
    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.stats)
    }

    /// Consumes until the connection fails or the subscription is cancelled.
    pub async fn run(mut self, mut handler: impl Handler) -> Result<(), Error> {
        let mut deliveries = self
            .channel
            .basic_consume(
                self.config.queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(Error::broker("subscribing to the queue"))?;
        let mut cleanup = tokio::time::interval(self.config.cleanup_interval);
        loop {
            tokio::select! {
                delivery = deliveries.next() => {
                    let Some(delivery) = delivery else {
                        return Err(Error::Cancelled { queue: self.config.queue.clone() });
                    };
                    let delivery = delivery.map_err(Error::broker("receiving"))?;
                    self.process(&mut handler, delivery).await?;
                }
                _ = cleanup.tick() => {
                    let deleted = self.inbox.cleanup(&self.database, self.config.retain, CLEANUP_BATCH).await?;
                    if deleted > 0 {
                        tracing::debug!(deleted, "inbox cleaned");
                    }
                }
            }
        }
    }

    async fn process(
        &mut self,
        handler: &mut impl Handler,
        delivery: lapin::message::Delivery,
    ) -> Result<(), Error> {
        let Some(message) = message(&delivery) else {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                routing_key = %delivery.routing_key,
                "message without message_id refused (it cannot be deduplicated); configure a dead-letter exchange to keep it"
            );
            delivery
                .reject(BasicRejectOptions { requeue: false })
                .await
                .map_err(Error::broker("refusing a message"))?;
            return Ok(());
        };
        let transaction = self
            .database
            .transaction()
            .await
            .map_err(Error::database("beginning a transaction"))?;
        if !self.inbox.claim(&transaction, &message.id).await? {
            transaction
                .rollback()
                .await
                .map_err(Error::database("ending a transaction"))?;
            self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
            return delivery
                .ack(BasicAckOptions::default())
                .await
                .map(drop)
                .map_err(Error::broker("acknowledging a duplicate"));
        }
        match handler.handle(&transaction, &message).await {
            Ok(()) => {
                transaction
                    .commit()
                    .await
                    .map_err(Error::database("committing"))?;
                self.stats.handled.fetch_add(1, Ordering::Relaxed);
                delivery
                    .ack(BasicAckOptions::default())
                    .await
                    .map(drop)
                    .map_err(Error::broker("acknowledging"))
            }
            Err(error) => {
                drop(transaction); // rolls back
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(message_id = %message.id, error = %error, "handler failed; the message will be delivered again");
                tokio::time::sleep(self.config.retry_delay).await;
                delivery
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..BasicNackOptions::default()
                    })
                    .await
                    .map(drop)
                    .map_err(Error::broker("handing a message back"))
            }
        }
    }

    /// Closes the connections.
    pub async fn close(self) {
        let _ = self.connection.close(200, "bye".into()).await;
    }
}

fn message(delivery: &lapin::message::Delivery) -> Option<Message> {
    let properties = &delivery.properties;
    let id = properties.message_id().as_ref()?.to_string();
    let headers = properties
        .headers()
        .as_ref()
        .map(|table| {
            table
                .inner()
                .iter()
                .filter_map(|(name, value)| {
                    let text = match value {
                        AMQPValue::LongString(s) => s.to_string(),
                        AMQPValue::ShortString(s) => s.to_string(),
                        _ => return None,
                    };
                    Some((name.to_string(), text))
                })
                .collect()
        })
        .unwrap_or_default();
    Some(Message {
        id,
        event_type: properties.kind().as_ref().map(ToString::to_string),
        exchange: delivery.exchange.to_string(),
        routing_key: delivery.routing_key.to_string(),
        key: properties
            .correlation_id()
            .as_ref()
            .map(ToString::to_string),
        headers,
        body: delivery.data.clone(),
        redelivered: delivery.redelivered,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_the_urls_without_their_passwords() {
        let config = ConsumerConfig::new(
            "amqps://app:s3cret-amqp@broker:5671/shop?cacertfile=/etc/ca.pem",
            "orders",
            "postgres://app:s3cret-pg@db/shop?sslmode=verify-full&sslrootcert=/etc/ca.pem",
        );
        let debug = format!("{config:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
        assert!(
            debug.contains("amqps://app@broker:5671/shop")
                && debug.contains("postgres://app@db:5432/shop?sslmode=verify-full"),
            "{debug}"
        );
        let broken = ConsumerConfig::new("amqp://u:s3c@zq9@h/", "q", "postgres://u:s3c@zq9@h/");
        let debug = format!("{broken:?}");
        assert!(!debug.contains("zq9"), "{debug}");
    }
}
