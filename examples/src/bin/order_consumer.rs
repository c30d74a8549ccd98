//! The idempotent consumer of the outbox demo: applies each `OrderCreated` event to a
//! projection in its own database, exactly once in effect, with the consumer kit.
//!
//! ```sh
//! order-consumer --amqp-url amqp://guest:guest@127.0.0.1:5672/%2f --queue orders \
//!     --database-url postgres://postgres@127.0.0.1/shop_projection
//! ```
//!
//! Both URLs may ask for TLS (`amqps://…?cacertfile=ca.pem`,
//! `postgres://…?sslmode=verify-full&sslrootcert=ca.pem`), for the kit and for the
//! projection's own session alike.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use sluice_consumer::{BoxError, Consumer, ConsumerConfig, Handler, Message};
use sluice_examples::now_micros;
use tokio_postgres::Transaction;

/// Consumes order events and keeps per-customer totals.
#[derive(Debug, Parser)]
struct Args {
    /// RabbitMQ.
    #[arg(long, env = "AMQP_URL")]
    amqp_url: String,
    /// The queue.
    #[arg(long, default_value = "orders")]
    queue: String,
    /// The consumer's own database (the projection and its inbox).
    #[arg(long, env = "CONSUMER_DATABASE_URL")]
    database_url: String,
}

/// Adds each order to its customer's totals.
struct Projection {
    /// Commit-to-handled latency of the last message, in microseconds.
    latency_us: Arc<AtomicI64>,
}

impl Handler for Projection {
    async fn handle(&mut self, tx: &Transaction<'_>, message: &Message) -> Result<(), BoxError> {
        let event: serde_json::Value = serde_json::from_slice(&message.body)?;
        let customer = event["customer"]
            .as_str()
            .ok_or("no customer in the event")?;
        let total = event["total"].as_f64().ok_or("no total in the event")?;
        tx.execute(
            "INSERT INTO customer_totals (customer, orders, total) VALUES ($1, 1, $2::float8) \
             ON CONFLICT (customer) DO UPDATE SET orders = customer_totals.orders + 1, \
             total = customer_totals.total + EXCLUDED.total",
            &[&customer, &total],
        )
        .await?;
        if let Some(committed) = event["committed_us"].as_i64() {
            self.latency_us
                .store(now_micros() - committed, Ordering::Relaxed);
        }
        Ok(())
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    let db = sluice_connect::postgres::Database::parse(&args.database_url)
        .map_err(|problem| anyhow::anyhow!("--database-url: {problem}"))?
        .open()
        .await
        .context("connecting to the consumer's database")?;
    db.batch_execute(
        "CREATE TABLE IF NOT EXISTS customer_totals (
            customer text PRIMARY KEY, orders bigint NOT NULL, total numeric NOT NULL)",
    )
    .await?;
    drop(db);

    let consumer = Consumer::connect(ConsumerConfig::new(
        &args.amqp_url,
        &args.queue,
        &args.database_url,
    ))
    .await
    .context("starting the consumer")?;
    let stats = consumer.stats();
    let latency_us = Arc::new(AtomicI64::new(0));
    let report = {
        let latency_us = Arc::clone(&latency_us);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut last = (Instant::now(), 0u64);
            loop {
                tick.tick().await;
                let handled = stats.handled.load(Ordering::Relaxed);
                let rate = (handled - last.1) as f64 / last.0.elapsed().as_secs_f64();
                eprintln!(
                    "[order-consumer] applied {handled} ({rate:.0}/s), duplicates skipped {}, last commit->applied {:.1} ms",
                    stats.duplicates.load(Ordering::Relaxed),
                    latency_us.load(Ordering::Relaxed) as f64 / 1000.0
                );
                last = (Instant::now(), handled);
            }
        })
    };
    let result = consumer.run(Projection { latency_us }).await;
    report.abort();
    result.context("consuming")
}
