//! The `sluice` command: runs and checks pipelines.

mod api_client;
mod backfill;
mod check;
mod coordination;
mod id;
mod registry;
mod status;
mod tap;

/// jemalloc instead of glibc's malloc: a relay allocates and frees many small, short-lived
/// objects across threads (events, frames, confirms), where glibc's malloc took about a third
/// of sluice's CPU. Measured on a 200k-event drain into RabbitMQ: sluice's CPU −25–35%, peak
/// RSS +4 MiB (docs/benchmarks.md); mimalloc saved as much CPU but held 40 MiB more.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use coordination::ConfigSource;
use sluice_pipeline::error::chain;
use sluice_pipeline::metrics::reload_counter;
use sluice_pipeline::{Config, PipelineSpec, Registry, ShutdownTrigger};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

const EXAMPLES: &str = "\
Examples:
  sluice run examples/generator.toml         run a pipeline until it finishes or is signalled
  sluice run a.toml b.toml                   run two pipelines in one process
  sluice --coord etcd://127.0.0.1:2379 config put relay relay.toml
  sluice --coord etcd://127.0.0.1:2379 run coord:relay
                                             run a stored config; reload when it changes
  sluice --coord etcd://127.0.0.1:2379 lock nightly -- ./backup.sh
                                             run a command under a lock (SLUICE_FENCING_TOKEN)
  sluice check examples/generator.toml       validate a config and the servers it uses
  sluice check --offline pipeline.toml       validate the file only
  sluice status --api 127.0.0.1:9464         what a running process leads, holds and lags
  sluice status --coord etcd://127.0.0.1:2379
                                             each pipeline of the cluster, with its leader
  sluice tap pipeline.toml router --limit 5  five events leaving component router, live
  sluice backfill pipeline.toml --source outbox --where \"created_at > now() - interval '1 hour'\"
                                             republish the last hour's outbox rows (same ids)
  sluice --log-format json run pipeline.toml log as JSON lines

A first SIGTERM or SIGINT drains: sources stop, in-flight events are delivered and
checkpoints recorded. A second one exits at once (still safe: no checkpoint is ever
ahead of delivery). SIGHUP reloads the config: a valid one replaces the running
pipeline once it has drained; an invalid one is logged and changes nothing.

Exit codes: 0 done, 1 a component failed, 2 invalid config, 128+N killed by a second signal N.";

/// sluice: transactional messaging as a pipeline of stages.
#[derive(Debug, Parser)]
#[command(version, about, after_help = EXAMPLES)]
struct Cli {
    /// Log format on standard error.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    /// Log filter, such as `info` or `sluice_pipeline=debug,info` (overrides SLUICE_LOG).
    #[arg(long, global = true)]
    log: Option<String>,
    /// The coordination service, for `lock`, `config` and `coord:KEY` configs, and as the
    /// `[coord]` section of configs that have none: `etcd://HOST:PORT[,HOST:PORT…]`,
    /// `zookeeper://HOST:PORT[,…]` or `embedded:`.
    #[arg(long, global = true, env = "SLUICE_COORD", value_name = "URL")]
    coord: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a pipeline until every source finishes or a signal asks it to stop.
    Run {
        /// The pipeline configs: TOML files (reloaded on SIGHUP) or `coord:KEY` (read from the
        /// coordination service, reloaded when the key changes). Several run in one process,
        /// sharing its resources.
        #[arg(required = true, value_name = "CONFIG")]
        configs: Vec<String>,
    },
    /// Run a command while holding lock NAME of the coordination service, its fencing token
    /// in SLUICE_FENCING_TOKEN (as `etcdctl lock NAME COMMAND`). Exits with the command's
    /// code, or 1 if the lock was lost (the command is then sent SIGTERM).
    Lock {
        /// The lock's name.
        name: String,
        /// The command and its arguments.
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Store or read pipeline configs in the coordination service, for `sluice run coord:KEY`.
    Config {
        #[command(subcommand)]
        command: coordination::ConfigCommand,
    },
    /// Check a pipeline config, then the servers it uses: 0 when all is well, 2 with every
    /// problem listed when the config is invalid, 1 when a server is not ready for it.
    Check {
        /// The pipeline config (TOML).
        config: PathBuf,
        /// Only validate the file; do not connect to any server.
        #[arg(long)]
        offline: bool,
    },
    /// Show what a running process reports: each pipeline, its election, role and fencing
    /// token, and each source's in-flight events, checkpoint and lag. With --coord URL (and
    /// no --api), the whole cluster: each election, the node leading it and its figures.
    Status {
        /// The process's API address (its `[api] address`); 127.0.0.1:9464 when neither this
        /// nor --coord is given.
        #[arg(long, env = "SLUICE_API")]
        api: Option<String>,
        /// Print JSON: the API's as it is, or the cluster's.
        #[arg(long)]
        json: bool,
    },
    /// Watch the events leaving a component of a running process, live, one JSON object per
    /// line (metadata; payloads with --payload). The process is the one running CONFIG (its
    /// `[api] address`), or the one at --api.
    Tap {
        /// `[CONFIG] COMPONENT`: the running process's config (for its API address), and the
        /// source or transform to watch.
        #[arg(required = true, num_args = 1..=2, value_names = ["CONFIG", "COMPONENT"])]
        args: Vec<String>,
        /// The process's API address, when no CONFIG is given.
        #[arg(long, env = "SLUICE_API", default_value = DEFAULT_API)]
        api: String,
        /// Show each event's payload too.
        #[arg(long)]
        payload: bool,
        /// Show one event in N.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
        every: u64,
        /// Stop after N events.
        #[arg(long)]
        limit: Option<u64>,
    },
    /// Republish chosen rows of a postgres_cdc source's tables, with their own ids.
    ///
    /// The rows go through the transforms and sinks the source feeds in CONFIG (consumers that
    /// dedupe by id drop repeats), while the relay may go on running. Prints how many, and
    /// exits 0 once the sinks confirmed every one; a backfill stopped or killed before that
    /// delivers them all when run again.
    Backfill {
        /// The pipeline config (TOML).
        config: PathBuf,
        /// The id of the postgres_cdc source whose tables to read.
        #[arg(long, value_name = "ID")]
        source: String,
        /// The SQL condition choosing the rows, as after WHERE (`true` for all); run by the
        /// server in a read-only transaction.
        #[arg(long = "where", value_name = "CONDITION")]
        filter: String,
    },
    /// Issue ids (Snowflake, UUID v4/v7, ULID) or decode a Snowflake id.
    Id {
        #[command(subcommand)]
        command: id::IdCommand,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// The API address `status` and `tap` read when none is given.
const DEFAULT_API: &str = "127.0.0.1:9464";

/// Exit code for an invalid config.
const EXIT_CONFIG: u8 = 2;
/// Exit code when the pipeline ran and a component failed.
const EXIT_FAILED: u8 = 1;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format, cli.log.as_deref());
    let registry = Arc::new(registry::registry());
    match cli.command {
        Command::Check { config, offline } => {
            let source = ConfigSource::File(config.clone());
            let checked = std::fs::read_to_string(&config)
                .map_err(|e| {
                    vec![format!(
                        "{}: cannot read the config file: {e}",
                        config.display()
                    )]
                })
                .and_then(|text| {
                    coordination::validated(&text, &source, cli.coord.as_deref(), &registry)
                });
            let c = match checked {
                Ok(c) => c,
                Err(problems) => {
                    problems.iter().for_each(|p| eprintln!("{p}"));
                    return config_failure();
                }
            };
            println!(
                "{}: ok ({} sources, {} transforms, {} sinks)",
                config.display(),
                c.sources.len(),
                c.transforms.len(),
                c.sinks.len()
            );
            if offline {
                return ExitCode::SUCCESS;
            }
            block_on(check::live(&c))
        }
        Command::Backfill {
            config,
            source,
            filter,
        } => block_on(backfill::run(
            backfill::Backfill {
                config,
                source,
                filter,
            },
            cli.coord.as_deref(),
            &registry,
        )),
        Command::Id { command } => id::run(command, cli.coord.as_deref()),
        Command::Status { api, json } => match (api, cli.coord) {
            (None, Some(coord)) => block_on(status::cluster(&coord, json)),
            (api, _) => block_on(status::run(api.as_deref().unwrap_or(DEFAULT_API), json)),
        },
        Command::Tap {
            mut args,
            api,
            payload,
            every,
            limit,
        } => {
            let component = args.pop().unwrap_or_default();
            let api = match args.pop() {
                Some(config) => match tap::api_of(Path::new(&config), &registry) {
                    Ok(api) => api,
                    Err(e) => {
                        eprintln!("{e}");
                        return ExitCode::from(EXIT_CONFIG);
                    }
                },
                None => api,
            };
            block_on(tap::run(tap::Tap {
                api,
                component,
                payload,
                every,
                limit,
            }))
        }
        Command::Run { configs } => block_on(run(configs, cli.coord, registry)),
        Command::Lock { name, command } => {
            block_on(coordination::lock(&name, &command, cli.coord.as_deref()))
        }
        Command::Config { command } => block_on(coordination::config(
            command,
            cli.coord.as_deref(),
            &registry,
        )),
    }
}

/// Runs `work` on a multi-threaded runtime.
fn block_on(work: impl Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime.block_on(work),
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

fn config_failure() -> ExitCode {
    eprintln!("(the config is invalid; nothing was started)");
    ExitCode::from(EXIT_CONFIG)
}

/// Loads every config (files, `coord:` keys), refuses the lot if any is invalid or they clash,
/// and runs them in one process until they finish or a signal stops them.
async fn run(args: Vec<String>, coord_url: Option<String>, registry: Arc<Registry>) -> ExitCode {
    let sources: Vec<ConfigSource> = args.iter().map(|a| ConfigSource::parse(a)).collect();
    let coord = if sources.iter().any(|s| matches!(s, ConfigSource::Coord(_))) {
        match coordination::connect(coord_url.as_deref(), "a coord: config").await {
            Ok(coord) => Some(coord),
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(EXIT_FAILED);
            }
        }
    } else {
        None
    };
    let mut configs = Vec::with_capacity(sources.len());
    for source in &sources {
        let text = match coordination::read(source, coord.as_ref()).await {
            Ok(text) => text,
            Err(e) => {
                eprintln!("{e}");
                return config_failure();
            }
        };
        match coordination::validated(&text, source, coord_url.as_deref(), &registry) {
            Ok(config) => configs.push(config),
            Err(problems) => {
                problems.iter().for_each(|p| eprintln!("{p}"));
                return config_failure();
            }
        }
    }
    let problems = sluice_pipeline::check_together(&configs.iter().collect::<Vec<_>>());
    if !problems.is_empty() {
        problems.iter().for_each(|p| eprintln!("{p}"));
        return config_failure();
    }

    let trigger = ShutdownTrigger::new();
    let shutdown = trigger.subscribe();
    tokio::spawn(handle_signals(trigger));
    let mut pipelines = Vec::with_capacity(configs.len());
    let mut files = Vec::new();
    for (config, source) in configs.iter().zip(sources) {
        tracing::info!(config = %config.file.display(), "starting");
        let (updates, receiver) = mpsc::channel(1);
        match (source, &coord) {
            (ConfigSource::Coord(key), Some(coord)) => {
                tokio::spawn(coordination::reload_on_change(
                    coord.clone(),
                    key,
                    coord_url.clone(),
                    Arc::clone(&registry),
                    updates,
                ));
            }
            (source, _) => files.push((source, updates)),
        }
        pipelines.push(PipelineSpec {
            config,
            updates: receiver,
        });
    }
    tokio::spawn(reload_on_hangup(files, coord_url, registry));
    let result = sluice_pipeline::run_process(pipelines, shutdown).await;
    if let Some(coord) = coord {
        coord.close().await;
    }
    match result {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %chain(&e), "pipeline failed");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// On each SIGHUP, reads every config file again and hands each valid one to its pipeline; an
/// invalid one is logged with every problem, counted, and changes nothing.
async fn reload_on_hangup(
    pipelines: Vec<(ConfigSource, mpsc::Sender<Config>)>,
    coord_url: Option<String>,
    registry: Arc<Registry>,
) {
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot install the SIGHUP handler; reloading is off");
        return;
    };
    while hangups.recv().await.is_some() {
        for (source, updates) in &pipelines {
            tracing::info!(config = %source.name(), "SIGHUP: checking the config before reloading");
            let checked = match coordination::read(source, None).await {
                Ok(text) => coordination::validated(&text, source, coord_url.as_deref(), &registry),
                Err(e) => Err(vec![e]),
            };
            match checked {
                Ok(config) => {
                    // A pipeline that has ended takes no more reloads.
                    let _ = updates.send(config).await;
                }
                Err(problems) => {
                    reload_counter("invalid").increment(1);
                    for problem in problems {
                        tracing::error!(%problem, "the new config is invalid; the running pipeline goes on");
                    }
                }
            }
        }
    }
}

/// First SIGTERM/SIGINT: drain. Second: exit at once.
async fn handle_signals(trigger: ShutdownTrigger) {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop sluice with SIGKILL");
        return;
    };
    let first = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(
        signal = first,
        "stopping: draining in-flight events (send another signal to exit at once)"
    );
    trigger.trigger();
    let code = tokio::select! {
        _ = term.recv() => 128 + 15,
        _ = int.recv() => 128 + 2,
    };
    tracing::warn!("second signal: exiting without waiting for in-flight events");
    std::process::exit(code);
}

fn init_logging(format: LogFormat, filter: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = filter
        .map(EnvFilter::new)
        .or_else(|| EnvFilter::try_from_env("SLUICE_LOG").ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
