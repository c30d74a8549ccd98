//! Settings of the `postgres_cdc` source.

use serde::Deserialize;
use sluice_pipeline::component::{BoxFuture, BuildContext, DynSource};
use sluice_pipeline::{
    Error, FieldError, FieldErrors, Finding, HumanDuration, SourceConfig, Validate,
};

use super::source::PostgresCdc;
use crate::postgres::cleanup::CleanupConfig;
use crate::postgres::connect::PostgresUrl;
use crate::postgres::table::TableName;

/// Default for [`PostgresCdcConfig::tables`].
pub const DEFAULT_TABLE: &str = "public.outbox";
/// Default for [`PostgresCdcConfig::status_interval`].
pub const DEFAULT_STATUS_INTERVAL: HumanDuration = HumanDuration::from_millis(500);
/// Default for [`PostgresCdcConfig::max_batch_events`].
pub const DEFAULT_MAX_BATCH_EVENTS: usize = 1024;
/// Default for [`PostgresCdcConfig::lag_interval`].
pub const DEFAULT_LAG_INTERVAL: HumanDuration = HumanDuration::from_secs(5);
/// Default for [`PostgresCdcConfig::replay_order_by`].
pub const DEFAULT_REPLAY_ORDER_BY: &str = "created_at";
/// Default for [`PostgresCdcConfig::created_column`].
pub const DEFAULT_CREATED_COLUMN: &str = "created_at";
/// Prefix of the logical decoding messages sluice writes as heartbeats.
pub const HEARTBEAT_PREFIX: &str = "sluice.heartbeat";

/// Config of the `postgres_cdc` source: outbox rows read from the WAL through a logical
/// replication slot (pgoutput).
///
/// ```toml
/// [sources.outbox]
/// type = "postgres_cdc"
/// url = "${DATABASE_URL}"
/// slot = "sluice_outbox"
/// publication = "sluice_outbox"
/// tables = ["public.outbox"]
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresCdcConfig {
    /// Connection URL, `postgres://user:password@host:port/dbname`. The role needs the
    /// `REPLICATION` attribute (or superuser), and ownership of the tables to create the
    /// publication.
    pub url: PostgresUrl,
    /// The logical replication slot (created with `pgoutput` when missing and `create` is set).
    pub slot: String,
    /// The publication the slot reads (created for `tables` when missing and `create` is set).
    pub publication: String,
    /// Tables whose rows become events, as `schema.table`.
    #[serde(default = "default_tables")]
    pub tables: Vec<String>,
    /// Create the publication and the slot when they are missing (and add missing tables to
    /// the publication). When false, sluice prints the SQL to run instead.
    #[serde(default = "default_true")]
    pub create: bool,
    /// Row operations that become events. Outboxes are insert-only, so updates and deletes are
    /// ignored (and counted) unless listed.
    #[serde(default = "default_operations")]
    pub operations: Vec<Operation>,
    /// Prefixes of `pg_logical_emit_message` records that become events (the table-less
    /// outbox); empty: none.
    #[serde(default)]
    pub message_prefixes: Vec<String>,
    /// How soon a moved checkpoint is confirmed to PostgreSQL at most.
    #[serde(default = "default_status_interval")]
    pub status_interval: HumanDuration,
    /// When set, write a heartbeat (`pg_logical_emit_message`) this often, so the slot keeps
    /// advancing when the published tables are quiet but the rest of the cluster writes.
    pub heartbeat: Option<HumanDuration>,
    /// What to do when the slot is lost (dropped, invalidated with `wal_status = 'lost'`, or
    /// missing after a failover): `error` stops with the reason; `replay` recreates the slot
    /// and republishes every row still in `tables` (same ids: dedupe makes it safe).
    #[serde(default)]
    pub recover: Recover,
    /// Whether the rows already in `tables` when sluice creates the slot are delivered before
    /// what the slot streams: `initial` reads them as of the slot's starting point (an
    /// exported snapshot), so none is missed or read twice; `never` starts with what is
    /// committed after the slot. Applies only to a slot sluice creates: for an existing slot,
    /// republish rows with `sluice backfill`.
    #[serde(default)]
    pub snapshot: Snapshot,
    /// The column that orders rows read from a table rather than the stream: the snapshot,
    /// the replay after slot loss and `sluice backfill`.
    #[serde(default = "default_replay_order_by")]
    pub replay_order_by: String,
    /// Most events per emitted batch; a larger transaction is emitted in parts.
    #[serde(default = "default_max_batch_events")]
    pub max_batch_events: usize,
    /// How often to measure the slot's lag (`pg_current_wal_lsn() - confirmed_flush_lsn`).
    #[serde(default = "default_lag_interval")]
    pub lag_interval: HumanDuration,
    /// The column holding each row's creation time (set by the inserting transaction), which
    /// the cleanup compares with the commit time of the last confirmed transaction.
    #[serde(default = "default_created_column")]
    pub created_column: String,
    /// Delete delivered rows after a retention window (`[sources.ID.cleanup]`); see
    /// `docs/outbox-cleanup.md`.
    pub cleanup: Option<CleanupConfig>,
}

/// A row operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    /// `INSERT`.
    Insert,
    /// `UPDATE` (the event carries the new row).
    Update,
    /// `DELETE` (the event carries the old key, or the old row with `REPLICA IDENTITY FULL`).
    Delete,
}

/// What to do when the replication slot is lost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Recover {
    /// Stop with an error that says what happened and what to do.
    #[default]
    Error,
    /// Recreate the slot and republish the rows still in the tables.
    Replay,
}

/// Whether rows already in the tables are delivered when the slot is created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Snapshot {
    /// Only what is committed after the slot's creation.
    #[default]
    Never,
    /// The rows already there when the slot is created, then the stream.
    Initial,
}

fn default_tables() -> Vec<String> {
    vec![DEFAULT_TABLE.to_owned()]
}
fn default_true() -> bool {
    true
}
fn default_operations() -> Vec<Operation> {
    vec![Operation::Insert]
}
fn default_status_interval() -> HumanDuration {
    DEFAULT_STATUS_INTERVAL
}
fn default_replay_order_by() -> String {
    DEFAULT_REPLAY_ORDER_BY.to_owned()
}
fn default_max_batch_events() -> usize {
    DEFAULT_MAX_BATCH_EVENTS
}
fn default_lag_interval() -> HumanDuration {
    DEFAULT_LAG_INTERVAL
}
fn default_created_column() -> String {
    DEFAULT_CREATED_COLUMN.to_owned()
}

/// Whether `name` is a valid replication slot name (PostgreSQL's rule).
fn valid_slot_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl Validate for PostgresCdcConfig {
    fn validate(&self) -> Result<(), FieldErrors> {
        let mut problems = FieldErrors::new();
        problems.add(
            self.url
                .parse()
                .map(drop)
                .map_err(|m| FieldError::new("url", m)),
        );
        if !valid_slot_name(&self.slot) {
            problems.push(FieldError::new(
                "slot",
                "a slot name uses lowercase letters, digits and '_', at most 63 of them",
            ));
        }
        if self.publication.is_empty() {
            problems.push(FieldError::new("publication", "must not be empty"));
        }
        if self.tables.is_empty() {
            problems.push(FieldError::new("tables", "list at least one table"));
        }
        for (i, table) in self.tables.iter().enumerate() {
            if let Err(problem) = TableName::parse(table) {
                problems.push(FieldError::new(format!("tables[{i}]"), problem));
            }
        }
        if self.operations.is_empty() && self.message_prefixes.is_empty() {
            problems.push(FieldError::new(
                "operations",
                "nothing would become an event: list an operation or a message prefix",
            ));
        }
        if self.message_prefixes.iter().any(|p| p == HEARTBEAT_PREFIX) {
            problems.push(FieldError::new(
                "message_prefixes",
                format!("{HEARTBEAT_PREFIX:?} is sluice's own heartbeat prefix"),
            ));
        }
        for (field, value) in [
            ("status_interval", self.status_interval),
            ("lag_interval", self.lag_interval),
        ] {
            if value.get().is_zero() {
                problems.push(FieldError::new(field, "must be longer than zero"));
            }
        }
        if self.heartbeat.is_some_and(|h| h.get().is_zero()) {
            problems.push(FieldError::new(
                "heartbeat",
                "must be longer than zero (omit it for none)",
            ));
        }
        if self.snapshot == Snapshot::Initial && !self.create {
            problems.push(FieldError::new(
                "snapshot",
                "the snapshot is taken as sluice creates the slot, which create = false forbids: set create = true, or create the slot yourself and republish the rows already there with `sluice backfill`",
            ));
        }
        if self.max_batch_events == 0 {
            problems.push(FieldError::new("max_batch_events", "must be at least 1"));
        }
        if let Some(cleanup) = &self.cleanup {
            problems.add_within(cleanup.validate(), "cleanup");
        }
        problems.into_result()
    }
}

impl SourceConfig for PostgresCdcConfig {
    fn build(&self, _cx: &BuildContext) -> Result<Box<dyn DynSource>, Error> {
        let database = self
            .url
            .parse()
            .map_err(|m| Error::new(sluice_pipeline::ErrorKind::Config, m))?;
        Ok(Box::new(PostgresCdc::new(self.clone(), database)))
    }

    fn check(&self) -> BoxFuture<'_, Vec<Finding>> {
        Box::pin(super::check::check(self))
    }
}

impl PostgresCdcConfig {
    /// The tables, parsed; [`Validate::validate`] refuses a config with a name that does
    /// not parse, so none is left out.
    pub(crate) fn qualified_tables(&self) -> Vec<TableName> {
        self.tables
            .iter()
            .filter_map(|table| TableName::parse(table).ok())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &str) -> Result<PostgresCdcConfig, FieldError> {
        let text = format!(
            "url = \"postgres://postgres@127.0.0.1/db\"\nslot = \"s\"\npublication = \"p\"\n{extra}"
        );
        let config: PostgresCdcConfig =
            sluice_pipeline::config::deserialize(toml::from_str::<toml::Value>(&text).unwrap())?;
        config.validate().map_err(|mut e| e.0.remove(0))?;
        Ok(config)
    }

    #[test]
    fn debug_output_shows_the_url_without_its_password() {
        let text = "url = \"postgres://relay:s3cret@db:5432/shop?sslmode=verify-full\"\nslot = \"s\"\npublication = \"p\"";
        let c: PostgresCdcConfig =
            sluice_pipeline::config::deserialize(toml::from_str::<toml::Value>(text).unwrap())
                .unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(
            shown.contains("\"postgres://relay@db:5432/shop?sslmode=verify-full\""),
            "{shown}"
        );
        let c: PostgresCdcConfig = sluice_pipeline::config::deserialize(
            toml::from_str::<toml::Value>(
                "url = \"postgres://relay:s3c@r3t@db/shop\"\nslot = \"s\"\npublication = \"p\"",
            )
            .unwrap(),
        )
        .unwrap();
        let shown = format!("{c:?}");
        assert!(
            shown.contains("<invalid url>") && !shown.contains("r3t"),
            "{shown}"
        );
    }

    #[test]
    fn defaults_follow_the_outbox_contract() {
        let c = parse("").unwrap();
        assert_eq!(c.tables, ["public.outbox"]);
        assert_eq!(c.operations, [Operation::Insert]);
        assert!(c.create);
        assert_eq!(c.recover, Recover::Error);
        assert_eq!(c.snapshot, Snapshot::Never);
        assert_eq!(c.qualified_tables(), ["public.outbox"]);
    }

    #[test]
    fn refuses_bad_settings_with_the_field() {
        for (extra, field) in [
            ("tables = []", "tables"),
            ("tables = [\"a.b.c\"]", "tables[0]"),
            ("operations = []", "operations"),
            ("max_batch_events = 0", "max_batch_events"),
            (
                "message_prefixes = [\"sluice.heartbeat\"]",
                "message_prefixes",
            ),
        ] {
            assert_eq!(parse(extra).unwrap_err().path, field, "{extra}");
        }
        assert_eq!(parse("recover = \"maybe\"").unwrap_err().path, "recover");
        assert_eq!(parse("snapshot = \"always\"").unwrap_err().path, "snapshot");
        let refused = parse("snapshot = \"initial\"\ncreate = false").unwrap_err();
        assert_eq!(refused.path, "snapshot");
        assert!(refused.message.contains("sluice backfill"), "{refused:?}");
    }
}
