//! An outbox table as the catalog describes it: its canonical `schema.table` name, its columns
//! and their types, what the connected role may do with it, and identifiers quoted for the SQL
//! sluice writes.
//!
//! Components resolve their table once, when they connect, so that a missing table, column or
//! privilege is reported as a config error naming the table and the fix, instead of as a
//! failing statement later.

use std::borrow::Borrow;
use std::fmt;

use tokio_postgres::Client;

use super::connect::quote_ident;
use super::error::DbError;

/// A table named in a config as `schema.table`, or as `table` for one in `public`: how
/// `postgres_cdc` names its tables in the publication it manages, the rows it reads and the
/// relations its stream describes. Unlike [`Table::resolve`], which takes a name as SQL
/// writes it, the parts are taken as written (no case folding, no quotes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableName {
    schema: String,
    name: String,
}

impl TableName {
    /// A table `name` in `schema`.
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> Self {
        TableName {
            schema: schema.into(),
            name: name.into(),
        }
    }

    /// Reads `schema.table`, or `table` meaning `public.table`; the problem, to show with the
    /// setting that holds `text`, when it is neither.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (schema, name) = text.split_once('.').unwrap_or(("public", text));
        if schema.is_empty() || name.is_empty() || name.contains('.') {
            return Err(format!("{text:?} is not a table name: write schema.table"));
        }
        Ok(TableName::new(schema, name))
    }

    /// The schema.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The table's name within its schema.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `"schema"."table"`: how SQL names it.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }

    /// `names` as `a.b, c.d`, for messages.
    pub fn list(names: &[impl Borrow<TableName>]) -> String {
        let names: Vec<String> = names.iter().map(|n| n.borrow().to_string()).collect();
        names.join(", ")
    }
}

impl fmt::Display for TableName {
    /// `schema.table`, unquoted: how events and logs name it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

impl PartialEq<str> for TableName {
    /// Whether `other` is this table's `schema.table` form.
    fn eq(&self, other: &str) -> bool {
        other
            .strip_prefix(self.schema.as_str())
            .and_then(|rest| rest.strip_prefix('.'))
            == Some(self.name.as_str())
    }
}

impl PartialEq<&str> for TableName {
    fn eq(&self, other: &&str) -> bool {
        *self == **other
    }
}

/// A table found in the catalog.
#[derive(Debug, Clone)]
pub struct Table {
    oid: u32,
    name: TableName,
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
        let schema: String = row.try_get(1).map_err(DbError::statement(doing))?;
        let table: String = row.try_get(2).map_err(DbError::statement(doing))?;
        Ok(Table {
            oid,
            name: TableName::new(schema, table),
            columns,
        })
    }

    /// The table's oid.
    pub fn oid(&self) -> u32 {
        self.oid
    }

    /// `schema.table`, unquoted: how events and logs name it.
    pub fn qualified_name(&self) -> String {
        self.name.to_string()
    }

    /// `"schema"."table"`: how SQL names it.
    pub fn quoted_name(&self) -> String {
        self.name.quoted()
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
            name: TableName::new("public", "outbox"),
            columns: vec![Column {
                name: "seq".into(),
                type_name: "bigint".into(),
            }],
        }
    }

    #[test]
    fn table_names_default_to_public_and_quote_each_part() {
        let quoted = |text| TableName::parse(text).map(|name| name.quoted());
        assert_eq!(quoted("public.outbox").unwrap(), "\"public\".\"outbox\"");
        assert_eq!(quoted("outbox").unwrap(), "\"public\".\"outbox\"");
        assert_eq!(quoted("s.we\"ird").unwrap(), "\"s\".\"we\"\"ird\"");
        let name = TableName::parse("Sales.Outbox").unwrap();
        assert_eq!((name.schema(), name.name()), ("Sales", "Outbox"));
        assert_eq!(name.to_string(), "Sales.Outbox");
        assert!(name == "Sales.Outbox" && name != "sales.outbox" && name != "Sales");
        for bad in ["a.b.c", ".outbox", "public.", ""] {
            assert_eq!(
                TableName::parse(bad).unwrap_err(),
                format!("{bad:?} is not a table name: write schema.table")
            );
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
