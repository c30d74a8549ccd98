//! PostgreSQL: where a database is and how to log in ([`Database`], from a URL or a key-value
//! string), and SQL sessions over rustls ([`tls`]).

mod database;
pub mod tls;

pub use database::{ConnectError, Database, PostgresUrl, Ssl, SslMode};
