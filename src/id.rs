//! `sluice id`: ids from the command line, and Snowflake ids decoded.
//!
//! ```text
//! sluice id snowflake --datacenter 1 --worker 7 --count 3   three ids, one per line
//! sluice id uuid7 --count 2                                  (also uuid4, ulid)
//! sluice id decode 1234567890123456789                       one JSON object
//! ```
//!
//! A Snowflake generator started here issues its first id in the millisecond after it started,
//! so runs one after another with the same pair never repeat an id; two runs at the same time
//! with the same pair would, as would two processes anywhere: the pair is the caller's to
//! keep unique (leasing it through `[coord]` comes with the coordination work).

use std::io::{BufWriter, ErrorKind, Write};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Subcommand};
use sluice_ids::calendar;
use sluice_ids::random::{Ulids, Uuid7, uuid4};
use sluice_ids::snowflake::{Layout, Node, Options, Snowflake, StaticWorker};

/// Exit code for input that cannot work (the CLI's own, as for an invalid config).
const EXIT_USAGE: u8 = 2;
/// Snowflake ids issued per call while printing many.
const CHUNK: usize = 8192;

/// `sluice id …`.
#[derive(Debug, Subcommand)]
pub enum IdCommand {
    /// Print Snowflake ids for one (datacenter, worker) pair, one per line.
    Snowflake {
        /// The datacenter (0 to 31 in the default layout).
        #[arg(long)]
        datacenter: u64,
        /// The worker within the datacenter (0 to 31 in the default layout). No other live
        /// process may use the same pair.
        #[arg(long)]
        worker: u64,
        /// How many ids.
        #[arg(long, default_value_t = 1)]
        count: u64,
        #[command(flatten)]
        layout: LayoutArgs,
    },
    /// Print random (version 4) UUIDs, one per line.
    Uuid4 {
        /// How many ids.
        #[arg(long, default_value_t = 1)]
        count: u64,
    },
    /// Print time-ordered (version 7) UUIDs, increasing, one per line.
    Uuid7 {
        /// How many ids.
        #[arg(long, default_value_t = 1)]
        count: u64,
    },
    /// Print ULIDs, increasing, one per line.
    Ulid {
        /// How many ids.
        #[arg(long, default_value_t = 1)]
        count: u64,
    },
    /// Decode a Snowflake id: prints {"timestamp_ms", "time", "datacenter", "worker",
    /// "sequence"} as one JSON object (timestamp_ms in Unix milliseconds).
    Decode {
        /// The id, in decimal.
        id: String,
        #[command(flatten)]
        layout: LayoutArgs,
    },
}

/// The layout and epoch of Snowflake ids.
#[derive(Debug, Args)]
pub struct LayoutArgs {
    /// The epoch: RFC 3339 (2024-01-01T00:00:00Z) or Unix milliseconds (1288834974657).
    #[arg(long, default_value = "2024-01-01T00:00:00Z")]
    epoch: String,
    /// Bits of timestamp/datacenter/worker/sequence, most significant first.
    #[arg(long, default_value = "41/5/5/13")]
    layout: String,
}

impl LayoutArgs {
    fn layout(&self) -> Result<Layout, String> {
        let epoch = calendar::parse_instant(&self.epoch).map_err(|e| e.to_string())?;
        let layout: Layout = self.layout.parse().map_err(|e| format!("{e}"))?;
        Ok(layout.with_epoch(epoch))
    }
}

/// Runs `sluice id …`.
pub fn run(command: IdCommand) -> ExitCode {
    match execute(command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(message)) => {
            eprintln!("sluice id: {message}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(Failure::Output(e)) if e.kind() == ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(Failure::Output(e)) => {
            eprintln!("sluice id: writing the ids: {e}");
            ExitCode::FAILURE
        }
    }
}

enum Failure {
    /// The input cannot work: nothing was printed.
    Usage(String),
    /// Standard output failed.
    Output(std::io::Error),
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::Output(e)
    }
}

fn execute(command: IdCommand) -> Result<(), Failure> {
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    match command {
        IdCommand::Snowflake {
            datacenter,
            worker,
            count,
            layout,
        } => {
            let layout = layout.layout().map_err(Failure::Usage)?;
            let claim = Arc::new(StaticWorker(Node { datacenter, worker }));
            let generator = Snowflake::new(layout, claim, Options::default())
                .map_err(|e| Failure::Usage(e.to_string()))?;
            let mut left = count;
            let mut ids = Vec::with_capacity(CHUNK);
            while left > 0 {
                let n = left.min(CHUNK as u64) as usize;
                ids.clear();
                if let Err(e) = generator.fill(n, &mut ids) {
                    // Print what was issued, then say why the rest was not.
                    ids.iter().try_for_each(|id| writeln!(out, "{id}"))?;
                    out.flush()?;
                    return Err(Failure::Usage(e.to_string()));
                }
                ids.iter().try_for_each(|id| writeln!(out, "{id}"))?;
                left -= n as u64;
            }
        }
        IdCommand::Uuid4 { count } => {
            (0..count).try_for_each(|_| writeln!(out, "{}", uuid4().hyphenated()))?;
        }
        IdCommand::Uuid7 { count } => {
            let generator = Uuid7::new();
            (0..count).try_for_each(|_| writeln!(out, "{}", generator.next_id().hyphenated()))?;
        }
        IdCommand::Ulid { count } => {
            let generator = Ulids::new();
            (0..count).try_for_each(|_| writeln!(out, "{}", generator.next_id()))?;
        }
        IdCommand::Decode { id, layout } => {
            let layout = layout.layout().map_err(Failure::Usage)?;
            let number: u64 = id.trim().parse().map_err(|_| {
                Failure::Usage(format!(
                    "{id:?} is not a Snowflake id: expected a decimal number below 2^64"
                ))
            })?;
            let parts = layout
                .decode(number)
                .map_err(|e| Failure::Usage(e.to_string()))?;
            let unix_ms = layout.unix_ms(parts.timestamp);
            writeln!(
                out,
                r#"{{"timestamp_ms":{unix_ms},"time":"{}","datacenter":{},"worker":{},"sequence":{}}}"#,
                calendar::rfc3339(unix_ms),
                parts.datacenter,
                parts.worker,
                parts.sequence
            )?;
        }
    }
    out.flush()?;
    Ok(())
}
