//! The polling backlog: how many rows wait unpublished, and how old the oldest is. Measured on
//! a connection of its own every `backlog_interval`, beside the relay, so the figures keep
//! moving while the relay waits (a blocked broker, a paused sink): that is when they matter.

use std::time::Duration;

use tokio_postgres::Client;

use super::config::PollConfig;
use super::metrics::PollMetrics;
use crate::postgres::cleanup::TIME_TYPES;
use crate::postgres::connect::{Database, Sessions, quote_ident};
use crate::postgres::error::DbError;
use crate::postgres::table::Table;

/// The backlog measurement of one table.
#[derive(Debug)]
pub(crate) struct Backlog {
    /// One row: the unpublished rows, and the oldest one's age in seconds (0 when there is
    /// none; NULL when the table has no creation time column).
    query: String,
    interval: Duration,
}

impl Backlog {
    /// The measurement of `table`, polled with `config`. A table without a usable
    /// `created_column` is counted, and the age left unmeasured (with a warning saying why).
    pub(crate) fn prepare(table: &Table, config: &PollConfig) -> Backlog {
        let published = quote_ident(&config.published_column);
        let age = match table.require_column(
            "created_column",
            &config.created_column,
            Some(TIME_TYPES),
        ) {
            Ok(_) => format!(
                "coalesce(extract(epoch FROM now() - min({}))::float8, 0)",
                quote_ident(&config.created_column)
            ),
            Err(problem) => {
                tracing::warn!(%problem, "the backlog's age is not measured");
                "NULL::float8".to_owned()
            }
        };
        Backlog {
            query: format!(
                "SELECT count(*), {age} FROM {} WHERE {published} IS NULL",
                table.quoted_name()
            ),
            interval: config.backlog_interval.get(),
        }
    }

    /// Measures every interval until the task is dropped, reconnecting after a failure (logged
    /// at debug: the relay reports the same lost server itself).
    pub(crate) async fn run(self, database: Database, metrics: PollMetrics) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut client: Option<Client> = None;
        loop {
            tick.tick().await;
            if client.as_ref().is_none_or(Client::is_closed) {
                client = database.connect().await.ok();
            }
            let Some(sql) = &client else { continue };
            match self.measure(sql).await {
                Ok((rows, age)) => metrics.backlog(rows, age),
                Err(error) => {
                    tracing::debug!(%error, "measuring the backlog failed");
                    client = None;
                }
            }
        }
    }

    async fn measure(&self, sql: &Client) -> Result<(i64, Option<f64>), DbError> {
        let row = sql
            .query_one(&self.query, &[])
            .await
            .map_err(DbError::statement("measuring the backlog"))?;
        Ok((row.get(0), row.get(1)))
    }
}
