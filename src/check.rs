//! `sluice check`'s live part: asks every component to check the servers it would use, and
//! prints each finding with its remedy.

use std::process::ExitCode;
use std::time::Duration;

use sluice_pipeline::{Config, Finding, Level};

/// How long one component's checks may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(15);

/// Runs the live checks of every resource section, source and sink; fails (exit 1) if any
/// finding failed.
pub async fn live(config: &Config) -> ExitCode {
    let sources = config
        .sources
        .iter()
        .map(|(id, c)| (format!("sources.{id}"), c.config.check()));
    let sinks = config
        .sinks
        .iter()
        .map(|(id, c)| (format!("sinks.{id}"), c.config.check()));
    let resources = config
        .resources
        .iter()
        .map(|(name, r)| (name.clone(), r.config.check()));
    let mut failed = false;
    for (component, findings) in resources.chain(sources).chain(sinks) {
        let findings = tokio::time::timeout(CHECK_TIMEOUT, findings)
            .await
            .unwrap_or_else(|_| {
                vec![Finding::fail(format!(
                    "no answer within {CHECK_TIMEOUT:?}: is the server reachable?"
                ))]
            });
        for finding in findings {
            let label = match finding.level {
                Level::Ok => "ok  ",
                Level::Warn => "warn",
                Level::Fail => "FAIL",
            };
            failed |= finding.level == Level::Fail;
            println!("{component}: {label} {}", finding.message);
        }
    }
    if failed {
        println!("(some checks failed: fix them before `sluice run`)");
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
