//! The example apps of the outbox demo, and the pipeline configs beside them (`*.toml`).
//!
//! - `order-service` writes an order row and an outbox row in one transaction, at a steady
//!   rate: `INSERT INTO orders …; INSERT INTO outbox …; COMMIT`.
//! - `order-consumer` consumes the events from RabbitMQ with the consumer kit, applying each
//!   order exactly once to a projection in its own database, and reports what it sees.
//! - `products-service` answers `GET /products/{id}` from the `products` table, behind the
//!   gateway of `demo-gateway.toml` that caches its answers and evicts them through CDC.
//!
//! The SQL they use is in `sql/`; `scripts/demo.sh` runs them with sluice between them, and
//! `scripts/scenario.sh` checks what the demo shows.

/// Microseconds since the Unix epoch, as the apps stamp and compare times.
pub fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}
