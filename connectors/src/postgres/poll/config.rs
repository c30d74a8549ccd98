//! The `postgres_poll` source's settings: the documentation of every one, their defaults and
//! the rules checked before anything connects.

use serde::Deserialize;
use sluice_pipeline::component::{BoxFuture, BuildContext, DynSource};
use sluice_pipeline::{
    Error, ErrorKind, FieldError, FieldErrors, Finding, HumanDuration, SourceConfig, Validate,
};

use super::source::PollSource;
use crate::postgres::cleanup::CleanupConfig;
use crate::postgres::connect::PostgresUrl;

/// Default for [`PollConfig::table`].
pub const DEFAULT_TABLE: &str = "public.outbox";
/// Default for [`PollConfig::position_column`].
pub const DEFAULT_POSITION_COLUMN: &str = "seq";
/// Default for [`PollConfig::published_column`].
pub const DEFAULT_PUBLISHED_COLUMN: &str = "published_at";
/// Default for [`PollConfig::aggregate_column`].
pub const DEFAULT_AGGREGATE_COLUMN: &str = "aggregateid";
/// Default for [`PollConfig::batch_size`].
pub const DEFAULT_BATCH_SIZE: usize = 1000;
/// Default for [`PollConfig::interval`].
pub const DEFAULT_INTERVAL: HumanDuration = HumanDuration::from_millis(250);
/// Default for [`PollConfig::max_batches_in_flight`].
pub const DEFAULT_MAX_BATCHES_IN_FLIGHT: usize = 4;
/// Default for [`PollConfig::created_column`].
pub const DEFAULT_CREATED_COLUMN: &str = "created_at";
/// Default for [`PollConfig::backlog_interval`].
pub const DEFAULT_BACKLOG_INTERVAL: HumanDuration = HumanDuration::from_secs(5);
/// Longest channel name PostgreSQL accepts (`NAMEDATALEN - 1` bytes).
const MAX_CHANNEL_BYTES: usize = 63;

/// Config of the `postgres_poll` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollConfig {
    /// Connection URL, `postgres://user:password@host:port/dbname`. The role needs `SELECT` on
    /// the table and `UPDATE` on its published column (and `DELETE` when cleanup is on).
    pub url: PostgresUrl,
    /// The outbox table, written as SQL names it: `schema.table`, with double quotes around
    /// names that need them. A plain (not partitioned) table.
    #[serde(default = "default_table")]
    pub table: String,
    /// The column that orders the outbox: an integer that grows with every insert, such as a
    /// `bigint GENERATED ALWAYS AS IDENTITY` (or `bigserial`) column. Its value becomes the
    /// event id. Rows where it is NULL or negative are quarantined. Column names are exact
    /// (case-sensitive).
    #[serde(default = "default_position_column")]
    pub position_column: String,
    /// The `timestamptz` column that is NULL until the row's event is acknowledged end to end,
    /// and then set to the time it was marked.
    #[serde(default = "default_published_column")]
    pub published_column: String,
    /// The column that identifies the aggregate: rows with the same value are delivered in
    /// position order, even with several relays polling the table.
    #[serde(default = "default_aggregate_column")]
    pub aggregate_column: String,
    /// Most rows one poll locks and emits.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// How long to wait before polling again once the table has no unpublished rows left.
    /// With `notify_channel` set this is only a safety net, and can be long.
    #[serde(default = "default_interval")]
    pub interval: HumanDuration,
    /// A channel to `LISTEN` on: a notification on it (sent by a trigger on the table, see
    /// `examples/sql/outbox-poll.sql`) makes the source poll at once instead of at the next
    /// interval. Unset, the source only polls on the interval.
    pub notify_channel: Option<String>,
    /// Most batches emitted and not yet marked. Each holds a connection with an open
    /// transaction (and its row locks) until its events are acknowledged.
    #[serde(default = "default_max_batches_in_flight")]
    pub max_batches_in_flight: usize,
    /// The `timestamptz` (or `timestamp`) column holding each row's creation time, from which
    /// the backlog's age is measured (`sluice_postgres_poll_backlog_age_seconds`). A table
    /// without it is polled all the same; only the age is not measured.
    #[serde(default = "default_created_column")]
    pub created_column: String,
    /// How often to measure the backlog: the unpublished rows and the age of the oldest, with
    /// one `count(*)` over the unpublished rows on a connection of its own.
    #[serde(default = "default_backlog_interval")]
    pub backlog_interval: HumanDuration,
    /// Delete delivered rows after a retention window; unset, rows are kept.
    pub cleanup: Option<CleanupConfig>,
}

fn default_table() -> String {
    DEFAULT_TABLE.to_owned()
}
fn default_position_column() -> String {
    DEFAULT_POSITION_COLUMN.to_owned()
}
fn default_published_column() -> String {
    DEFAULT_PUBLISHED_COLUMN.to_owned()
}
fn default_aggregate_column() -> String {
    DEFAULT_AGGREGATE_COLUMN.to_owned()
}
fn default_batch_size() -> usize {
    DEFAULT_BATCH_SIZE
}
fn default_interval() -> HumanDuration {
    DEFAULT_INTERVAL
}
fn default_max_batches_in_flight() -> usize {
    DEFAULT_MAX_BATCHES_IN_FLIGHT
}
fn default_created_column() -> String {
    DEFAULT_CREATED_COLUMN.to_owned()
}
fn default_backlog_interval() -> HumanDuration {
    DEFAULT_BACKLOG_INTERVAL
}

impl Validate for PollConfig {
    fn validate(&self) -> Result<(), FieldErrors> {
        let mut problems = FieldErrors::new();
        problems.add(
            self.url
                .parse()
                .map(drop)
                .map_err(|m| FieldError::new("url", m)),
        );
        for (field, value) in [
            ("table", &self.table),
            ("position_column", &self.position_column),
            ("published_column", &self.published_column),
            ("aggregate_column", &self.aggregate_column),
            ("created_column", &self.created_column),
        ] {
            if value.is_empty() {
                problems.push(FieldError::new(field, "must not be empty"));
            }
        }
        if self.published_column == self.position_column {
            problems.push(FieldError::new(
                "published_column",
                "must differ from position_column",
            ));
        }
        if self.batch_size == 0 {
            problems.push(FieldError::new("batch_size", "must be at least 1"));
        }
        for (field, value) in [
            ("interval", self.interval),
            ("backlog_interval", self.backlog_interval),
        ] {
            if value.get().is_zero() {
                problems.push(FieldError::new(field, "must be longer than 0s"));
            }
        }
        if self.max_batches_in_flight == 0 {
            problems.push(FieldError::new(
                "max_batches_in_flight",
                "must be at least 1",
            ));
        }
        if let Some(channel) = &self.notify_channel
            && (channel.is_empty() || channel.len() > MAX_CHANNEL_BYTES)
        {
            problems.push(FieldError::new(
                "notify_channel",
                format!(
                    "must be 1 to {MAX_CHANNEL_BYTES} bytes long (omit it to poll on the interval only)"
                ),
            ));
        }
        if let Some(cleanup) = &self.cleanup {
            problems.add_within(cleanup.validate(), "cleanup");
        }
        problems.into_result()
    }
}

impl SourceConfig for PollConfig {
    fn build(&self, _cx: &BuildContext) -> Result<Box<dyn DynSource>, Error> {
        let database = self
            .url
            .parse()
            .map_err(|m| Error::new(ErrorKind::Config, m))?;
        Ok(Box::new(PollSource::new(self.clone(), database)))
    }

    fn check(&self) -> BoxFuture<'_, Vec<Finding>> {
        Box::pin(super::check::check(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<PollConfig, FieldError> {
        let config: PollConfig =
            sluice_pipeline::config::deserialize(toml::from_str(text).unwrap())?;
        config.validate().map_err(|mut e| e.0.remove(0))?;
        Ok(config)
    }

    #[test]
    fn debug_output_shows_the_url_without_its_password() {
        let config = parse(r#"url = "postgres://relay:s3cret@db:5432/shop""#).unwrap();
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(
            shown.contains("\"postgres://relay@db:5432/shop\""),
            "{shown}"
        );
    }

    #[test]
    fn only_the_url_is_required() {
        let config = parse(r#"url = "postgres://relay@db:5432/shop""#).unwrap();
        assert_eq!(config.table, DEFAULT_TABLE);
        assert_eq!(config.position_column, DEFAULT_POSITION_COLUMN);
        assert_eq!(config.published_column, DEFAULT_PUBLISHED_COLUMN);
        assert_eq!(config.aggregate_column, DEFAULT_AGGREGATE_COLUMN);
        assert_eq!(config.batch_size, DEFAULT_BATCH_SIZE);
        assert_eq!(config.interval, DEFAULT_INTERVAL);
        assert_eq!(config.max_batches_in_flight, DEFAULT_MAX_BATCHES_IN_FLIGHT);
        assert_eq!(config.created_column, DEFAULT_CREATED_COLUMN);
        assert_eq!(config.backlog_interval, DEFAULT_BACKLOG_INTERVAL);
        assert!(config.notify_channel.is_none());
        assert!(config.cleanup.is_none());
        assert!(parse("batch_size = 5").is_err());
    }

    #[test]
    fn every_setting_and_a_nested_cleanup() {
        let config = parse(
            r#"
            url = "host=127.0.0.1 user=postgres"
            table = "app.events"
            position_column = "id"
            published_column = "sent_at"
            aggregate_column = "order_id"
            batch_size = 10
            interval = "10s"
            notify_channel = "outbox"
            max_batches_in_flight = 1
            [cleanup]
            retention = "1h"
            "#,
        )
        .unwrap();
        assert_eq!(config.interval.get().as_secs(), 10);
        assert_eq!(config.notify_channel.as_deref(), Some("outbox"));
        assert_eq!(config.cleanup.unwrap().retention.get().as_secs(), 3600);
    }

    #[test]
    fn broken_rules_name_the_field() {
        let url = r#"url = "postgres://u@h/db""#;
        for (extra, path) in [
            ("batch_size = 0", "batch_size"),
            ("interval = \"0ms\"", "interval"),
            ("backlog_interval = \"0s\"", "backlog_interval"),
            ("created_column = \"\"", "created_column"),
            ("max_batches_in_flight = 0", "max_batches_in_flight"),
            ("notify_channel = \"\"", "notify_channel"),
            ("published_column = \"seq\"", "published_column"),
            ("aggregate_column = \"\"", "aggregate_column"),
            (
                "[cleanup]\nretention = \"1h\"\nbatch_size = 0",
                "cleanup.batch_size",
            ),
        ] {
            let error = parse(&format!("{url}\n{extra}")).unwrap_err();
            assert_eq!(error.path, path, "{extra}: {error}");
        }
        let long = "x".repeat(64);
        let error = parse(&format!("{url}\nnotify_channel = \"{long}\"")).unwrap_err();
        assert_eq!(error.path, "notify_channel");
    }

    #[test]
    fn unknown_settings_and_bad_urls_are_refused() {
        let error = parse("url = \"postgres://u@h/db\"\nbatchsize = 5").unwrap_err();
        assert!(error.message.contains("unknown field"), "{error}");
        let error = parse("url = \"postgres://u:pw@h:port/db\"").unwrap_err();
        assert_eq!(error.path, "url");
        assert!(!error.message.contains("pw@"), "{error}");
    }
}
