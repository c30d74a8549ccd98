//! The consumer kit against the real RabbitMQ and PostgreSQL: duplicates and redeliveries
//! change nothing, a failing handler is retried, old inbox rows are cleaned.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use sluice_consumer::{BoxError, Consumer, ConsumerConfig, Handler, Inbox, Message};
use sluice_tests::{TestDb, wait_for};
use tokio_postgres::Transaction;

fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// Applies each message by appending it to `applied`; fails once for ids in `fail_once`.
struct Apply {
    fail_once: HashSet<String>,
}

impl Handler for Apply {
    async fn handle(&mut self, tx: &Transaction<'_>, message: &Message) -> Result<(), BoxError> {
        tx.execute(
            "INSERT INTO applied (message_id, body) VALUES ($1, $2)",
            &[
                &message.id,
                &String::from_utf8_lossy(&message.body).into_owned(),
            ],
        )
        .await?;
        if self.fail_once.remove(&message.id) {
            return Err("simulated handler failure".into());
        }
        Ok(())
    }
}

async fn publish(channel: &lapin::Channel, queue: &str, ids: impl Iterator<Item = u32>) {
    for i in ids {
        channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                format!("{{\"n\":{i}}}").as_bytes(),
                BasicProperties::default()
                    .with_message_id(format!("m{i}").into())
                    .with_type("Test".into()),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_and_retries_are_applied_exactly_once() {
    let db = TestDb::create("consumer");
    db.execute("CREATE TABLE applied (message_id text NOT NULL, body text NOT NULL)");
    let queue = db.name.clone();
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();

    publish(&channel, &queue, 0..500).await;
    publish(&channel, &queue, 0..200).await; // duplicates queued behind the originals

    let mut config = ConsumerConfig::new(&amqp_url(), &queue, &db.url);
    config.retry_delay = Duration::from_millis(10);
    let consumer = Consumer::connect(config).await.unwrap();
    let stats = consumer.stats();
    let handler = Apply {
        fail_once: ["m7", "m300"].map(String::from).into(),
    };
    let task = tokio::spawn(consumer.run(handler));

    let done = |n| {
        let stats = &stats;
        move || {
            let seen =
                stats.handled.load(Ordering::Relaxed) + stats.duplicates.load(Ordering::Relaxed);
            (seen >= n).then_some(())
        }
    };
    tokio::task::block_in_place(|| wait_for("700 deliveries", done(700))).unwrap();
    publish(&channel, &queue, 450..550).await; // 50 repeats, 50 new
    tokio::task::block_in_place(|| wait_for("800 deliveries", done(800))).unwrap();

    let rows = db.query("SELECT count(*), count(DISTINCT message_id) FROM applied");
    assert_eq!(
        rows[0],
        [Some("550".into()), Some("550".into())],
        "each message applied once"
    );
    assert_eq!(stats.handled.load(Ordering::Relaxed), 550);
    assert_eq!(stats.duplicates.load(Ordering::Relaxed), 250);
    assert_eq!(stats.failures.load(Ordering::Relaxed), 2);
    assert_eq!(
        db.value("SELECT count(*) FROM inbox").as_deref(),
        Some("550")
    );

    task.abort();
    channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    let _ = connection.close(200, "done".into()).await;
}

#[tokio::test]
async fn cleanup_deletes_only_old_rows() {
    let db = TestDb::create("inbox_cleanup");
    let (client, driver) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(driver);
    let inbox = Inbox::new("inbox");
    inbox.create(&client).await.unwrap();
    db.execute(
        "INSERT INTO inbox (message_id, received_at) SELECT 'old' || g, now() - interval '2 hours' FROM generate_series(1, 30) g;
         INSERT INTO inbox (message_id) SELECT 'new' || g FROM generate_series(1, 5) g",
    );
    let deleted = inbox
        .cleanup(&client, Duration::from_secs(3600), 20)
        .await
        .unwrap();
    assert_eq!(deleted, 20, "bounded by the batch size");
    let deleted = inbox
        .cleanup(&client, Duration::from_secs(3600), 20)
        .await
        .unwrap();
    assert_eq!(deleted, 10);
    assert_eq!(
        db.value("SELECT count(*) FROM inbox WHERE message_id LIKE 'new%'")
            .as_deref(),
        Some("5")
    );
    assert_eq!(db.value("SELECT count(*) FROM inbox").as_deref(), Some("5"));
}
