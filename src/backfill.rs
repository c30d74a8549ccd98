//! `sluice backfill CONFIG --source ID --where COND`: republishes the rows of source ID's
//! tables that COND chooses, through the transforms and sinks downstream of ID in CONFIG, with
//! their own ids; then prints how many and exits 0 once the sinks confirmed every one.
//!
//! The pipeline it runs is CONFIG cut down to what the rows flow through: source ID becomes a
//! one-shot read of its tables ([`BackfillConfig`]), every other source and whatever only they
//! feed is left out, and so are the `[api]` address and the `[pipeline] leader` election, which
//! belong to the relay that may be running from the same file meanwhile.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use sluice_connectors::postgres::cdc::{BackfillConfig, BackfillRecord, BackfillState};
use sluice_pipeline::error::chain;
use sluice_pipeline::{Registry, ShutdownTrigger};

use crate::coordination::{self, ConfigSource};
use crate::{EXIT_CONFIG, EXIT_FAILED};

/// The `type` that [`BackfillConfig`] is registered under for the cut-down pipeline only.
const BACKFILL_TYPE: &str = "postgres_backfill";

/// What to backfill.
pub struct Backfill {
    /// The pipeline config.
    pub config: PathBuf,
    /// The id of its `postgres_cdc` source.
    pub source: String,
    /// The SQL condition that chooses the rows.
    pub filter: String,
}

/// Runs the backfill until every chosen row is delivered (0), the config is refused (2), or it
/// fails or is stopped first (1).
pub async fn run(backfill: Backfill, coord_url: Option<&str>, registry: &Registry) -> ExitCode {
    let name = backfill.config.display().to_string();
    let text = match std::fs::read_to_string(&backfill.config) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("{name}: cannot read the config file: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let source = ConfigSource::File(backfill.config.clone());
    // The file as it is must be valid: the cut-down pipeline is checked again below.
    let trimmed = coordination::validated(&text, &source, coord_url, registry)
        .map_err(|problems| problems.join("\n"))
        .and_then(|_| cut_down(&text, &backfill.source, &backfill.filter))
        .and_then(|text| {
            let mut registry = crate::registry::registry();
            registry.source::<BackfillConfig>(BACKFILL_TYPE);
            coordination::validated(&text, &source, coord_url, &registry)
                .map_err(|problems| problems.join("\n"))
        });
    let config = match trimmed {
        Ok(config) => config,
        Err(problems) => {
            eprintln!("{problems}");
            return crate::config_failure();
        }
    };
    let record = BackfillRecord::path(&config.pipeline.data_dir, &backfill.source);
    if let Err(e) = remove_stale(&record) {
        eprintln!("{}: {e}", record.display());
        return ExitCode::from(EXIT_FAILED);
    }
    let trigger = ShutdownTrigger::new();
    let shutdown = trigger.subscribe();
    tokio::spawn(crate::handle_signals(trigger));
    if let Err(e) = sluice_pipeline::run(&config, shutdown).await {
        eprintln!(
            "backfill of sources.{} failed: {}",
            backfill.source,
            chain(&e)
        );
        return ExitCode::from(EXIT_FAILED);
    }
    match BackfillRecord::load(&record) {
        Ok(Some(BackfillRecord {
            state: BackfillState::Delivered,
            rows,
            ..
        })) => {
            println!(
                "{name}: sources.{}: published {rows} rows where {}, every one confirmed by the sinks",
                backfill.source, backfill.filter
            );
            ExitCode::SUCCESS
        }
        Ok(_) => {
            eprintln!(
                "backfill of sources.{} stopped before every chosen row was delivered: run it again (rows delivered already arrive again, with the same ids)",
                backfill.source
            );
            ExitCode::from(EXIT_FAILED)
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// A record left by an earlier backfill must not pass for this one's.
fn remove_stale(record: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(record) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The config `text` cut down to the backfill of source `id` with `filter`: that source as a
/// [`BackfillConfig`], the transforms and sinks it feeds (and the quarantine sink), nothing
/// else; no `[api]`, no election.
fn cut_down(text: &str, id: &str, filter: &str) -> Result<String, String> {
    let mut document: toml::Table = text
        .parse()
        .map_err(|e| format!("the config is not TOML: {e}"))?;
    document.remove("api");
    if let Some(toml::Value::Table(pipeline)) = document.get_mut("pipeline") {
        pipeline.remove("leader");
    }
    let Some(toml::Value::Table(sources)) = document.get_mut("sources") else {
        return Err("--source: the config has no [sources]".into());
    };
    let Some(toml::Value::Table(mut source)) = sources.remove(id) else {
        let ids: Vec<&String> = sources.keys().collect();
        return Err(format!(
            "--source {id:?}: no such source (the config has {})",
            ids.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    };
    match source.remove("type") {
        Some(toml::Value::String(kind)) if kind == "postgres_cdc" => {}
        other => {
            return Err(format!(
                "--source {id:?}: backfill reads the tables of a postgres_cdc source, and this one is {}",
                other.map_or("untyped".to_owned(), |t| t.to_string())
            ));
        }
    }
    let mut backfill = toml::Table::new();
    backfill.insert("type".into(), BACKFILL_TYPE.into());
    backfill.insert("source".into(), toml::Value::Table(source));
    // The config's `${VAR}` interpolation runs over every string; `$$` keeps a `$` as written.
    backfill.insert("where".into(), filter.replace('$', "$$").into());
    sources.clear();
    sources.insert(id.to_owned(), toml::Value::Table(backfill));

    let quarantine = document
        .get("quarantine")
        .and_then(|q| q.get("sink"))
        .and_then(toml::Value::as_str)
        .map(str::to_owned);
    let mut fed = BTreeSet::from([id.to_owned()]);
    loop {
        let before = fed.len();
        for kind in ["transforms", "sinks"] {
            for (name, component) in components(&document, kind) {
                if inputs(component).iter().any(|input| fed.contains(input)) {
                    fed.insert(name.clone());
                }
            }
        }
        if fed.len() == before {
            break;
        }
    }
    for kind in ["transforms", "sinks"] {
        if let Some(toml::Value::Table(section)) = document.get_mut(kind) {
            section.retain(|name, _| fed.contains(name) || quarantine.as_deref() == Some(name));
            for (_, component) in section.iter_mut() {
                if let Some(toml::Value::Array(inputs)) = component.get_mut("inputs") {
                    inputs.retain(|i| i.as_str().is_some_and(|i| fed.contains(i)));
                }
            }
        }
    }
    toml::to_string(&document).map_err(|e| format!("cannot write the backfill's config: {e}"))
}

fn components<'a>(
    document: &'a toml::Table,
    kind: &str,
) -> impl Iterator<Item = (&'a String, &'a toml::Value)> {
    document
        .get(kind)
        .and_then(toml::Value::as_table)
        .into_iter()
        .flatten()
}

fn inputs(component: &toml::Value) -> Vec<String> {
    component
        .get("inputs")
        .and_then(toml::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|i| i.as_str().map(str::to_owned))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
        [api]
        address = "127.0.0.1:9464"
        [pipeline]
        leader = "relay"
        [sources.outbox]
        type = "postgres_cdc"
        url = "${DATABASE_URL}"
        slot = "s"
        publication = "p"
        [sources.ticks]
        type = "generator"
        [transforms.events]
        type = "outbox"
        inputs = ["outbox"]
        [transforms.both]
        type = "filter"
        inputs = ["events", "ticks"]
        [sinks.broker]
        type = "rabbitmq"
        inputs = ["both"]
        [sinks.log]
        type = "stdout"
        inputs = ["ticks"]
    "#;

    #[test]
    fn keeps_only_what_the_source_feeds() {
        let text = cut_down(CONFIG, "outbox", "id = '$1'").unwrap();
        let document: toml::Table = text.parse().unwrap();
        assert!(!document.contains_key("api"));
        assert!(document["pipeline"].get("leader").is_none());
        let source = &document["sources"]["outbox"];
        assert_eq!(source["type"].as_str(), Some(BACKFILL_TYPE));
        assert_eq!(source["where"].as_str(), Some("id = '$$1'"));
        assert_eq!(source["source"]["slot"].as_str(), Some("s"));
        assert!(document["sources"].get("ticks").is_none());
        assert!(document["sinks"].get("log").is_none());
        assert_eq!(
            inputs(&document["transforms"]["both"]),
            ["events"],
            "inputs from left-out sources go"
        );
        assert!(document["sinks"].get("broker").is_some());
    }

    #[test]
    fn refuses_a_source_that_is_missing_or_not_postgres_cdc() {
        let missing = cut_down(CONFIG, "orders", "true").unwrap_err();
        assert!(
            missing.contains("no such source") && missing.contains("outbox"),
            "{missing}"
        );
        let generator = cut_down(CONFIG, "ticks", "true").unwrap_err();
        assert!(generator.contains("postgres_cdc"), "{generator}");
    }
}
