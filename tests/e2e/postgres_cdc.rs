//! `postgres_cdc` against the real PostgreSQL: every test owns a database, a publication and
//! a slot, runs the real binary and drops them afterwards.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::sluice;
use sluice_tests::{
    Running, Scratch, TestDb, database_tls_url, free_port, http_get, json_lines, metric, metrics,
    saved_checkpoint, wait_for,
};

const OUTBOX: &str = "
    CREATE TABLE outbox (
        id            uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
        aggregatetype text        NOT NULL,
        aggregateid   text        NOT NULL,
        type          text        NOT NULL,
        payload       jsonb       NOT NULL,
        created_at    timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE busy (id bigserial PRIMARY KEY, filler text);";

struct Cdc {
    db: TestDb,
    dir: Scratch,
    api: SocketAddr,
    config: PathBuf,
}

impl Cdc {
    fn new(test: &str, schema: &str, source_extra: &str) -> Self {
        Self::with_throttle(test, schema, source_extra, None)
    }

    /// With a `throttle` before the sink, so that events stay in flight for a while.
    fn with_throttle(test: &str, schema: &str, source_extra: &str, rate: Option<u64>) -> Self {
        let (sink_input, throttle) = match rate {
            Some(rate) => (
                "slow",
                format!(
                    "[transforms.slow]\ntype = \"throttle\"\ninputs = [\"events\"]\nrate = {rate}"
                ),
            ),
            None => ("events", String::new()),
        };
        let db = TestDb::create(test);
        db.execute(schema);
        let dir = Scratch::new(test);
        let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let data = dir.join("data");
        let config = dir.write(
            "pipeline.toml",
            &format!(
                r#"
                [api]
                address = "{api}"
                [pipeline]
                data_dir = "{data}"
                [sources.outbox]
                type = "postgres_cdc"
                url = "{url}"
                slot = "{slot}"
                publication = "{slot}"
                status_interval = "100ms"
                lag_interval = "200ms"
                {source_extra}
                [transforms.events]
                type = "outbox"
                inputs = ["outbox"]
                {throttle}
                [sinks.out]
                type = "file"
                inputs = ["{sink_input}"]
                path = "{data}/out.jsonl"
                "#,
                url = db.url,
                slot = db.name,
                data = data.display(),
            ),
        );
        Cdc {
            db,
            dir,
            api,
            config,
        }
    }

    fn start(&self) -> Running {
        let mut running = sluice().spawn(&self.config);
        running
            .wait_ready(self.api)
            .unwrap_or_else(|e| panic!("{e}"));
        running
    }

    fn out(&self) -> PathBuf {
        self.dir.join("data/out.jsonl")
    }

    fn quarantine(&self) -> PathBuf {
        self.dir.join("data/quarantine.jsonl")
    }

    /// Inserts `transactions` transactions of `per_transaction` rows, aggregates `agg-0..n`,
    /// with a global sequence number in the payload.
    fn insert(&self, transactions: usize, per_transaction: usize, first: usize) {
        let mut sql = String::new();
        for t in 0..transactions {
            sql.push_str("BEGIN;");
            for r in 0..per_transaction {
                let seq = first + t * per_transaction + r;
                sql.push_str(&format!(
                    "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('order', 'agg-{}', 'OrderCreated', '{{\"seq\": {seq}}}');",
                    seq % 50
                ));
            }
            sql.push_str("COMMIT;");
        }
        self.db.execute(&sql);
    }

    fn ids_in_table(&self) -> BTreeSet<String> {
        self.db
            .query("SELECT id::text FROM outbox")
            .into_iter()
            .map(|r| r[0].clone().unwrap())
            .collect()
    }

    fn slot_lag(&self) -> i64 {
        self.db
            .value(&format!(
                "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint FROM pg_replication_slots WHERE slot_name = '{}'",
                self.db.name
            ))
            .unwrap()
            .parse()
            .unwrap()
    }
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    json_lines(path)
}

fn seqs(lines: &[serde_json::Value]) -> Vec<u64> {
    lines
        .iter()
        .map(|l| l["payload"]["seq"].as_u64().unwrap())
        .collect()
}

fn wait_for_lines(path: &Path, n: usize, running: &Running) -> Vec<serde_json::Value> {
    wait_for(&format!("{n} lines in {}", path.display()), || {
        let l = lines(path);
        (l.len() >= n).then_some(l)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", running.log()))
}

#[test]
fn ten_thousand_rows_in_a_thousand_transactions_arrive_once_in_commit_order() {
    let cdc = Cdc::new("cdc_order", OUTBOX, "");
    let mut running = cdc.start();
    cdc.insert(1000, 10, 0);
    let out = wait_for_lines(&cdc.out(), 10_000, &running);
    assert_eq!(
        seqs(&out),
        (0..10_000).collect::<Vec<_>>(),
        "commit order, each once"
    );
    let ids: BTreeSet<String> = out
        .iter()
        .map(|l| l["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, cdc.ids_in_table(), "event id = outbox id");
    let first = &out[0];
    assert_eq!(first["key"], "agg-0");
    assert_eq!(first["type"], "OrderCreated");
    assert_eq!(first["fields"]["aggregatetype"], "order");
    // The slot follows delivery: once everything is written, it is confirmed past it.
    wait_for("the slot to be confirmed past the last commit", || {
        (cdc.slot_lag() < 64 * 1024).then_some(())
    })
    .unwrap();
    let m = metrics(cdc.api).unwrap();
    assert_eq!(
        metric(
            &m,
            "sluice_postgres_cdc_events_total",
            &[("component_id", "outbox")]
        ),
        Some(10_000.0)
    );
    assert!(
        metric(
            &m,
            "sluice_postgres_cdc_transactions_total",
            &[("component_id", "outbox")]
        )
        .unwrap()
            >= 1000.0
    );
    running.signal("TERM");
    assert!(running.wait().unwrap().success(), "{}", running.log());
    assert_eq!(
        lines(&cdc.out()).len(),
        10_000,
        "nothing more after the drain"
    );
}

#[test]
fn kill_dash_nine_mid_stream_loses_nothing() {
    // The throttle keeps thousands of events read but not yet delivered at the kill: a slot
    // confirmed ahead of delivery would lose them.
    let cdc = Cdc::with_throttle("cdc_kill", OUTBOX, "max_batch_events = 64", Some(3000));
    let mut running = cdc.start();
    std::thread::scope(|scope| {
        let writer = scope.spawn(|| cdc.insert(1000, 10, 0));
        wait_for_lines(&cdc.out(), 2000, &running);
        running.signal("KILL");
        running.wait().unwrap();
        writer.join().unwrap();
    });
    let mut running = cdc.start();
    let ids = cdc.ids_in_table();
    assert_eq!(ids.len(), 10_000);
    let delivered = wait_for("every id delivered after the restart", || {
        let seen: BTreeSet<String> = lines(&cdc.out())
            .iter()
            .map(|l| l["id"].as_str().unwrap().to_owned())
            .collect();
        (seen.len() == ids.len()).then_some(seen)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", running.log()));
    assert_eq!(delivered, ids);
    // Per aggregate, the first delivery of each event follows commit order.
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    let mut first_seen = BTreeSet::new();
    for line in lines(&cdc.out()) {
        if !first_seen.insert(line["id"].as_str().unwrap().to_owned()) {
            continue;
        }
        let key = line["key"].as_str().unwrap().to_owned();
        let seq = line["payload"]["seq"].as_u64().unwrap();
        if let Some(previous) = last.insert(key.clone(), seq) {
            assert!(previous < seq, "{key}: {seq} after {previous}");
        }
    }
    running.signal("TERM");
    assert!(running.wait().unwrap().success());
}

#[test]
fn a_quiet_outbox_does_not_hold_wal_while_other_tables_are_busy() {
    let cdc = Cdc::new("cdc_idle", OUTBOX, "");
    let mut running = cdc.start();
    cdc.insert(1, 1, 0);
    wait_for_lines(&cdc.out(), 1, &running);
    // About 40 MiB of WAL on a table the publication does not include.
    for _ in 0..20 {
        cdc.db.execute("INSERT INTO busy (filler) SELECT repeat(md5(g::text), 32) FROM generate_series(1, 2000) g");
    }
    wait_for("the slot to follow the busy table's WAL", || {
        (cdc.slot_lag() < 1024 * 1024).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: lag {} bytes\n{}", cdc.slot_lag(), running.log()));
    wait_for("the lag metric to see it", || {
        let m = metrics(cdc.api).ok()?;
        (metric(
            &m,
            "sluice_postgres_cdc_replication_lag_bytes",
            &[("component_id", "outbox")],
        )? < 1024.0 * 1024.0)
            .then_some(())
    })
    .unwrap();
    running.signal("TERM");
    assert!(running.wait().unwrap().success());
}

#[test]
fn a_slot_dropped_while_stopped_is_an_error_then_replay_recovers() {
    let cdc = Cdc::new("cdc_lost", OUTBOX, "");
    let mut running = cdc.start();
    cdc.insert(10, 10, 0);
    wait_for_lines(&cdc.out(), 100, &running);
    running.signal("TERM");
    assert!(running.wait().unwrap().success());

    cdc.db.execute(&format!(
        "SELECT pg_drop_replication_slot('{}')",
        cdc.db.name
    ));
    cdc.insert(10, 10, 100); // committed while no slot existed
    let mut failed = sluice().spawn(&cdc.config);
    let status = failed.wait().unwrap();
    let log = failed.log();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("is missing although this publication was feeding it")
            && log.contains("recover = \"replay\""),
        "{log}"
    );

    let replaying = std::fs::read_to_string(&cdc.config)
        .unwrap()
        .replace("status_interval", "recover = \"replay\"\nstatus_interval");
    std::fs::write(&cdc.config, replaying).unwrap();
    let mut running = cdc.start();
    cdc.insert(10, 10, 200); // after the recovery, streamed
    let seen = wait_for("every row delivered", || {
        let seen: BTreeSet<u64> = seqs(&lines(&cdc.out())).into_iter().collect();
        (seen.len() == 300).then_some(seen)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", running.log()));
    assert_eq!(seen, (0..300).collect());
    assert!(
        running.log().contains("replayed the outbox tables"),
        "{}",
        running.log()
    );
    running.signal("TERM");
    assert!(running.wait().unwrap().success());
    // Once delivered, a restart does not replay again.
    let mut again = cdc.start();
    again.signal("TERM");
    assert!(again.wait().unwrap().success());
    assert!(!again.log().contains("replayed"), "{}", again.log());
}

#[test]
fn bad_rows_are_quarantined_with_reasons_and_counted() {
    let schema = "
        CREATE TABLE outbox (
            id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            aggregatetype text,
            aggregateid   text,
            type          text,
            payload       text,
            note          text
        );
        ALTER TABLE outbox ALTER COLUMN payload SET STORAGE EXTERNAL;";
    let cdc = Cdc::new("cdc_bad", schema, r#"operations = ["insert", "update"]"#);
    let mut running = cdc.start();
    let big = "repeat(md5(random()::text), 400)"; // ~12 KiB, stored out of line
    cdc.db.execute(&format!(
        "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('order', NULL, 'A', '{{}}');
         INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('order', 'x', 'B', 'not json');
         INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('order', 'x', 'C', '{{\"ok\": 1}}');
         INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('order', 'y', 'D', '\"' || {big} || '\"');
         UPDATE outbox SET note = 'touched' WHERE type = 'D';
         INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('order', 'z', 'E', '{{\"ok\": 2}}');"
    ));
    let out = wait_for_lines(&cdc.out(), 3, &running);
    let quarantined = wait_for_lines(&cdc.quarantine(), 3, &running);
    let types: Vec<&str> = out.iter().map(|l| l["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["C", "D", "E"], "the good rows flow on, in order");
    let reasons: Vec<String> = quarantined
        .iter()
        .map(|l| {
            l["headers"]["sluice.quarantine.reason"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r == "outbox column \"aggregateid\" is NULL"),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("outbox column \"payload\" is not JSON")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("column payload arrived as an unchanged TOAST value")),
        "{reasons:?}"
    );
    let m = metrics(cdc.api).unwrap();
    assert_eq!(
        metric(
            &m,
            "sluice_component_quarantined_events_total",
            &[("component_id", "events")]
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &m,
            "sluice_component_quarantined_events_total",
            &[("component_id", "outbox")]
        ),
        Some(1.0)
    );
    running.signal("TERM");
    assert!(running.wait().unwrap().success());
}

#[test]
fn check_reports_what_the_server_lacks_with_remedies() {
    let cdc = Cdc::new(
        "cdc_check",
        "CREATE TABLE unrelated (x int)",
        "create = false",
    );
    let config = cdc.config.to_str().unwrap();
    let out = sluice().output(&["check", config]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1), "{text}");
    for expected in [
        "sources.outbox: ok   wal_level is logical",
        "sources.outbox: ok   role postgres may replicate",
        &format!(
            "sources.outbox: FAIL publication {} does not exist: run `CREATE PUBLICATION",
            cdc.db.name
        ),
        &format!(
            "sources.outbox: FAIL slot {} does not exist: run `SELECT pg_create_logical_replication_slot('{}', 'pgoutput')`",
            cdc.db.name, cdc.db.name
        ),
        "sources.outbox: FAIL table public.outbox does not exist",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }

    // A role without REPLICATION is told how to get it.
    let role = format!("{}_role", cdc.db.name);
    cdc.db.execute(&format!("CREATE ROLE {role} LOGIN"));
    let as_role = std::fs::read_to_string(&cdc.config)
        .unwrap()
        .replace("postgres://postgres@", &format!("postgres://{role}@"));
    let path = cdc.dir.write("as_role.toml", &as_role);
    let out = sluice().output(&["check", path.to_str().unwrap()]);
    let text = String::from_utf8(out.stdout).unwrap();
    cdc.db.execute(&format!("DROP ROLE {role}"));
    assert!(
        text.contains(&format!("FAIL role {role} lacks the REPLICATION attribute: run `ALTER ROLE \"{role}\" REPLICATION`")),
        "{text}"
    );

    // With the table in place and create = true, the rest is only what sluice will create.
    cdc.db.execute(OUTBOX);
    let creating = std::fs::read_to_string(&cdc.config)
        .unwrap()
        .replace("create = false", "create = true");
    let path = cdc.dir.write("creating.toml", &creating);
    let out = sluice().output(&["check", path.to_str().unwrap()]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("sources.outbox: ok   table public.outbox: id uuid, aggregatetype text"),
        "{text}"
    );
}

#[test]
fn the_relay_runs_over_verified_tls_with_scram_and_a_missing_ca_file_starts_nothing() {
    let cdc = Cdc::new("cdc_tls", OUTBOX, "");
    let (url, password) = database_tls_url(&cdc.db.name);
    let plain = std::fs::read_to_string(&cdc.config).unwrap();
    let over_tls = plain.replacen(
        &format!("url = \"{}\"", cdc.db.url),
        &format!("url = \"{url}\""),
        1,
    );
    assert_ne!(over_tls, plain);
    std::fs::write(&cdc.config, &over_tls).unwrap();

    let out = sluice().output(&["check", cdc.config.to_str().unwrap()]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("sources.outbox: ok   role sluice_scram may replicate"),
        "{text}"
    );
    assert!(
        !text.contains(&password),
        "check shows the password:\n{text}"
    );

    let mut running = cdc.start();
    cdc.insert(10, 10, 0);
    let out = wait_for_lines(&cdc.out(), 100, &running);
    assert_eq!(
        seqs(&out),
        (0..100).collect::<Vec<_>>(),
        "commit order, each once"
    );
    // Every session sluice holds on this database, the replication one included, is encrypted.
    let sessions = cdc.db.query(&format!(
        "SELECT a.backend_type, s.ssl::text FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
         WHERE a.application_name = 'sluice' AND a.datname = '{}'",
        cdc.db.name
    ));
    assert!(
        sessions
            .iter()
            .any(|r| r[0].as_deref() == Some("walsender")),
        "{sessions:?}"
    );
    assert!(
        sessions.iter().all(|r| r[1].as_deref() == Some("true")),
        "{sessions:?}"
    );
    running.signal("TERM");
    assert!(running.wait().unwrap().success(), "{}", running.log());
    assert!(
        !running.log().contains(&password),
        "the log shows the password"
    );

    // A CA file that is not there: check names the parameter, run starts nothing.
    let ca = std::env::var("SLUICE_TEST_CA").expect("SLUICE_TEST_CA is set");
    let missing = over_tls.replacen(
        &format!("sslrootcert={ca}"),
        "sslrootcert=/nonexistent/ca.pem",
        1,
    );
    assert_ne!(missing, over_tls);
    std::fs::remove_dir_all(cdc.dir.join("data")).unwrap();
    let path = cdc.dir.write("missing-ca.toml", &missing);
    let out = sluice().output(&["check", path.to_str().unwrap()]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("sources.outbox: FAIL cannot connect:")
            && text.contains("sslrootcert=/nonexistent/ca.pem: cannot read the file"),
        "{text}"
    );
    let mut running = sluice().spawn(&path);
    let status = running.wait().unwrap();
    let log = running.log();
    assert!(!status.success(), "{log}");
    assert!(
        log.contains("sslrootcert=/nonexistent/ca.pem: cannot read the file"),
        "{log}"
    );
    assert!(
        !log.contains(&password),
        "the log shows the password:\n{log}"
    );
    assert!(lines(&cdc.out()).is_empty(), "nothing delivered");
    assert_eq!(saved_checkpoint(&cdc.dir.join("data"), "outbox"), None);
}

#[test]
fn cleanup_deletes_rows_confirmed_delivered_past_the_retention() {
    let cdc = Cdc::new(
        "cdc_cleanup",
        OUTBOX,
        "[sources.outbox.cleanup]\nretention = \"1s\"\ninterval = \"100ms\"",
    );
    let mut running = cdc.start();
    // Rows written "ten seconds ago" (as if the relay had been down), then delivered now.
    cdc.db.execute(
        "INSERT INTO outbox (aggregatetype, aggregateid, type, payload, created_at)
         SELECT 'order', 'a', 'Old', jsonb_build_object('seq', g), now() - interval '10 seconds'
         FROM generate_series(1, 10) g",
    );
    wait_for_lines(&cdc.out(), 10, &running);
    wait_for("the delivered old rows to be deleted", || {
        (cdc.db.value("SELECT count(*) FROM outbox").as_deref() == Some("0")).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", running.log()));
    cdc.insert(1, 5, 100);
    wait_for_lines(&cdc.out(), 15, &running);
    let m = metrics(cdc.api).unwrap();
    assert_eq!(
        metric(
            &m,
            "sluice_postgres_cleanup_deleted_rows_total",
            &[("component_id", "outbox")]
        ),
        Some(10.0)
    );
    assert_eq!(
        cdc.db.value("SELECT count(*) FROM outbox").as_deref(),
        Some("5"),
        "rows within the retention stay"
    );
    running.signal("TERM");
    assert!(running.wait().unwrap().success());
}

#[test]
fn table_less_outbox_messages_become_events() {
    let cdc = Cdc::new("cdc_messages", OUTBOX, "message_prefixes = [\"outbox\"]");
    let config = std::fs::read_to_string(&cdc.config).unwrap().replace(
        "inputs = [\"outbox\"]",
        "inputs = [\"outbox\"]\nmessage_prefix = \"outbox\"",
    );
    std::fs::write(&cdc.config, config).unwrap();
    let mut running = cdc.start();
    cdc.db.execute(
        r#"BEGIN;
           SELECT pg_logical_emit_message(true, 'outbox', '{"id": "m-1", "aggregatetype": "order", "aggregateid": "7", "type": "OrderPaid", "payload": {"seq": 1}}');
           SELECT pg_logical_emit_message(true, 'elsewhere', 'ignored');
           INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('order', '7', 'OrderShipped', '{"seq": 2}');
           COMMIT;"#,
    );
    let out = wait_for_lines(&cdc.out(), 2, &running);
    assert_eq!(out[0]["id"], "m-1");
    assert_eq!(out[0]["type"], "OrderPaid");
    assert_eq!(out[0]["key"], "7");
    assert_eq!(out[1]["type"], "OrderShipped");
    assert_eq!(
        out[0]["position"], out[1]["position"],
        "one transaction, one position"
    );
    running.signal("TERM");
    assert!(running.wait().unwrap().success());
}

#[test]
fn heartbeats_move_the_slot_of_an_idle_database() {
    let confirmed = |cdc: &Cdc| {
        let m = metrics(cdc.api).ok()?;
        metric(
            &m,
            "sluice_postgres_cdc_confirmed_lsn",
            &[("component_id", "outbox")],
        )
    };
    let cdc = Cdc::new("cdc_heartbeat", OUTBOX, "heartbeat = \"100ms\"");
    let mut running = cdc.start();
    let first = wait_for("a first confirmation", || confirmed(&cdc)).unwrap();
    // Nothing writes to this database: the heartbeats do, and the slot follows them.
    wait_for("heartbeats written and confirmed", || {
        let m = metrics(cdc.api).ok()?;
        let beats = metric(
            &m,
            "sluice_postgres_cdc_heartbeats_total",
            &[("component_id", "outbox")],
        )?;
        (beats >= 3.0 && confirmed(&cdc)? > first).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", running.log()));
    running.signal("TERM");
    assert!(running.wait().unwrap().success());
}

#[test]
fn lag_in_seconds_grows_behind_a_slow_sink_and_heartbeats_keep_it_small_when_quiet() {
    let lag = |cdc: &Cdc| {
        let m = metrics(cdc.api).ok()?;
        let of = |name| metric(&m, name, &[("component_id", "outbox")]);
        Some((
            of("sluice_postgres_cdc_replication_lag_seconds")?,
            of("sluice_postgres_cdc_heartbeats_total")?,
        ))
    };
    let cdc = Cdc::with_throttle("cdc_lag_seconds", OUTBOX, "heartbeat = \"200ms\"", Some(4));
    let mut running = cdc.start();
    cdc.insert(20, 1, 0);
    // Four events a second: the last of the twenty waits about five seconds, and the lag is
    // the age of the oldest one not yet delivered.
    wait_for("the lag to grow behind the slow sink", || {
        lag(&cdc).filter(|(seconds, _)| *seconds >= 2.0)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", running.log()));
    wait_for_lines(&cdc.out(), 20, &running);
    // Quiet from now on: without the heartbeats' times the lag would grow from the last
    // commit; with them it stays below about one heartbeat plus one confirmation.
    let (_, beats_when_drained) = lag(&cdc).unwrap();
    let mut samples = 0;
    wait_for("three seconds of quiet, each sample small", || {
        let (seconds, beats) = lag(&cdc)?;
        if beats >= beats_when_drained + 1.0 {
            assert!(
                seconds < 1.5,
                "lag {seconds}s on a quiet outbox after {beats} heartbeats"
            );
            samples += 1;
        }
        (beats >= beats_when_drained + 15.0).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", running.log()));
    assert!(samples >= 3, "only {samples} samples");
    let (_, status) = http_get(cdc.api, "/status").unwrap();
    assert!(status.contains("\"lag_seconds\""), "{status}");
    running.signal("TERM");
    assert!(running.wait().unwrap().success());
}
