//! Live checks of what `postgres_poll` needs (`sluice check`): the connection, the table with
//! its columns and privileges (the checks the source itself runs when it starts), the cleanup's
//! column and privilege, the two indexes polling relies on, and the wake-up trigger.

use sluice_pipeline::Finding;
use sluice_pipeline::error::chain;
use tokio_postgres::Client;

use super::batch::Poller;
use super::config::PollConfig;
use crate::postgres::cleanup::{Cleanup, Delivered};
use crate::postgres::connect::{Sessions, quote_ident};
use crate::postgres::table::Table;

/// Runs every check; a failed connection or a table that does not fit ends them.
pub(super) async fn check(config: &PollConfig) -> Vec<Finding> {
    let database = match config.url.parse() {
        Ok(database) => database,
        Err(e) => return vec![Finding::fail(e)],
    };
    let client = match database.connect().await {
        Ok(client) => client,
        Err(e) => return vec![Finding::fail(format!("cannot connect: {}", chain(&e)))],
    };
    let mut findings = vec![Finding::ok(format!("connected to {database}"))];
    let poller = match Poller::resolve(&client, config).await {
        Ok(poller) => poller,
        Err(e) => {
            findings.push(Finding::fail(chain(&e)));
            return findings;
        }
    };
    let table = poller.table();
    findings.push(Finding::ok(format!(
        "table {} has the columns and privileges polling needs",
        table.qualified_name()
    )));
    if let Some(cleanup) = &config.cleanup {
        let delivered = Delivered::Published {
            column: config.published_column.clone(),
        };
        findings.push(
            match Cleanup::prepare(&client, table, delivered, cleanup).await {
                Ok(_) => Finding::ok("the cleanup may delete delivered rows"),
                Err(e) => Finding::fail(chain(&e)),
            },
        );
    }
    match server(&client, table, config).await {
        Ok(mut more) => findings.append(&mut more),
        Err(e) => findings.push(Finding::fail(format!("a check query failed: {e}"))),
    }
    findings
}

async fn server(
    client: &Client,
    table: &Table,
    config: &PollConfig,
) -> Result<Vec<Finding>, tokio_postgres::Error> {
    let mut findings = Vec::new();
    // The key columns of every index on the table, in order.
    let indexes: Vec<Vec<String>> = client
        .query(
            "SELECT ARRAY(SELECT a.attname::text \
                          FROM unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) \
                          JOIN pg_catalog.pg_attribute a \
                            ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                          ORDER BY k.n) \
             FROM pg_catalog.pg_index i WHERE i.indrelid = $1",
            &[&table.oid()],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let name = table.quoted_name();
    let (position, published, aggregate) = (
        quote_ident(&config.position_column),
        quote_ident(&config.published_column),
        quote_ident(&config.aggregate_column),
    );
    for (columns, what, create) in [
        (
            vec![config.position_column.as_str()],
            "finding the next unpublished rows",
            format!("CREATE INDEX ON {name} ({position}) WHERE {published} IS NULL"),
        ),
        (
            vec![config.aggregate_column.as_str(), &config.position_column],
            "checking each aggregate's earlier rows",
            format!("CREATE INDEX ON {name} ({aggregate}, {position}) WHERE {published} IS NULL"),
        ),
    ] {
        let found = indexes.iter().any(|index| {
            index
                .iter()
                .map(String::as_str)
                .take(columns.len())
                .eq(columns.iter().copied())
        });
        findings.push(if found {
            Finding::ok(format!(
                "an index on ({}) serves {what}",
                columns.join(", ")
            ))
        } else {
            Finding::warn(format!(
                "no index on ({}): {what} scans the table; run `{create}`",
                columns.join(", ")
            ))
        });
    }
    if let Some(channel) = &config.notify_channel {
        // INSERT triggers (tgtype bit 2) passing the channel as an argument.
        let triggers: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_catalog.pg_trigger \
                 WHERE tgrelid = $1 AND NOT tgisinternal AND tgtype & 4 <> 0 \
                   AND position(convert_to($2, 'UTF8') IN tgargs) > 0",
                &[&table.oid(), channel],
            )
            .await?
            .get(0);
        findings.push(if triggers > 0 {
            Finding::ok(format!("an insert trigger notifies channel {channel}"))
        } else {
            Finding::warn(format!(
                "no insert trigger on {name} passes channel {channel}: without one, rows wait \
                 for the interval; add the trigger of examples/sql/outbox-poll.sql \
                 (ignore this if yours notifies the channel another way)"
            ))
        });
    }
    Ok(findings)
}
