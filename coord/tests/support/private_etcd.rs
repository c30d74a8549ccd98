//! An etcd process of a test's own (and signals for the processes tests start), on free loopback ports with a fresh data directory: for
//! what must not touch the shared server (compaction, enabling auth, TLS).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::process::{Child, Command};

/// TLS files for a private etcd: the server's certificate and the CA that signed it.
pub struct ServerTls<'a> {
    /// The CA certificate (PEM).
    pub ca: &'a Path,
    /// The server certificate (PEM), for 127.0.0.1.
    pub cert: &'a Path,
    /// Its key (PEM).
    pub key: &'a Path,
}

/// A running private etcd, killed and its data removed when dropped.
pub struct PrivateEtcd {
    process: Child,
    dir: PathBuf,
    /// Its client URL.
    pub url: String,
}

impl PrivateEtcd {
    /// Starts one and waits until its client port accepts connections.
    pub async fn start(tls: Option<ServerTls<'_>>) -> Result<Self> {
        let (client, peer) = (free_port()?, free_port()?);
        let dir = std::env::temp_dir().join(format!(
            "sluice-test-etcd-{}",
            uuid::Uuid::new_v4().simple()
        ));
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let mut command = Command::new("etcd");
        command
            .args(["--name", "private", "--data-dir"])
            .arg(&dir)
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("private={peer_url}")])
            .args(["--log-level", "error"])
            .env(
                "ETCD_UNSUPPORTED_ARCH",
                std::env::consts::ARCH.replace("aarch64", "arm64"),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        if let Some(tls) = &tls {
            command
                .arg("--trusted-ca-file")
                .arg(tls.ca)
                .arg("--cert-file")
                .arg(tls.cert)
                .arg("--key-file")
                .arg(tls.key);
        }
        let process = command.spawn().context("starting a private etcd")?;
        let server = PrivateEtcd { process, dir, url };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", client)).is_err() {
            if Instant::now() >= deadline {
                bail!("the private etcd on {} does not listen", server.url);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(server)
    }
}

impl PrivateEtcd {
    /// Sends `name` (`STOP`, `CONT`…) to the etcd process.
    #[allow(
        dead_code,
        reason = "not every test binary including this file signals"
    )]
    pub async fn signal(&self, name: &str) -> Result<()> {
        signal(self.process.id().context("the private etcd exited")?, name).await
    }
}

/// Sends signal `name` (`TERM`, `STOP`…) to process `pid`.
pub async fn signal(pid: u32, name: &str) -> Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .await?;
    anyhow::ensure!(status.success(), "kill -{name} {pid}: {status}");
    Ok(())
}

impl Drop for PrivateEtcd {
    fn drop(&mut self) {
        // SIGKILL ends a stopped process too.
        let _ = self.process.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A free loopback port (another process may take it first: the start then fails loudly).
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
