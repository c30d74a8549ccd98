//! RabbitMQ for the benchmarks: the durable exchange, queue and binding a run publishes to,
//! counting what a queue holds, and the minimal lapin publisher that is the broker's
//! baseline (persistent messages, publisher confirms, a window of unconfirmed ones).

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties, ExchangeKind};

/// Where a run's messages go: an exchange, bound to a queue with a binding key, and the
/// routing key publishers use.
#[derive(Debug, Clone)]
pub struct Route {
    /// The durable exchange.
    pub exchange: String,
    /// Its type.
    pub kind: ExchangeKind,
    /// The durable queue.
    pub queue: String,
    /// The key the queue is bound with.
    pub binding_key: String,
    /// The key messages are published with.
    pub routing_key: String,
}

impl Route {
    /// Declares the exchange, the queue and the binding.
    pub async fn declare(&self, url: &str) {
        let connection = connect(url).await;
        let channel = connection.create_channel().await.unwrap();
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        channel
            .exchange_declare(
                self.exchange.as_str().into(),
                self.kind.clone(),
                durable,
                FieldTable::default(),
            )
            .await
            .unwrap();
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .queue_declare(self.queue.as_str().into(), durable, FieldTable::default())
            .await
            .unwrap();
        channel
            .queue_bind(
                self.queue.as_str().into(),
                self.exchange.as_str().into(),
                self.binding_key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        connection.close(200, "declared".into()).await.unwrap();
    }

    /// Deletes the queue and returns how many messages it held.
    pub async fn delete_queue(&self, url: &str) -> u64 {
        let connection = connect(url).await;
        let channel = connection.create_channel().await.unwrap();
        let held = channel
            .queue_delete(self.queue.as_str().into(), QueueDeleteOptions::default())
            .await
            .unwrap();
        connection.close(200, "deleted".into()).await.unwrap();
        u64::from(held)
    }
}

/// Connects to the broker at `url`.
pub async fn connect(url: &str) -> Connection {
    Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap()
}

/// One message to publish.
pub struct Message {
    /// Its properties (persistence included: the publisher adds nothing).
    pub properties: BasicProperties,
    /// Its body.
    pub body: Vec<u8>,
    /// Whether to publish it `mandatory`.
    pub mandatory: bool,
}

/// Messages are built and published in batches of this many.
pub const BATCH: u64 = 1024;

/// Publishes messages `1..=events` to `route` the way lapin's documentation does it: on
/// `channels` channels in confirm mode, each with up to `window / channels` unconfirmed, and
/// checks that the broker acknowledged every one. `batch(range)` builds the messages of a
/// range of at most [`BATCH`]; channel `c` publishes every `channels`-th batch from the
/// `c`-th.
pub async fn publish<F>(
    url: &str,
    route: &Route,
    events: u64,
    window: usize,
    channels: usize,
    batch: F,
) where
    F: Fn(Range<u64>) -> Vec<Message> + Send + Sync + 'static,
{
    let connection = connect(url).await;
    let batch = Arc::new(batch);
    let per_channel = (window / channels).max(1);
    let mut tasks = Vec::with_capacity(channels);
    for c in 0..channels as u64 {
        let channel = connection.create_channel().await.unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let batch = Arc::clone(&batch);
        let route = route.clone();
        tasks.push(tokio::spawn(async move {
            let mut pending = VecDeque::with_capacity(per_channel);
            let mut next = 1 + c * BATCH;
            while next <= events {
                let end = (next + BATCH).min(events + 1);
                for message in batch(next..end) {
                    let confirm = channel
                        .basic_publish(
                            route.exchange.as_str().into(),
                            route.routing_key.as_str().into(),
                            BasicPublishOptions {
                                mandatory: message.mandatory,
                                immediate: false,
                            },
                            &message.body,
                            message.properties,
                        )
                        .await
                        .unwrap();
                    pending.push_back(confirm);
                    while pending.len() >= per_channel {
                        let confirmation = pending.pop_front().unwrap().await.unwrap();
                        assert!(matches!(confirmation, Confirmation::Ack(None)));
                    }
                }
                next += BATCH * channels as u64;
            }
            for confirm in pending {
                assert!(matches!(confirm.await.unwrap(), Confirmation::Ack(None)));
            }
            // Dropped, it would start closing on its own and race the connection's close.
            channel
        }));
    }
    let mut open = Vec::with_capacity(channels);
    for task in tasks {
        open.push(task.await.unwrap());
    }
    connection.close(200, "done".into()).await.unwrap();
    drop(open);
}
