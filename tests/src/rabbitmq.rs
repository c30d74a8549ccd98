//! RabbitMQ for tests: a virtual host per test (created with `rabbitmqctl`, deleted when the
//! test ends), its URL, and a reader that takes messages off a queue as a consumer sees them.
//!
//! Everything here waits out a broker that is restarting (another test may be stopping and
//! starting it): commands and connections are retried until [`PATIENCE`] runs out.
//! `AMQP_URL` (as `scripts/services.sh env` prints it) names the broker; only its host, port
//! and credentials are used.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use lapin::options::{BasicGetOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

use crate::PATIENCE;

pub mod cluster;

/// The broker the tests use when `AMQP_URL` is unset.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Runs `rabbitmqctl -q <args>` once; its standard output, or an error with its output.
pub fn rabbitmqctl(args: &[&str]) -> Result<String> {
    let output = Command::new("rabbitmqctl")
        .arg("-q")
        .args(args)
        .output()
        .context("running rabbitmqctl")?;
    if !output.status.success() {
        bail!(
            "rabbitmqctl {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs `rabbitmqctl -q <args>` until it succeeds (the broker may be restarting).
pub fn rabbitmqctl_patiently(args: &[&str]) -> Result<String> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match rabbitmqctl(args) {
            Ok(out) => return Ok(out),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

fn base_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| DEFAULT_AMQP_URL.to_owned())
}

/// `scheme://userinfo@host:port` of the broker.
fn authority() -> String {
    let base = base_url();
    let (scheme, rest) = base.split_once("://").unwrap_or(("amqp", &base));
    let authority = rest.split('/').next().unwrap_or(rest);
    format!("{scheme}://{authority}")
}

/// The user and password the tests connect as.
pub fn credentials() -> (String, String) {
    let authority = authority();
    let userinfo = authority
        .split_once("://")
        .and_then(|(_, rest)| rest.rsplit_once('@'))
        .map_or("guest:guest", |(userinfo, _)| userinfo)
        .to_owned();
    let (user, password) = userinfo.split_once(':').unwrap_or((&userinfo, ""));
    (user.to_owned(), password.to_owned())
}

/// `amqps://` to the local broker's TLS listener (the port of `AMQPS_URL`, else 5671) as
/// `userinfo` (`user:password@`, or empty), by `host`, virtual host `vhost`, with `query`.
pub fn amqps_url(userinfo: &str, host: &str, vhost: &str, query: &str) -> String {
    let port = std::env::var("AMQPS_URL")
        .ok()
        .and_then(|url| {
            let authority = url.split_once('@')?.1.split('/').next()?.to_owned();
            Some(authority.rsplit_once(':')?.1.to_owned())
        })
        .unwrap_or_else(|| "5671".into());
    format!("amqps://{userinfo}{host}:{port}/{vhost}?{query}")
}

/// Two verified `amqps://` URLs of virtual host `vhost`: one logging in with the test
/// credentials, one with the services script's client certificate (EXTERNAL).
pub fn amqps_urls(vhost: &str) -> (String, String) {
    let ca = crate::test_ca();
    let (user, password) = credentials();
    let with_password = amqps_url(
        &format!("{user}:{password}@"),
        "localhost",
        vhost,
        &format!("cacertfile={}", ca.display()),
    );
    let with_certificate = amqps_url(
        "",
        "localhost",
        vhost,
        &format!(
            "cacertfile={}&certfile={}&keyfile={}&auth_mechanism=external",
            ca.display(),
            ca.with_file_name("client.pem").display(),
            ca.with_file_name("client.key").display()
        ),
    );
    (with_password, with_certificate)
}

/// The URL of virtual host `name` on the test broker.
pub fn vhost_url(name: &str) -> String {
    format!("{}/{name}", authority())
}

/// A virtual host that exists for one test, with full permissions for the test user.
#[derive(Debug)]
pub struct Vhost {
    name: String,
    url: String,
}

impl Vhost {
    /// Creates a new virtual host named after `test`.
    pub fn create(test: &str) -> Result<Self> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "sluice-{test}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        rabbitmqctl_patiently(&["add_vhost", &name])?;
        let vhost = Vhost {
            url: vhost_url(&name),
            name,
        };
        let (user, _) = credentials();
        rabbitmqctl_patiently(&[
            "set_permissions",
            "-p",
            &vhost.name,
            &user,
            ".*",
            ".*",
            ".*",
        ])?;
        Ok(vhost)
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The AMQP URL that connects to it.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        if let Err(e) = rabbitmqctl_patiently(&["delete_vhost", &self.name]) {
            eprintln!("could not delete vhost {}: {e}", self.name);
        }
    }
}

/// A message as a consumer receives it.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    /// The exchange it was published to.
    pub exchange: String,
    /// Its routing key.
    pub routing_key: String,
    /// The `message_id` property.
    pub message_id: Option<String>,
    /// The `type` property.
    pub kind: Option<String>,
    /// The `delivery_mode` property (2: persistent).
    pub delivery_mode: Option<u8>,
    /// The `content_type` property.
    pub content_type: Option<String>,
    /// The `timestamp` property (seconds since the epoch).
    pub timestamp: Option<u64>,
    /// The `app_id` property.
    pub app_id: Option<String>,
    /// The `correlation_id` property (sluice: the event's key, the aggregate id).
    pub correlation_id: Option<String>,
    /// Headers with text values (`None` for a void value).
    pub headers: BTreeMap<String, Option<String>>,
    /// The body.
    pub body: Vec<u8>,
}

impl Received {
    fn new(exchange: String, routing_key: String, p: &BasicProperties, body: Vec<u8>) -> Self {
        let text = |s: &Option<lapin::types::ShortString>| s.as_ref().map(|s| s.to_string());
        let headers = p
            .headers()
            .as_ref()
            .map(|h| {
                h.inner()
                    .iter()
                    .map(|(k, v)| (k.to_string(), header_text(v)))
                    .collect()
            })
            .unwrap_or_default();
        Received {
            exchange,
            routing_key,
            message_id: text(p.message_id()),
            kind: text(p.kind()),
            delivery_mode: *p.delivery_mode(),
            content_type: text(p.content_type()),
            timestamp: *p.timestamp(),
            app_id: text(p.app_id()),
            correlation_id: text(p.correlation_id()),
            headers,
            body,
        }
    }

    /// The text value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)?.as_deref()
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

fn header_text(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        AMQPValue::Void => None,
        other => Some(format!("{other:?}")),
    }
}

/// A connection for reading queues of one virtual host, reopened when the broker drops it.
pub struct Reader {
    url: String,
    channel: Option<(Connection, Channel)>,
}

impl Reader {
    /// A reader of the virtual host at `url` (connects on first use).
    pub fn new(url: &str) -> Self {
        Reader {
            url: url.to_owned(),
            channel: None,
        }
    }

    async fn channel(&mut self) -> Result<Channel> {
        if let Some((connection, channel)) = &self.channel
            && connection.status().connected()
            && channel.status().connected()
        {
            return Ok(channel.clone());
        }
        self.channel = None;
        let deadline = Instant::now() + PATIENCE;
        loop {
            match open(&self.url).await {
                Ok((connection, channel)) => {
                    self.channel = Some((connection, channel.clone()));
                    return Ok(channel);
                }
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// Takes every message now ready in `queue`, in queue order.
    pub async fn take_ready(&mut self, queue: &str) -> Result<Vec<Received>> {
        let mut taken = Vec::new();
        let deadline = Instant::now() + PATIENCE;
        loop {
            let channel = self.channel().await?;
            let got = channel
                .basic_get(queue.into(), BasicGetOptions { no_ack: true })
                .await;
            match got {
                Ok(Some(message)) => {
                    let d = message.delivery;
                    taken.push(Received::new(
                        d.exchange.to_string(),
                        d.routing_key.to_string(),
                        &d.properties,
                        d.data,
                    ));
                }
                Ok(None) => return Ok(taken),
                Err(e) if Instant::now() > deadline => return Err(e.into()),
                Err(_) => self.channel = None,
            }
        }
    }

    /// How many messages are ready in `queue`.
    pub async fn ready(&mut self, queue: &str) -> Result<u32> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let channel = self.channel().await?;
            let options = QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            };
            match channel
                .queue_declare(queue.into(), options, FieldTable::default())
                .await
            {
                Ok(q) => return Ok(q.message_count()),
                Err(e) if Instant::now() > deadline => return Err(e.into()),
                Err(_) => self.channel = None,
            }
        }
    }

    /// Waits until `queue` holds at least `n` ready messages, then takes them all.
    pub async fn take_at_least(&mut self, queue: &str, n: u32) -> Result<Vec<Received>> {
        let deadline = Instant::now() + PATIENCE;
        while self.ready(queue).await? < n {
            if Instant::now() > deadline {
                bail!("gave up waiting for {n} messages in {queue} after {PATIENCE:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.take_ready(queue).await
    }
}

async fn open(url: &str) -> Result<(Connection, Channel)> {
    let connection = Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    Ok((connection, channel))
}
