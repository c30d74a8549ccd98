//! PostgreSQL over real TLS (the local server `scripts/services.sh up` configures): full
//! verification, a wrong CA, a host name the certificate does not carry, client certificates,
//! SCRAM with a wrong password, the replication connection over TLS, and TLS asked of a
//! server without it (a server of the test's own).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use pgwire_replication::{ReplicationClient, ReplicationEvent};
use sluice_connectors::postgres::connect::{Database, Sessions, SslMode};
use sluice_pipeline::error::chain;
use sluice_tests::TestDb;

/// `DATABASE_TLS_URL` (the SCRAM role, `verify-full` against the local CA), split into the
/// parts the tests vary.
struct TlsServer {
    /// `user:password`.
    userinfo: String,
    port: String,
    ca: PathBuf,
}

impl TlsServer {
    fn from_env() -> Self {
        let url = std::env::var("DATABASE_TLS_URL")
            .expect("DATABASE_TLS_URL is set (eval \"$(scripts/services.sh up)\")");
        let ca = std::env::var("SLUICE_TEST_CA")
            .expect("SLUICE_TEST_CA is set (eval \"$(scripts/services.sh up)\")");
        let rest = url.strip_prefix("postgres://").expect("a postgres:// URL");
        let (userinfo, rest) = rest.split_once('@').expect("user:password@");
        let port = rest
            .split(['/', '?'])
            .next()
            .and_then(|authority| authority.rsplit_once(':'))
            .map_or("5432", |(_, port)| port);
        TlsServer {
            userinfo: userinfo.to_owned(),
            port: port.to_owned(),
            ca: PathBuf::from(ca),
        }
    }

    fn password(&self) -> &str {
        self.userinfo.split_once(':').map_or("", |(_, p)| p)
    }

    /// A URL to `host` and database `db` with the SCRAM role and `params`.
    fn url(&self, host: &str, db: &str, params: &str) -> String {
        format!(
            "postgres://{}@{host}:{}/{db}?{params}",
            self.userinfo, self.port
        )
    }

    fn verify_full(&self, host: &str, db: &str) -> String {
        self.url(
            host,
            db,
            &format!("sslmode=verify-full&sslrootcert={}", self.ca.display()),
        )
    }

    /// A CA beside the local one that signed nothing.
    fn untrusted_ca(&self) -> PathBuf {
        self.ca.with_file_name("untrusted-ca.pem")
    }

    fn client_cert(&self) -> (PathBuf, PathBuf) {
        (
            self.ca.with_file_name("client.pem"),
            self.ca.with_file_name("client.key"),
        )
    }
}

async fn connect_error(url: &str) -> String {
    let database = Database::parse(url).expect("the URL parses");
    match database.connect().await {
        Ok(_) => panic!("connecting to {database} succeeded"),
        Err(e) => chain(&e),
    }
}

#[tokio::test]
async fn verify_full_with_scram_runs_over_tls() {
    let server = TlsServer::from_env();
    let database = Database::parse(&server.verify_full("localhost", "postgres")).unwrap();
    assert_eq!(database.ssl_mode(), SslMode::VerifyFull);
    let sql = database.connect().await.unwrap();
    let row = sql
        .query_one(
            "SELECT current_user::text, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "sluice_scram");
    assert!(row.get::<_, bool>(1), "the session is not encrypted");
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    let server = TlsServer::from_env();
    let url = server.url(
        "localhost",
        "postgres",
        &format!(
            "sslmode=verify-ca&sslrootcert={}",
            server.untrusted_ca().display()
        ),
    );
    let error = connect_error(&url).await;
    assert!(
        error.contains("not signed by a trusted CA: set sslrootcert"),
        "{error}"
    );
    assert!(!error.contains(server.password()), "{error}");
}

#[tokio::test]
async fn a_host_name_the_certificate_lacks_is_refused_by_verify_full_only() {
    let server = TlsServer::from_env();
    // The server's certificate names `localhost`, not 127.0.0.1.
    let error = connect_error(&server.verify_full("127.0.0.1", "postgres")).await;
    assert!(
        error.contains("does not name the host in the URL"),
        "{error}"
    );
    let verify_ca = server.url(
        "127.0.0.1",
        "postgres",
        &format!("sslmode=verify-ca&sslrootcert={}", server.ca.display()),
    );
    Database::parse(&verify_ca)
        .unwrap()
        .connect()
        .await
        .unwrap();
}

#[tokio::test]
async fn a_client_certificate_logs_in_and_its_absence_does_not() {
    let server = TlsServer::from_env();
    let (cert, key) = server.client_cert();
    let base = format!(
        "postgres://sluice_cert@localhost:{}/postgres?sslmode=verify-full&sslrootcert={}",
        server.port,
        server.ca.display()
    );
    let with_cert = format!("{base}&sslcert={}&sslkey={}", cert.display(), key.display());
    let sql = Database::parse(&with_cert)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let user: String = sql
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(user, "sluice_cert");
    let error = connect_error(&base).await;
    assert!(error.contains("sluice_cert"), "{error}");
}

#[tokio::test]
async fn a_wrong_password_names_server_and_user_never_the_password() {
    let server = TlsServer::from_env();
    let wrong = "not-the-password-7f3a";
    let url = format!(
        "postgres://sluice_scram:{wrong}@localhost:{}/postgres?sslmode=verify-full&sslrootcert={}",
        server.port,
        server.ca.display()
    );
    let error = connect_error(&url).await;
    assert!(
        error.contains("postgres://sluice_scram@localhost:")
            && error.contains("password authentication failed"),
        "{error}"
    );
    assert!(!error.contains(wrong), "{error}");
    let debug = format!("{:?}", Database::parse(&url).unwrap());
    assert!(!debug.contains(wrong), "{debug}");
}

#[tokio::test]
async fn a_missing_certificate_file_is_named() {
    let server = TlsServer::from_env();
    let url = server.url(
        "localhost",
        "postgres",
        "sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
    );
    let database = Database::parse(&url).unwrap();
    let error = chain(&database.connect().await.unwrap_err());
    assert!(
        error.contains("sslrootcert=/nonexistent/ca.pem: cannot read the file"),
        "{error}"
    );
    let error = chain(&database.replication("s", "p").unwrap_err());
    assert!(
        error.contains("sslrootcert=/nonexistent/ca.pem: cannot read the file"),
        "{error}"
    );
}

#[tokio::test]
async fn replication_streams_over_verified_tls() {
    let server = TlsServer::from_env();
    let db = TestDb::create("pg_tls_replication");
    // Slot names are global: this database's name makes it this run's own.
    let slot = format!("{}_slot", db.name);
    db.execute("CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION tls_pub FOR TABLE t");
    db.execute(&format!(
        "SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"
    ));
    db.execute("INSERT INTO t VALUES (1)");
    let database = Database::parse(&server.verify_full("localhost", &db.name)).unwrap();
    let mut client = ReplicationClient::connect(database.replication(&slot, "tls_pub").unwrap())
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut committed = false;
    while !committed {
        let event = tokio::time::timeout_at(deadline, client.recv())
            .await
            .expect("a commit within 30 s")
            .unwrap();
        committed = matches!(event, Some(ReplicationEvent::Commit { .. }));
        assert!(event.is_some(), "the stream ended before the commit");
    }
    let encrypted = db.value(
        "SELECT bool_and(s.ssl)::text FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid) \
         WHERE r.application_name = 'sluice'",
    );
    assert_eq!(encrypted.as_deref(), Some("true"));
    client.shutdown().await.ok();
}

/// A PostgreSQL server of this test's own with `ssl = off`, on a free port, run by `pg_ctl`
/// as the `postgres` user; stopped when dropped.
struct PlainServer {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
}

impl PlainServer {
    fn start() -> Self {
        let out = std::process::Command::new("pg_config")
            .arg("--bindir")
            .output()
            .expect("pg_config runs");
        let bin = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        let port = sluice_tests::free_port();
        let dir =
            std::env::temp_dir().join(format!("sluice-plain-pg-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let chown = std::process::Command::new("chown")
            .arg("postgres")
            .arg(&dir)
            .status()
            .unwrap();
        assert!(chown.success());
        let server = PlainServer { bin, dir, port };
        server.pg("initdb", &["-A", "trust", "-U", "postgres"]);
        let options = format!(
            "-p {port} -c ssl=off -c listen_addresses=127.0.0.1 -c unix_socket_directories={}",
            server.dir.display()
        );
        let log = server.dir.join("log").display().to_string();
        server.pg("pg_ctl", &["-o", &options, "-l", &log, "-w", "start"]);
        server
    }

    /// Runs `program -D DATA args` as the `postgres` user; it must succeed.
    fn pg(&self, program: &str, args: &[&str]) {
        let status = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join(program))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(args)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("runuser runs");
        assert!(status.success(), "{program} {args:?}: {status}");
    }
}

impl Drop for PlainServer {
    fn drop(&mut self) {
        self.pg("pg_ctl", &["-m", "immediate", "-w", "stop"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn a_tls_url_to_a_server_without_tls_names_sslmode_and_prefer_falls_back() {
    let server = PlainServer::start();
    let url = |mode: &str| {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?sslmode={mode}",
            server.port
        )
    };
    for mode in ["require", "verify-full"] {
        let error = connect_error(&url(mode)).await;
        assert!(
            error.contains(&format!(
                "the server does not accept TLS and sslmode={mode} requires it: enable ssl on the server, or lower sslmode"
            )),
            "{mode}: {error}"
        );
    }
    let sql = Database::parse(&url("prefer"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let ssl: bool = sql
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        !ssl,
        "prefer connects in plain text to a server without TLS"
    );
}
