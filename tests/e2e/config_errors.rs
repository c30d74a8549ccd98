//! Bad config: every kind is refused before anything starts, with exit code 2 and a message
//! naming the file, the field and the rule.

use crate::sluice;
use sluice_tests::Scratch;

/// Runs `sluice run` and `sluice check` on `config` and returns stderr, asserting both exit
/// with 2 and that nothing was started (no data directory appeared).
fn refused(name: &str, config: &str) -> String {
    let dir = Scratch::new(name);
    let config = config.replace("DATA", &dir.join("data").display().to_string());
    let path = dir.write("pipeline.toml", &config);
    let path = path.to_str().unwrap();
    let mut stderr = String::new();
    for command in ["check", "run"] {
        let out = sluice().output(&[command, path]);
        stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(2), "{command}: {stderr}");
        assert!(
            stderr.contains(path),
            "{command}: the message must name the file:\n{stderr}"
        );
    }
    assert!(
        !dir.join("data").exists(),
        "nothing may start on a bad config"
    );
    stderr
}

const SINK: &str = "[sinks.out]\ntype = \"file\"\ninputs = [\"gen\"]\npath = \"DATA/out.jsonl\"\n";

fn with_sink(source: &str) -> String {
    format!("[pipeline]\ndata_dir = \"DATA\"\n{source}\n{SINK}")
}

#[test]
fn missing_file() {
    let out = sluice().output(&["run", "/nonexistent/sluice.toml"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("/nonexistent/sluice.toml: cannot read the config file"),
        "{stderr}"
    );
}

#[test]
fn invalid_toml() {
    let stderr = refused("toml", "[sources.gen\ntype = \"generator\"");
    assert!(
        stderr.contains("invalid TOML") && stderr.contains("line 1"),
        "{stderr}"
    );
}

#[test]
fn unknown_type() {
    let stderr = refused("type", &with_sink("[sources.gen]\ntype = \"generatr\""));
    assert!(
        stderr.contains("sources.gen.type: unknown source type \"generatr\"")
            && stderr.contains("generator"),
        "{stderr}"
    );
}

#[test]
fn unknown_key() {
    let stderr = refused(
        "key",
        &with_sink("[sources.gen]\ntype = \"generator\"\ncuont = 5"),
    );
    assert!(
        stderr.contains("sources.gen.cuont: unknown field `cuont`, expected one of `count`"),
        "{stderr}"
    );
}

#[test]
fn bad_duration() {
    let stderr = refused(
        "duration",
        &with_sink("[sources.gen]\ntype = \"generator\"\ncheckpoint_interval = \"10 parsecs\""),
    );
    assert!(
        stderr.contains("sources.gen.checkpoint_interval: invalid duration \"10 parsecs\""),
        "{stderr}"
    );
}

#[test]
fn bad_value() {
    let stderr = refused(
        "value",
        &with_sink("[sources.gen]\ntype = \"generator\"\nrate = 0"),
    );
    assert!(
        stderr.contains("sources.gen.rate: must be at least 1"),
        "{stderr}"
    );
}

#[test]
fn unknown_input() {
    let stderr = refused(
        "input",
        "[sources.gen]\ntype = \"generator\"\n[sinks.out]\ntype = \"blackhole\"\ninputs = [\"gne\"]\n",
    );
    assert!(
        stderr.contains("sinks.out.inputs[0]: unknown input \"gne\"")
            && stderr.contains("sources.gen: nothing reads from this component"),
        "{stderr}"
    );
}

#[test]
fn cycle() {
    let stderr = refused(
        "cycle",
        r#"
        [sources.gen]
        type = "generator"
        [transforms.a]
        type = "dedupe"
        inputs = ["gen", "b"]
        [transforms.b]
        type = "dedupe"
        inputs = ["a"]
        [sinks.out]
        type = "blackhole"
        inputs = ["b"]
        "#,
    );
    assert!(stderr.contains("cycle: events would flow"), "{stderr}");
    assert!(
        stderr.contains("a -> b -> a") || stderr.contains("b -> a -> b"),
        "{stderr}"
    );
}

#[test]
fn sink_without_inputs() {
    let stderr = refused(
        "noinputs",
        "[sources.gen]\ntype = \"generator\"\n[sinks.a]\ntype = \"blackhole\"\ninputs = [\"gen\"]\n[sinks.b]\ntype = \"blackhole\"\n",
    );
    assert!(
        stderr.contains("sinks.b.inputs: missing or empty"),
        "{stderr}"
    );
}

#[test]
fn unset_variable() {
    let stderr = refused(
        "env",
        &with_sink(
            "[sources.gen]\ntype = \"generator\"\nevent_type = \"${SLUICE_TEST_SURELY_UNSET}\"",
        ),
    );
    assert!(
        stderr.contains(
            "sources.gen.event_type: environment variable SLUICE_TEST_SURELY_UNSET is not set and has no default"
        ),
        "{stderr}"
    );
}

#[test]
fn several_problems_are_all_reported() {
    let stderr = refused(
        "many",
        "[sources.gen]\ntype = \"generator\"\nrate = 0\n[sinks.out]\ntype = \"nope\"\ninputs = [\"gen\"]\n[extra]\n",
    );
    for expected in [
        "sources.gen.rate",
        "sinks.out.type",
        "extra: unknown section",
    ] {
        assert!(stderr.contains(expected), "{expected} missing:\n{stderr}");
    }
}

#[test]
fn a_malformed_cluster_node_url() {
    let stderr = refused(
        "amqp-urls",
        "[pipeline]\ndata_dir = \"DATA\"\n[sources.gen]\ntype = \"generator\"\n\
         [sinks.broker]\ntype = \"rabbitmq\"\ninputs = [\"gen\"]\n\
         urls = [\"amqp://relay:s3cret@rabbit1/orders\", \"relay:s3cret@rabbit2:5672\"]\n",
    );
    assert!(
        stderr.contains("sinks.broker.urls[1]: ")
            && stderr
                .contains("write the node as a whole URL, amqp://user:password@host:5672/vhost"),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cret"), "{stderr}");
}
