//! The commands that use the coordination service (`--coord URL` or `SLUICE_COORD`):
//! `sluice lock`, `sluice config put|get`, and configs read from it (`sluice run coord:KEY`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use futures::StreamExt;
use rustix::process::{Pid, Signal, kill_process};
use sluice_coord::{Coord, CoordConfig};
use sluice_pipeline::error::chain;
use sluice_pipeline::metrics::reload_counter;
use sluice_pipeline::{Config, Registry};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::{EXIT_CONFIG, EXIT_FAILED};

/// `sluice config …`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a pipeline config and store it under KEY, for `sluice run coord:KEY`.
    Put {
        /// The key (without the `[coord]` namespace).
        key: String,
        /// The pipeline config (TOML).
        file: PathBuf,
    },
    /// Print the config stored under KEY.
    Get {
        /// The key.
        key: String,
    },
}

/// Where a pipeline config comes from.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    /// A file, reloaded on SIGHUP.
    File(PathBuf),
    /// A key of the coordination service (`coord:KEY`), reloaded when the key changes.
    Coord(String),
}

impl ConfigSource {
    /// `coord:KEY` or a file path.
    pub fn parse(arg: &str) -> ConfigSource {
        match arg.strip_prefix("coord:") {
            Some(key) => ConfigSource::Coord(key.to_owned()),
            None => ConfigSource::File(PathBuf::from(arg)),
        }
    }

    /// How messages name it.
    pub fn name(&self) -> String {
        match self {
            ConfigSource::File(path) => path.display().to_string(),
            ConfigSource::Coord(key) => format!("coord:{key}"),
        }
    }
}

/// Connects to the service `url` names.
pub async fn connect(url: Option<&str>, needed_by: &str) -> Result<Coord, String> {
    let url = url.ok_or_else(|| {
        format!("{needed_by} needs the coordination service: pass --coord URL or set SLUICE_COORD")
    })?;
    let config = CoordConfig::from_url(url).map_err(|e| format!("--coord {url}: {e}"))?;
    Coord::connect(&config).await.map_err(|e| chain(&e))
}

/// The text of `source`'s config, now.
pub async fn read(source: &ConfigSource, coord: Option<&Coord>) -> Result<String, String> {
    match source {
        ConfigSource::File(path) => std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read the config file: {e}", path.display())),
        ConfigSource::Coord(key) => {
            let coord = coord.ok_or("coord: configs need --coord URL or SLUICE_COORD")?;
            coord
                .get_config(key)
                .await
                .map_err(|e| format!("coord:{key}: {}", chain(&e)))?
                .ok_or_else(|| {
                    format!("coord:{key}: no config is stored there (store one with sluice config put {key} FILE)")
                })
        }
    }
}

/// Parses, checks and builds (without running) the config `text` read from `source`, with a
/// `[coord]` section from `--coord` when it has none. Every problem, one per line, if invalid.
pub fn validated(
    text: &str,
    source: &ConfigSource,
    coord_url: Option<&str>,
    registry: &Registry,
) -> Result<Config, Vec<String>> {
    let name = source.name();
    let text =
        with_coord_section(text, coord_url).map_err(|e| vec![format!("{name}: --coord: {e}")])?;
    let config = Config::parse(&text, Path::new(&name), registry, &|v| {
        std::env::var(v).ok()
    })
    .map_err(|errors| {
        errors
            .to_string()
            .lines()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    })?;
    sluice_pipeline::try_build(&config).map_err(|e| vec![format!("{name}: {}", chain(&e))])?;
    Ok(config)
}

/// `text`, with a `[coord]` section for `url` appended when it has none of its own (a config's
/// own section wins over `--coord`).
fn with_coord_section(text: &str, url: Option<&str>) -> Result<String, String> {
    // Variables are interpolated after parsing, so the text as written is TOML; one that is
    // not is left for the config's own parser to report.
    let has_section = text
        .parse::<toml::Table>()
        .map_or(true, |table| table.contains_key("coord"));
    let Some(url) = url.filter(|_| !has_section) else {
        return Ok(text.to_owned());
    };
    let config = CoordConfig::from_url(url).map_err(|e| e.to_string())?;
    let endpoints: Vec<toml::Value> = config
        .endpoints
        .iter()
        .map(|e| toml::Value::String(e.clone()))
        .collect();
    let mut section = toml::Table::new();
    section.insert("backend".into(), config.backend.to_string().into());
    section.insert("endpoints".into(), toml::Value::Array(endpoints));
    let mut table = toml::Table::new();
    table.insert("coord".into(), toml::Value::Table(section));
    Ok(format!("{text}\n{table}"))
}

/// Watches coordination key `key` and hands each valid new config to its pipeline; an invalid
/// one is logged with every problem, counted, and changes nothing.
pub async fn reload_on_change(
    coord: Coord,
    key: String,
    coord_url: Option<String>,
    registry: std::sync::Arc<Registry>,
    updates: mpsc::Sender<Config>,
) {
    let source = ConfigSource::Coord(key.clone());
    let mut backoff = sluice_pipeline::backoff::Backoff::new(Default::default());
    loop {
        let mut values = match coord.watch_config(&key).await {
            Ok(values) => values,
            Err(error) => {
                tracing::warn!(%key, error = %chain(&error), "cannot watch the config; retrying");
                tokio::time::sleep(backoff.failed()).await;
                continue;
            }
        };
        // The first value is the one running (or one written since it was read).
        let mut first = true;
        while let Some(value) = values.next().await {
            let text = match value {
                Ok(Some(text)) => text,
                Ok(None) => {
                    tracing::warn!(%key, "the config was deleted; the running pipeline goes on");
                    continue;
                }
                Err(error) => {
                    tracing::warn!(%key, error = %chain(&error), "the config watch broke; watching again");
                    break;
                }
            };
            backoff.reset();
            if std::mem::take(&mut first) {
                continue;
            }
            tracing::info!(%key, "the config changed: checking it before reloading");
            match validated(&text, &source, coord_url.as_deref(), &registry) {
                Ok(config) => {
                    if updates.send(config).await.is_err() {
                        return;
                    }
                }
                Err(problems) => {
                    reload_counter("invalid").increment(1);
                    for problem in problems {
                        tracing::error!(%problem, "the new config is invalid; the running pipeline goes on");
                    }
                }
            }
        }
        tokio::time::sleep(backoff.failed()).await;
    }
}

/// `sluice config put|get`.
pub async fn config(
    command: ConfigCommand,
    coord_url: Option<&str>,
    registry: &Registry,
) -> ExitCode {
    let coord = match connect(coord_url, "sluice config").await {
        Ok(coord) => coord,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let code = match command {
        ConfigCommand::Put { key, file } => {
            let source = ConfigSource::File(file.clone());
            let text = match read(&source, None).await {
                Ok(text) => text,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            if let Err(problems) = validated(&text, &source, coord_url, registry) {
                problems.iter().for_each(|p| eprintln!("{p}"));
                eprintln!("(the config is invalid; nothing was stored)");
                return ExitCode::from(EXIT_CONFIG);
            }
            match coord.put_config(&key, &text).await {
                Ok(revision) => {
                    println!(
                        "stored {} as coord:{key} (revision {revision})",
                        file.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("cannot store coord:{key}: {}", chain(&e));
                    ExitCode::from(EXIT_FAILED)
                }
            }
        }
        ConfigCommand::Get { key } => match read(&ConfigSource::Coord(key), Some(&coord)).await {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(EXIT_FAILED)
            }
        },
    };
    coord.close().await;
    code
}

/// `sluice lock NAME -- COMMAND…`: runs the command while holding lock NAME, its fencing token
/// in `SLUICE_FENCING_TOKEN`. Exits with the command's code; if the lock is lost first, the
/// command is sent SIGTERM and sluice exits 1.
pub async fn lock(name: &str, command: &[String], coord_url: Option<&str>) -> ExitCode {
    let coord = match connect(coord_url, "sluice lock").await {
        Ok(coord) => coord,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        eprintln!("cannot install signal handlers");
        return ExitCode::from(EXIT_FAILED);
    };
    let guard = tokio::select! {
        taken = coord.lock(name) => match taken {
            Ok(guard) => guard,
            Err(e) => {
                eprintln!("cannot take lock {name}: {}", chain(&e));
                coord.close().await;
                return ExitCode::from(EXIT_FAILED);
            }
        },
        _ = term.recv() => return give_up(&coord).await,
        _ = int.recv() => return give_up(&coord).await,
    };
    let token = guard.token();
    tracing::info!(lock = name, %token, "lock held; running the command");
    let mut child = match tokio::process::Command::new(&command[0])
        .args(&command[1..])
        .env("SLUICE_FENCING_TOKEN", token.0.to_string())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            eprintln!("cannot run {}: {e}", command[0]);
            let _ = guard.unlock().await;
            coord.close().await;
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let forward = |child: &tokio::process::Child, signal: Signal| {
        let pid = child
            .id()
            .and_then(|id| Pid::from_raw(i32::try_from(id).ok()?));
        if let Some(pid) = pid {
            // It may have just exited: nothing to forward then.
            let _ = kill_process(pid, signal);
        }
    };
    let code = loop {
        tokio::select! {
            status = child.wait() => {
                break match status {
                    Ok(status) => exit_code_of(status),
                    Err(e) => {
                        eprintln!("waiting for {}: {e}", command[0]);
                        ExitCode::from(EXIT_FAILED)
                    }
                };
            }
            () = guard.lost() => {
                eprintln!("lock {name} lost (token {token}): stopping {}", command[0]);
                forward(&child, Signal::TERM);
                let _ = child.wait().await;
                break ExitCode::from(EXIT_FAILED);
            }
            _ = term.recv() => forward(&child, Signal::TERM),
            _ = int.recv() => forward(&child, Signal::INT),
        }
    };
    if let Err(e) = guard.unlock().await {
        tracing::warn!(lock = name, error = %chain(&e), "cannot release the lock; it goes with the session");
    }
    coord.close().await;
    code
}

async fn give_up(coord: &Coord) -> ExitCode {
    coord.close().await;
    ExitCode::from(EXIT_FAILED)
}

/// The command's exit code, or 128 + the signal that ended it.
fn exit_code_of(status: std::process::ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        (None, Some(signal)) => ExitCode::from(u8::try_from(128 + signal).unwrap_or(1)),
        (None, None) => ExitCode::from(EXIT_FAILED),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coord_adds_a_section_only_to_a_config_without_one() {
        let text = "[pipeline]\nleader = \"relay\"\n";
        let added =
            with_coord_section(text, Some("etcd://127.0.0.1:2379,127.0.0.1:22379")).unwrap();
        let table: toml::Table = added.parse().unwrap();
        assert_eq!(table["coord"]["backend"].as_str(), Some("etcd"));
        assert_eq!(
            table["coord"]["endpoints"].as_array().map(Vec::len),
            Some(2)
        );
        let own = "[coord]\nbackend = \"embedded\"\n";
        assert_eq!(with_coord_section(own, Some("etcd://h:1")).unwrap(), own);
        assert_eq!(with_coord_section(text, None).unwrap(), text);
        assert!(with_coord_section(text, Some("consul://h:1")).is_err());
    }
}
