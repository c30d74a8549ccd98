//! The order service of the outbox demo: each order is one transaction that writes the
//! business row and the outbox row together.
//!
//! ```sh
//! order-service --database-url postgres://postgres@127.0.0.1/shop --rate 200 --count 10000
//! ```

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use sluice_examples::now_micros;
use sluice_pipeline::pace::Pace;

/// Writes orders and their outbox events, one transaction each.
#[derive(Debug, Parser)]
struct Args {
    /// The service's database.
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// Orders per second.
    #[arg(long, default_value_t = 200)]
    rate: u64,
    /// Stop after this many orders (default: until interrupted).
    #[arg(long)]
    count: Option<u64>,
    /// Number of customers; each customer's orders are one aggregate, delivered in order.
    #[arg(long, default_value_t = 50)]
    customers: u64,
    /// Create the tables (examples/sql/orders.sql and outbox.sql) if they are missing.
    #[arg(long)]
    init: bool,
}

const SCHEMA: &str = concat!(
    include_str!("../../sql/orders.sql"),
    include_str!("../../sql/outbox.sql")
);

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    let (mut db, driver) = tokio_postgres::connect(&args.database_url, tokio_postgres::NoTls)
        .await
        .context("connecting to the database")?;
    tokio::spawn(driver);
    if args.init {
        db.batch_execute(SCHEMA)
            .await
            .context("creating the tables")?;
    }
    let insert_order = db
        .prepare("INSERT INTO orders (customer, total) VALUES ($1, $2::float8) RETURNING id")
        .await?;
    let insert_event = db
        .prepare(
            "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) \
             VALUES ('order', $1, 'OrderCreated', $2::text::jsonb)",
        )
        .await?;

    let pace = Pace::new(args.rate);
    let mut written: u64 = 0;
    let mut reported = (Instant::now(), 0u64);
    while args.count.is_none_or(|count| written < count) {
        pace.wait(written).await;
        let customer = format!("customer-{}", written % args.customers);
        let total = 10.0 + (written % 90) as f64;
        let tx = db.transaction().await?;
        let order: i64 = tx
            .query_one(&insert_order, &[&customer, &total])
            .await?
            .get(0);
        let payload = serde_json::json!({
            "order": order,
            "customer": customer,
            "total": total,
            "seq": written,
            "committed_us": now_micros(),
        });
        tx.execute(&insert_event, &[&customer, &payload.to_string()])
            .await?;
        tx.commit().await?;
        written += 1;
        if reported.0.elapsed() >= Duration::from_secs(1) {
            let rate = (written - reported.1) as f64 / reported.0.elapsed().as_secs_f64();
            eprintln!("[order-service] {written} orders committed ({rate:.0}/s)");
            reported = (Instant::now(), written);
        }
    }
    eprintln!("[order-service] done: {written} orders committed");
    Ok(())
}
