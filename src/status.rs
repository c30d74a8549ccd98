//! `sluice status`: what a running process reports on its API's `/status`, as a table — or,
//! with `--coord`, what a whole cluster runs: each election in the coordination registry, the
//! node leading it, and that node's own figures for it (read from its `/status`).

use std::collections::BTreeSet;
use std::process::ExitCode;

use serde_json::{Value, json};
use sluice_coord::{Coord, CoordError, Member};
use sluice_pipeline::error::chain;
use tokio::io::AsyncReadExt;

use crate::EXIT_FAILED;

/// How long a process, or the coordination service, may take to answer.
const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The columns of a process's table: one row per source.
const COLUMNS: [&str; 9] = [
    "PIPELINE",
    "ELECTION",
    "ROLE",
    "TOKEN",
    "SOURCE",
    "READY",
    "IN FLIGHT",
    "CHECKPOINT",
    "LAG",
];

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
        let empty = Vec::new();
        let mut rows = vec![COLUMNS.map(String::from).to_vec()];
        for pipeline in status["pipelines"].as_array().unwrap_or(&empty) {
            rows.extend(source_rows(pipeline));
        }
        print!("{}", render(&rows));
    }
    ExitCode::SUCCESS
}

/// Prints what the cluster registered in the coordination service at `url` runs: every
/// election, its leader and the leader's figures for it (as JSON with `json`). A node whose
/// API cannot be read is shown as such; only an unreachable coordination service fails.
pub async fn cluster(url: &str, json: bool) -> ExitCode {
    let coord = match tokio::time::timeout(
        TIMEOUT,
        crate::coordination::connect(Some(url), "sluice status --coord"),
    )
    .await
    {
        Ok(Ok(coord)) => coord,
        Ok(Err(e)) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_FAILED);
        }
        Err(_) => {
            eprintln!("the coordination service at {url} did not answer within {TIMEOUT:?}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let read = read_cluster(&coord).await;
    coord.close().await;
    let view = match read {
        Ok(view) => view,
        Err(e) => {
            eprintln!("cannot read the cluster from {url}: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    if json {
        println!("{view:#}");
    } else {
        print!("{}", cluster_table(&view));
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

/// The cluster as JSON: `elections`, each with its leader (node and fencing token, from the
/// election itself) and the leader's `/status` entry for its pipeline; and `nodes`, each with
/// what its registry entry says and whether its `/status` could be read.
async fn read_cluster(coord: &Coord) -> Result<Value, String> {
    let members = asking(coord.nodes()).await?;
    let statuses = futures::future::join_all(members.iter().map(node_status)).await;
    let elections: BTreeSet<&String> = members
        .iter()
        .flat_map(|m| m.state.elections.iter())
        .collect();
    let mut rows = Vec::new();
    for election in elections {
        let leader = asking(coord.leader(election)).await?;
        let node = leader
            .as_ref()
            .map(|l| String::from_utf8_lossy(&l.value).into_owned());
        let pipeline = node
            .as_ref()
            .and_then(|node| members.iter().position(|m| m.node == *node))
            .and_then(|at| statuses[at].as_ref().ok())
            .and_then(|status| status["pipelines"].as_array())
            .and_then(|pipelines| {
                pipelines
                    .iter()
                    .find(|p| p["election"]["name"] == json!(election))
            });
        rows.push(json!({
            "name": election,
            "leader": node,
            "fencing_token": leader.map(|l| l.token.0),
            "pipeline": pipeline,
        }));
    }
    let nodes: Vec<Value> = members
        .iter()
        .zip(&statuses)
        .map(|(member, status)| {
            json!({
                "node": member.node,
                "api": member.api,
                "elections": member.state.elections,
                "leading": member.state.leading,
                "unreachable": status.as_ref().err(),
            })
        })
        .collect();
    Ok(json!({"elections": rows, "nodes": nodes}))
}

/// What `work` on the coordination service gives, within [`TIMEOUT`].
async fn asking<T>(work: impl Future<Output = Result<T, CoordError>>) -> Result<T, String> {
    match tokio::time::timeout(TIMEOUT, work).await {
        Ok(done) => done.map_err(|e| chain(&e)),
        Err(_) => Err(format!("no answer within {TIMEOUT:?}")),
    }
}

/// A node's `/status`, or why it cannot be read.
async fn node_status(member: &Member) -> Result<Value, String> {
    let api = member.api.as_deref().ok_or("it serves no API")?;
    match tokio::time::timeout(TIMEOUT, fetch(api)).await {
        Ok(status) => status,
        Err(_) => Err(format!("no answer within {TIMEOUT:?}")),
    }
}

/// One line per election (per source of its pipeline, on its leader), the node first, then
/// the columns of a process's table; then a line for each node whose API could not be read.
fn cluster_table(view: &Value) -> String {
    let empty = Vec::new();
    let mut header = vec!["NODE".to_owned()];
    header.extend(COLUMNS.map(String::from));
    let mut rows = vec![header];
    for election in view["elections"].as_array().unwrap_or(&empty) {
        let node = named(&election["leader"]);
        let sources = match &election["pipeline"] {
            Value::Null => Vec::new(),
            pipeline => source_rows(pipeline),
        };
        if sources.is_empty() {
            // What the election itself says, when the leader's API did not.
            let role = if election["leader"].is_null() {
                "unled"
            } else {
                "leader"
            };
            let mut row = vec![node.clone(), "-".to_owned(), named(&election["name"])];
            row.push(role.to_owned());
            row.push(named(&election["fencing_token"]));
            row.extend(std::iter::repeat_n("-".to_owned(), COLUMNS.len() - 4));
            rows.push(row);
        }
        for source in sources {
            let mut row = vec![node.clone()];
            row.extend(source);
            rows.push(row);
        }
    }
    let mut out = render(&rows);
    let nodes = view["nodes"].as_array().unwrap_or(&empty);
    if nodes.is_empty() {
        out.push_str(
            "no node is registered: no `sluice run` with this [coord] section is running\n",
        );
    }
    for node in nodes {
        if let Value::String(why) = &node["unreachable"] {
            out.push_str(&format!(
                "node {} (API {}): unreachable: {why}\n",
                named(&node["node"]),
                named(&node["api"])
            ));
        }
    }
    out
}

/// A JSON value as a cell: strings as they are, null as `-`.
fn named(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// One row per source of `pipeline` (an entry of `/status`): the pipeline's config, its
/// election, role and fencing token, and the source's readiness, in-flight events,
/// checkpoint and lag.
fn source_rows(pipeline: &Value) -> Vec<Vec<String>> {
    let empty = Vec::new();
    let election = &pipeline["election"];
    pipeline["components"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .filter(|c| c["kind"] == "source")
        .map(|source| {
            let lag = match &source["lag_bytes"] {
                Value::Number(n) => format!("{} B", n.as_f64().unwrap_or_default()),
                _ => "-".to_owned(),
            };
            vec![
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
            ]
        })
        .collect()
}

/// `rows` (the header first) in columns as wide as their widest cell.
fn render(rows: &[Vec<String>]) -> String {
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|col| rows.iter().map(|r| r[col].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
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

    fn table(status: &Value) -> String {
        let mut rows = vec![COLUMNS.map(String::from).to_vec()];
        for pipeline in status["pipelines"].as_array().unwrap() {
            rows.extend(source_rows(pipeline));
        }
        render(&rows)
    }

    #[test]
    fn one_line_per_source_with_its_pipeline_election_and_figures() {
        let status = json!({
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

    #[test]
    fn the_cluster_shows_each_election_with_its_leader_unled_ones_and_unreachable_nodes() {
        let view = json!({
            "elections": [{
                "name": "orders", "leader": "a", "fencing_token": 7,
                "pipeline": {
                    "config": "orders.toml",
                    "election": {"name": "orders", "role": "leader", "fencing_token": 7},
                    "components": [{"id": "outbox", "kind": "source", "ready": true,
                                    "in_flight_events": 0, "checkpoint": 9, "lag_bytes": 0.0}]
                }
            }, {
                "name": "payments", "leader": "b", "fencing_token": 8, "pipeline": null
            }, {
                "name": "refunds", "leader": null, "fencing_token": null, "pipeline": null
            }],
            "nodes": [
                {"node": "a", "api": "127.0.0.1:9464", "unreachable": null},
                {"node": "b", "api": "127.0.0.1:9465", "unreachable": "cannot connect"}
            ]
        });
        assert_eq!(
            cluster_table(&view),
            "NODE  PIPELINE     ELECTION  ROLE    TOKEN  SOURCE  READY  IN FLIGHT  CHECKPOINT  LAG\n\
             a     orders.toml  orders    leader  7      outbox  true   0          9           0 B\n\
             b     -            payments  leader  8      -       -      -          -           -\n\
             -     -            refunds   unled   -      -       -      -          -           -\n\
             node b (API 127.0.0.1:9465): unreachable: cannot connect\n"
        );
    }

    #[test]
    fn a_cluster_without_nodes_says_so() {
        let view = json!({"elections": [], "nodes": []});
        assert!(
            cluster_table(&view).ends_with(
                "no node is registered: no `sluice run` with this [coord] section is running\n"
            ),
            "{}",
            cluster_table(&view)
        );
    }
}
