//! An outbox table as the catalog describes it: its canonical `schema.table` name, its columns
//! and their types, what the connected role may do with it, and identifiers quoted for the SQL
//! sluice writes.
//!
//! Components resolve their table once, when they connect, so that a missing table, column or
//! privilege is reported as a config error naming the table and the fix, instead of as a
//! failing statement later.

use tokio_postgres::Client;

use super::connect::quote_ident;
use super::error::DbError;

/// A table found in the catalog.
#[derive(Debug, Clone)]
pub struct Table {
    oid: u32,
    schema: String,
    name: String,
    columns: Vec<Column>,
}

/// One column of a [`Table`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Its name, exactly as stored.
    pub name: String,
    /// Its type as `format_type` shows it: `bigint`, `timestamp with time zone`.
    pub type_name: String,
}

/// What a component needs to do with its table.
#[derive(Debug, Clone, Copy)]
pub enum Privilege<'a> {
    /// Read every column.
    Select,
    /// Update this column (also what `SELECT … FOR UPDATE` needs).
    Update(&'a str),
    /// Delete rows.
    Delete,
}

impl Table {
    /// Looks up `name`, written as SQL writes it (`schema.table`, `"Mixed Case"`; without a
    /// schema, the connection's `search_path` decides), and reads its columns.
    pub async fn resolve(client: &Client, name: &str) -> Result<Table, DbError> {
        let doing = "looking up the table";
        let found = client
            .query_opt(
                "SELECT c.oid, n.nspname::text, c.relname::text, c.relkind::text \
                 FROM pg_catalog.pg_class c \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.oid = pg_catalog.to_regclass($1)",
                &[&name],
            )
            .await
            .map_err(DbError::statement(doing))?;
        let problem = |problem: &str| DbError::Table {
            table: name.to_owned(),
            problem: problem.to_owned(),
        };
        let Some(row) = found else {
            return Err(problem(
                "does not exist (or the role cannot see it); create it first, see examples/sql",
            ));
        };
        let kind: String = row.try_get(3).map_err(DbError::statement(doing))?;
        if kind != "r" {
            return Err(problem(
                "is not a plain table (views, foreign and partitioned tables are not supported)",
            ));
        }
        let oid: u32 = row.try_get(0).map_err(DbError::statement(doing))?;
        let columns = client
            .query(
                "SELECT a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod) \
                 FROM pg_catalog.pg_attribute a \
                 WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped \
                 ORDER BY a.attnum",
                &[&oid],
            )
            .await
            .map_err(DbError::statement("reading the table's columns"))?
            .iter()
            .map(|row| {
                Ok(Column {
                    name: row.try_get(0)?,
                    type_name: row.try_get(1)?,
                })
            })
            .collect::<Result<_, tokio_postgres::Error>>()
            .map_err(DbError::statement("reading the table's columns"))?;
        Ok(Table {
            oid,
            schema: row.try_get(1).map_err(DbError::statement(doing))?,
            name: row.try_get(2).map_err(DbError::statement(doing))?,
            columns,
        })
    }

    /// The table's oid.
    pub fn oid(&self) -> u32 {
        self.oid
    }

    /// `schema.table`, unquoted: how events and logs name it.
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    /// `"schema"."table"`: how SQL names it.
    pub fn quoted_name(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }

    /// The columns, in table order.
    pub fn columns(&self) -> &[Column] {
        &self.columns
    }

    /// The column called `name` (exactly), or a config error saying which setting (`field`)
    /// names a column the table lacks, or one whose type is not among `types` (when given).
    pub fn require_column(
        &self,
        field: &str,
        name: &str,
        types: Option<&[&str]>,
    ) -> Result<&Column, DbError> {
        let column = self
            .columns
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| {
                self.problem(format!(
                    "has no column {name:?} (set by {field}; column names are case-sensitive)"
                ))
            })?;
        if let Some(types) = types
            && !types.contains(&column.type_name.as_str())
        {
            return Err(self.problem(format!(
                "column {name:?} (set by {field}) is {}, expected one of: {}",
                column.type_name,
                types.join(", ")
            )));
        }
        Ok(column)
    }

    /// Checks that the connected role holds `privilege`, or returns a config error saying
    /// which grant is missing.
    pub async fn require_privilege(
        &self,
        client: &Client,
        privilege: Privilege<'_>,
    ) -> Result<(), DbError> {
        let (held, grant) = match privilege {
            Privilege::Select => (
                client
                    .query_one(
                        "SELECT pg_catalog.has_table_privilege($1::oid, 'SELECT')",
                        &[&self.oid],
                    )
                    .await,
                "SELECT".to_owned(),
            ),
            Privilege::Update(column) => (
                client
                    .query_one(
                        "SELECT pg_catalog.has_column_privilege($1::oid, $2::text, 'UPDATE')",
                        &[&self.oid, &column],
                    )
                    .await,
                format!("UPDATE ({})", quote_ident(column)),
            ),
            Privilege::Delete => (
                client
                    .query_one(
                        "SELECT pg_catalog.has_table_privilege($1::oid, 'DELETE')",
                        &[&self.oid],
                    )
                    .await,
                "DELETE".to_owned(),
            ),
        };
        let held: bool = held
            .and_then(|row| row.try_get(0))
            .map_err(DbError::statement("checking privileges"))?;
        if held {
            Ok(())
        } else {
            Err(self.problem(format!(
                "the role lacks a privilege: GRANT {grant} ON {} TO <role>",
                self.quoted_name()
            )))
        }
    }

    fn problem(&self, problem: String) -> DbError {
        DbError::Table {
            table: self.qualified_name(),
            problem,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Table {
        Table {
            oid: 1,
            schema: "public".into(),
            name: "outbox".into(),
            columns: vec![Column {
                name: "seq".into(),
                type_name: "bigint".into(),
            }],
        }
    }

    #[test]
    fn required_columns_are_named_in_the_error() {
        let t = table();
        assert_eq!(t.qualified_name(), "public.outbox");
        assert_eq!(t.quoted_name(), "\"public\".\"outbox\"");
        assert!(
            t.require_column("position_column", "seq", Some(&["bigint"]))
                .is_ok()
        );
        let missing = t
            .require_column("position_column", "Seq", None)
            .unwrap_err();
        assert_eq!(
            missing.to_string(),
            "table public.outbox: has no column \"Seq\" (set by position_column; column names are case-sensitive)"
        );
        let wrong = t
            .require_column(
                "published_column",
                "seq",
                Some(&["timestamp with time zone"]),
            )
            .unwrap_err();
        assert!(
            wrong.to_string().contains("is bigint, expected one of"),
            "{wrong}"
        );
        assert_eq!(wrong.kind(), sluice_pipeline::ErrorKind::Config);
    }
}
