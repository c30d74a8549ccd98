//! `sluice backfill`'s source: the rows of a `postgres_cdc` source's tables that an SQL
//! condition chooses, read once and republished through the pipeline's transforms and sinks.
//! The `outbox` transform gives them their rows' own ids, so consumers that dedupe by id drop
//! those they already have.
//!
//! It reads the tables, not the slot (a relay can keep streaming meanwhile), and keeps a
//! record of its run in `<data_dir>/backfills/<source id>.json`: running while the rows are in
//! flight, delivered with their count once the sinks have confirmed every one. A backfill
//! that is stopped or killed before that leaves the record running; run again, it reads the
//! chosen rows anew and delivers them all (those delivered before arrive again, same ids), so
//! a crash can repeat rows but never skip one.

use std::path::{Path, PathBuf};

use metrics::Counter;
use serde::{Deserialize, Serialize};
use sluice_pipeline::component::{BuildContext, DynSource};
use sluice_pipeline::{
    Error, ErrorKind, FieldError, FieldErrors, Position, Source, SourceConfig, SourceContext,
    Validate,
};

use super::config::PostgresCdcConfig;
use super::metrics::CdcMetrics;
use super::read::TableRead;
use crate::postgres::connect::Database;
use crate::postgres::table::TableName;

/// The position of every backfilled row: the checkpoint passes it once all are delivered.
const POSITION: Position = Position(1);

/// Config of a backfill: the `postgres_cdc` source whose tables to read, and which rows.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackfillConfig {
    /// The `postgres_cdc` source's settings: its connection, tables, `replay_order_by` (the
    /// order rows are read in) and `max_batch_events`; its slot is not used.
    pub source: PostgresCdcConfig,
    /// The SQL condition the rows must match (`WHERE …`), evaluated by the server in a
    /// read-only transaction.
    #[serde(rename = "where")]
    pub filter: String,
}

impl Validate for BackfillConfig {
    fn validate(&self) -> Result<(), FieldErrors> {
        let mut problems = FieldErrors::new();
        problems.add_within(self.source.validate(), "source");
        if self.filter.trim().is_empty() {
            problems.push(FieldError::new(
                "where",
                "choose the rows with an SQL condition, such as \"created_at > now() - interval '1 day'\" (or \"true\" for all)",
            ));
        }
        problems.into_result()
    }
}

impl SourceConfig for BackfillConfig {
    fn build(&self, _cx: &BuildContext) -> Result<Box<dyn DynSource>, Error> {
        let database = self
            .source
            .url
            .parse()
            .map_err(|m| Error::new(ErrorKind::Config, m))?;
        Ok(Box::new(Backfill {
            tables: self.source.qualified_tables(),
            config: self.clone(),
            database,
        }))
    }
}

/// The running backfill.
#[derive(Debug)]
struct Backfill {
    config: BackfillConfig,
    database: Database,
    tables: Vec<TableName>,
}

impl Source for Backfill {
    /// Reads the chosen rows, emits them and waits until every one is resolved; the record
    /// says delivered only when the checkpoint has passed them all.
    async fn run(&mut self, cx: &mut SourceContext) -> Result<(), Error> {
        let path = BackfillRecord::path(cx.data_dir(), cx.id());
        if let Ok(Some(last)) = BackfillRecord::load(&path)
            && last.state == BackfillState::Running
        {
            tracing::warn!(filter = %last.filter, "the last backfill stopped before every row was delivered; this one reads its rows again");
        }
        let filter = self.config.filter.clone();
        BackfillRecord {
            filter: filter.clone(),
            state: BackfillState::Running,
            rows: 0,
        }
        .save(&path)?;
        let read = TableRead {
            purpose: "backfill",
            tables: &self.tables,
            order_by: &self.config.source.replay_order_by,
            filter: Some(&filter),
            snapshot: None,
            batch: self.config.source.max_batch_events,
        };
        let events: Counter = CdcMetrics::new(cx.id()).events;
        cx.set_ready(true);
        let delivered = read.deliver(&self.database, cx, &events, POSITION).await;
        cx.set_ready(false);
        let Some(rows) = delivered? else {
            tracing::warn!("stopped before every chosen row was delivered");
            return Ok(());
        };
        BackfillRecord {
            filter,
            state: BackfillState::Delivered,
            rows,
        }
        .save(&path)?;
        tracing::info!(rows, "backfill delivered");
        Ok(())
    }
}

/// Where a backfill got to, as its record file keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackfillRecord {
    /// The condition that chose the rows.
    #[serde(rename = "where")]
    pub filter: String,
    /// Whether every chosen row is delivered.
    pub state: BackfillState,
    /// How many rows were delivered (0 while running).
    pub rows: u64,
}

/// Whether a backfill's rows are all delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackfillState {
    /// Rows are being read or are in flight.
    Running,
    /// The sinks confirmed every chosen row.
    Delivered,
}

impl BackfillRecord {
    /// The record file of source `id`'s backfills under `data_dir`.
    pub fn path(data_dir: &Path, id: &str) -> PathBuf {
        data_dir.join("backfills").join(format!("{id}.json"))
    }

    /// The record at `path`, or `None` when there is none.
    pub fn load(path: &Path) -> std::io::Result<Option<BackfillRecord>> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} is not a backfill record: {e}", path.display()),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes the record to `path` (a temporary file renamed over the old one, so a crash
    /// leaves one or the other).
    fn save(&self, path: &Path) -> Result<(), Error> {
        let io = |e: std::io::Error| {
            Error::new(
                ErrorKind::Io,
                format!("writing the backfill record {}", path.display()),
            )
            .with_source(e)
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec(self).map_err(|e| io(e.into()))?;
        std::fs::write(&tmp, bytes).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }
}
