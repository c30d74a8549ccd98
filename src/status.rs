//! `sluice status`: what a running process reports on its API's `/status`, as a table.

use std::process::ExitCode;

use serde_json::Value;
use tokio::io::AsyncReadExt;

use crate::EXIT_FAILED;

/// How long the process may take to answer.
const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Prints the `/status` of the process whose API listens on `api` (`host:port`): as JSON with
/// `json`, else one line per source.
pub async fn run(api: &str, json: bool) -> ExitCode {
    let status = match tokio::time::timeout(TIMEOUT, fetch(api)).await {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => {
            eprintln!("cannot read the status of the process at {api}: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
        Err(_) => {
            eprintln!("the process at {api} did not answer within {TIMEOUT:?}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    if json {
        println!("{status:#}");
    } else {
        print!("{}", table(&status));
    }
    ExitCode::SUCCESS
}

/// GET /status from `api`, parsed.
async fn fetch(api: &str) -> Result<Value, String> {
    let mut body = String::new();
    crate::api_client::get(api, "/status")
        .await?
        .read_to_string(&mut body)
        .await
        .map_err(|e| format!("cannot read the answer: {e}"))?;
    serde_json::from_str(&body).map_err(|e| format!("GET /status answered no JSON: {e}"))
}

/// One line per source of each pipeline: the pipeline's config, its election, role and
/// fencing token, and the source's readiness, in-flight events, checkpoint and lag.
fn table(status: &Value) -> String {
    let mut rows = vec![
        [
            "PIPELINE",
            "ELECTION",
            "ROLE",
            "TOKEN",
            "SOURCE",
            "READY",
            "IN FLIGHT",
            "CHECKPOINT",
            "LAG",
        ]
        .map(String::from),
    ];
    let empty = Vec::new();
    for pipeline in status["pipelines"].as_array().unwrap_or(&empty) {
        let election = &pipeline["election"];
        let named = |v: &Value| match v {
            Value::Null => "-".to_owned(),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let sources = pipeline["components"]
            .as_array()
            .unwrap_or(&empty)
            .iter()
            .filter(|c| c["kind"] == "source");
        for source in sources {
            let lag = match &source["lag_bytes"] {
                Value::Number(n) => format!("{} B", n.as_f64().unwrap_or_default()),
                _ => "-".to_owned(),
            };
            rows.push([
                named(&pipeline["config"]),
                named(&election["name"]),
                match &election["role"] {
                    Value::Null => "always".to_owned(),
                    role => named(role),
                },
                named(&election["fencing_token"]),
                named(&source["id"]),
                named(&source["ready"]),
                named(&source["in_flight_events"]),
                named(&source["checkpoint"]),
                lag,
            ]);
        }
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|col| rows.iter().map(|r| r[col].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_source_with_its_pipeline_election_and_figures() {
        let status = serde_json::json!({
            "pipelines": [{
                "config": "relay.toml",
                "election": {"name": "relay", "role": "leader", "fencing_token": 7},
                "components": [
                    {"id": "outbox", "kind": "source", "ready": true, "in_flight_events": 3,
                     "checkpoint": 42, "failed_events": 0, "lag_bytes": 512.0},
                    {"id": "broker", "kind": "sink", "ready": true}
                ]
            }, {
                "config": "ids.toml",
                "components": [{"id": "gen", "kind": "source", "ready": false,
                                "in_flight_events": 0, "checkpoint": null}]
            }],
            "resources": []
        });
        assert_eq!(
            table(&status),
            "PIPELINE    ELECTION  ROLE    TOKEN  SOURCE  READY  IN FLIGHT  CHECKPOINT  LAG\n\
             relay.toml  relay     leader  7      outbox  true   3          42          512 B\n\
             ids.toml    -         always  -      gen     false  0          -           -\n"
        );
    }
}
