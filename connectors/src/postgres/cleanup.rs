//! Outbox cleanup: deletes outbox rows once they are confirmed delivered and older than a
//! retention window, in bounded batches, so the table stays small without ever losing an event.
//!
//! What "confirmed delivered" means depends on the relay, so the predicate is a [`Delivered`]
//! value chosen by the source that owns the cleanup:
//!
//! - polling ([`Delivered::Published`]): the `postgres_poll` source sets `published_at` only
//!   after the row's event was acknowledged end to end, so a row is deletable once
//!   `published_at < now() - retention`;
//! - CDC ([`Delivered::CreatedBefore`]): the replication slot's confirmed position is the proof
//!   of delivery, and rows carry no LSN. The CDC source publishes the commit time of the last
//!   confirmed transaction; a row is deletable once `created_at < <that commit time> -
//!   retention`. This assumes `created_at` is set by the inserting transaction (`DEFAULT now()`)
//!   and that no transaction writing the outbox stays open longer than the retention window:
//!   then such a row committed before the confirmed transaction, which is at or before the
//!   confirmed LSN.
//!
//! Each batch is one statement, `DELETE … WHERE ctid = ANY(ARRAY(SELECT ctid … LIMIT n FOR
//! UPDATE SKIP LOCKED))`: short transactions, no waiting on rows another relay or cleanup holds,
//! and a TID scan for the delete itself. A round deletes batches until one comes back short;
//! rounds run every `interval`. See `docs/outbox-cleanup.md` for the options around it.
//!
//! ```toml
//! [sources.outbox.cleanup]
//! retention = "1h"
//! batch_size = 1000
//! interval = "10s"
//! ```

use std::time::{Duration, SystemTime};

use metrics::{Counter, counter};
use serde::Deserialize;
use sluice_pipeline::error::chain;
use sluice_pipeline::metrics::labels;
use sluice_pipeline::{Error, FieldError, FieldErrors, HumanDuration, Validate};
use tokio::sync::watch;
use tokio_postgres::Client;

use super::connect::{Database, Sessions, quote_ident};
use super::error::DbError;
use super::table::{Privilege, Table};

sluice_pipeline::metric_families! {
    /// Delivered outbox rows a cleanup deleted.
    counter DELETED_ROWS = "sluice_postgres_cleanup_deleted_rows_total";
    /// Failed cleanup rounds; the next round tries again.
    counter ERRORS = "sluice_postgres_cleanup_errors_total";
}

/// Default for [`CleanupConfig::batch_size`].
pub const DEFAULT_BATCH_SIZE: usize = 1000;
/// Default for [`CleanupConfig::interval`].
pub const DEFAULT_INTERVAL: HumanDuration = HumanDuration::from_secs(10);
/// Column types accepted for a creation time column (the cleanup's, the poll backlog's age).
pub(crate) const TIME_TYPES: &[&str] = &["timestamp with time zone", "timestamp without time zone"];

/// Config of an outbox cleanup, a table inside its source's config
/// (`[sources.<id>.cleanup]`). Present means enabled.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CleanupConfig {
    /// How long delivered rows are kept before they may be deleted, such as `"1h"`: the
    /// window in which they can still be inspected or replayed.
    pub retention: HumanDuration,
    /// Most rows one `DELETE` removes; each batch is its own short transaction.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// How often a cleanup round runs. A round deletes batches until one comes back short.
    #[serde(default = "default_interval")]
    pub interval: HumanDuration,
}

fn default_batch_size() -> usize {
    DEFAULT_BATCH_SIZE
}
fn default_interval() -> HumanDuration {
    DEFAULT_INTERVAL
}

impl Validate for CleanupConfig {
    fn validate(&self) -> Result<(), FieldErrors> {
        if self.batch_size == 0 {
            return Err(FieldError::new("batch_size", "must be at least 1").into());
        }
        if self.interval.get().is_zero() {
            return Err(FieldError::new("interval", "must be longer than 0s").into());
        }
        Ok(())
    }
}

/// Which rows are confirmed delivered, as the relay that owns the cleanup knows it.
#[derive(Debug, Clone)]
pub enum Delivered {
    /// Polling: the relay sets `column` (its `published_column`) once the row's event is
    /// acknowledged. Deletes rows where `column < now() - retention`.
    Published {
        /// The publication time column, such as `published_at`.
        column: String,
    },
    /// CDC: the relay publishes the commit time of the last transaction the replication slot
    /// confirmed. Deletes rows where `column < confirmed - retention`; nothing while no
    /// transaction is confirmed yet.
    CreatedBefore {
        /// The creation time column, such as `created_at`, set by the inserting transaction.
        column: String,
        /// The commit time of the last confirmed transaction.
        confirmed: watch::Receiver<Option<SystemTime>>,
    },
}

impl Delivered {
    /// The time column and the setting that names it (for errors).
    fn column(&self) -> (&str, &'static str) {
        match self {
            Delivered::Published { column } => (column, "published_column"),
            Delivered::CreatedBefore { column, .. } => (column, "created_column"),
        }
    }
}

/// One table's cleanup, checked against the catalog and ready to run.
#[derive(Debug)]
pub struct Cleanup {
    table: String,
    delivered: Delivered,
    delete: String,
    retention_secs: f64,
    batch_size: usize,
    interval: Duration,
}

impl Cleanup {
    /// Checks that `table` has the time column `delivered` names and that the role may
    /// delete from it, and prepares the statement.
    pub async fn prepare(
        client: &Client,
        table: &Table,
        delivered: Delivered,
        config: &CleanupConfig,
    ) -> Result<Cleanup, DbError> {
        let (column, setting) = delivered.column();
        table.require_column(setting, column, Some(TIME_TYPES))?;
        table.require_privilege(client, Privilege::Delete).await?;
        let column = quote_ident(column);
        // `column < …` is false for NULL, so undelivered (unpublished) rows never match.
        let boundary = match delivered {
            Delivered::Published { .. } => "now() - make_interval(secs => $1)",
            Delivered::CreatedBefore { .. } => "$3::timestamptz - make_interval(secs => $1)",
        };
        let name = table.quoted_name();
        let delete = format!(
            "DELETE FROM {name} WHERE ctid = ANY(ARRAY(\
             SELECT ctid FROM {name} WHERE {column} < {boundary} \
             LIMIT $2 FOR UPDATE SKIP LOCKED))"
        );
        Ok(Cleanup {
            table: table.qualified_name(),
            delivered,
            delete,
            retention_secs: config.retention.get().as_secs_f64(),
            batch_size: config.batch_size,
            interval: config.interval.get(),
        })
    }

    /// Deletes at most one batch of delivered rows older than the retention window, in one
    /// statement, and returns how many it deleted.
    pub async fn delete_batch(&self, client: &Client) -> Result<u64, DbError> {
        let limit = i64::try_from(self.batch_size).unwrap_or(i64::MAX);
        let deleted = match &self.delivered {
            Delivered::Published { .. } => {
                client
                    .execute(&self.delete, &[&self.retention_secs, &limit])
                    .await
            }
            Delivered::CreatedBefore { confirmed, .. } => {
                let Some(confirmed) = *confirmed.borrow() else {
                    return Ok(0);
                };
                client
                    .execute(&self.delete, &[&self.retention_secs, &limit, &confirmed])
                    .await
            }
        };
        deleted.map_err(DbError::statement("deleting delivered outbox rows"))
    }

    /// Runs a round every interval, on a connection of its own, until the task is dropped.
    /// Failures are logged and counted (for source `id`), and the next round reconnects.
    pub async fn run(self, database: Database, id: String) {
        describe();
        let labels = labels("source", &id);
        let (deleted, errors) = (counter!(DELETED_ROWS, &labels), counter!(ERRORS, &labels));
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut client = None;
        loop {
            tick.tick().await;
            if let Err(error) = self.round(&database, &mut client, &deleted).await {
                errors.increment(1);
                tracing::warn!(
                    table = %self.table,
                    error = %chain(&error),
                    "outbox cleanup failed; trying again next round"
                );
                client = None;
            }
        }
    }

    async fn round(
        &self,
        database: &Database,
        client: &mut Option<Client>,
        deleted_rows: &Counter,
    ) -> Result<(), Error> {
        let client = match client.take().filter(|c| !c.is_closed()) {
            Some(open) => client.insert(open),
            None => {
                let fresh = database.connect().await?;
                // Deletes need not wait for the WAL flush: one lost in a server crash is
                // simply done again by a later round.
                fresh
                    .batch_execute("SET synchronous_commit = off")
                    .await
                    .map_err(DbError::statement("configuring the cleanup session"))?;
                client.insert(fresh)
            }
        };
        let mut total = 0;
        loop {
            let deleted = self.delete_batch(client).await?;
            deleted_rows.increment(deleted);
            total += deleted;
            if deleted < self.batch_size as u64 {
                break;
            }
        }
        if total > 0 {
            tracing::debug!(table = %self.table, deleted = total, "outbox cleanup round");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<CleanupConfig, FieldError> {
        let config: CleanupConfig =
            sluice_pipeline::config::deserialize(toml::from_str(text).unwrap())?;
        config.validate().map_err(|mut e| e.0.remove(0))?;
        Ok(config)
    }

    #[test]
    fn defaults_and_rules() {
        let config = parse(r#"retention = "1h""#).unwrap();
        assert_eq!(config.batch_size, DEFAULT_BATCH_SIZE);
        assert_eq!(config.interval, DEFAULT_INTERVAL);
        assert_eq!(config.retention.get(), Duration::from_secs(3600));
        let missing = parse("batch_size = 5").unwrap_err();
        assert!(
            missing.message.contains("missing field `retention`"),
            "{missing}"
        );
        assert_eq!(
            parse("retention = \"1h\"\nbatch_size = 0")
                .unwrap_err()
                .path,
            "batch_size"
        );
        assert_eq!(
            parse("retention = \"1h\"\ninterval = \"0s\"")
                .unwrap_err()
                .path,
            "interval"
        );
        let unknown = parse("retention = \"1h\"\nretain = 3").unwrap_err();
        assert!(
            unknown.message.contains("unknown field `retain`"),
            "{unknown}"
        );
    }
}
