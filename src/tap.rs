//! `sluice tap`: the events leaving a component of a running process, live, one JSON object
//! per line, from its API's `/tap/ID`.

use std::path::Path;
use std::process::ExitCode;

use sluice_pipeline::Registry;
use tokio::io::AsyncBufReadExt;

use crate::EXIT_FAILED;

/// What to watch and how.
pub struct Tap {
    /// The process's API address.
    pub api: String,
    /// The component whose output to watch.
    pub component: String,
    /// Show payloads too.
    pub payload: bool,
    /// Show every Nth event.
    pub every: u64,
    /// Stop after this many events.
    pub limit: Option<u64>,
}

/// The API address of the process running `config` (its `[api] address`).
pub fn api_of(config: &Path, registry: &Registry) -> Result<String, String> {
    let config = sluice_pipeline::Config::load(config, registry).map_err(|e| e.to_string())?;
    config
        .api
        .map(|api| api.address.to_string())
        .ok_or_else(|| {
            format!(
                "{}: has no [api] section to tap through",
                config.file.display()
            )
        })
}

/// Prints what `tap` asks for until the component's run ends, the limit is reached, or the
/// process stops.
pub async fn run(tap: Tap) -> ExitCode {
    let path = format!(
        "/tap/{}?every={}{}",
        tap.component,
        tap.every,
        if tap.payload { "&payload=true" } else { "" }
    );
    let mut lines = match crate::api_client::get(&tap.api, &path).await {
        Ok(body) => body.lines(),
        Err(e) => {
            eprintln!("cannot tap {}: {e}", tap.component);
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let mut shown = 0;
    while tap.limit.is_none_or(|limit| shown < limit) {
        match lines.next_line().await {
            Ok(Some(line)) => {
                println!("{line}");
                if !line.starts_with(r#"{"missed""#) {
                    shown += 1;
                }
            }
            Ok(None) => {
                eprintln!("{}: its run ended", tap.component);
                break;
            }
            Err(e) => {
                eprintln!("the tap of {} broke: {e}", tap.component);
                return ExitCode::from(EXIT_FAILED);
            }
        }
    }
    ExitCode::SUCCESS
}
