//! A cluster of etcd members of a test's own (three etcd processes on loopback ports), for
//! losing members and quorum without touching the shared server.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::process::{Child, Command};

use super::private_etcd::free_port;

/// A cluster of etcd members of a test's own, each a process on loopback ports of its own:
/// members are killed with SIGKILL and started again on the same ports and data.
pub struct PrivateCluster {
    members: Vec<Member>,
    dir: PathBuf,
    initial: String,
}

struct Member {
    name: String,
    client: u16,
    peer: u16,
    process: Option<Child>,
}

impl PrivateCluster {
    /// Starts `n` members and waits until each listens.
    pub async fn start(n: usize) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "sluice-test-etcd-cluster-{}",
            uuid::Uuid::new_v4().simple()
        ));
        let mut members = Vec::with_capacity(n);
        for i in 0..n {
            members.push(Member {
                name: format!("m{i}"),
                client: free_port()?,
                peer: free_port()?,
                process: None,
            });
        }
        let initial = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = PrivateCluster {
            members,
            dir,
            initial,
        };
        for i in 0..n {
            cluster.spawn(i)?;
        }
        for i in 0..n {
            cluster.wait_listening(i).await?;
        }
        Ok(cluster)
    }

    /// Every member's client endpoint.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client))
            .collect()
    }

    /// Kills member `i` with SIGKILL and waits for it to be gone.
    pub async fn kill(&mut self, i: usize) -> Result<()> {
        if let Some(mut process) = self.members[i].process.take() {
            process.kill().await.context("killing an etcd member")?;
        }
        Ok(())
    }

    /// Starts member `i` again, on its ports and data, and waits until it listens.
    pub async fn restart(&mut self, i: usize) -> Result<()> {
        self.spawn(i)?;
        self.wait_listening(i).await
    }

    fn spawn(&mut self, i: usize) -> Result<()> {
        let member = &self.members[i];
        let client = format!("http://127.0.0.1:{}", member.client);
        let peer = format!("http://127.0.0.1:{}", member.peer);
        let process = Command::new("etcd")
            .args(["--name", &member.name, "--data-dir"])
            .arg(self.dir.join(&member.name))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &self.initial])
            .args(["--initial-cluster-state", "new", "--log-level", "error"])
            .env(
                "ETCD_UNSUPPORTED_ARCH",
                std::env::consts::ARCH.replace("aarch64", "arm64"),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting an etcd member")?;
        self.members[i].process = Some(process);
        Ok(())
    }

    async fn wait_listening(&self, i: usize) -> Result<()> {
        let port = self.members[i].client;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() >= deadline {
                bail!(
                    "etcd member {} does not listen on {port}",
                    self.members[i].name
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        for member in &mut self.members {
            if let Some(process) = &mut member.process {
                let _ = process.start_kill();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
