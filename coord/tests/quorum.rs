//! A 3-member etcd cluster of the test's own (three etcd processes on loopback ports): one
//! member killed, leadership goes on; two killed (quorum lost), the leader steps down (within
//! the TTL of the last renewal the cluster answered) and nobody leads; quorum back, a leader
//! again. The backend's own view of the same is in `etcd.rs`; this is what a `Coord` does.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/private_etcd.rs"]
#[allow(dead_code)]
mod private_etcd;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use private_etcd::PrivateEtcd;
use sluice_coord::etcd::{Etcd, EtcdOptions};
use sluice_coord::{Coord, LeaderTerm};
use sluice_pipeline::leadership::Term;

/// Above what etcd takes to elect a new raft leader when its leader dies (one to two election
/// timeouts, 1 s each by default), during which no member can renew a lease: a TTL of 2 s
/// can end terms when the member lost was etcd's leader.
const TTL: Duration = Duration::from_secs(4);
/// How long an etcd member that lost its quorum may go on answering as leader: raft's check
/// of the quorum runs once per election timeout (1 s by default) and steps down when a whole
/// one passed without the others, so up to twice that.
const ETCD_QUORUM_CHECK: Duration = Duration::from_secs(2);

async fn candidate(cluster: &PrivateEtcd, node: &str) -> Result<Coord> {
    let backend = Etcd::connect(EtcdOptions::new(cluster.urls())).await?;
    Ok(Coord::with_backend(Arc::new(backend), TTL, node))
}

/// Waits up to `within` for `term` to end; how long it took.
async fn ends_within(term: &LeaderTerm, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    tokio::time::timeout(within, term.ended()).await.ok()?;
    Some(start.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_survives_one_member_stops_without_quorum_and_returns_with_it() -> Result<()> {
    let mut cluster = PrivateEtcd::cluster(3, None).await?;
    let (a, b) = (
        candidate(&cluster, "a").await?,
        candidate(&cluster, "b").await?,
    );
    let term = tokio::time::timeout(Duration::from_secs(20), a.campaign("quorum", "a")).await??;
    // The other candidate campaigns until it wins, starting over when the cluster refuses;
    // it says when it won.
    let (won, mut b_leads) = tokio::sync::oneshot::channel();
    let waiting = tokio::spawn(async move {
        loop {
            match b.campaign("quorum", "b").await {
                Ok(term) => {
                    let _ = won.send(Instant::now());
                    return term;
                }
                Err(error) => eprintln!("b: {error}; campaigning again"),
            }
        }
    });
    // One member of three gone: the other two still make a quorum.
    cluster.kill(0).await?;
    ensure!(
        ends_within(&term, 2 * TTL).await.is_none(),
        "the term ended with one member of three gone"
    );
    ensure!(
        term.is_valid(),
        "the leader stopped leading with quorum kept"
    );
    ensure!(
        b_leads.try_recv().is_err(),
        "a second leader with quorum kept"
    );

    // Two gone: the member left answers renewals until it notices it lost its quorum, then
    // none; the leader stops before its lease could expire, less than the TTL after the last
    // renewal the cluster answered.
    cluster.kill(1).await?;
    let bound = TTL + ETCD_QUORUM_CHECK;
    let stepped_down = ends_within(&term, 2 * bound).await;
    eprintln!("quorum lost: the leader stepped down after {stepped_down:?} (TTL {TTL:?})");
    ensure!(
        stepped_down.is_some_and(|took| took <= bound),
        "the leader did not step down within the TTL after the last answer: {stepped_down:?}"
    );
    ensure!(!term.is_valid());
    ensure!(b_leads.try_recv().is_err(), "someone led without quorum");

    // Quorum back: one of the candidates leads again.
    cluster.restart(0).await?;
    cluster.restart(1).await?;
    let back = Instant::now();
    let again = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::select! {
            won = a.campaign("quorum", "a") => won.map(|_| "a"),
            _ = &mut b_leads => Ok("b"),
        }
    })
    .await??;
    eprintln!("quorum back: {again} leads after {:?}", back.elapsed());
    waiting.abort();
    Ok(())
}
