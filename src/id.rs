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
//! with the same pair would, as would two processes anywhere: a pair given with `--datacenter`
//! and `--worker` is the caller's to keep unique. With `--coord URL` (and no `--worker`) the
//! pair is leased from the coordination service instead: held while the command runs, never
//! shared with a live process, reused only after the guard time.
//!
//! ```text
//! sluice id snowflake --coord etcd://127.0.0.1:2379 --count 3
//! ```

use std::io::{BufWriter, ErrorKind, Write};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Subcommand};
use sluice_coord::{Coord, CoordConfig};
use sluice_ids::calendar;
use sluice_ids::random::{Ulids, Uuid7, uuid4};
use sluice_ids::snowflake::lease::{self, LeasedWorker};
use sluice_ids::snowflake::{
    Layout, Node, Options, PairRange, Snowflake, StaticWorker, WorkerClaim, parse_range,
};

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
        datacenter: Option<u64>,
        /// The worker within the datacenter (0 to 31 in the default layout). No other live
        /// process may use the same pair. Without it, with --coord, the pair is leased.
        #[arg(long)]
        worker: Option<u64>,
        #[command(flatten)]
        leased: LeaseArgs,
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

/// Where a leased pair comes from: the global `--coord URL` and the range to lease in.
#[derive(Debug, Args)]
pub struct LeaseArgs {
    /// The datacenters to lease a pair in, `A-B` (default: every one the layout holds).
    #[arg(long, value_name = "A-B")]
    datacenters: Option<String>,
    /// The workers to lease a pair among, `A-B` (default: every one the layout holds).
    #[arg(long, value_name = "A-B")]
    workers: Option<String>,
    /// How long a reused pair waits before issuing: above the lease TTL plus the clock step
    /// allowed between machines (default: the TTL plus 1 s).
    #[arg(long, value_name = "DURATION")]
    guard: Option<String>,
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

/// Runs `sluice id …`; `coord` is the global `--coord URL`, for a leased pair.
pub fn run(command: IdCommand, coord: Option<&str>) -> ExitCode {
    match execute(command, coord) {
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

/// What keeps a leased pair held while ids are issued: the runtime renewing its session.
type Session = Option<(tokio::runtime::Runtime, Coord)>;

/// The pair to issue under: the one given, or one leased (with what keeps it held).
fn claim(
    datacenter: Option<u64>,
    worker: Option<u64>,
    leased: &LeaseArgs,
    coord: Option<&str>,
    layout: &Layout,
) -> Result<(Arc<dyn WorkerClaim>, Session), Failure> {
    if let (Some(datacenter), Some(worker)) = (datacenter, worker) {
        return Ok((Arc::new(StaticWorker(Node { datacenter, worker })), None));
    }
    if worker.is_some() {
        return Err(Failure::Usage("--worker needs --datacenter".into()));
    }
    let url = coord.ok_or_else(|| {
        Failure::Usage("give --datacenter and --worker, or --coord URL to lease a pair".into())
    })?;
    let parse = |text: &Option<String>, what: &str| {
        text.as_deref()
            .map(parse_range)
            .transpose()
            .map_err(|e| Failure::Usage(format!("--{what} {e}")))
    };
    let range = PairRange::resolve(
        layout,
        datacenter,
        parse(&leased.datacenters, "datacenters")?,
        parse(&leased.workers, "workers")?,
    )
    .map_err(|e| Failure::Usage(e.to_string()))?;
    let config =
        CoordConfig::from_url(url).map_err(|e| Failure::Usage(format!("--coord {url}: {e}")))?;
    let guard = leased
        .guard
        .as_deref()
        .map(|text| {
            text.parse::<sluice_pipeline::HumanDuration>()
                .map(|d| d.get())
                .map_err(|e| Failure::Usage(format!("--guard {text:?}: {e}")))
        })
        .transpose()?;
    let guard = lease::guard_time(config.ttl(), guard)
        .map_err(|reason| Failure::Usage(format!("--guard {reason}")))?;
    let runtime = tokio::runtime::Runtime::new().map_err(Failure::Output)?;
    let (coord, leased) = runtime
        .block_on(async {
            let coord = Coord::connect(&config).await?;
            let leased = LeasedWorker::lease(&coord, &range, guard).await?;
            anyhow::Ok((coord, leased))
        })
        .map_err(|e| Failure::Usage(format!("leasing a worker pair: {e:#}")))?;
    eprintln!(
        "sluice id: leased datacenter {} worker {} (token {})",
        leased.node().datacenter,
        leased.node().worker,
        leased.token()
    );
    Ok((leased, Some((runtime, coord))))
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

fn execute(command: IdCommand, coord: Option<&str>) -> Result<(), Failure> {
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    match command {
        IdCommand::Snowflake {
            datacenter,
            worker,
            leased,
            count,
            layout,
        } => {
            let layout = layout.layout().map_err(Failure::Usage)?;
            // The runtime keeps the lease's session renewed while the ids are issued.
            let (claim, _session) = claim(datacenter, worker, &leased, coord, &layout)?;
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
