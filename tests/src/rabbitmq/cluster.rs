//! A RabbitMQ cluster of its own for a test: nodes started from the installed
//! `rabbitmq-server` on free loopback ports, joined into one cluster, and killed (`kill -9`)
//! when the test asks or when the [`Cluster`] is dropped.
//!
//! Each node has its own name (`sluice-<pid>-<n>-<i>@localhost`), AMQP and distribution
//! ports, data and log directories, an empty plugin list and an environment file of its
//! own, so that nothing of the shared broker (`rabbit@localhost` on 5672, its configuration
//! in `/etc/rabbitmq`) is read or touched. The nodes and the `rabbitmqctl` calls share an
//! Erlang cookie that lives in the cluster's scratch directory.

use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{Scratch, free_port};

/// How long a node may take to boot (or to restart its application after joining).
const BOOT_PATIENCE: Duration = Duration::from_secs(60);
/// The server script run directly, so that the node runs as this user with this
/// environment (the `/usr/sbin` wrapper switches to the `rabbitmq` user).
const SERVER_SCRIPT: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
/// The file of a node's console output, in its directory.
const CONSOLE: &str = "console.out";
/// The last bytes of a node's log shown when it does not come up.
const LOG_TAIL_BYTES: usize = 3000;

/// One node of a [`Cluster`].
#[derive(Debug)]
struct Node {
    /// Its Erlang node name, `sluice-…@localhost`.
    name: String,
    /// Its AMQP port on 127.0.0.1.
    port: u16,
    /// The Erlang VM (the server script `exec`s it); `None` once killed.
    process: Option<Child>,
    /// Its data, logs and console output.
    dir: PathBuf,
}

/// RabbitMQ nodes clustered together; every node still running is killed on drop.
#[derive(Debug)]
pub struct Cluster {
    nodes: Vec<Node>,
    cookie: String,
    /// Holds the nodes' data and logs; removed after the nodes are killed.
    dir: Scratch,
}

impl Cluster {
    /// Starts `size` nodes named after `test` and joins them into one cluster; fails, with
    /// the node's log, when one does not come up within a minute.
    pub fn start(test: &str, size: usize) -> Result<Cluster> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let dir = Scratch::new(&format!("rabbitmq-cluster-{test}"));
        let id = format!(
            "sluice-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let cookie = format!("{}COOKIE", id.replace('-', "").to_uppercase());
        let home = dir.join("home");
        std::fs::create_dir_all(&home)?;
        write_private(&home.join(".erlang.cookie"), &cookie)?;
        dir.write("env.conf", "");
        dir.write("enabled_plugins", "[].\n");
        let mut cluster = Cluster {
            nodes: Vec::new(),
            cookie,
            dir,
        };
        for i in 1..=size {
            let node = cluster.spawn(&format!("{id}-{i}"), &home)?;
            cluster.nodes.push(node);
        }
        for i in 0..size {
            cluster.await_boot(i)?;
        }
        let first = cluster.nodes[0].name.clone();
        std::thread::scope(|scope| {
            let joins: Vec<_> = (1..size)
                .map(|i| {
                    let (cluster, first) = (&cluster, &first);
                    scope.spawn(move || {
                        cluster.ctl(i, &["stop_app"])?;
                        cluster.ctl(i, &["join_cluster", first])?;
                        cluster.ctl(i, &["start_app"])
                    })
                })
                .collect();
            joins
                .into_iter()
                .try_for_each(|join| join.join().expect("a join thread panicked").map(drop))
        })?;
        let running = cluster.ctl(0, &["eval", "length(rabbit_nodes:all_running())."])?;
        if running.trim() != size.to_string() {
            bail!("the cluster of {size} nodes formed with {running} running");
        }
        Ok(cluster)
    }

    fn spawn(&self, name: &str, home: &Path) -> Result<Node> {
        let (port, dist_port) = (free_port(), free_port());
        let data = self.dir.join(name);
        std::fs::create_dir_all(&data)?;
        let output = std::fs::File::create(data.join(CONSOLE))?;
        let config = self.dir.write(
            &format!("{name}.conf"),
            &format!("listeners.tcp.1 = 127.0.0.1:{port}\n"),
        );
        let name = format!("{name}@localhost");
        let process = Command::new(SERVER_SCRIPT)
            .env("HOME", home)
            .env("RABBITMQ_NODENAME", &name)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", port.to_string())
            .env("RABBITMQ_DIST_PORT", dist_port.to_string())
            .env("RABBITMQ_CONFIG_FILE", &config)
            .env("RABBITMQ_CONF_ENV_FILE", self.dir.join("env.conf"))
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                self.dir.join("enabled_plugins"),
            )
            .env("RABBITMQ_MNESIA_BASE", data.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", data.join("log"))
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            )
            // Makes the script exec the VM (no shell left in between to signal).
            .env("RUNNING_UNDER_SYSTEMD", "true")
            .stdin(Stdio::null())
            .stdout(output.try_clone()?)
            .stderr(output)
            .spawn()
            .with_context(|| format!("starting {SERVER_SCRIPT} (is rabbitmq-server installed?)"))?;
        Ok(Node {
            dir: data,
            name,
            port,
            process: Some(process),
        })
    }

    /// Waits until node `i` accepts AMQP connections and its application runs; fails at
    /// once if its process exits, and after [`BOOT_PATIENCE`] otherwise.
    fn await_boot(&mut self, i: usize) -> Result<()> {
        let deadline = Instant::now() + BOOT_PATIENCE;
        loop {
            let exited = match &mut self.nodes[i].process {
                Some(process) => process.try_wait()?,
                None => None,
            };
            if let Some(status) = exited {
                bail!(
                    "RabbitMQ node {} exited ({status}) while booting:\n{}",
                    self.nodes[i].name,
                    self.output(i)
                );
            }
            let node = &self.nodes[i];
            if TcpStream::connect(("127.0.0.1", node.port)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "RabbitMQ node {} did not come up on 127.0.0.1:{} within {BOOT_PATIENCE:?}:\n{}",
                    self.nodes[i].name,
                    self.nodes[i].port,
                    self.output(i)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The end of node `i`'s console output and log, for a failure message.
    fn output(&self, i: usize) -> String {
        let node = &self.nodes[i];
        let log = node.dir.join("log").join(format!("{}.log", node.name));
        [node.dir.join(CONSOLE), log]
            .iter()
            .map(|path| format!("--- {}\n{}", path.display(), tail(path)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Runs `rabbitmqctl -q -n <node i> <args>` with the cluster's cookie; its output.
    pub fn ctl(&self, i: usize, args: &[&str]) -> Result<String> {
        let node = &self.nodes[i].name;
        let output = Command::new("rabbitmqctl")
            .args(["-q", "--erlang-cookie", &self.cookie, "-n", node])
            .args(args)
            .output()
            .context("running rabbitmqctl")?;
        if !output.status.success() {
            bail!(
                "rabbitmqctl -n {node} {} failed: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// The AMQP URL of node `i`'s default virtual host, as user `guest`.
    pub fn url(&self, i: usize) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.nodes[i].port)
    }

    /// The URL of every node, in order.
    pub fn urls(&self) -> Vec<String> {
        (0..self.nodes.len()).map(|i| self.url(i)).collect()
    }

    /// The node serving the connection of the client that named itself `client`, asked of
    /// node `ask` (any running node lists the whole cluster's connections).
    pub fn node_serving(&self, ask: usize, client: &str) -> Result<Option<usize>> {
        let listing = self.ctl(ask, &["list_connections", "port", "client_properties"])?;
        let quoted = format!("\"{client}\"");
        Ok(listing
            .lines()
            .filter(|line| line.contains(&quoted))
            .filter_map(|line| line.split('\t').next()?.trim().parse::<u16>().ok())
            .find_map(|port| self.nodes.iter().position(|n| n.port == port)))
    }

    /// Kills node `i` with SIGKILL (no goodbye to its clients or peers) and waits for it.
    pub fn kill(&mut self, i: usize) -> Result<()> {
        if let Some(mut process) = self.nodes[i].process.take() {
            process.kill()?;
            process.wait()?;
        }
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            if let Err(e) = self.kill(i) {
                eprintln!("could not kill RabbitMQ node {}: {e}", self.nodes[i].name);
            }
        }
    }
}

/// Writes `text` to a file only its owner may read (as Erlang requires of a cookie).
fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

/// The last [`LOG_TAIL_BYTES`] of `path`, or why it cannot be read.
fn tail(path: &Path) -> String {
    let mut text = Vec::new();
    match std::fs::File::open(path).and_then(|mut f| f.read_to_end(&mut text)) {
        Ok(_) => {
            let from = text.len().saturating_sub(LOG_TAIL_BYTES);
            String::from_utf8_lossy(&text[from..]).into_owned()
        }
        Err(e) => format!("(unreadable: {e})"),
    }
}
