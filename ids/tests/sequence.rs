//! PostgreSQL sequences on the real server: the seed's two nodes with offsets, blocks under
//! concurrent clients, a crash, a sequence that does not match its plan, and ids over
//! verified TLS (the local server's, from `scripts/services.sh`).

#![cfg(feature = "postgres")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use sluice_ids::IdError;
use sluice_ids::sequence::{PgSequence, PostgresUrl, SequencePlan, SequenceState};
use sluice_tests::{TestDb, database_tls_url, error_chain};

fn plan(node: u64, nodes: u64, block: u64) -> SequencePlan {
    SequencePlan {
        sequence: "ids".into(),
        node,
        nodes,
        block,
    }
}

#[tokio::test]
async fn two_nodes_with_offsets_issue_the_seeds_odd_and_even_ids() {
    let (db1, db2) = (TestDb::create("seq_db1"), TestDb::create("seq_db2"));
    let node1 = PgSequence::new(PostgresUrl::new(&db1.url), plan(1, 2, 1));
    let node2 = PgSequence::new(PostgresUrl::new(&db2.url), plan(2, 2, 1));
    node1.set_up().await.unwrap();
    node2.set_up().await.unwrap();
    assert_eq!(node1.next_ids(3).await.unwrap(), [1, 3, 5]);
    assert_eq!(node2.next_ids(3).await.unwrap(), [2, 4, 6]);
    // sluice created each sequence with the statement `check` shows.
    assert_eq!(
        db1.value(
            "SELECT increment_by || ' ' || start_value FROM pg_sequences WHERE sequencename = 'ids'"
        ),
        Some("2 1".into())
    );
    // Setting up again changes nothing.
    node1.set_up().await.unwrap();
    assert_eq!(node1.next_ids(1).await.unwrap(), [7]);
}

#[tokio::test]
async fn blocks_under_concurrent_clients_on_two_nodes_never_collide() {
    let db = TestDb::create("seq_blocks");
    // Two processes per node share the node's sequence; each has its own blocks in memory.
    let mut generators = Vec::new();
    for (sequence, node) in [("node1_ids", 1), ("node2_ids", 2)] {
        for _process in 0..2 {
            let plan = SequencePlan {
                sequence: sequence.into(),
                ..plan(node, 2, 100)
            };
            let g = Arc::new(PgSequence::new(PostgresUrl::new(&db.url), plan));
            g.set_up().await.unwrap();
            generators.push(g);
        }
    }
    let mut clients = tokio::task::JoinSet::new();
    for (i, g) in generators.iter().enumerate() {
        for client in 0..4 {
            let g = Arc::clone(g);
            clients.spawn(async move {
                let mut ids = Vec::new();
                for call in 0..40 {
                    let count = 1 + (i * 7 + client * 13 + call * 31) % 150;
                    let batch = g.next_ids(count).await.unwrap();
                    assert_eq!(batch.len(), count);
                    assert!(batch.windows(2).all(|w| w[0] < w[1]));
                    ids.extend(batch);
                }
                (g.plan().node, ids)
            });
        }
    }
    let mut seen = HashSet::new();
    let mut total = 0;
    while let Some(done) = clients.join_next().await {
        let (node, ids) = done.unwrap();
        for id in ids {
            // Node i's blocks are [(i-1)*100 + 1 + j*200, +100).
            assert_eq!(
                ((id - 1) / 100) % 2,
                node as i64 - 1,
                "{id} outside node {node}'s blocks"
            );
            assert!(seen.insert(id), "{id} issued twice");
            total += 1;
        }
    }
    assert_eq!(seen.len(), total);
    // 32 clients × 40 calls of 1 to 150 ids took a few hundred round trips, not one per id.
    let blocks: i64 = db
        .value("SELECT sum((last_value - start_value) / increment_by + 1) FROM pg_sequences WHERE sequencename LIKE 'node%'")
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        blocks * 100 >= total as i64 && blocks < total as i64 / 10,
        "{blocks} blocks for {total} ids"
    );
}

#[tokio::test]
async fn a_crash_leaves_gaps_never_duplicates() {
    let db = TestDb::create("seq_crash");
    let before = PgSequence::new(PostgresUrl::new(&db.url), plan(1, 1, 100));
    before.set_up().await.unwrap();
    let first = before.next_ids(10).await.unwrap();
    assert_eq!(first, (1..=10).collect::<Vec<_>>());
    // The process dies with 90 ids of its block unused.
    drop(before);
    let after = PgSequence::new(PostgresUrl::new(&db.url), plan(1, 1, 100));
    let next = after.next_ids(5).await.unwrap();
    assert_eq!(next, (101..=105).collect::<Vec<_>>(), "a gap, not a reuse");

    // The server drops the connection: the call fails (retryable, nothing issued), the next
    // one reconnects and starts a new block; what was left of the old one is a gap.
    db.admin_query(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}' AND pid <> pg_backend_pid()",
        db.name
    ));
    let mut failed = false;
    let mut again = Vec::new();
    for _ in 0..2 {
        match after.next_ids(100).await {
            Ok(ids) => {
                again = ids;
                break;
            }
            Err(error) => {
                assert!(error.is_retryable(), "{error}");
                failed = true;
            }
        }
    }
    assert!(failed, "the terminated connection was noticed");
    // The first 95 come from the block already held; the rest from a new one.
    assert_eq!(again[..95], (106..=200).collect::<Vec<_>>()[..]);
    assert!(again[95..].iter().all(|id| *id > 200));
    let all: HashSet<_> = first.iter().chain(&next).chain(&again).collect();
    assert_eq!(all.len(), first.len() + next.len() + again.len());
}

#[tokio::test]
async fn a_sequence_made_for_another_plan_is_refused() {
    let db = TestDb::create("seq_mismatch");
    let g = PgSequence::new(PostgresUrl::new(&db.url), plan(2, 3, 10));
    assert_eq!(
        g.inspect().await.unwrap(),
        SequenceState::Missing { can_create: true }
    );
    db.execute("CREATE SEQUENCE ids INCREMENT BY 1");
    assert_eq!(
        g.inspect().await.unwrap(),
        SequenceState::Differs {
            start: 1,
            increment: 1
        }
    );
    let error = g.set_up().await.unwrap_err();
    assert!(matches!(error, IdError::Setup(_)) && !error.is_retryable());
    assert!(
        error
            .to_string()
            .contains("needs START WITH 11 INCREMENT BY 30"),
        "{error}"
    );
}

#[tokio::test]
async fn a_sequence_issues_ids_over_verified_tls() {
    let db = TestDb::create("seq_tls");
    let (url, password) = database_tls_url(&db.name);
    assert!(
        url.contains("sslmode=verify-full"),
        "the test needs verify-full"
    );
    let g = PgSequence::new(PostgresUrl::new(&url), plan(1, 2, 10));
    g.set_up().await.unwrap();
    assert_eq!(g.next_ids(3).await.unwrap(), [1, 2, 3]);
    // The generator keeps its session open: it is there, and encrypted.
    assert_eq!(
        db.value(
            "SELECT bool_and(s.ssl)::text FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.datname = current_database() AND a.application_name = 'sluice'"
        )
        .as_deref(),
        Some("true")
    );
    let debug = format!("{g:?}");
    assert!(
        debug.contains("sslmode=verify-full") && !debug.contains(&password),
        "{debug}"
    );
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_naming_the_problem() {
    let db = TestDb::create("seq_tls_ca");
    let (url, password) = database_tls_url(&db.name);
    let ca = PathBuf::from(std::env::var("SLUICE_TEST_CA").expect("SLUICE_TEST_CA is set"));
    let untrusted = ca.with_file_name("untrusted-ca.pem");
    let url = url.replace(&ca.display().to_string(), &untrusted.display().to_string());
    let g = PgSequence::new(PostgresUrl::new(&url), plan(1, 1, 1));
    let error = error_chain(&g.set_up().await.unwrap_err());
    assert!(
        error.contains("not signed by a trusted CA: set sslrootcert to the CA that signed it"),
        "{error}"
    );
    assert!(!error.contains(&password), "{error}");
    let error = error_chain(&g.next_ids(1).await.unwrap_err());
    assert!(error.contains("UnknownIssuer"), "{error}");
}
