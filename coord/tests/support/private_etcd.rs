//! An etcd of a test's own — one member or a cluster, on free loopback ports with fresh data
//! directories — for what must not touch the shared server (compaction, enabling auth, TLS,
//! freezing or killing members); and signals for the processes tests start.

use std::ffi::OsString;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use tokio::process::{Child, Command};

/// TLS files for a private etcd: the server's certificate and the CA that signed it (which
/// also checks client certificates: etcd then requires one).
pub struct ServerTls<'a> {
    /// The CA certificate (PEM).
    pub ca: &'a Path,
    /// The server certificate (PEM), for 127.0.0.1.
    pub cert: &'a Path,
    /// Its key (PEM).
    pub key: &'a Path,
}

/// How many times a private etcd is started on fresh ports before giving up.
const STARTS: usize = 3;

/// One member: where it listens and keeps its data, and its process while it runs.
struct Member {
    name: String,
    client: u16,
    peer: u16,
    dir: PathBuf,
    process: Option<Child>,
}

/// A running private etcd, killed and its data removed when dropped.
pub struct PrivateEtcd {
    members: Vec<Member>,
    /// `--initial-cluster`, every member's peer URL.
    cluster: String,
    scheme: &'static str,
    tls: Vec<OsString>,
    /// The first member's client URL.
    pub url: String,
}

impl PrivateEtcd {
    /// Starts a one-member etcd and waits until it listens.
    pub async fn start(tls: Option<ServerTls<'_>>) -> Result<Self> {
        Self::cluster(1, tls).await
    }

    /// Starts a cluster of `n` members and waits until each answers as itself.
    ///
    /// The ports are free when picked, but another test may start a server on one before
    /// this one binds it: then a member answers under another name, or exits, and the
    /// cluster starts again on other ports.
    pub async fn cluster(n: usize, tls: Option<ServerTls<'_>>) -> Result<Self> {
        let tls_args: Vec<OsString> = match &tls {
            Some(tls) => ["--trusted-ca-file", "--cert-file", "--key-file"]
                .into_iter()
                .zip([tls.ca, tls.cert, tls.key])
                .flat_map(|(flag, path)| [OsString::from(flag), path.as_os_str().to_owned()])
                .collect(),
            None => Vec::new(),
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        for _ in 0..STARTS {
            let run = uuid::Uuid::new_v4().simple().to_string();
            let ports = free_ports(2 * n)?;
            let members: Vec<Member> = (0..n)
                .map(|i| Member {
                    name: format!("m{i}-{}", &run[..12]),
                    client: ports[2 * i],
                    peer: ports[2 * i + 1],
                    dir: std::env::temp_dir().join(format!("sluice-test-etcd-{run}-m{i}")),
                    process: None,
                })
                .collect();
            let cluster = members
                .iter()
                .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
                .collect::<Vec<_>>()
                .join(",");
            let url = format!("{scheme}://127.0.0.1:{}", members[0].client);
            let mut etcd = PrivateEtcd {
                members,
                cluster,
                scheme,
                tls: tls_args.clone(),
                url,
            };
            for i in 0..n {
                etcd.spawn(i)?;
            }
            let mut all = true;
            for i in 0..n {
                all &= etcd.answers(i).await?;
            }
            if all {
                return Ok(etcd);
            }
        }
        bail!("no private etcd of {n} members came up on free ports in {STARTS} starts")
    }

    /// Every member's client URL.
    #[allow(
        dead_code,
        reason = "not every test binary including this file runs a cluster"
    )]
    pub fn urls(&self) -> Vec<String> {
        (0..self.members.len())
            .map(|i| self.client_url(i))
            .collect()
    }

    /// Kills member `i` (`kill -9`) and waits for it to exit; its data stays.
    #[allow(
        dead_code,
        reason = "not every test binary including this file runs a cluster"
    )]
    pub async fn kill(&mut self, i: usize) -> Result<()> {
        if let Some(mut process) = self.members[i].process.take() {
            process.kill().await?;
        }
        Ok(())
    }

    /// Starts member `i` again on its data and waits until it listens.
    #[allow(
        dead_code,
        reason = "not every test binary including this file runs a cluster"
    )]
    pub async fn restart(&mut self, i: usize) -> Result<()> {
        self.spawn(i)?;
        ensure!(
            self.answers(i).await?,
            "member {i} did not come back on its ports"
        );
        Ok(())
    }

    /// Sends signal `name` (`STOP`, `CONT`…) to the first member.
    #[allow(
        dead_code,
        reason = "not every test binary including this file signals"
    )]
    pub async fn signal(&self, name: &str) -> Result<()> {
        let process = self.members[0].process.as_ref().context("not running")?;
        signal(process.id().context("the private etcd exited")?, name).await
    }

    fn client_url(&self, i: usize) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.members[i].client)
    }

    fn spawn(&mut self, i: usize) -> Result<()> {
        let client_url = self.client_url(i);
        let m = &self.members[i];
        let peer_url = format!("http://127.0.0.1:{}", m.peer);
        let process = Command::new("etcd")
            .args(["--name", &m.name, "--data-dir"])
            .arg(&m.dir)
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &self.cluster])
            .args(["--log-level", "error"])
            .args(&self.tls)
            .env(
                "ETCD_UNSUPPORTED_ARCH",
                std::env::consts::ARCH.replace("aarch64", "arm64"),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting a private etcd")?;
        self.members[i].process = Some(process);
        Ok(())
    }

    /// Waits until member `i` answers as itself (`true`), or finds that it cannot: it exited,
    /// or its port is another server's (`false`).
    async fn answers(&mut self, i: usize) -> Result<bool> {
        let url = self.client_url(i);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let m = &mut self.members[i];
            let process = m.process.as_mut().context("not started")?;
            if process.try_wait()?.is_some() {
                return Ok(false);
            }
            if self.scheme == "https" {
                // No client certificate here to ask it its name with: listening will do.
                if std::net::TcpStream::connect(("127.0.0.1", m.client)).is_ok() {
                    return Ok(true);
                }
            } else if let Some(names) = member_names(&url).await {
                return Ok(names.contains(&m.name));
            }
            if Instant::now() >= deadline {
                bail!(
                    "the private etcd member {} on {url} does not answer",
                    m.name
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The names of the members the etcd at `url` knows, once it answers.
async fn member_names(url: &str) -> Option<Vec<String>> {
    let connect = etcd_client::ConnectOptions::new().with_connect_timeout(Duration::from_secs(1));
    let mut client = etcd_client::Client::connect([url], Some(connect))
        .await
        .ok()?;
    let members = client.member_list().await.ok()?;
    Some(
        members
            .members()
            .iter()
            .map(|m| m.name().to_owned())
            .collect(),
    )
}

impl Drop for PrivateEtcd {
    fn drop(&mut self) {
        for m in &mut self.members {
            // SIGKILL ends a stopped process too.
            if let Some(process) = &mut m.process {
                let _ = process.start_kill();
            }
            let _ = std::fs::remove_dir_all(&m.dir);
        }
    }
}

/// Sends signal `name` (`TERM`, `STOP`…) to process `pid`.
pub async fn signal(pid: u32, name: &str) -> Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .await?;
    ensure!(status.success(), "kill -{name} {pid}: {status}");
    Ok(())
}

/// `n` distinct free loopback ports (another process may take one first: the start then
/// fails loudly).
fn free_ports(n: usize) -> Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}
