//! Coordination through the binary, on the real etcd of `scripts/services.sh` and the real
//! `etcdctl`: `sluice lock` against `etcdctl lock`, a leader-gated pipeline as etcdctl's
//! elections see it, `coord_watch` across a restart, `coord_kv` fenced on leadership, and
//! configs stored in etcd that reload when they change.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use crate::sluice;
use sluice_tests::{Scratch, free_port, http_get, json_lines, metric, metrics, wait_for};

fn endpoints() -> String {
    std::env::var("ETCD_ENDPOINTS").unwrap_or_else(|_| "http://127.0.0.1:2379".to_owned())
}

/// `--coord` for the shared etcd.
fn coord_url() -> String {
    let all = endpoints();
    let hosts: Vec<&str> = all
        .split(',')
        .map(|e| e.trim_start_matches("http://"))
        .collect();
    format!("etcd://{}", hosts.join(","))
}

/// A name no other test or run uses.
fn unique(what: &str) -> String {
    format!("e2e-{what}-{}-{}", std::process::id(), free_port())
}

fn etcdctl(args: &[&str]) -> Command {
    let mut command = Command::new("etcdctl");
    command
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", endpoints()))
        .args(args);
    command
}

/// Runs etcdctl to completion; its standard output.
fn etcdctl_output(args: &[&str]) -> String {
    let out = etcdctl(args).output().unwrap();
    assert!(
        out.status.success(),
        "etcdctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The keys under `prefix`.
fn keys(prefix: &str) -> Vec<String> {
    etcdctl_output(&["get", "--prefix", "--keys-only", prefix])
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A long-running etcdctl (`lock NAME`, `elect NAME VALUE`, `elect --listen NAME`).
struct Holding {
    child: Child,
    /// Kept open: etcdctl killed by a broken pipe would not give up what it holds.
    output: BufReader<std::process::ChildStdout>,
}

impl Holding {
    fn start(args: &[&str]) -> Holding {
        let mut child = etcdctl(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let output = BufReader::new(child.stdout.take().unwrap());
        Holding { child, output }
    }

    /// The next line it prints (etcdctl lock and elect print once they hold).
    fn line(&mut self) -> String {
        let mut line = String::new();
        self.output.read_line(&mut line).unwrap();
        line.trim().to_owned()
    }
}

/// Starts etcdctl with `args` and waits for the first line it prints: it holds what it asked
/// for from then on. Returns it and that line.
fn etcdctl_holding(args: &[&str]) -> (Holding, String) {
    let mut holding = Holding::start(args);
    let first = holding.line();
    (holding, first)
}

/// SIGTERM, on which etcdctl gives up what it holds, and waits for it to exit.
fn stop(mut holding: Holding) {
    let _ = Command::new("kill")
        .args(["-TERM", &holding.child.id().to_string()])
        .status();
    holding.child.wait().unwrap();
}

#[test]
fn sluice_lock_and_etcdctl_lock_exclude_each_other_and_the_token_grows() {
    let name = unique("lock");
    let dir = Scratch::new("coord-lock");
    let (holder, held_key) = etcdctl_holding(&["lock", &name]);
    assert!(
        held_key.starts_with(&name),
        "etcdctl lock printed {held_key:?}"
    );
    let holder_token: u64 = etcdctl_output(&["get", &held_key, "-w", "fields"])
        .lines()
        .find_map(|l| l.strip_prefix("\"CreateRevision\" : "))
        .unwrap()
        .parse()
        .unwrap();

    let out = dir.join("token");
    let mut waiting = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["--coord", &coord_url(), "lock", &name, "--", "sh", "-c"])
        .arg(format!("echo $SLUICE_FENCING_TOKEN > {}", out.display()))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("sluice to queue behind etcdctl", || {
        (keys(&format!("{name}/")).len() == 2).then_some(())
    })
    .unwrap();
    assert!(
        waiting.try_wait().unwrap().is_none(),
        "sluice ran while etcdctl held the lock"
    );
    assert!(!out.exists(), "the command ran while etcdctl held the lock");
    stop(holder);
    assert!(waiting.wait().unwrap().success());
    let token: u64 = std::fs::read_to_string(&out)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        token > holder_token,
        "token {token} after etcdctl's {holder_token}"
    );

    // The other way round: while sluice holds it, etcdctl waits.
    let fifo = dir.join("release");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let mut holding = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["--coord", &coord_url(), "lock", &name, "--", "sh", "-c"])
        .arg(format!("read line < {}", fifo.display()))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("sluice to hold the lock", || {
        (keys(&format!("{name}/")).len() == 1).then_some(())
    })
    .unwrap();
    let mut etcdctl_waiting = Holding::start(&["lock", &name]);
    wait_for("etcdctl to queue behind sluice", || {
        (keys(&format!("{name}/")).len() == 2).then_some(())
    })
    .unwrap();
    std::fs::write(&fifo, "go\n").unwrap();
    assert!(holding.wait().unwrap().success());
    let printed = etcdctl_waiting.line();
    assert!(
        printed.starts_with(&name),
        "etcdctl took the lock after sluice: {printed:?}"
    );
    stop(etcdctl_waiting);
}

/// A leader-gated generator → file pipeline on the shared etcd, as node `node`.
fn gated(dir: &Scratch, election: &str, node: &str) -> (std::path::PathBuf, SocketAddr) {
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = dir.write(
        &format!("{node}.toml"),
        &format!(
            r#"
            [api]
            address = "{api}"
            {coord}
            [pipeline]
            data_dir = "{data}"
            leader = "{election}"
            [sources.gen]
            type = "generator"
            rate = 200
            [sinks.out]
            type = "file"
            inputs = ["gen"]
            path = "{data}/out.jsonl"
            "#,
            coord = coord_section(node),
            data = dir.join(node).display()
        ),
    );
    (config, api)
}

fn role(api: SocketAddr) -> Option<String> {
    let (_, body) = http_get(api, "/ready").ok()?;
    body.lines()
        .find(|l| l.contains("election"))
        .map(str::to_owned)
}

#[test]
fn etcdctl_sees_sluices_leader_and_a_candidate_it_started_first_keeps_sluice_standby() {
    let election = unique("elect");
    let dir = Scratch::new("coord-elect");
    let (first, _) = etcdctl_holding(&["elect", &election, "outsider"]);
    let (config, api) = gated(&dir, &election, "node-a");
    let mut running = sluice().spawn(&config);
    running.wait_ready(api).unwrap();
    assert_eq!(
        role(api).as_deref(),
        Some(format!("standby for election {election}").as_str())
    );
    let leading = format!("leader of election {election}");
    assert!(
        json_lines(&dir.join("node-a/out.jsonl")).is_empty(),
        "a standby delivered events"
    );
    stop(first);
    wait_for("sluice to lead once etcdctl is gone", || {
        role(api).filter(|r| r.starts_with(&leading))
    })
    .unwrap();
    let mut listen = Holding::start(&["elect", "--listen", &election]);
    // etcdctl prints the leader's key, then its value.
    let key = listen.line();
    assert!(key.starts_with(&format!("{election}/")), "{key}");
    assert_eq!(listen.line(), "node-a");
    stop(listen);
    wait_for("events delivered by the leader", || {
        (json_lines(&dir.join("node-a/out.jsonl")).len() > 10).then_some(())
    })
    .unwrap();
    running.signal("TERM");
    assert!(running.wait().unwrap().success(), "{}", running.log());
}

/// The `[coord]` section for the shared etcd.
fn coord_section(node: &str) -> String {
    let endpoints: Vec<String> = coord_url()
        .trim_start_matches("etcd://")
        .split(',')
        .map(|e| format!("{e:?}"))
        .collect();
    format!(
        "[coord]\nbackend = \"etcd\"\nendpoints = [{}]\nttl = \"2s\"\nnode = \"{node}\"\n",
        endpoints.join(", ")
    )
}

#[test]
fn coord_watch_delivers_every_change_once_in_revision_order_across_a_restart() {
    let prefix = format!("{}/", unique("watch"));
    let dir = Scratch::new("coord-watch");
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let out = dir.join("changes.jsonl");
    let config = dir.write(
        "watch.toml",
        &format!(
            r#"
            [api]
            address = "{api}"
            {coord}
            [pipeline]
            data_dir = "{data}"
            [sources.changes]
            type = "coord_watch"
            prefix = "{prefix}"
            [sinks.out]
            type = "file"
            inputs = ["changes"]
            path = "{out}"
            "#,
            coord = coord_section("watcher"),
            data = dir.join("data").display(),
            out = out.display()
        ),
    );
    etcdctl_output(&["put", &format!("{prefix}a"), "1"]);
    let mut running = sluice().spawn(&config);
    running.wait_ready(api).unwrap();
    wait_for("the initial snapshot", || {
        (json_lines(&out).len() == 1).then_some(())
    })
    .unwrap();
    for i in 0..20 {
        etcdctl_output(&["put", &format!("{prefix}k{}", i % 4), &i.to_string()]);
    }
    etcdctl_output(&["del", &format!("{prefix}a")]);
    wait_for("22 events", || (json_lines(&out).len() == 22).then_some(())).unwrap();
    running.signal("TERM");
    assert!(running.wait().unwrap().success(), "{}", running.log());

    // Written while nothing watches: the restarted source catches up from its checkpoint.
    for i in 20..30 {
        etcdctl_output(&["put", &format!("{prefix}k{}", i % 4), &i.to_string()]);
    }
    let mut running = sluice().spawn(&config);
    running.wait_ready(api).unwrap();
    etcdctl_output(&["put", &format!("{prefix}last"), "x"]);
    wait_for("33 events", || (json_lines(&out).len() == 33).then_some(())).unwrap();
    running.signal("TERM");
    assert!(running.wait().unwrap().success(), "{}", running.log());

    let events = json_lines(&out);
    let revisions: Vec<u64> = events
        .iter()
        .map(|e| e["fields"]["revision"].as_str().unwrap().parse().unwrap())
        .collect();
    let mut sorted = revisions.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(revisions, sorted, "every change once, in revision order");
    assert_eq!(events[0]["fields"]["snapshot"], "initial");
    assert_eq!(events[21]["type"], "delete");
    // The values are JSON numbers, so the file sink embeds them as such.
    let values: Vec<String> = events[1..21]
        .iter()
        .chain(&events[22..32])
        .map(|e| e["payload"].to_string())
        .collect();
    let expected: Vec<String> = (0..30).map(|i| i.to_string()).collect();
    assert_eq!(values, expected, "every value, in the order written");
}

#[test]
fn coord_kv_writes_while_leading_and_refuses_fenced_writes_once_leadership_is_lost() {
    let election = unique("kv");
    let prefix = format!("{election}-keys/");
    let dir = Scratch::new("coord-kv");
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = dir.write(
        "kv.toml",
        &format!(
            r#"
            [api]
            address = "{api}"
            {coord}
            [pipeline]
            data_dir = "{data}"
            leader = "{election}"
            [sources.gen]
            type = "generator"
            rate = 500
            [sinks.kv]
            type = "coord_kv"
            inputs = ["gen"]
            key = "{prefix}{{id}}"
            fenced = true
            "#,
            coord = coord_section("writer"),
            data = dir.join("data").display(),
        ),
    );
    let mut running = sluice().spawn(&config);
    running.wait_ready(api).unwrap();
    wait_for("keys written by the leader", || {
        (keys(&prefix).len() > 50).then_some(())
    })
    .unwrap();
    let leader_key = keys(&format!("{election}/")).remove(0);
    // Frozen past its lease: etcd ends the term, and a candidate that was waiting leads.
    let mut outsider = Holding::start(&["elect", &election, "outsider"]);
    wait_for("etcdctl to queue behind sluice", || {
        (keys(&format!("{election}/")).len() == 2).then_some(())
    })
    .unwrap();
    running.signal("STOP");
    outsider.line();
    // sluice is frozen: nothing it sends is written after this revision, which is at or past
    // the one at which its lease ended and etcdctl took over.
    let taken_at: u64 = etcdctl_output(&["get", &leader_key, "-w", "fields"])
        .lines()
        .find_map(|l| l.strip_prefix("\"Revision\" : "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        keys(&format!("{election}/"))
            .iter()
            .all(|k| *k != leader_key)
    );
    running.signal("CONT");
    wait_for("sluice to know it is a standby", || {
        role(api).filter(|r| r.starts_with("standby"))
    })
    .unwrap();
    let written_after: Vec<String> = etcdctl_output(&["get", "--prefix", &prefix, "-w", "fields"])
        .lines()
        .filter_map(|l| l.strip_prefix("\"ModRevision\" : "))
        .filter(|r| r.parse::<u64>().unwrap() > taken_at)
        .map(str::to_owned)
        .collect();
    assert!(
        written_after.is_empty(),
        "writes accepted after the new leader was elected: {written_after:?}"
    );
    let refused = metric(
        &metrics(api).unwrap(),
        "sluice_coord_kv_fenced_refusals_total",
        &[("component_id", "kv")],
    );
    eprintln!("fenced writes refused after the freeze: {refused:?}");
    stop(outsider);
    running.signal("TERM");
    assert!(running.wait().unwrap().success(), "{}", running.log());
}

#[test]
fn a_config_stored_in_etcd_runs_and_reloads_when_it_changes_refusing_an_invalid_one() {
    let key = unique("config");
    let dir = Scratch::new("coord-config");
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let data = dir.join("data");
    let version = |out: &str| {
        format!(
            r#"
            [api]
            address = "{api}"
            [pipeline]
            data_dir = "{data}"
            [sources.gen]
            type = "generator"
            rate = 500
            [sinks.out]
            type = "file"
            inputs = ["gen"]
            path = "{out}"
            "#,
            data = data.display(),
            out = dir.join(out).display()
        )
    };
    let url = coord_url();
    let put = |file: &std::path::Path| {
        sluice().output(&[
            "--coord",
            &url,
            "config",
            "put",
            &key,
            file.to_str().unwrap(),
        ])
    };

    let bad = dir.write("bad.toml", "[sources.gen]\ntype = \"nope\"\n");
    let refused = put(&bad);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("nothing was stored"));
    assert!(keys(&format!("config/{key}")).is_empty());

    let first = dir.write("first.toml", &version("first.jsonl"));
    let stored = put(&first);
    assert!(
        stored.status.success(),
        "{}",
        String::from_utf8_lossy(&stored.stderr)
    );
    let get = sluice().output(&["--coord", &url, "config", "get", &key]);
    assert_eq!(String::from_utf8_lossy(&get.stdout), version("first.jsonl"));

    let source = format!("coord:{key}");
    let args = ["--coord", &url, "run", &source].map(std::ffi::OsStr::new);
    let mut running = sluice().spawn_logged(&args, &dir.join("run.log"));
    running.wait_ready(api).unwrap();
    let delivered = || {
        metric(
            &metrics(api).ok()?,
            "sluice_component_received_events_total",
            &[("component_id", "out")],
        )
    };
    wait_for("events into first.jsonl", || {
        (json_lines(&dir.join("first.jsonl")).len() > 50).then_some(())
    })
    .unwrap();

    // Written around the validation: the running pipeline refuses it and goes on.
    etcdctl_output(&["put", &format!("config/{key}"), "[sources.gen\n"]);
    wait_for("the invalid reload counted", || {
        let all = metrics(api).ok()?;
        (metric(
            &all,
            "sluice_config_reloads_total",
            &[("result", "invalid")],
        )? >= 1.0)
            .then_some(())
    })
    .unwrap();
    let before = delivered().unwrap();
    wait_for("events still flowing", || {
        (delivered()? > before + 50.0).then_some(())
    })
    .unwrap();

    let second = dir.write("second.toml", &version("second.jsonl"));
    assert!(put(&second).status.success());
    wait_for("events into second.jsonl", || {
        (json_lines(&dir.join("second.jsonl")).len() > 50).then_some(())
    })
    .unwrap();
    running.signal("TERM");
    assert!(running.wait().unwrap().success(), "{}", running.log());

    let ids: Vec<String> = json_lines(&dir.join("first.jsonl"))
        .into_iter()
        .chain(json_lines(&dir.join("second.jsonl")))
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    let last = sluice_tests::saved_checkpoint(&data, "gen").unwrap();
    let expected: Vec<String> = (1..=last).map(|n| format!("gen-{n}")).collect();
    assert_eq!(
        ids, expected,
        "every event once, in order, across the reload"
    );
}

/// The candidate leading, once exactly one does among those not in `skip` (killed or frozen:
/// a frozen process would hold each poll until it timed out); checks at every poll that at
/// most one does.
fn the_leader(apis: &[SocketAddr], skip: &[usize]) -> usize {
    wait_for("one leader", || {
        let leaders: Vec<usize> = (0..apis.len())
            .filter(|i| !skip.contains(i))
            .filter(|i| role(apis[*i]).is_some_and(|r| r.starts_with("leader")))
            .collect();
        assert!(
            leaders.len() <= 1,
            "two candidates lead at once: {leaders:?}"
        );
        leaders.first().copied()
    })
    .unwrap()
}

#[test]
fn five_candidates_one_leader_a_killed_or_frozen_leader_is_replaced_within_ttl_and_a_second() {
    let election = unique("five");
    let dir = Scratch::new("coord-five");
    let ttl = std::time::Duration::from_secs(2);
    let mut candidates = Vec::new();
    let mut apis = Vec::new();
    for n in 0..5 {
        let (config, api) = gated(&dir, &election, &format!("node-{n}"));
        let mut running = sluice().spawn(&config);
        running.wait_ready(api).unwrap();
        candidates.push(running);
        apis.push(api);
    }
    let mut gone = Vec::new();
    for round in 0..3 {
        let leader = the_leader(&apis, &gone);
        let killed = std::time::Instant::now();
        candidates[leader].signal("KILL");
        gone.push(leader);
        let next = the_leader(&apis, &gone);
        let failover = killed.elapsed();
        eprintln!("round {round}: node-{leader} killed, node-{next} leads after {failover:?}");
        assert!(
            failover <= ttl + std::time::Duration::from_secs(1),
            "failover took {failover:?} with a TTL of {ttl:?}"
        );
    }
    // Frozen for twice the TTL: replaced, and on waking it knows it no longer leads.
    let frozen = the_leader(&apis, &gone);
    let stopped = std::time::Instant::now();
    candidates[frozen].signal("STOP");
    let next = the_leader(&apis, &[gone.as_slice(), &[frozen]].concat());
    let failover = stopped.elapsed();
    assert!(
        failover <= ttl + std::time::Duration::from_secs(1),
        "{failover:?}"
    );
    while stopped.elapsed() < 2 * ttl {
        assert_eq!(
            the_leader(&apis, &[gone.as_slice(), &[frozen]].concat()),
            next
        );
    }
    candidates[frozen].signal("CONT");
    let woken = wait_for("the frozen leader to answer", || role(apis[frozen])).unwrap();
    assert!(
        woken.starts_with("standby"),
        "after waking it said {woken:?}"
    );
    assert_eq!(the_leader(&apis, &gone), next);
    for (n, mut running) in candidates.into_iter().enumerate() {
        if !gone.contains(&n) {
            running.signal("TERM");
            assert!(running.wait().unwrap().success(), "{}", running.log());
        }
    }
}

/// `sluice id snowflake` leasing its pair among 32 of namespace `namespace`, its output piped.
fn leasing(namespace: &str, count: u64) -> Child {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("--coord")
        .arg(format!("{}?namespace={namespace}&ttl=2s", coord_url()))
        .args([
            "id",
            "snowflake",
            "--datacenters",
            "0-0",
            "--workers",
            "0-31",
        ])
        .args(["--count", &count.to_string()])
        .env("SLUICE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Reads stderr lines of `child` until one contains `what`; the line.
fn said(child: &mut Child, what: &str) -> String {
    let stderr = child.stderr.as_mut().unwrap();
    let mut reader = BufReader::new(stderr);
    loop {
        let mut line = String::new();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "ended before saying {what:?}"
        );
        if line.contains(what) {
            return line;
        }
    }
}

/// Every id `child` printed, once it has ended.
fn ids_of(mut child: Child) -> Vec<u64> {
    let mut out = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out).unwrap();
    child.wait().unwrap();
    out.lines().map(|l| l.parse().unwrap()).collect()
}

/// The (worker, Unix ms) of a default-layout Snowflake id.
fn decode(id: u64) -> (u64, u64) {
    const EPOCH_MS: u64 = 1_704_067_200_000;
    ((id >> 13) & 31, (id >> 23) + EPOCH_MS)
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[test]
fn thirty_two_processes_lease_distinct_workers_and_a_killed_ones_pair_waits_its_guard() {
    let namespace = unique("ids");
    let count = 10_000;
    // Each holds its pair until its output is read: the pipe fills long before 10,000 ids.
    let mut holders: Vec<(u64, Child)> = (0..32)
        .map(|_| leasing(&namespace, count))
        .collect::<Vec<_>>()
        .into_iter()
        .map(|mut child| {
            let line = said(&mut child, "leased datacenter");
            let worker = line
                .split("worker ")
                .nth(1)
                .unwrap()
                .split(' ')
                .next()
                .unwrap();
            (worker.parse().unwrap(), child)
        })
        .collect();
    let workers: BTreeSet<u64> = holders.iter().map(|(w, _)| *w).collect();
    assert_eq!(workers.len(), 32, "32 distinct pairs");

    let mut waiting = leasing(&namespace, count);
    let line = said(
        &mut waiting,
        "all 32 Snowflake worker pairs of the range are held",
    );
    assert!(line.contains("waiting"), "{line}");

    // Five killed with kill -9: their pairs go to the waiting process and four new ones,
    // each only after the guard time (TTL 2 s + 1 s) since the kill.
    let mut killed_at = std::collections::BTreeMap::new();
    let mut all_ids = Vec::new();
    for _ in 0..5 {
        let (worker, mut child) = holders.remove(0);
        child.kill().unwrap();
        killed_at.insert(worker, unix_ms());
        all_ids.extend(ids_of(child));
    }
    let mut reused = vec![waiting];
    reused.extend((0..4).map(|_| leasing(&namespace, count)));
    // Only the killed processes' pairs are free until the others' output is read.
    for child in &mut reused {
        said(child, "leased datacenter");
    }
    for (_, child) in holders {
        all_ids.extend(ids_of(child));
    }
    let mut first_after_kill = Vec::new();
    for child in reused {
        let ids = ids_of(child);
        assert_eq!(ids.len(), count as usize);
        let (worker, first_ms) = decode(ids[0]);
        let killed = killed_at
            .get(&worker)
            .copied()
            .expect("a killed process's pair");
        first_after_kill.push(first_ms.saturating_sub(killed));
        assert!(
            first_ms >= killed + 3_000,
            "worker {worker} reused {} ms after the kill, before its guard time",
            first_ms - killed
        );
        all_ids.extend(ids);
    }
    eprintln!("reused pairs issued their first id {first_after_kill:?} ms after the kill");
    let distinct: BTreeSet<u64> = all_ids.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        all_ids.len(),
        "0 duplicates among {} ids",
        all_ids.len()
    );
    assert!(all_ids.len() >= 32 * count as usize);
}

#[test]
fn a_guard_time_not_above_the_ttl_is_refused_before_any_pair_is_taken() {
    let namespace = unique("ids-guard");
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("--coord")
        .arg(format!("{}?namespace={namespace}&ttl=2s", coord_url()))
        .args(["id", "snowflake", "--workers", "0-1", "--guard", "2s"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--guard 2s is not above the coordination TTL (2s)"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "ids were printed");

    let dir = Scratch::new("ids_guard");
    let (config, _) = ids_leasing(&dir, &namespace, "a");
    let text = std::fs::read_to_string(&config).unwrap().replacen(
        "workers = \"0-1\" }",
        "workers = \"0-1\", guard = \"1s\" }",
        1,
    );
    std::fs::write(&config, text).unwrap();
    let out = sluice().output(&["run", config.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "ids.generators.orders.lease.guard: 1s is not above the coordination TTL (2s)"
        ),
        "{stderr}"
    );
    let pairs: Vec<String> = keys(&format!("{namespace}/"))
        .into_iter()
        .filter(|k| k.contains("ids-worker") || k.contains("ids/workers"))
        .collect();
    assert!(pairs.is_empty(), "a pair was taken: {pairs:?}");
}

/// A process whose `[ids]` generator leases its pair among the two of `namespace`, serving
/// `/ids/orders` on its API.
fn ids_leasing(dir: &Scratch, namespace: &str, node: &str) -> (std::path::PathBuf, SocketAddr) {
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = dir.write(
        &format!("{node}.toml"),
        &format!(
            r#"
            {coord}namespace = "{namespace}"
            [api]
            address = "{api}"
            [pipeline]
            data_dir = "{data}"
            [ids.generators.orders]
            type = "snowflake"
            lease = {{ datacenters = "0", workers = "0-1" }}
            [sources.gen]
            type = "generator"
            rate = 1
            [sinks.out]
            type = "blackhole"
            inputs = ["gen"]
            "#,
            coord = coord_section(node),
            data = dir.join(node).display(),
        ),
    );
    (config, api)
}

/// Ids from `GET /ids/orders?count=N`, read with curl.
fn served_ids(api: SocketAddr, count: u32) -> Vec<u64> {
    let out = Command::new("curl")
        .args(["-sf", &format!("http://{api}/ids/orders?count={count}")])
        .output()
        .unwrap();
    assert!(out.status.success(), "curl /ids/orders: {out:?}");
    let body: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    body["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap().parse().unwrap())
        .collect()
}

#[test]
fn ids_resources_lease_distinct_pairs_and_a_third_waits_for_a_killed_ones_guard_time() {
    let dir = Scratch::new("ids_resource_lease");
    let namespace = unique("ids-resource");
    let mut holders: Vec<(sluice_tests::Running, SocketAddr)> = ["a", "b"]
        .iter()
        .map(|node| {
            let (config, api) = ids_leasing(&dir, &namespace, node);
            let mut running = sluice().spawn(&config);
            running.wait_ready(api).unwrap();
            (running, api)
        })
        .collect();
    let mut all: Vec<u64> = Vec::new();
    let mut workers = BTreeSet::new();
    for (_, api) in &holders {
        let ids = served_ids(*api, 1000);
        workers.extend(ids.iter().map(|id| decode(*id).0));
        all.extend(ids);
    }
    assert_eq!(workers, BTreeSet::from([0, 1]), "one pair each");

    // A third finds both pairs held: it says so, is not ready, and issues nothing.
    let (config, api_c) = ids_leasing(&dir, &namespace, "c");
    let mut waiting = sluice().spawn(&config);
    wait_for("the third to say every pair is held", || {
        waiting
            .log()
            .contains("all 2 Snowflake worker pairs of the range are held")
            .then_some(())
    })
    .unwrap();
    assert!(!matches!(http_get(api_c, "/ready"), Ok((200, _))));
    let (status, _) = http_get(api_c, "/ids/orders?count=1").unwrap();
    assert_eq!(status, 503, "no pair, no id: {}", waiting.log());

    // kill -9 one: the third takes its pair, and issues only after the guard time.
    let (mut killed, killed_api) = holders.remove(0);
    let killed_worker = decode(served_ids(killed_api, 1)[0]).0;
    killed.signal("KILL");
    let killed_at = unix_ms();
    let _ = killed.wait();
    waiting.wait_ready(api_c).unwrap();
    let ids = served_ids(api_c, 1000);
    let (worker, first_ms) = decode(ids[0]);
    assert_eq!(worker, killed_worker, "the freed pair");
    assert!(
        first_ms >= killed_at + 3_000,
        "the reused pair issued {} ms after the kill, before its guard time (TTL 2 s + 1 s)",
        first_ms.saturating_sub(killed_at)
    );
    eprintln!(
        "the reused pair issued its first id {} ms after the kill",
        first_ms - killed_at
    );
    all.extend(ids);
    all.extend(served_ids(holders[0].1, 1000));
    let distinct: BTreeSet<u64> = all.iter().copied().collect();
    assert_eq!(distinct.len(), all.len(), "0 duplicates");
    for (mut running, _) in holders.into_iter().chain([(waiting, api_c)]) {
        running.signal("TERM");
        assert!(running.wait().unwrap().success(), "{}", running.log());
    }
}
