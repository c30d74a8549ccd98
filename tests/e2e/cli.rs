//! The command line itself: help, version, check, log formats.

use crate::sluice;
use sluice_tests::Scratch;

#[test]
fn help_shows_commands_and_examples() {
    let out = sluice().output(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for expected in [
        "run",
        "check",
        "Examples:",
        "sluice run examples/generator.toml",
        "--log-format",
    ] {
        assert!(
            text.contains(expected),
            "--help lacks {expected:?}:\n{text}"
        );
    }
}

#[test]
fn version_names_the_package_version() {
    let out = sluice().output(&["--version"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        format!("sluice {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn check_accepts_the_shipped_examples() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut checked = 0;
    for entry in std::fs::read_dir(root.join("examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") && !path.ends_with("Cargo.toml") {
            // The variables examples/gateway.toml reads without a default.
            let out = std::process::Command::new(&sluice().0)
                .args(["check", "--offline", path.to_str().unwrap()])
                .env("PRODUCTS_URL", "http://127.0.0.1:3001")
                .env("ORDERS_URL", "http://127.0.0.1:3002")
                .env("JWT_SECRET", "an-example-secret-of-32-bytes!!!")
                .env("REDIS_URL", "redis://127.0.0.1:6379")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    assert!(checked > 0, "no example configs found");
}

#[test]
fn json_log_format_writes_one_object_per_line() {
    let dir = Scratch::new("jsonlog");
    let config = dir.write(
        "p.toml",
        &format!(
            r#"
            [pipeline]
            data_dir = "{}"
            [sources.gen]
            type = "generator"
            count = 10
            [sinks.out]
            type = "blackhole"
            inputs = ["gen"]
            "#,
            dir.join("data").display()
        ),
    );
    let mut running = sluice().spawn_with(&config, &["--log-format", "json"]);
    assert!(running.wait().unwrap().success());
    let log = running.log();
    let mut lines = 0;
    for line in log.lines() {
        let value: serde_json::Value = serde_json::from_str(line).expect("a JSON log line");
        assert!(value.get("level").is_some() && value.get("fields").is_some());
        lines += 1;
    }
    assert!(lines >= 2, "{log}");
}
