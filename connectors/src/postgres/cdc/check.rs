//! Live checks of everything `postgres_cdc` needs from the server, each failure with its exact
//! remedy: `wal_level`, replication slots and senders, the role's privilege, the publication
//! and its tables, the slot, and the outbox tables' columns.

use sluice_pipeline::Finding;
use tokio_postgres::Client;

use super::config::{PostgresCdcConfig, Snapshot};
use super::slot::{publication_sql, snapshot_refusal, unpublished};
use crate::postgres::connect::{Sessions, quote_ident};
use crate::postgres::table::TableName;

/// Columns of the outbox contract (Debezium's defaults), checked when the table has them.
const OUTBOX_COLUMNS: [&str; 5] = ["id", "aggregatetype", "aggregateid", "type", "payload"];

/// Runs every check; a failed connection is the only finding then.
pub(crate) async fn check(config: &PostgresCdcConfig) -> Vec<Finding> {
    let database = match config.url.parse() {
        Ok(d) => d,
        Err(e) => return vec![Finding::fail(e)],
    };
    let sql = match database.connect().await {
        Ok(sql) => sql,
        Err(e) => {
            return vec![Finding::fail(format!(
                "cannot connect: {}",
                sluice_pipeline::error::chain(&e)
            ))];
        }
    };
    let mut findings = vec![Finding::ok(format!("connected to {database}"))];
    match server(&sql, config).await {
        Ok(mut more) => findings.append(&mut more),
        Err(e) => findings.push(Finding::fail(format!("a check query failed: {e}"))),
    }
    findings
}

async fn server(
    sql: &Client,
    config: &PostgresCdcConfig,
) -> Result<Vec<Finding>, tokio_postgres::Error> {
    let mut findings = Vec::new();
    let setting = |name: &'static str| async move {
        sql.query_one("SELECT current_setting($1)", &[&name])
            .await
            .map(|r| r.get::<_, String>(0))
    };

    let wal_level = setting("wal_level").await?;
    findings.push(if wal_level == "logical" {
        Finding::ok("wal_level is logical")
    } else {
        Finding::fail(format!(
            "wal_level is {wal_level}: run `ALTER SYSTEM SET wal_level = logical` and restart PostgreSQL"
        ))
    });

    let max_slots: i64 = setting("max_replication_slots").await?.parse().unwrap_or(0);
    let used: i64 = sql
        .query_one("SELECT count(*) FROM pg_replication_slots", &[])
        .await?
        .get(0);
    let slot_row = sql
        .query_opt(
            "SELECT plugin, active_pid, wal_status, (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint \
             FROM pg_replication_slots WHERE slot_name = $1 AND database = current_database()",
            &[&config.slot],
        )
        .await?;
    let needs_slot = i64::from(slot_row.is_none());
    findings.push(if used + needs_slot <= max_slots {
        Finding::ok(format!("replication slots: {used} of {max_slots} in use"))
    } else {
        Finding::fail(format!(
            "replication slots: {used} of {max_slots} in use and one more is needed: raise max_replication_slots (`ALTER SYSTEM SET max_replication_slots = {}`, then restart)",
            used + 4
        ))
    });
    let senders: i64 = setting("max_wal_senders").await?.parse().unwrap_or(0);
    findings.push(if senders > 0 {
        Finding::ok(format!("max_wal_senders is {senders}"))
    } else {
        Finding::fail(
            "max_wal_senders is 0: run `ALTER SYSTEM SET max_wal_senders = 10` and restart",
        )
    });

    let role = sql
        .query_one(
            "SELECT current_user::text, rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await?;
    let (user, may_replicate): (String, bool) = (role.get(0), role.get(1));
    findings.push(if may_replicate {
        Finding::ok(format!("role {user} may replicate"))
    } else {
        Finding::fail(format!(
            "role {user} lacks the REPLICATION attribute: run `ALTER ROLE {} REPLICATION`",
            quote_ident(&user)
        ))
    });

    let tables = config.qualified_tables();
    let publication = sql
        .query_opt(
            "SELECT obj_description(oid, 'pg_publication') FROM pg_publication WHERE pubname = $1",
            &[&config.publication],
        )
        .await?;
    let comment: Option<String> = publication.as_ref().and_then(|row| row.get(0));
    if publication.is_some() {
        let missing = unpublished(sql, &config.publication, &tables).await?;
        let listed = TableName::list(&missing);
        findings.push(match (missing.is_empty(), config.create) {
            (true, _) => Finding::ok(format!(
                "publication {} covers {}",
                config.publication,
                TableName::list(&tables)
            )),
            (false, true) => Finding::warn(format!(
                "publication {} lacks {listed}: sluice will add them (create = true)",
                config.publication,
            )),
            (false, false) => Finding::fail(format!(
                "publication {} lacks {listed}: run `{}`",
                config.publication,
                publication_sql(
                    "ALTER PUBLICATION",
                    &config.publication,
                    "ADD TABLE",
                    &missing
                )
            )),
        });
    } else {
        let create = publication_sql(
            "CREATE PUBLICATION",
            &config.publication,
            "FOR TABLE",
            &tables,
        );
        findings.push(if config.create {
            Finding::warn(format!(
                "publication {} does not exist yet: sluice will run `{create}`",
                config.publication
            ))
        } else {
            Finding::fail(format!(
                "publication {} does not exist: run `{create}`",
                config.publication
            ))
        });
    }

    if slot_row.is_some()
        && let Some(refusal) = snapshot_refusal(config, comment.as_deref())
    {
        findings.push(Finding::fail(refusal));
    }
    findings.push(match slot_row {
        None if config.create => Finding::warn(format!(
            "slot {} does not exist yet: sluice will create it (pgoutput){}",
            config.slot,
            match config.snapshot {
                Snapshot::Initial => ", and deliver the rows already in the tables first",
                Snapshot::Never => "",
            }
        )),
        None => Finding::fail(format!(
            "slot {} does not exist: run `SELECT pg_create_logical_replication_slot('{}', 'pgoutput')`",
            config.slot, config.slot
        )),
        Some(row) => {
            let plugin: String = row.get(0);
            let active: Option<i32> = row.get(1);
            let wal_status: Option<String> = row.get(2);
            let lag: Option<i64> = row.get(3);
            let lag = lag.map_or("unknown".to_owned(), |l| format!("{l} bytes"));
            if plugin != "pgoutput" {
                Finding::fail(format!("slot {} uses {plugin}, not pgoutput: drop it or choose another name", config.slot))
            } else if wal_status.as_deref() == Some("lost") {
                Finding::fail(format!(
                    "slot {} was invalidated (wal_status = lost): set recover = \"replay\" to recreate it and republish the outbox",
                    config.slot
                ))
            } else if let Some(pid) = active {
                Finding::warn(format!("slot {} is in use by server process {pid} (another sluice?); lag {lag}", config.slot))
            } else {
                Finding::ok(format!(
                    "slot {} (pgoutput, wal_status {}), lag {lag}",
                    config.slot,
                    wal_status.as_deref().unwrap_or("unknown")
                ))
            }
        }
    });

    for table in &tables {
        findings.push(outbox_table(sql, table).await?);
    }
    Ok(findings)
}

async fn outbox_table(sql: &Client, table: &TableName) -> Result<Finding, tokio_postgres::Error> {
    let columns: Vec<(String, String)> = sql
        .query(
            "SELECT column_name::text, data_type::text FROM information_schema.columns \
             WHERE table_schema = $1 AND table_name = $2 ORDER BY ordinal_position",
            &[&table.schema(), &table.name()],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    if columns.is_empty() {
        return Ok(Finding::fail(format!(
            "table {table} does not exist (or the role cannot see it): create it (see examples/sql/outbox.sql)"
        )));
    }
    let missing: Vec<&str> = OUTBOX_COLUMNS
        .iter()
        .copied()
        .filter(|c| !columns.iter().any(|(name, _)| name == c))
        .collect();
    let payload_type = columns
        .iter()
        .find(|(name, _)| name == "payload")
        .map(|(_, t)| t.as_str());
    let shown = columns
        .iter()
        .map(|(n, t)| format!("{n} {t}"))
        .collect::<Vec<_>>()
        .join(", ");
    Ok(if !missing.is_empty() {
        Finding::warn(format!(
            "table {table} lacks the outbox columns {} ({shown}): map its columns in the outbox transform's *_column settings",
            missing.join(", ")
        ))
    } else if !matches!(payload_type, Some("jsonb" | "json" | "text")) {
        Finding::warn(format!(
            "table {table}: payload is {}, expected jsonb (or json/text): payloads that are not JSON are quarantined",
            payload_type.unwrap_or("missing")
        ))
    } else {
        Finding::ok(format!("table {table}: {shown}"))
    })
}
