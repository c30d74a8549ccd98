//! The inbox table: the ids of the messages a consumer has processed, written in the same
//! transaction as the processing.

use std::time::Duration;

use tokio_postgres::{Client, GenericClient};

use crate::error::Error;

/// Default inbox table name.
pub const DEFAULT_INBOX_TABLE: &str = "inbox";

/// An inbox table: `message_id text PRIMARY KEY, received_at timestamptz`.
#[derive(Debug, Clone)]
pub struct Inbox {
    /// The table, quoted for SQL.
    table: String,
    claim: String,
}

impl Inbox {
    /// The inbox in `table` (`name` or `schema.name`).
    pub fn new(table: &str) -> Self {
        let table = table
            .split('.')
            .map(|part| format!("\"{}\"", part.replace('"', "\"\"")))
            .collect::<Vec<_>>()
            .join(".");
        let claim = format!(
            "INSERT INTO {table} (message_id) VALUES ($1) ON CONFLICT (message_id) DO NOTHING"
        );
        Inbox { table, claim }
    }

    /// Creates the table if it does not exist.
    pub async fn create(&self, client: &Client) -> Result<(), Error> {
        let index = self.table.replace(['"', '.'], "");
        client
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {t} (
                    message_id  text        PRIMARY KEY,
                    received_at timestamptz NOT NULL DEFAULT now()
                );
                CREATE INDEX IF NOT EXISTS \"{index}_received_at\" ON {t} (received_at)",
                t = self.table,
            ))
            .await
            .map_err(Error::database("creating the inbox table"))
    }

    /// Records `message_id` in the inbox within `transaction`; `false` when it was already
    /// there (the message was processed before).
    pub async fn claim(
        &self,
        transaction: &impl GenericClient,
        message_id: &str,
    ) -> Result<bool, Error> {
        let inserted = transaction
            .execute(self.claim.as_str(), &[&message_id])
            .await
            .map_err(Error::database("recording the message in the inbox"))?;
        Ok(inserted == 1)
    }

    /// Deletes up to `limit` ids received more than `retain` ago; returns how many.
    pub async fn cleanup(
        &self,
        client: &Client,
        retain: Duration,
        limit: i64,
    ) -> Result<u64, Error> {
        let seconds = retain.as_secs_f64();
        client
            .execute(
                &format!(
                    "DELETE FROM {t} WHERE ctid IN (SELECT ctid FROM {t} \
                     WHERE received_at < now() - make_interval(secs => $1) LIMIT $2)",
                    t = self.table
                ),
                &[&seconds, &limit],
            )
            .await
            .map_err(Error::database("cleaning the inbox"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_the_table() {
        let inbox = Inbox::new("app.in\"box");
        assert_eq!(inbox.table, "\"app\".\"in\"\"box\"");
        assert!(
            inbox
                .claim
                .starts_with("INSERT INTO \"app\".\"in\"\"box\" (message_id)")
        );
    }
}
