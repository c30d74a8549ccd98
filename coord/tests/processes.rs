//! Coordination across real processes on the shared etcd, killed with `kill -9` and frozen
//! with `SIGSTOP`: a fencing checker in PostgreSQL, and the registry under crashes.
//!
//! The processes are this test binary run again in a child role (the `#[ignore]`d tests
//! `child_*`, which run only when asked for by name, with their settings in the environment).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use futures::StreamExt;
use sluice_coord::etcd::{Etcd, EtcdOptions};
use sluice_coord::{Coord, Instance};
use sluice_pipeline::leadership::Term;

const TTL: Duration = Duration::from_secs(2);
/// How long a condition that should hold soon may take.
const SOON: Duration = Duration::from_secs(20);

fn endpoints() -> Vec<String> {
    std::env::var("ETCD_ENDPOINTS")
        .unwrap_or_else(|_| "http://127.0.0.1:2379".to_owned())
        .split(',')
        .map(str::to_owned)
        .collect()
}

fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

fn unique(what: &str) -> String {
    format!("t_{what}_{}", uuid::Uuid::new_v4().simple())
}

async fn coord(node: &str) -> Result<Coord> {
    let backend = Etcd::connect(EtcdOptions::new(endpoints())).await?;
    Ok(Coord::with_backend(Arc::new(backend), TTL, node))
}

async fn postgres() -> Result<tokio_postgres::Client> {
    let (client, connection) =
        tokio_postgres::connect(&database_url(), tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// This test binary, running the ignored test `role` with `env`.
fn spawn_child(role: &str, env: &[(&str, &str)]) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([role, "--exact", "--ignored", "--nocapture"])
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([format!("-{name}"), child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} {}", child.id());
}

fn setting(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is set by the parent test"))
}

/// A candidate: campaigns, and while it leads writes (token, node, n) rows as fast as
/// PostgreSQL takes them, checking before each that its term is still valid; starts over
/// when the term ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a child process of fencing_checker, run by it"]
async fn child_candidate() -> Result<()> {
    let (node, election, table) = (setting("NODE"), setting("ELECTION"), setting("TABLE"));
    let coord = coord(&node).await?;
    let db = postgres().await?;
    let insert =
        format!("INSERT INTO {table} (token, node, n, at) VALUES ($1, $2, $3, clock_timestamp())");
    let elected =
        format!("INSERT INTO {table}_elected (token, node, at) VALUES ($1, $2, clock_timestamp())");
    loop {
        let term = coord.campaign(&election, node.clone()).await?;
        let token = i64::try_from(term.token().0)?;
        if !term.is_valid() {
            continue;
        }
        db.execute(&elected, &[&token, &node]).await?;
        let mut n: i64 = 0;
        while term.is_valid() {
            // Refused by the trigger once a newer leader has written: that is the point.
            let _ = db.execute(&insert, &[&token, &node, &n]).await;
            n += 1;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_checker_accepts_no_write_from_a_leader_after_a_newer_one_was_elected() -> Result<()>
{
    let table = unique("fenced");
    let election = unique("fencing");
    let db = postgres().await?;
    db.batch_execute(&format!(
        "CREATE TABLE {table} (token bigint NOT NULL, node text NOT NULL, n bigint NOT NULL, at timestamptz NOT NULL);
         CREATE TABLE {table}_elected (token bigint NOT NULL, node text NOT NULL, at timestamptz NOT NULL);
         CREATE FUNCTION {table}_fence() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           LOCK TABLE {table} IN SHARE ROW EXCLUSIVE MODE;
           IF NEW.token < (SELECT coalesce(max(token), 0) FROM {table}) THEN
             RAISE EXCEPTION 'token % is older than the newest seen', NEW.token;
           END IF;
           RETURN NEW;
         END $$;
         CREATE TRIGGER fence BEFORE INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION {table}_fence();"
    ))
    .await?;
    let start = |n: usize| {
        let node = format!("candidate-{n}");
        let child = spawn_child(
            "child_candidate",
            &[("NODE", &node), ("ELECTION", &election), ("TABLE", &table)],
        );
        (node, child)
    };
    let mut children: BTreeMap<String, Child> = (0..3).map(start).collect();
    let mut started = 3;
    let latest = async |db: &tokio_postgres::Client| -> Result<Option<(i64, String)>> {
        let row = db
            .query_opt(
                &format!("SELECT token, node FROM {table}_elected ORDER BY token DESC LIMIT 1"),
                &[],
            )
            .await?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    };
    let wait_new_leader =
        async |db: &tokio_postgres::Client, after: i64| -> Result<(i64, String)> {
            let deadline = Instant::now() + SOON;
            loop {
                if let Some((token, node)) = latest(db).await?
                    && token > after
                {
                    return Ok((token, node));
                }
                ensure!(Instant::now() < deadline, "no leader after token {after}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
    let (mut token, mut leader) = wait_new_leader(&db, 0).await?;
    let mut failovers = Vec::new();
    for round in 0..20 {
        let child = children.get(&leader).context("the leader is one of ours")?;
        let at = Instant::now();
        if round % 4 == 3 {
            signal(child, "STOP");
            let (next, node) = wait_new_leader(&db, token).await?;
            failovers.push(at.elapsed());
            while at.elapsed() < 2 * TTL {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            signal(&children[&leader], "CONT");
            (token, leader) = (next, node);
        } else {
            signal(child, "KILL");
            let mut dead = children.remove(&leader).context("the leader")?;
            dead.wait()?;
            let (next, node) = wait_new_leader(&db, token).await?;
            failovers.push(at.elapsed());
            let (name, child) = start(started);
            started += 1;
            children.insert(name, child);
            (token, leader) = (next, node);
        }
    }
    for child in children.values_mut() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let late: i64 = db
        .query_one(
            &format!(
                "SELECT count(*) FROM {table} w WHERE EXISTS (
                   SELECT 1 FROM {table}_elected e WHERE e.token > w.token AND e.at < w.at)"
            ),
            &[],
        )
        .await?
        .get(0);
    let (writes, leaders): (i64, i64) = {
        let row = db
            .query_one(
                &format!("SELECT count(*), count(DISTINCT token) FROM {table}"),
                &[],
            )
            .await?;
        (row.get(0), row.get(1))
    };
    failovers.sort();
    eprintln!(
        "fencing checker: {writes} writes by {leaders} leaders over 20 kills and stops; failover p50 {:?}, max {:?}",
        failovers[failovers.len() / 2],
        failovers.last()
    );
    ensure!(
        late == 0,
        "{late} writes accepted after a newer leader was elected"
    );
    let terms: i64 = db
        .query_one(&format!("SELECT count(*) FROM {table}_elected"), &[])
        .await?
        .get(0);
    // A leader killed right after it was elected may not have written yet.
    ensure!(
        terms > 20 && leaders > 10,
        "{terms} terms, {leaders} of them wrote"
    );
    db.batch_execute(&format!(
        "DROP TABLE {table}; DROP TABLE {table}_elected; DROP FUNCTION {table}_fence();"
    ))
    .await?;
    Ok(())
}

/// An instance: registers itself under SERVICE with id ID and stays until killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a child process of the registry test, run by it"]
async fn child_instance() -> Result<()> {
    let (service, id) = (setting("SERVICE"), setting("ID"));
    let coord = coord(&id).await?;
    let _registration = coord
        .register(Instance {
            service,
            id: id.clone(),
            address: format!("127.0.0.1:{}", 10_000 + id.len()),
            metadata: serde_json::json!({"zone": "a"}),
        })
        .await?;
    std::future::pending::<()>().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_drops_instances_killed_with_kill_9_within_ttl_and_a_second() -> Result<()> {
    let service = unique("svc");
    let watcher = coord("watcher").await?;
    let mut lists = watcher.watch_instances(&service).await?;
    let mut children: Vec<(String, Child)> = (0..20)
        .map(|n| {
            let id = format!("i{n:02}");
            let child = spawn_child("child_instance", &[("SERVICE", &service), ("ID", &id)]);
            (id, child)
        })
        .collect();
    let ids = |list: &[Instance]| list.iter().map(|i| i.id.clone()).collect::<BTreeSet<_>>();
    let all: BTreeSet<String> = children.iter().map(|(id, _)| id.clone()).collect();
    let mut seen = Vec::new();
    let deadline = Instant::now() + SOON;
    loop {
        let list = tokio::time::timeout_at(deadline.into(), lists.next())
            .await
            .context("20 instances registered")?
            .context("the watch ended")??;
        seen.push(ids(&list));
        if ids(&list) == all {
            break;
        }
    }
    ensure!(ids(&watcher.discover(&service).await?) == all);
    let killed_at = Instant::now();
    let mut survivors = all.clone();
    for (id, child) in children.iter_mut().take(5) {
        child.kill()?;
        child.wait()?;
        survivors.remove(id);
    }
    let dropped = loop {
        let list = tokio::time::timeout_at((killed_at + SOON).into(), lists.next())
            .await
            .context("the killed instances dropped")?
            .context("the watch ended")??;
        seen.push(ids(&list));
        if ids(&list) == survivors {
            break killed_at.elapsed();
        }
    };
    eprintln!("registry: 5 of 20 instances killed, dropped from discovery after {dropped:?}");
    ensure!(
        dropped <= TTL + Duration::from_secs(1),
        "dropped after {dropped:?}"
    );
    ensure!(ids(&watcher.discover(&service).await?) == survivors);
    // Every change was reported: each list differs from the one before by arrivals or
    // departures only, never both, and each departure seen is one of the killed.
    for pair in seen.windows(2) {
        let (before, after) = (&pair[0], &pair[1]);
        if after.len() < before.len() {
            ensure!(after.is_subset(before), "{before:?} -> {after:?}");
        } else if !before.is_subset(after) {
            bail!("an instance left while others arrived: {before:?} -> {after:?}");
        }
    }
    for (_, child) in &mut children {
        let _ = child.kill();
        let _ = child.wait();
    }
    Ok(())
}
