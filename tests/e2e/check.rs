//! `sluice check` against real servers over TLS: every problem is listed in one run, each with
//! its remedy, and the exit code is 1 when any check failed; a config whose servers are all
//! as required passes with 0.

use std::net::TcpListener;

use crate::sluice;
use sluice_tests::rabbitmq::credentials;
use sluice_tests::{Scratch, test_ca};

fn amqps(userinfo: &str, query: &str) -> String {
    format!(
        "amqps://{userinfo}@localhost:5671/%2f?cacertfile={}{query}",
        test_ca().display()
    )
}

/// Runs `sluice check` on `config`; returns the exit code and stdout.
fn check(dir: &Scratch, config: &str) -> (Option<i32>, String) {
    let path = dir.write("pipeline.toml", config);
    let out = sluice().output(&["check", path.to_str().unwrap()]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.is_empty() || !stderr.contains("error"),
        "check printed errors on stderr: {stderr}"
    );
    (out.status.code(), stdout)
}

#[test]
fn check_lists_every_problem_at_once() {
    let dir = Scratch::new("check-all");
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let (user, password) = credentials();
    let wrong = "wrong-secret-2718";
    let config = format!(
        r#"
[api]
address = "{busy}"

[pipeline]
data_dir = "/proc/sluice-check-data"

[sources.gen]
type = "generator"
count = 1

[sinks.login]
type = "rabbitmq"
inputs = ["gen"]
url = "{login}"

[sinks.routes]
type = "rabbitmq"
inputs = ["gen"]
url = "{routes}"
exchange = "sluice.check.missing"
quarantine_exchange = "amq.fanout"
"#,
        busy = busy.local_addr().unwrap(),
        login = amqps(&format!("{user}:{wrong}"), ""),
        routes = amqps(&format!("{user}:{password}"), ""),
    );
    let (code, stdout) = check(&dir, &config);
    assert_eq!(code, Some(1), "{stdout}");
    for expected in [
        "pipeline.data_dir: FAIL /proc is not writable",
        "is in use (is another sluice running?)",
        "sinks.login: FAIL cannot connect to amqps://guest@localhost:5671//",
        "sinks.routes: ok   connected to amqps://guest@localhost:5671// over TLS",
        "sinks.routes: FAIL exchange: exchange \"sluice.check.missing\" does not exist",
        "sinks.routes: ok   quarantine_exchange: exchange \"amq.fanout\" exists",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    assert_eq!(stdout.matches("FAIL").count(), 4, "{stdout}");
    assert!(!stdout.contains(wrong), "the password is shown:\n{stdout}");
    assert!(!stdout.contains(&password) || password == user, "{stdout}");
}

#[test]
fn check_passes_what_run_can_do() {
    let dir = Scratch::new("check-ok");
    let ca = test_ca();
    let config = format!(
        r#"
[pipeline]
data_dir = "{data}"

[sources.gen]
type = "generator"
count = 1

[sinks.broker]
type = "rabbitmq"
inputs = ["gen"]
url = "{url}"
exchange = "amq.topic"
"#,
        data = dir.join("data").display(),
        url = amqps(
            "",
            &format!(
                "&certfile={}&keyfile={}&auth_mechanism=external",
                ca.with_file_name("client.pem").display(),
                ca.with_file_name("client.key").display()
            )
        ),
    );
    let (code, stdout) = check(&dir, &config);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(
        stdout.contains("logged in by client certificate (EXTERNAL)"),
        "{stdout}"
    );
    assert!(stdout.contains("does not exist yet;"), "{stdout}");
    assert!(!dir.join("data").exists(), "check creates nothing");
}

#[test]
fn every_validation_problem_of_a_component_is_listed() {
    let dir = Scratch::new("check-validate");
    let config = r#"
[sources.outbox]
type = "postgres_cdc"
url = "postgres://u:s3c@r3t@localhost/db?sslmode=verify-full"
slot = "Bad-Slot"
publication = ""
tables = ["public.outbox"]

[sinks.broker]
type = "rabbitmq"
inputs = ["outbox"]
url = "amqps://localhost/%2f?hearbeat=5"
channels = 0
confirm_window = 0
"#;
    let path = dir.write("pipeline.toml", config);
    let out = sluice().output(&["check", path.to_str().unwrap()]);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for expected in [
        "sources.outbox.url: the URL's user name or password holds an unescaped '@' or '/'",
        "sources.outbox.slot:",
        "sources.outbox.publication: must not be empty",
        "sinks.broker.url: has an unknown query parameter \"hearbeat\"",
        "sinks.broker.confirm_window:",
        "sinks.broker.channels:",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    assert!(!stderr.contains("r3t"), "a password is shown:\n{stderr}");
}
