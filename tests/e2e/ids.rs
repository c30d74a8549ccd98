//! Unique ids through the binary: the `sluice id` verbs, `GET /ids/{generator}` read with
//! curl, the `id` transform, `sluice check`'s dates and SQL, and a killed process.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::sluice;
use sluice_tests::{Running, Scratch, TestDb, free_port, json_lines, wait_for};

fn stdout_lines(args: &[&str]) -> Vec<String> {
    let out = sluice().output(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn snowflake_prints_count_ids_one_per_line_and_runs_in_a_row_never_repeat() {
    let args = [
        "id",
        "snowflake",
        "--datacenter",
        "3",
        "--worker",
        "9",
        "--count",
        "20000",
    ];
    let first = stdout_lines(&args);
    let second = stdout_lines(&args);
    assert_eq!((first.len(), second.len()), (20000, 20000));
    let numbers: Vec<u64> = first
        .iter()
        .chain(&second)
        .map(|l| l.parse().unwrap())
        .collect();
    assert!(
        numbers.windows(2).all(|w| w[0] < w[1]),
        "ids increase, across the two runs too"
    );
    let decoded = stdout_lines(&["id", "decode", &first[0]]);
    let value: serde_json::Value = serde_json::from_str(&decoded[0]).unwrap();
    assert_eq!(
        (value["datacenter"].as_u64(), value["worker"].as_u64()),
        (Some(3), Some(9))
    );
}

#[test]
fn decode_prints_the_parts_as_one_json_object() {
    // 1 s after the default epoch, datacenter 1, worker 2, sequence 3.
    let id = ((1000u64 << 23) | (1 << 18) | (2 << 13) | 3).to_string();
    assert_eq!(
        stdout_lines(&["id", "decode", &id]),
        [
            r#"{"timestamp_ms":1704067201000,"time":"2024-01-01T00:00:01.000Z","datacenter":1,"worker":2,"sequence":3}"#
        ]
    );
    // Twitter's layout and epoch: the same parts read differently.
    let twitter = ((1000u64 << 22) | (1 << 17) | (2 << 12) | 3).to_string();
    assert_eq!(
        stdout_lines(&[
            "id",
            "decode",
            &twitter,
            "--epoch",
            "1288834974657",
            "--layout",
            "41/5/5/12"
        ]),
        [
            r#"{"timestamp_ms":1288834975657,"time":"2010-11-04T01:42:55.657Z","datacenter":1,"worker":2,"sequence":3}"#
        ]
    );
}

#[test]
fn uuid4_uuid7_and_ulid_print_count_ids() {
    let v4 = stdout_lines(&["id", "uuid4", "--count", "50"]);
    assert_eq!(v4.len(), 50);
    assert!(v4.iter().all(|u| u.len() == 36 && u.as_bytes()[14] == b'4'));
    assert_eq!(v4.iter().collect::<HashSet<_>>().len(), 50);
    let v7 = stdout_lines(&["id", "uuid7", "--count", "5000"]);
    assert!(v7.iter().all(|u| u.len() == 36 && u.as_bytes()[14] == b'7'));
    assert!(v7.windows(2).all(|w| w[0] < w[1]), "v7 ids increase");
    let ulids = stdout_lines(&["id", "ulid", "--count", "5000"]);
    assert!(ulids.iter().all(|u| u.len() == 26));
    assert!(ulids.windows(2).all(|w| w[0] < w[1]), "ULIDs increase");
}

#[test]
fn bad_input_is_refused_with_the_rule_and_prints_no_id() {
    for (args, reason) in [
        (
            vec!["id", "snowflake", "--datacenter", "1", "--worker", "32"],
            "worker 32 is out of range: the 5-bit field holds 0 to 31",
        ),
        (
            vec![
                "id",
                "snowflake",
                "--datacenter",
                "1",
                "--worker",
                "1",
                "--layout",
                "42/5/5/13",
            ],
            "the fields add up to 65 bits",
        ),
        (
            vec![
                "id",
                "snowflake",
                "--datacenter",
                "1",
                "--worker",
                "1",
                "--layout",
                "41/0/10/12",
            ],
            "every field needs at least 1 bit",
        ),
        (
            vec![
                "id",
                "snowflake",
                "--datacenter",
                "1",
                "--worker",
                "1",
                "--epoch",
                "2999-01-01T00:00:00Z",
            ],
            "is in the future",
        ),
        (vec!["id", "decode", "12x"], "is not a Snowflake id"),
        (
            vec![
                "id",
                "decode",
                "18446744073709551615",
                "--layout",
                "41/5/5/12",
            ],
            "has bits set above the layout's 63 bits",
        ),
    ] {
        let out = sluice().output(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(reason), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?} printed ids");
    }
}

/// `curl -s URL` → (status, body): a client nobody here wrote.
fn curl(address: SocketAddr, path: &str) -> (u16, serde_json::Value) {
    let out = Command::new("curl")
        .args([
            "-s",
            "-w",
            "\n%{http_code}",
            &format!("http://{address}{path}"),
        ])
        .output()
        .expect("curl runs");
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, status) = text.rsplit_once('\n').unwrap();
    (
        status.parse().unwrap(),
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{path}: {e}: {body:?}")),
    )
}

fn strings(value: &serde_json::Value) -> Vec<String> {
    value["ids"]
        .as_array()
        .unwrap_or_else(|| panic!("no ids in {value}"))
        .iter()
        .map(|v| v.as_str().expect("every id is a JSON string").to_owned())
        .collect()
}

/// A pipeline with an API, an `[ids]` section (Snowflake, UUIDv7 and a sequence with `block`
/// on `db`) and a slow endless generator numbered by the `id` transform into a file.
fn ids_pipeline(dir: &Scratch, db: &TestDb, block: u64) -> (PathBuf, SocketAddr) {
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = dir.write(
        "ids.toml",
        &format!(
            r#"
            [api]
            address = "{api}"
            [pipeline]
            data_dir = "{data}"
            [ids]
            max_count = 500
            [ids.generators.orders]
            type = "snowflake"
            datacenter = 2
            worker = "${{SLUICE_TEST_WORKER:-5}}"
            [ids.generators.events]
            type = "uuid7"
            [ids.generators.tickets]
            type = "postgres_sequence"
            url = "{url}"
            sequence = "ticket_ids"
            node = 1
            nodes = 1
            block = {block}
            [sources.gen]
            type = "generator"
            rate = 200
            [transforms.number]
            type = "id"
            inputs = ["gen"]
            generator = "orders"
            target = "headers.order-id"
            [sinks.out]
            type = "file"
            inputs = ["number"]
            path = "{out}"
            "#,
            data = dir.join("data").display(),
            url = db.url,
            out = dir.join("out.jsonl").display(),
        ),
    );
    (config, api)
}

fn start(config: &Path, api: SocketAddr) -> Running {
    let mut running = sluice().spawn(config);
    running.wait_ready(api).unwrap();
    running
}

#[test]
fn the_endpoint_serves_ids_as_json_strings_and_refuses_bad_input_without_issuing() {
    let dir = Scratch::new("ids_http");
    let db = TestDb::create("ids_http");
    let (config, api) = ids_pipeline(&dir, &db, 1);
    let mut running = start(&config, api);

    let (status, body) = curl(api, "/ids/orders?count=500");
    assert_eq!(status, 200, "{body}");
    let snowflakes: Vec<u64> = strings(&body).iter().map(|s| s.parse().unwrap()).collect();
    assert_eq!(snowflakes.len(), 500);
    assert!(snowflakes.windows(2).all(|w| w[0] < w[1]));
    let (status, body) = curl(api, "/ids/events");
    assert_eq!((status, strings(&body).len()), (200, 1));

    // The sequence shows that a refused request issues nothing: its numbers run on.
    assert_eq!(
        strings(&curl(api, "/ids/tickets?count=3").1),
        ["1", "2", "3"]
    );
    for (path, status, reason) in [
        (
            "/ids/tickets?count=501",
            400,
            "`count` must be between 1 and 500, got 501",
        ),
        (
            "/ids/tickets?count=0",
            400,
            "`count` must be between 1 and 500, got 0",
        ),
        (
            "/ids/tickets?count=many",
            400,
            "`count` must be a whole number",
        ),
        ("/ids/tickets?size=2", 400, "unknown parameter \"size\""),
        (
            "/ids/nothing?count=1",
            404,
            "no generator \"nothing\" (configured: events, orders, tickets)",
        ),
    ] {
        let (got, body) = curl(api, path);
        assert_eq!(got, status, "{path}: {body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(error.starts_with(reason), "{path}: {error}");
    }
    assert_eq!(strings(&curl(api, "/ids/tickets?count=1").1), ["4"]);

    // The `id` transform numbered the generated events with the same generator, in order and
    // never with an id the endpoint handed out.
    let numbered = wait_for("numbered events in the file", || {
        let lines = json_lines(&dir.join("out.jsonl"));
        (lines.len() >= 20).then_some(lines)
    })
    .unwrap();
    let from_transform: Vec<u64> = numbered
        .iter()
        .map(|e| e["headers"]["order-id"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(from_transform.windows(2).all(|w| w[0] < w[1]));
    let served: HashSet<_> = snowflakes.iter().collect();
    assert!(from_transform.iter().all(|id| !served.contains(id)));

    running.signal("TERM");
    assert!(running.wait().unwrap().success(), "{}", running.log());
}

#[test]
fn a_killed_process_leaves_gaps_in_sequence_ids_never_repeats() {
    let dir = Scratch::new("ids_kill");
    let db = TestDb::create("ids_kill");
    let (config, api) = ids_pipeline(&dir, &db, 100);
    let mut running = start(&config, api);
    let before = strings(&curl(api, "/ids/tickets?count=30").1);
    assert_eq!(before.first().map(String::as_str), Some("1"));
    running.signal("KILL");
    let _ = running.wait();
    let mut again = start(&config, api);
    let after = strings(&curl(api, "/ids/tickets?count=30").1);
    // The dead process's block (1-100) is not handed out again: 31-100 are a gap.
    assert_eq!(after.first().map(String::as_str), Some("101"));
    again.signal("TERM");
    assert!(again.wait().unwrap().success(), "{}", again.log());
}

#[test]
fn check_prints_the_layouts_dates_and_the_sequences_sql() {
    let dir = Scratch::new("ids_check");
    let db = TestDb::create("ids_check");
    let (config, _) = ids_pipeline(&dir, &db, 1000);
    let out = sluice().output(&["check", config.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "ids: ok   generators.orders: snowflake 41/5/5/13",
        "until 2058-11-03T19:53:47.776Z",
        "runs out on 2093-09-06T15:47:35.552Z",
        "generators.tickets: sequence ticket_ids does not exist yet; sluice creates it on start with: CREATE SEQUENCE IF NOT EXISTS ticket_ids AS bigint INCREMENT BY 1000 START WITH 1 MINVALUE 1 NO CYCLE",
    ] {
        assert!(text.contains(expected), "check lacks {expected:?}:\n{text}");
    }
    // A 63-bit layout is one setting away.
    let text63 = std::fs::read_to_string(&config).unwrap().replace(
        "worker = \"${SLUICE_TEST_WORKER:-5}\"",
        "worker = 5\n            sequence_bits = 12",
    );
    let config63 = dir.write("ids63.toml", &text63);
    let out = sluice().output(&["check", config63.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("snowflake 41/5/5/12")
            && text.contains("ids use 63 bits, so they always fit a signed 64-bit integer"),
        "{text}"
    );
}

#[test]
fn an_invalid_ids_section_is_refused_with_the_field() {
    let dir = Scratch::new("ids_invalid");
    for (settings, expected) in [
        (
            "type = \"snowflake\"\ndatacenter = 1\nworker = 40",
            "ids.generators.bad.worker: worker 40 is out of range: the 5-bit field holds 0 to 31",
        ),
        (
            "type = \"snowflake\"\ndatacenter = 1\nworker = 1\nepoch = \"2999-01-01T00:00:00Z\"",
            "ids.generators.bad.epoch: 2999-01-01T00:00:00.000Z is in the future",
        ),
        (
            "type = \"snowflake\"\ndatacenter = 1\nworker = 1\ndatacenter_bits = 0",
            "ids.generators.bad: every field needs at least 1 bit, and `datacenter_bits` is 0",
        ),
    ] {
        let config = dir.write(
            "bad.toml",
            &format!(
                "[ids.generators.bad]\n{settings}\n[sources.gen]\ntype = \"generator\"\ncount = 1\n[transforms.n]\ntype = \"id\"\ninputs = [\"gen\"]\ngenerator = \"bad\"\n[sinks.out]\ntype = \"blackhole\"\ninputs = [\"n\"]\n"
            ),
        );
        let out = sluice().output(&["check", "--offline", config.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
    }
    // A transform naming a generator the section lacks is refused before anything runs.
    let config = dir.write(
        "missing.toml",
        "[ids.generators.a]\ntype = \"ulid\"\n[sources.gen]\ntype = \"generator\"\ncount = 1\n[transforms.n]\ntype = \"id\"\ninputs = [\"gen\"]\ngenerator = \"b\"\n[sinks.out]\ntype = \"blackhole\"\ninputs = [\"n\"]\n",
    );
    let out = sluice().output(&["check", "--offline", config.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("transforms.n: no generator \"b\" in [ids.generators] (configured: a)"),
        "{stderr}"
    );
}
