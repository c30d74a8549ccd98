//! The `rabbitmq` sink's settings: the documentation of every option, its defaults, and the
//! checks that need no I/O.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
pub use sluice_connect::amqp::AmqpUrl;
use sluice_connect::amqp::Endpoint;
use sluice_pipeline::component::{BoxFuture, BuildContext, DynSink};
use sluice_pipeline::{
    Error, FieldError, FieldErrors, Finding, HumanDuration, SinkConfig, Validate,
};

use super::sink::RabbitmqSink;
use sluice_pipeline::template::Template;

/// Default for [`RabbitmqSinkConfig::confirm_window`].
pub const DEFAULT_CONFIRM_WINDOW: usize = 2048;
/// Default for [`RabbitmqSinkConfig::channels`].
pub const DEFAULT_CHANNELS: usize = 1;
/// Default for [`RabbitmqSinkConfig::routing_key`]: the name of Debezium's outbox topic for
/// the event's aggregate type, so that on the default exchange an event goes to the queue of
/// that name (`outbox.event.order` for an `order` aggregate).
pub const DEFAULT_ROUTING_KEY: &str = "outbox.event.{aggregatetype}";
/// Default for [`RabbitmqSinkConfig::properties`]: the key (the aggregate id) beside the
/// identity every message carries, so that consumers can dedupe (`message_id`) and dispatch
/// (`type`, `correlation_id`) while the properties stay under the broker's cheap limit (see
/// `docs/adr/0016-lean-default-message.md`).
pub const DEFAULT_PROPERTIES: [OptionalProperty; 1] = [OptionalProperty::CorrelationId];
/// Default for [`RabbitmqSinkConfig::max_payload_bytes`]: well below RabbitMQ's default
/// `max_message_size` (128 MiB), which closes the channel of a publisher that exceeds it.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 16 * 1024 * 1024;
/// Default for [`RabbitmqSinkConfig::backoff_initial`].
pub const DEFAULT_BACKOFF_INITIAL: HumanDuration = HumanDuration::from_millis(100);
/// Default for [`RabbitmqSinkConfig::backoff_max`].
pub const DEFAULT_BACKOFF_MAX: HumanDuration = HumanDuration::from_secs(10);
/// Default for [`RabbitmqSinkConfig::connect_timeout`].
pub const DEFAULT_CONNECT_TIMEOUT: HumanDuration = HumanDuration::from_secs(10);
/// Content type of the `json` codec when none is configured.
pub const JSON_CONTENT_TYPE: &str = "application/json";
/// Content type of the `avro` codec when none is configured (the Avro specification's).
pub const AVRO_CONTENT_TYPE: &str = "avro/binary";
/// The longest AMQP short string (exchange and queue names, routing keys, header names).
pub const MAX_SHORT_STRING: usize = 255;
/// Most publishing channels.
const MAX_CHANNELS: usize = 256;
/// Bytes of AMQP properties (flags included) up to which RabbitMQ handles a message cheaply;
/// above, its cost per message jumps (see `docs/rabbitmq.md#properties`).
pub const CHEAP_PROPERTY_BYTES: usize = 64;
/// What [`RabbitmqSinkConfig::typical_property_bytes`] assumes of an outbox event: a UUID id,
/// a type as long as `OrderCreated`, an aggregate id as long as `order-123`.
const TYPICAL_ID_BYTES: usize = 36;
const TYPICAL_TYPE_BYTES: usize = 12;
const TYPICAL_KEY_BYTES: usize = 9;

/// Config of the `rabbitmq` sink. See `docs/rabbitmq.md` for the message format and the
/// delivery and ordering guarantees.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RabbitmqSinkConfig {
    /// The broker: `amqp://user:password@host:port/vhost` or, over TLS,
    /// `amqps://user:password@host:5671/vhost?cacertfile=/etc/ca.pem`, the vhost URL-encoded
    /// (`%2f` is `/`). Query parameters: `heartbeat`, `frame_max`, `channel_max`,
    /// `connection_timeout` (ms), `auth_mechanism` (`plain`, or `external` to log in with the
    /// client certificate), and for `amqps://` `cacertfile`, `certfile`, `keyfile`, `verify`
    /// (`verify_peer`, the default, or `verify_none`) and `server_name_indication`; any other
    /// is refused. The password is never logged or printed. Set this for one broker, or
    /// `urls` for the nodes of a cluster.
    pub url: Option<AmqpUrl>,
    /// The nodes of a RabbitMQ cluster, each as `url` takes it, all with the same virtual
    /// host: `["amqp://relay:${AMQP_PASSWORD}@rabbit1/orders", "amqp://…@rabbit2/orders"]`.
    /// The sink connects to one node, starting at a random one so that sinks spread over
    /// the cluster; when it loses that node or cannot reach it, it goes on to the next, and
    /// publishes again there what the lost connection left unconfirmed. Set this or `url`.
    #[serde(default)]
    pub urls: Option<Vec<AmqpUrl>>,
    /// The exchange each message is published to, as a template over event values
    /// (`"outbox.{aggregatetype}"`). Empty (the default) is the default exchange, which
    /// routes to the queue named by the routing key.
    #[serde(default)]
    pub exchange: Template,
    /// The routing key, as a template over event values. The default,
    /// `outbox.event.{aggregatetype}`, is the topic Debezium's outbox router names: on the
    /// default exchange each event goes to the queue `outbox.event.<aggregatetype>`. Events
    /// without an `aggregatetype` (not from the `outbox` transform) need a routing key of
    /// their own, such as `{type}`.
    #[serde(default = "default_routing_key")]
    pub routing_key: Template,
    /// When set, each exchange the `exchange` template produces is declared (durable, of
    /// this type: `direct`, `fanout`, `topic`, `headers` or a plugin's type) before its first
    /// message. When unset, such exchanges must already exist, and an event for a missing one
    /// is quarantined with the reason.
    pub exchange_type: Option<String>,
    /// Exchanges, queues and bindings to declare on every (re)connection, before publishing.
    #[serde(default)]
    pub declare: Declare,
    /// Most messages published and not yet confirmed, over all channels. Input is read while
    /// fewer are in flight, so a busy sink batches and an idle one publishes at once.
    #[serde(default = "default_confirm_window")]
    pub confirm_window: usize,
    /// Publishing channels. Each event goes to the channel its key hashes to, so the events of
    /// one key keep their order while different keys are published in parallel.
    #[serde(default = "default_channels")]
    pub channels: usize,
    /// Most messages of one key in flight at once; unset, only `confirm_window` limits them.
    /// Set it to 1 for strict per-key order even when the broker nacks a message (see the
    /// documentation on ordering).
    pub max_in_flight_per_key: Option<usize>,
    /// The optional properties each message carries, besides `message_id`, `type` and
    /// `delivery_mode`, which it always does: any of `content_type`, `correlation_id` (the
    /// key) and `timestamp` (the commit time); default `correlation_id`. The broker pays per
    /// byte of properties, steeply above 64 bytes (see `docs/rabbitmq.md`), and `sluice check`
    /// warns when the list likely crosses that.
    #[serde(default = "default_properties")]
    pub properties: Vec<OptionalProperty>,
    /// The `content_type` property; default `application/json` (codec `json`) or
    /// `avro/binary` (codec `avro`). With a JSON content type (`application/json` or any
    /// `+json` type), a payload that is not JSON is quarantined.
    pub content_type: Option<String>,
    /// Extra message headers: header name → template over event values. They are added after
    /// the event's own headers and replace any of the same name. An event without a value
    /// for one of them is quarantined.
    #[serde(default)]
    pub headers: BTreeMap<String, Template>,
    /// An exchange that receives quarantined events (unroutable, malformed, without a key),
    /// with the reason in the `sluice.quarantine.reason` header. It must exist (declare it in
    /// `declare`, or set `exchange_type`). Unset, or for payloads larger than
    /// `max_payload_bytes`, quarantined events go to the pipeline's quarantine.
    pub quarantine_exchange: Option<String>,
    /// Quarantine events without a key ("NULL aggregate id"). With `false`, such events are
    /// published unordered.
    #[serde(default = "default_true")]
    pub require_key: bool,
    /// Payloads larger than this are quarantined to the pipeline's quarantine instead of being
    /// published. Keep it at or below the broker's `max_message_size`.
    #[serde(default = "default_max_payload_bytes")]
    pub max_payload_bytes: usize,
    /// How the message body is made from the event payload.
    #[serde(default)]
    pub encoding: Encoding,
    /// Publish in CloudEvents binary mode: `ce-*` headers describe the event, the body is
    /// the data.
    pub cloudevents: Option<CloudEventsConfig>,
    /// First wait before retrying a nacked message or reconnecting; it doubles on each
    /// failure in a row.
    #[serde(default = "default_backoff_initial")]
    pub backoff_initial: HumanDuration,
    /// Longest wait between retries.
    #[serde(default = "default_backoff_max")]
    pub backoff_max: HumanDuration,
    /// How long connecting (TCP, AMQP handshake) may take before it counts as failed.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: HumanDuration,
}

fn default_routing_key() -> Template {
    // The default is a valid template; parsing it cannot fail.
    Template::parse(DEFAULT_ROUTING_KEY).unwrap_or_default()
}
fn default_confirm_window() -> usize {
    DEFAULT_CONFIRM_WINDOW
}
fn default_channels() -> usize {
    DEFAULT_CHANNELS
}
fn default_properties() -> Vec<OptionalProperty> {
    DEFAULT_PROPERTIES.to_vec()
}
fn default_true() -> bool {
    true
}
fn default_max_payload_bytes() -> usize {
    DEFAULT_MAX_PAYLOAD_BYTES
}
fn default_backoff_initial() -> HumanDuration {
    DEFAULT_BACKOFF_INITIAL
}
fn default_backoff_max() -> HumanDuration {
    DEFAULT_BACKOFF_MAX
}
fn default_connect_timeout() -> HumanDuration {
    DEFAULT_CONNECT_TIMEOUT
}

/// The topology declared on each connection.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Declare {
    /// Exchanges, declared first.
    #[serde(default)]
    pub exchanges: Vec<ExchangeDeclaration>,
    /// Queues, declared next.
    #[serde(default)]
    pub queues: Vec<QueueDeclaration>,
    /// Bindings of queues to exchanges, declared last.
    #[serde(default)]
    pub bindings: Vec<BindingDeclaration>,
}

/// An exchange to declare.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExchangeDeclaration {
    /// Its name.
    pub name: String,
    /// Its type: `direct`, `fanout`, `topic`, `headers` or a plugin's type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Survives a broker restart.
    #[serde(default = "default_true")]
    pub durable: bool,
    /// Deleted once its last binding is removed.
    #[serde(default)]
    pub auto_delete: bool,
    /// Only other exchanges may publish to it.
    #[serde(default)]
    pub internal: bool,
    /// Optional arguments, such as `alternate-exchange`.
    #[serde(default)]
    pub arguments: BTreeMap<String, Argument>,
}

/// A queue to declare.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueDeclaration {
    /// Its name.
    pub name: String,
    /// Survives a broker restart (with its persistent messages).
    #[serde(default = "default_true")]
    pub durable: bool,
    /// Used by this connection only and deleted when it closes.
    #[serde(default)]
    pub exclusive: bool,
    /// Deleted once its last consumer goes away.
    #[serde(default)]
    pub auto_delete: bool,
    /// Optional arguments, such as `x-queue-type = "quorum"` or `x-max-length = 100000`.
    #[serde(default)]
    pub arguments: BTreeMap<String, Argument>,
}

/// A binding to declare.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindingDeclaration {
    /// The exchange.
    pub exchange: String,
    /// The queue.
    pub queue: String,
    /// The binding key (a pattern for topic exchanges).
    #[serde(default)]
    pub routing_key: String,
    /// Optional arguments (for headers exchanges, the headers to match).
    #[serde(default)]
    pub arguments: BTreeMap<String, Argument>,
}

/// A declaration argument's value.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Argument {
    /// `true` or `false`.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A floating-point number.
    Float(f64),
    /// A string.
    String(String),
}

/// A message property that `properties` may leave out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptionalProperty {
    /// `content_type`: the configured content type.
    ContentType,
    /// `correlation_id`: the event's key (the outbox `aggregateid`).
    CorrelationId,
    /// `timestamp`: the commit time, in seconds.
    Timestamp,
}

/// How the message body is made from the event payload.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(tag = "codec", rename_all = "snake_case", deny_unknown_fields)]
pub enum Encoding {
    /// The payload as stored (the outbox's JSON), unchanged.
    #[default]
    Json,
    /// The JSON payload encoded as one Avro datum of a schema; a payload that does not fit
    /// the schema is quarantined.
    Avro {
        /// The schema, as JSON (`.avsc`), read when the sink starts.
        schema_file: PathBuf,
        /// When set, each body starts with the Confluent wire-format header: a zero byte and
        /// this schema id as a 4-byte big-endian number.
        confluent_schema_id: Option<u32>,
    },
}

/// CloudEvents binary mode.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudEventsConfig {
    /// The `ce-source` attribute, as a template over event values (`"/orders/{aggregatetype}"`).
    pub source: Template,
}

/// The message for a URL that does not parse, with a hint for the usual slips in a list:
/// several nodes in one string, a node written without its scheme.
fn malformed(url: &AmqpUrl, message: String) -> String {
    let text = url.text();
    if text.contains(',') {
        format!(
            "{message}: it holds a comma; write each node as a URL of its own, urls = [\"amqp://user:password@rabbit1/vhost\", \"amqp://user:password@rabbit2/vhost\"]"
        )
    } else if !text.contains("://") {
        format!(
            "{message}: write the node as a whole URL, amqp://user:password@host:5672/vhost (or amqps:// for TLS)"
        )
    } else {
        message
    }
}

/// Whether `content_type` is a JSON media type (`application/json`, `…+json`, parameters
/// ignored).
pub(crate) fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == JSON_CONTENT_TYPE || essence.ends_with("+json")
}

impl RabbitmqSinkConfig {
    /// The bytes of AMQP properties (flags included) a message of this shape carries for a
    /// typical outbox event: a 36-byte UUID id, a 12-byte type, a 9-byte key, no headers of
    /// its own, and each configured header's template as long as its text. An estimate for
    /// `sluice check`; the event's own headers (such as `traceparent`) come on top.
    pub fn typical_property_bytes(&self) -> usize {
        let short = |len: usize| 1 + len;
        // Property flags, delivery_mode, message_id and type, which every message carries.
        let mut bytes = 2 + 1 + short(TYPICAL_ID_BYTES) + short(TYPICAL_TYPE_BYTES);
        for property in &self.properties {
            bytes += match property {
                OptionalProperty::ContentType => short(self.effective_content_type().len()),
                OptionalProperty::CorrelationId => short(TYPICAL_KEY_BYTES),
                OptionalProperty::Timestamp => 8,
            };
        }
        if !self.headers.is_empty() || self.cloudevents.is_some() {
            // The table's length, then per entry its name, a type tag and a long string.
            bytes += 4;
            for (name, template) in &self.headers {
                bytes += short(name.len()) + 1 + 4 + template.as_str().len();
            }
        }
        bytes
    }

    /// The brokers to connect to, in the order configured: `url`, or each of `urls`. The
    /// errors name the field (`urls[1]`) and never repeat a URL (it holds a password).
    pub fn endpoints(&self) -> Result<Vec<Endpoint>, FieldErrors> {
        let urls: Vec<(String, &AmqpUrl)> = match (&self.url, &self.urls) {
            (Some(url), None) => vec![("url".to_owned(), url)],
            (None, Some(urls)) if urls.is_empty() => {
                return Err(FieldError::new(
                    "urls",
                    "is empty: list the URL of each node of the cluster, such as [\"amqp://user:password@rabbit1:5672/vhost\", \"amqp://user:password@rabbit2:5672/vhost\"]",
                )
                .into());
            }
            (None, Some(urls)) => urls
                .iter()
                .enumerate()
                .map(|(i, url)| (format!("urls[{i}]"), url))
                .collect(),
            (None, None) => {
                return Err(FieldError::new(
                    "url",
                    "is missing: set url to the broker's URL (amqp://user:password@host:5672/vhost), or urls to the URLs of the nodes of a cluster",
                )
                .into());
            }
            (Some(_), Some(_)) => {
                return Err(FieldError::new(
                    "urls",
                    "is set together with url: keep url for one broker, or urls for the nodes of a cluster (listing that broker among them), not both",
                )
                .into());
            }
        };
        let mut problems = FieldErrors::new();
        let mut endpoints: Vec<(String, Endpoint)> = Vec::new();
        for (path, url) in urls {
            let endpoint = match url.parse() {
                Ok(endpoint) => endpoint,
                Err(message) => {
                    problems.push(FieldError::new(path, malformed(url, message)));
                    continue;
                }
            };
            if let Some((first, _)) = endpoints.iter().find(|(_, e)| e.same_node(&endpoint)) {
                problems.push(FieldError::new(
                    path,
                    format!("names the same node as {first}: list each node once"),
                ));
                continue;
            }
            if let Some((first, other)) = endpoints.first()
                && other.uri.vhost != endpoint.uri.vhost
            {
                problems.push(FieldError::new(
                    path,
                    format!(
                        "names vhost {:?} but {first} names {:?}: the nodes of a cluster serve the same virtual hosts, so give every URL the same one",
                        endpoint.uri.vhost, other.uri.vhost
                    ),
                ));
                continue;
            }
            endpoints.push((path, endpoint));
        }
        problems.into_result()?;
        Ok(endpoints.into_iter().map(|(_, e)| e).collect())
    }

    /// The content type messages carry.
    pub fn effective_content_type(&self) -> &str {
        match (&self.content_type, &self.encoding) {
            (Some(content_type), _) => content_type,
            (None, Encoding::Json) => JSON_CONTENT_TYPE,
            (None, Encoding::Avro { .. }) => AVRO_CONTENT_TYPE,
        }
    }

    /// What each connection declares: `declare`, preceded — when `exchange_type` is set — by
    /// the exchanges known before the first event (a constant `exchange`, the
    /// `quarantine_exchange`) that `declare` does not list, so its bindings may name them.
    pub fn topology(&self) -> Declare {
        let mut topology = self.declare.clone();
        if let Some(kind) = &self.exchange_type {
            let known = [
                self.exchange.constant(),
                self.quarantine_exchange.as_deref(),
            ];
            let missing: Vec<ExchangeDeclaration> = known
                .into_iter()
                .flatten()
                .filter(|name| {
                    !name.is_empty() && !topology.exchanges.iter().any(|e| e.name == *name)
                })
                .map(|name| ExchangeDeclaration {
                    name: name.to_owned(),
                    kind: kind.clone(),
                    durable: true,
                    auto_delete: false,
                    internal: false,
                    arguments: BTreeMap::new(),
                })
                .collect();
            topology.exchanges.splice(0..0, missing);
        }
        topology
    }
}

fn short_name(path: &str, name: &str) -> Result<(), FieldError> {
    if name.len() > MAX_SHORT_STRING {
        return Err(FieldError::new(
            path,
            format!("must be at most {MAX_SHORT_STRING} bytes long (AMQP short string)"),
        ));
    }
    Ok(())
}

fn declared_name(path: String, name: &str) -> Result<(), FieldError> {
    if name.is_empty() {
        return Err(FieldError::new(path, "must not be empty"));
    }
    short_name(&path, name)
}

impl Validate for RabbitmqSinkConfig {
    fn validate(&self) -> Result<(), FieldErrors> {
        let mut problems = FieldErrors::new();
        if let Err(errors) = self.endpoints() {
            problems.0.extend(errors.0);
        }
        if let Some(exchange) = self.exchange.constant() {
            problems.add(short_name("exchange", exchange));
        }
        if let Some(key) = self.routing_key.constant() {
            problems.add(short_name("routing_key", key));
        }
        if self.exchange_type.as_deref() == Some("") {
            problems.push(FieldError::new("exchange_type", "must not be empty"));
        }
        if !(1..=1_000_000).contains(&self.confirm_window) {
            problems.push(FieldError::new(
                "confirm_window",
                "must be between 1 and 1000000 messages",
            ));
        }
        if !(1..=MAX_CHANNELS).contains(&self.channels) {
            problems.push(FieldError::new(
                "channels",
                format!("must be between 1 and {MAX_CHANNELS}"),
            ));
        }
        if self.max_in_flight_per_key == Some(0) {
            problems.push(FieldError::new(
                "max_in_flight_per_key",
                "must be at least 1 (omit it for no per-key limit)",
            ));
        }
        if let Some(content_type) = &self.content_type {
            if content_type.is_empty() {
                problems.push(FieldError::new("content_type", "must not be empty"));
            }
            problems.add(short_name("content_type", content_type));
        }
        for name in self.headers.keys() {
            problems.add(declared_name(format!("headers.{name}"), name));
        }
        if let Some(exchange) = &self.quarantine_exchange {
            problems.add(declared_name("quarantine_exchange".into(), exchange));
        }
        if self.max_payload_bytes == 0 {
            problems.push(FieldError::new("max_payload_bytes", "must be at least 1"));
        }
        if let Encoding::Avro { schema_file, .. } = &self.encoding
            && schema_file.as_os_str().is_empty()
        {
            problems.push(FieldError::new("encoding.schema_file", "must not be empty"));
        }
        if self.backoff_initial.get().is_zero() {
            problems.push(FieldError::new("backoff_initial", "must be longer than 0s"));
        }
        if self.backoff_max < self.backoff_initial {
            problems.push(FieldError::new(
                "backoff_max",
                "must be at least backoff_initial",
            ));
        }
        if self.connect_timeout.get().is_zero() {
            problems.push(FieldError::new("connect_timeout", "must be longer than 0s"));
        }
        self.declare.validate(&mut problems);
        problems.into_result()
    }
}

impl Declare {
    /// Adds every problem of the declarations to `problems`.
    fn validate(&self, problems: &mut FieldErrors) {
        for (i, exchange) in self.exchanges.iter().enumerate() {
            let path = format!("declare.exchanges[{i}]");
            problems.add(declared_name(format!("{path}.name"), &exchange.name));
            if exchange.name.starts_with("amq.") {
                problems.push(FieldError::new(
                    format!("{path}.name"),
                    "names starting with `amq.` are reserved by the broker",
                ));
            }
            if exchange.kind.is_empty() {
                problems.push(FieldError::new(format!("{path}.type"), "must not be empty"));
            }
        }
        for (i, queue) in self.queues.iter().enumerate() {
            problems.add(declared_name(
                format!("declare.queues[{i}].name"),
                &queue.name,
            ));
        }
        for (i, binding) in self.bindings.iter().enumerate() {
            let path = format!("declare.bindings[{i}]");
            problems.add(declared_name(format!("{path}.exchange"), &binding.exchange));
            problems.add(declared_name(format!("{path}.queue"), &binding.queue));
            problems.add(short_name(
                &format!("{path}.routing_key"),
                &binding.routing_key,
            ));
        }
    }
}

impl SinkConfig for RabbitmqSinkConfig {
    fn build(&self, _cx: &BuildContext) -> Result<Box<dyn DynSink>, Error> {
        Ok(Box::new(RabbitmqSink::new(self.clone())?))
    }

    /// Connects and logs in as `run` would, and checks the exchanges known before the first
    /// event.
    fn check(&self) -> BoxFuture<'_, Vec<Finding>> {
        Box::pin(super::check::check(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<RabbitmqSinkConfig, FieldError> {
        let value: toml::Value = toml::from_str(text).unwrap();
        let config: RabbitmqSinkConfig = sluice_pipeline::config::deserialize(value)?;
        config.validate().map_err(|mut e| e.0.remove(0))?;
        Ok(config)
    }

    #[test]
    fn a_url_alone_is_enough() {
        let c = parse(r#"url = "amqp://guest:guest@127.0.0.1:5672/%2f""#).unwrap();
        assert_eq!(c.exchange.as_str(), "");
        assert_eq!(c.routing_key.as_str(), "outbox.event.{aggregatetype}");
        assert_eq!(c.properties, DEFAULT_PROPERTIES);
        assert!(c.typical_property_bytes() <= CHEAP_PROPERTY_BYTES);
        assert_eq!(c.confirm_window, DEFAULT_CONFIRM_WINDOW);
        assert_eq!(c.channels, DEFAULT_CHANNELS);
        assert_eq!(c.encoding, Encoding::Json);
        assert_eq!(c.effective_content_type(), "application/json");
        assert!(c.require_key);
    }

    #[test]
    fn typical_property_bytes_follow_the_shape() {
        let url = r#"url = "amqp://guest:guest@127.0.0.1:5672/%2f""#;
        let bytes = |extra: &str| {
            parse(&format!("{url}\n{extra}"))
                .unwrap()
                .typical_property_bytes()
        };
        // flags 2, delivery_mode 1, message_id 1+36, type 1+12.
        assert_eq!(bytes("properties = []"), 53);
        assert_eq!(bytes(""), 63, "the default adds the key");
        assert_eq!(bytes(r#"properties = ["timestamp"]"#), 61);
        assert_eq!(
            bytes(r#"properties = ["content_type", "correlation_id", "timestamp"]"#),
            88
        );
        assert_eq!(
            bytes(r#"headers = { tenant = "acme" }"#),
            63 + 4 + 7 + 1 + 4 + 4
        );
    }

    #[test]
    fn exchanges_the_sink_declares_itself_come_before_the_bindings() {
        let names = |c: &RabbitmqSinkConfig| -> Vec<(String, String)> {
            c.topology()
                .exchanges
                .into_iter()
                .map(|e| (e.name, e.kind))
                .collect()
        };
        let url = r#"url = "amqp://localhost""#;
        let c = parse(&format!(
            "{url}\nexchange = \"orders\"\nexchange_type = \"direct\"\nquarantine_exchange = \"q\"\n\
             [[declare.exchanges]]\nname = \"q\"\ntype = \"fanout\""
        ))
        .unwrap();
        assert_eq!(
            names(&c),
            [("orders", "direct"), ("q", "fanout")].map(|(n, k)| (n.to_owned(), k.to_owned()))
        );
        let templated = parse(&format!(
            "{url}\nexchange = \"outbox.{{aggregatetype}}\"\nexchange_type = \"topic\""
        ))
        .unwrap();
        assert!(names(&templated).is_empty(), "known only per event");
        let undeclared = parse(&format!("{url}\nexchange = \"orders\"")).unwrap();
        assert!(
            names(&undeclared).is_empty(),
            "without exchange_type, they must exist"
        );
    }

    #[test]
    fn every_section_parses() {
        let c = parse(
            r##"
            url = "amqp://u:p@localhost/v"
            exchange = "outbox.{aggregatetype}"
            routing_key = "{type}.{key}"
            exchange_type = "topic"
            confirm_window = 100
            channels = 4
            max_in_flight_per_key = 1
            headers = { tenant = "{tenant}" }
            quarantine_exchange = "sluice.quarantine"
            encoding = { codec = "avro", schema_file = "order.avsc", confluent_schema_id = 7 }
            cloudevents = { source = "/orders/{aggregatetype}" }
            backoff_initial = "50ms"
            backoff_max = "5s"
            [[declare.exchanges]]
            name = "outbox.order"
            type = "topic"
            arguments = { "alternate-exchange" = "ae" }
            [[declare.queues]]
            name = "orders"
            arguments = { "x-queue-type" = "quorum", "x-max-length" = 10, "x-single-active-consumer" = true }
            [[declare.bindings]]
            exchange = "outbox.order"
            queue = "orders"
            routing_key = "#"
            "##,
        )
        .unwrap();
        assert_eq!(
            c.encoding,
            Encoding::Avro {
                schema_file: "order.avsc".into(),
                confluent_schema_id: Some(7)
            }
        );
        assert_eq!(c.effective_content_type(), AVRO_CONTENT_TYPE);
        assert_eq!(
            c.declare.queues[0].arguments["x-max-length"],
            Argument::Int(10)
        );
        assert_eq!(
            c.declare.queues[0].arguments["x-single-active-consumer"],
            Argument::Bool(true)
        );
        assert!(c.declare.exchanges[0].durable);
    }

    #[test]
    fn errors_name_the_field() {
        let base = r#"url = "amqp://localhost""#;
        for (extra, path, words) in [
            ("exchange = \"x.{a\"", "exchange", "is not closed"),
            ("channels = 0", "channels", "between 1 and 256"),
            ("confirm_window = 0", "confirm_window", "between 1"),
            (
                "max_in_flight_per_key = 0",
                "max_in_flight_per_key",
                "at least 1",
            ),
            (
                "backoff_max = \"1ms\"",
                "backoff_max",
                "at least backoff_initial",
            ),
            ("nonsense = 1", "", "unknown field `nonsense`"),
            (
                "encoding = { codec = \"xml\" }",
                "encoding",
                "unknown variant `xml`",
            ),
            (
                "properties = [\"app_id\"]",
                "properties[0]",
                "unknown variant `app_id`, expected one of `content_type`, `correlation_id`, `timestamp`",
            ),
            (
                "[[declare.exchanges]]\nname = \"amq.x\"\ntype = \"direct\"",
                "declare.exchanges[0].name",
                "reserved",
            ),
            (
                "[[declare.bindings]]\nexchange = \"e\"\nqueue = \"\"",
                "declare.bindings[0].queue",
                "must not be empty",
            ),
        ] {
            let error = parse(&format!("{base}\n{extra}")).unwrap_err();
            assert!(error.path.starts_with(path), "{extra}: {error}");
            assert!(error.message.contains(words), "{extra}: {error}");
        }
        let long = "k".repeat(256);
        let error = parse(&format!("{base}\nrouting_key = \"{long}\"")).unwrap_err();
        assert_eq!(error.path, "routing_key");
    }

    #[test]
    fn urls_are_checked_without_echoing_the_password() {
        let error = parse(r#"url = "amqps://u:secret@localhost/?verify=no""#).unwrap_err();
        assert!(error.message.contains("verify_peer"), "{error}");
        assert!(!error.message.contains("secret"), "{error}");
        let error = parse(r#"url = "nope:secret""#).unwrap_err();
        assert_eq!(error.path, "url");
        assert!(!error.message.contains("secret"), "{error}");
        let c = parse(r#"url = "amqp://u:secret@localhost:5672/%2f""#).unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("amqp://u@localhost:5672//"), "{shown}");
    }

    #[test]
    fn a_cluster_is_a_list_of_urls_and_a_malformed_entry_is_named_with_the_fix() {
        let c = parse(
            r#"urls = ["amqp://u:secret@rabbit1/orders", "amqp://u:secret@rabbit2:5673/orders"]"#,
        )
        .unwrap();
        let shown: Vec<String> = c
            .endpoints()
            .unwrap()
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(
            shown,
            [
                "amqp://u@rabbit1:5672/orders",
                "amqp://u@rabbit2:5673/orders"
            ]
        );
        assert!(!format!("{c:?}").contains("secret"));
        let list = |entries: &str| parse(&format!("urls = [{entries}]")).unwrap_err();
        for (entries, path, says) in [
            (
                r#""amqp://u:secret@rabbit1/v", "rabbit2:5672""#,
                "urls[1]",
                "write the node as a whole URL, amqp://user:password@host:5672/vhost",
            ),
            (
                r#""amqp://u:secret@rabbit1:5672,rabbit2:5672/v""#,
                "urls[0]",
                "holds a comma; write each node as a URL of its own",
            ),
            (
                r#""amqp://u:secret@rabbit1/v", "amqps://u:secret@rabbit2/v?verify=no""#,
                "urls[1]",
                "use verify_peer (the default) or verify_none",
            ),
            (
                r#""amqp://u:secret@rabbit1/v", "amqp://u:secret@RABBIT1:5672/v""#,
                "urls[1]",
                "names the same node as urls[0]: list each node once",
            ),
            (
                r#""amqp://u:secret@rabbit1/v", "amqp://u:secret@rabbit2/w""#,
                "urls[1]",
                "names vhost \"w\" but urls[0] names \"v\"",
            ),
            ("", "urls", "is empty: list the URL of each node"),
        ] {
            let error = list(entries);
            assert_eq!(error.path, path, "{entries}: {error}");
            assert!(error.message.contains(says), "{entries}: {error}");
            assert!(!error.message.contains("secret"), "{error}");
        }
        let both = parse(
            r#"url = "amqp://h"
            urls = ["amqp://h"]"#,
        )
        .unwrap_err();
        assert_eq!(both.path, "urls");
        assert!(both.message.contains("not both"), "{both}");
        let neither = parse("routing_key = \"q\"").unwrap_err();
        assert_eq!(neither.path, "url");
        assert!(
            neither.message.contains("set url to the broker's URL"),
            "{neither}"
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let value: toml::Value = toml::from_str(
            r#"url = "amqp://h?hearbeat=1"
            channels = 0
            confirm_window = 0
            [[declare.exchanges]]
            name = "amq.mine"
            type = """#,
        )
        .unwrap();
        let config: RabbitmqSinkConfig = sluice_pipeline::config::deserialize(value).unwrap();
        let problems = config.validate().unwrap_err();
        let paths: Vec<_> = problems.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "url",
                "confirm_window",
                "channels",
                "declare.exchanges[0].name",
                "declare.exchanges[0].type"
            ],
            "{problems}"
        );
    }

    #[test]
    fn json_content_types() {
        assert!(is_json("application/json"));
        assert!(is_json("Application/JSON; charset=utf-8"));
        assert!(is_json("application/cloudevents+json"));
        assert!(!is_json("text/plain"));
        assert!(!is_json("avro/binary"));
    }
}
