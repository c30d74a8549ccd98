//! The products service of the demo: `GET /products/{id}` answers the row of the `products`
//! table (examples/sql/products.sql) as JSON, `404` when there is none. The gateway of
//! examples/demo-gateway.toml sits in front of it and caches its answers in Redis.
//!
//! ```sh
//! products-service --database-url postgres://postgres@127.0.0.1/sluice_demo --address 127.0.0.1:3001
//! ```

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use clap::Parser;
use tokio_postgres::{Client, Statement};

/// Serves the `products` table over HTTP.
#[derive(Debug, Parser)]
struct Args {
    /// The database holding the `products` table.
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// The listen address.
    #[arg(long, env = "PRODUCTS_ADDR", default_value = "127.0.0.1:3001")]
    address: SocketAddr,
    /// Create the table and its seeded rows (examples/sql/products.sql) if they are missing.
    #[arg(long)]
    init: bool,
}

const SCHEMA: &str = include_str!("../../sql/products.sql");

/// What every request needs: the connection and the prepared lookup.
struct Products {
    db: Client,
    by_id: Statement,
}

/// `GET /products/{id}`: the row as one JSON object, built by PostgreSQL itself so that the
/// price keeps its exact decimal digits.
async fn product(State(products): State<Arc<Products>>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<i64>() else {
        return (
            StatusCode::NOT_FOUND,
            json(r#"{"error": "no such product"}"#),
        )
            .into_response();
    };
    match products.db.query_opt(&products.by_id, &[&id]).await {
        Ok(Some(row)) => (StatusCode::OK, json(row.get::<_, String>(0))).into_response(),
        Ok(None) => (
            StatusCode::NOT_FOUND,
            json(r#"{"error": "no such product"}"#),
        )
            .into_response(),
        Err(error) => {
            eprintln!("[products-service] query failed: {error}");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                json(r#"{"error": "the database did not answer"}"#),
            )
                .into_response()
        }
    }
}

fn json(body: impl Into<String>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], body.into())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    let (db, driver) = tokio_postgres::connect(&args.database_url, tokio_postgres::NoTls)
        .await
        .context("connecting to the database")?;
    let driver = tokio::spawn(driver);
    if args.init {
        db.batch_execute(SCHEMA)
            .await
            .context("creating the products table")?;
    }
    let by_id = db
        .prepare(
            "SELECT json_build_object('id', id, 'name', name, 'price', price, \
             'updated_at', updated_at)::text FROM products WHERE id = $1",
        )
        .await
        .context("preparing the lookup (is examples/sql/products.sql loaded?)")?;
    let listener = tokio::net::TcpListener::bind(args.address)
        .await
        .with_context(|| format!("listening on {} (PRODUCTS_ADDR)", args.address))?;
    let app = axum::Router::new()
        .route("/products/{id}", get(product))
        .route("/health", get(|| async { "ok" }))
        .with_state(Arc::new(Products { db, by_id }));
    eprintln!("[products-service] listening on http://{}", args.address);
    // The service is only as alive as its one connection: when it is lost, exit and let
    // whatever started the service decide.
    tokio::select! {
        served = axum::serve(listener, app) => served.context("serving"),
        ended = driver => {
            ended.context("the connection task")?.context("the database connection")?;
            anyhow::bail!("the database closed the connection")
        }
    }
}
