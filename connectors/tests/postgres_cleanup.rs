//! The outbox cleanup against a real PostgreSQL: which rows each "delivered" predicate deletes,
//! that batches are bounded, and what it refuses. Each test owns a database (`sluice_test_…`,
//! dropped afterwards) with the table from `examples/sql/outbox-poll.sql`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, SystemTime};

use sluice_connectors::postgres::cleanup::{Cleanup, CleanupConfig, Delivered};
use sluice_connectors::postgres::connect::{Database, Sessions};
use sluice_connectors::postgres::table::Table;
use sluice_pipeline::ErrorKind;
use sluice_tests::TestDb;
use tokio::sync::watch;
use tokio_postgres::Client;

const SCHEMA: &str = include_str!("../../examples/sql/outbox-poll.sql");

fn config(text: &str) -> CleanupConfig {
    sluice_pipeline::config::deserialize(toml::from_str(text).unwrap()).unwrap()
}

async fn connect(db: &TestDb) -> Client {
    Database::parse(&db.url).unwrap().connect().await.unwrap()
}

/// Inserts `n` rows of `aggregate` created and published at the given times (SQL
/// expressions; `NULL` for unpublished).
async fn insert(client: &Client, n: i32, aggregate: &str, created: &str, published: &str) {
    client
        .execute(
            &format!(
                "INSERT INTO outbox (aggregatetype, aggregateid, type, payload, created_at, \
                 published_at) \
                 SELECT 'order', $1, 'Created', '{{}}', {created}, {published} \
                 FROM generate_series(1, $2)"
            ),
            &[&aggregate, &n],
        )
        .await
        .unwrap();
}

async fn remaining(client: &Client) -> Vec<(String, i64)> {
    client
        .query(
            "SELECT aggregateid, count(*) FROM outbox GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test]
async fn polling_cleanup_deletes_only_rows_published_before_the_retention_in_bounded_batches() {
    let db = TestDb::create("test_cleanup_published");
    db.execute(SCHEMA);
    let client = connect(&db).await;
    insert(
        &client,
        25,
        "old",
        "now() - interval '3 hours'",
        "now() - interval '2 hours'",
    )
    .await;
    insert(
        &client,
        5,
        "recent",
        "now() - interval '3 hours'",
        "now() - interval '10 minutes'",
    )
    .await;
    insert(
        &client,
        5,
        "unpublished",
        "now() - interval '3 hours'",
        "NULL",
    )
    .await;
    let table = Table::resolve(&client, "public.outbox").await.unwrap();
    let delivered = Delivered::Published {
        column: "published_at".into(),
    };
    let cleanup = Cleanup::prepare(
        &client,
        &table,
        delivered,
        &config("retention = \"1h\"\nbatch_size = 10"),
    )
    .await
    .unwrap();
    let mut deleted = Vec::new();
    loop {
        let n = cleanup.delete_batch(&client).await.unwrap();
        deleted.push(n);
        if n < 10 {
            break;
        }
    }
    assert_eq!(deleted, [10, 10, 5]);
    assert_eq!(
        remaining(&client).await,
        [("recent".into(), 5), ("unpublished".into(), 5)]
    );
}

#[tokio::test]
async fn cdc_cleanup_deletes_rows_created_before_the_confirmed_commit_minus_the_retention() {
    let db = TestDb::create("test_cleanup_confirmed");
    db.execute(SCHEMA);
    let client = connect(&db).await;
    insert(&client, 4, "hours", "now() - interval '3 hours'", "NULL").await;
    insert(
        &client,
        4,
        "minutes",
        "now() - interval '10 minutes'",
        "NULL",
    )
    .await;
    let table = Table::resolve(&client, "outbox").await.unwrap();
    let (confirm, confirmed) = watch::channel(None);
    let delivered = Delivered::CreatedBefore {
        column: "created_at".into(),
        confirmed,
    };
    let cleanup = Cleanup::prepare(&client, &table, delivered, &config("retention = \"1h\""))
        .await
        .unwrap();

    assert_eq!(
        cleanup.delete_batch(&client).await.unwrap(),
        0,
        "nothing confirmed yet"
    );
    // Confirmed up to a transaction committed now: rows created more than an hour ago go.
    confirm.send_replace(Some(SystemTime::now()));
    assert_eq!(cleanup.delete_batch(&client).await.unwrap(), 4);
    assert_eq!(remaining(&client).await, [("minutes".into(), 4)]);
    confirm.send_replace(Some(SystemTime::now() + Duration::from_secs(3600)));
    assert_eq!(cleanup.delete_batch(&client).await.unwrap(), 4);
    assert!(remaining(&client).await.is_empty());
}

#[tokio::test]
async fn a_cleanup_needs_its_time_column() {
    let db = TestDb::create("test_cleanup_misfit");
    db.execute(SCHEMA);
    let client = connect(&db).await;
    let table = Table::resolve(&client, "public.outbox").await.unwrap();
    let refused = |column: &str| Delivered::Published {
        column: column.into(),
    };
    let retention = config("retention = \"1h\"");
    let error = Cleanup::prepare(&client, &table, refused("sent_at"), &retention)
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Config);
    assert!(
        error.to_string().contains("has no column \"sent_at\""),
        "{error}"
    );
    let error = Cleanup::prepare(&client, &table, refused("aggregateid"), &retention)
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("is text, expected one of"),
        "{error}"
    );
}
