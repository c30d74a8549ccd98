//! `sluice check`'s live part: checks what the process itself needs (a writable data
//! directory, a free API address), asks every component to check the servers it would use,
//! and prints every finding with its remedy.

use std::net::SocketAddr;
use std::path::Path;
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
    let mut own = vec![(
        "pipeline.data_dir".to_owned(),
        data_dir(&config.pipeline.data_dir),
    )];
    if let Some(api) = &config.api {
        own.push(("api.address".to_owned(), api_address(api.address).await));
    }
    let mut failed = false;
    for (section, finding) in own {
        failed |= finding.level == Level::Fail;
        print(&section, &finding);
    }
    for (component, findings) in resources.chain(sources).chain(sinks) {
        let findings = tokio::time::timeout(CHECK_TIMEOUT, findings)
            .await
            .unwrap_or_else(|_| {
                vec![Finding::fail(format!(
                    "no answer within {CHECK_TIMEOUT:?}: is the server reachable?"
                ))]
            });
        for finding in findings {
            failed |= finding.level == Level::Fail;
            print(&component, &finding);
        }
    }
    if failed {
        println!("(some checks failed: fix them before `sluice run`)");
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn print(section: &str, finding: &Finding) {
    let label = match finding.level {
        Level::Ok => "ok  ",
        Level::Warn => "warn",
        Level::Fail => "FAIL",
    };
    println!("{section}: {label} {}", finding.message);
}

/// Whether the data directory can be written: probed with a file that is removed at once, in
/// the directory or, when it does not exist yet, in the nearest parent that does (where
/// `run` will create it).
fn data_dir(dir: &Path) -> Finding {
    let Some(existing) = dir
        .ancestors()
        .find(|a| a.is_dir() || a.as_os_str().is_empty())
    else {
        return Finding::fail(format!("{}: no parent directory exists", dir.display()));
    };
    let existing = if existing.as_os_str().is_empty() {
        Path::new(".")
    } else {
        existing
    };
    let probe = existing.join(format!(".sluice-check-{}", std::process::id()));
    match std::fs::File::create(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            if existing == dir {
                Finding::ok(format!("{} is writable", dir.display()))
            } else {
                Finding::ok(format!(
                    "{} does not exist yet; {} is writable, so run creates it",
                    dir.display(),
                    existing.display()
                ))
            }
        }
        Err(e) => Finding::fail(format!(
            "{} is not writable ({e}): make it writable by this user or set pipeline.data_dir elsewhere",
            existing.display()
        )),
    }
}

/// Whether the API address can be listened on (bound for a moment, then released).
async fn api_address(address: SocketAddr) -> Finding {
    match tokio::net::TcpListener::bind(address).await {
        Ok(_) => Finding::ok(format!("{address} is free to listen on")),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Finding::fail(format!(
            "{address} is in use (is another sluice running?): stop what listens there or set api.address elsewhere"
        )),
        Err(e) => Finding::fail(format!(
            "cannot listen on {address} ({e}): set api.address to an address of this host"
        )),
    }
}
