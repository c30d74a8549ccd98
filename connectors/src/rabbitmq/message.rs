//! From an event to an AMQP message: exchange and routing key from templates, properties and
//! headers, and the body in the configured encoding — or the reason the event cannot be
//! published and must be quarantined.
//!
//! Every message is persistent (`delivery_mode = 2`) and carries its identity in properties:
//! `message_id` = event id, `type` = event type, `correlation_id` = the key (the aggregate id),
//! `timestamp` = commit time (when known) and the configured `content_type`; `properties`
//! may leave out the last three, whose bytes the broker pays for. Headers carry only what
//! properties cannot: the event's own headers (such as a W3C `traceparent` the outbox maps
//! from a column), then the configured extra headers, then the CloudEvents attributes on
//! request. A message with no header has no header table at all:
//! the broker's cost per message grows with every header (ADR 0008).

use std::time::UNIX_EPOCH;

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::{AMQPValue, FieldTable, ShortString};
use bytes::Bytes;
use sluice_pipeline::runtime::{QUARANTINE_COMPONENT_HEADER, QUARANTINE_REASON_HEADER};
use sluice_pipeline::{Event, Text};

use super::avro::AvroEncoder;
use super::cloudevents;
use super::config::{Encoding, MAX_SHORT_STRING, OptionalProperty, RabbitmqSinkConfig, is_json};
use sluice_pipeline::template::Template;

/// `delivery_mode` of a persistent message.
const PERSISTENT: u8 = 2;
/// The header that carries an event id too long for `message_id` (quarantined messages only).
const ID_HEADER: &str = "id";
/// The quarantine reason of an event without a key.
pub(crate) const NULL_KEY_REASON: &str = "NULL aggregate id";

/// A message ready to publish.
#[derive(Debug, Clone)]
pub(crate) struct Message {
    pub exchange: ShortString,
    pub routing_key: ShortString,
    pub properties: BasicProperties,
    pub body: Bytes,
}

/// Why an event cannot be published as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rejection {
    /// For a person: what is wrong.
    pub reason: String,
    /// Whether the quarantine exchange may take it (not when it is too large for the broker).
    pub to_exchange: bool,
}

impl Rejection {
    fn new(reason: impl Into<String>) -> Self {
        Rejection {
            reason: reason.into(),
            to_exchange: true,
        }
    }
}

/// How the body is made.
#[derive(Debug)]
enum Codec {
    /// The payload as stored; checked to be JSON when the content type says so.
    Json { check: bool },
    /// One Avro datum.
    Avro(AvroEncoder),
}

/// A template whose constant form, if any, is ready as a short string.
#[derive(Debug)]
struct Name {
    template: Template,
    constant: Option<ShortString>,
    what: &'static str,
}

impl Name {
    fn new(template: &Template, what: &'static str) -> Self {
        Name {
            constant: template
                .constant()
                .and_then(|c| ShortString::try_new(c).ok()),
            template: template.clone(),
            what,
        }
    }

    fn render(&self, event: &Event) -> Result<ShortString, Rejection> {
        if let Some(constant) = &self.constant {
            return Ok(constant.clone());
        }
        let rendered = self.template.render(event).map_err(|missing| {
            Rejection::new(format!(
                "{} template {:?}: {missing}",
                self.what,
                self.template.as_str()
            ))
        })?;
        ShortString::try_new(rendered).map_err(|e| {
            Rejection::new(format!(
                "{} rendered from {:?} is longer than {MAX_SHORT_STRING} bytes ({e})",
                self.what,
                self.template.as_str()
            ))
        })
    }
}

/// Builds messages from events, as the sink's config says.
#[derive(Debug)]
pub(crate) struct MessageBuilder {
    exchange: Name,
    routing_key: Name,
    headers: Vec<(ShortString, Template)>,
    content_type: ShortString,
    /// Whether messages carry the optional properties `content_type`, `correlation_id` and
    /// `timestamp` (the `properties` setting).
    sends_content_type: bool,
    correlation_id: bool,
    timestamp: bool,
    codec: Codec,
    cloudevents_source: Option<Template>,
    require_key: bool,
    max_payload_bytes: usize,
    quarantine_exchange: Option<ShortString>,
    component: Text,
}

impl MessageBuilder {
    /// A builder for `config`, with the Avro encoder when the config asks for one; `component`
    /// is the sink's id, recorded on quarantined messages.
    pub fn new(config: &RabbitmqSinkConfig, avro: Option<AvroEncoder>, component: &str) -> Self {
        let content_type = config.effective_content_type();
        let codec = match (&config.encoding, avro) {
            (Encoding::Avro { .. }, Some(encoder)) => Codec::Avro(encoder),
            _ => Codec::Json {
                check: is_json(content_type),
            },
        };
        MessageBuilder {
            exchange: Name::new(&config.exchange, "exchange"),
            routing_key: Name::new(&config.routing_key, "routing key"),
            // Validation bounds header names to short strings.
            headers: config
                .headers
                .iter()
                .filter_map(|(name, t)| {
                    Some((ShortString::try_new(name.as_str()).ok()?, t.clone()))
                })
                .collect(),
            content_type: ShortString::try_new(content_type).unwrap_or_default(),
            sends_content_type: config.properties.contains(&OptionalProperty::ContentType),
            correlation_id: config.properties.contains(&OptionalProperty::CorrelationId),
            timestamp: config.properties.contains(&OptionalProperty::Timestamp),
            codec,
            cloudevents_source: config.cloudevents.as_ref().map(|c| c.source.clone()),
            require_key: config.require_key,
            max_payload_bytes: config.max_payload_bytes,
            quarantine_exchange: config
                .quarantine_exchange
                .as_deref()
                .and_then(|q| ShortString::try_new(q).ok()),
            component: Text::from(component),
        }
    }

    /// The routing key of `event`, or the empty one when the template cannot be rendered
    /// (for quarantined events).
    pub fn routing_key_or_empty(&self, event: &Event) -> ShortString {
        self.routing_key.render(event).unwrap_or_default()
    }

    /// The quarantine exchange, if one is configured.
    pub fn quarantine_exchange(&self) -> Option<&ShortString> {
        self.quarantine_exchange.as_ref()
    }

    /// The message for `event`, or why it cannot be published.
    pub fn build(&self, event: &Event) -> Result<Message, Rejection> {
        if event.key.is_none() && self.require_key {
            return Err(Rejection::new(NULL_KEY_REASON));
        }
        if event.payload.len() > self.max_payload_bytes {
            return Err(Rejection {
                reason: format!(
                    "payload of {} bytes is larger than max_payload_bytes ({})",
                    event.payload.len(),
                    self.max_payload_bytes
                ),
                to_exchange: false,
            });
        }
        let exchange = self.exchange.render(event)?;
        let routing_key = self.routing_key.render(event)?;
        let message_id = short(&event.id, "event id")?;
        let kind = short(&event.event_type, "event type")?;
        let key = match &event.key {
            Some(key) if self.correlation_id => Some(short(key, "key")?),
            _ => None,
        };
        let body = match &self.codec {
            // Unchecked, or checked already (see `Event::mark_payload_json`).
            Codec::Json { check } if !check || event.payload_is_json() => event.payload.clone(),
            Codec::Json { .. } => {
                serde_json::from_slice::<serde::de::IgnoredAny>(&event.payload).map_err(|e| {
                    Rejection::new(format!(
                        "payload is not JSON ({e}) but the content type is {}",
                        self.content_type
                    ))
                })?;
                event.payload.clone()
            }
            Codec::Avro(encoder) => encoder
                .encode(&event.payload)
                .map_err(|mismatch| Rejection::new(mismatch.0))?,
        };
        let mut headers = base_headers(event).map_err(Rejection::new)?;
        for (name, template) in &self.headers {
            let value = template.render(event).map_err(|missing| {
                Rejection::new(format!("header {name} template {template:?}: {missing}"))
            })?;
            headers.insert(name.clone(), AMQPValue::LongString(value.into()));
        }
        if let Some(source) = &self.cloudevents_source {
            let source = source.render(event).map_err(|missing| {
                Rejection::new(format!("cloudevents source template {source:?}: {missing}"))
            })?;
            cloudevents::add_headers(&mut headers, event, source);
        }
        let mut properties =
            common_properties(event, Some(message_id), Some(kind), key, self.timestamp);
        if self.sends_content_type {
            properties = properties.with_content_type(self.content_type.clone());
        }
        let properties = with_headers(properties, headers);
        Ok(Message {
            exchange,
            routing_key,
            properties,
            body,
        })
    }

    /// The message that quarantines `event` with `reason` on the quarantine exchange, or
    /// `None` when there is none. A message that was published and returned keeps its
    /// properties and body (`published`); otherwise the body is the payload as stored, with no
    /// content type.
    pub fn quarantine(
        &self,
        event: &Event,
        reason: &str,
        routing_key: ShortString,
        published: Option<(&BasicProperties, Bytes)>,
    ) -> Option<Message> {
        let exchange = self.quarantine_exchange.clone()?;
        let (mut properties, body) = match published {
            Some((properties, body)) => (properties.clone(), body),
            None => {
                let message_id = short(&event.id, "").ok();
                let mut headers = base_headers_lenient(event);
                if message_id.is_none() {
                    // An id too long for `message_id` still identifies a returned message.
                    headers.insert(ShortString::from(ID_HEADER), text(&event.id));
                }
                let properties = with_headers(
                    common_properties(
                        event,
                        message_id,
                        short(&event.event_type, "").ok(),
                        event.key.as_ref().and_then(|k| short(k, "").ok()),
                        true,
                    ),
                    headers,
                );
                (properties, event.payload.clone())
            }
        };
        let mut headers = properties.headers().clone().unwrap_or_default();
        headers.insert(
            ShortString::from(QUARANTINE_REASON_HEADER),
            AMQPValue::LongString(reason.into()),
        );
        headers.insert(
            ShortString::from(QUARANTINE_COMPONENT_HEADER),
            AMQPValue::LongString(self.component.as_str().into()),
        );
        properties = properties.with_headers(headers);
        Some(Message {
            exchange,
            routing_key,
            properties,
            body,
        })
    }
}

/// The event id a published message carries: its `message_id`, or the id header of a
/// quarantined event whose id is too long for one (empty if neither).
pub(crate) fn event_id(properties: &BasicProperties) -> Vec<u8> {
    match (properties.message_id(), properties.headers()) {
        (Some(id), _) => id.as_str().as_bytes().to_vec(),
        (None, Some(headers)) => match headers.inner().get(ID_HEADER) {
            Some(AMQPValue::LongString(id)) => id.as_bytes().to_vec(),
            _ => Vec::new(),
        },
        (None, None) => Vec::new(),
    }
}

fn short(text: &Text, what: &str) -> Result<ShortString, Rejection> {
    ShortString::try_new(text.as_str()).map_err(|_| {
        Rejection::new(format!(
            "{what} is longer than {MAX_SHORT_STRING} bytes, the AMQP limit"
        ))
    })
}

fn common_properties(
    event: &Event,
    message_id: Option<ShortString>,
    kind: Option<ShortString>,
    key: Option<ShortString>,
    timestamp: bool,
) -> BasicProperties {
    let mut properties = BasicProperties::default().with_delivery_mode(PERSISTENT);
    if let Some(id) = message_id {
        properties = properties.with_message_id(id);
    }
    if let Some(kind) = kind {
        properties = properties.with_type(kind);
    }
    if let Some(key) = key {
        properties = properties.with_correlation_id(key);
    }
    if timestamp
        && let Some(time) = event.meta.commit_time
        && let Ok(since) = time.duration_since(UNIX_EPOCH)
    {
        properties = properties.with_timestamp(since.as_secs());
    }
    properties
}

fn text(value: &Text) -> AMQPValue {
    AMQPValue::LongString(value.as_bytes().to_vec().into())
}

/// `properties` with `headers`, unless there are none: an empty table still costs the broker.
fn with_headers(properties: BasicProperties, headers: FieldTable) -> BasicProperties {
    if headers.inner().is_empty() {
        properties
    } else {
        properties.with_headers(headers)
    }
}

/// The event's own headers; a name too long for AMQP is an error, since dropping the header
/// would lose data silently.
fn base_headers(event: &Event) -> Result<FieldTable, String> {
    let mut headers = FieldTable::default();
    for (name, value) in event.headers.iter() {
        let name = ShortString::try_new(name.as_str()).map_err(|_| {
            format!("an event header name is longer than {MAX_SHORT_STRING} bytes, the AMQP limit")
        })?;
        headers.insert(name, value.map_or(AMQPValue::Void, text));
    }
    Ok(headers)
}

/// [`base_headers`] for a message that is quarantined anyway: headers that cannot be carried
/// are left out.
fn base_headers_lenient(event: &Event) -> FieldTable {
    let mut headers = FieldTable::default();
    for (name, value) in event.headers.iter() {
        if let Ok(name) = ShortString::try_new(name.as_str()) {
            headers.insert(name, value.map_or(AMQPValue::Void, text));
        }
    }
    headers
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use sluice_pipeline::Position;
    use std::time::Duration;

    fn config(extra: &str) -> RabbitmqSinkConfig {
        let text = format!("url = \"amqp://localhost\"\n{extra}");
        let value: toml::Value = toml::from_str(&text).unwrap();
        sluice_pipeline::config::deserialize(value).unwrap()
    }

    /// A builder for the config `url = "amqp://localhost"` and `extra`.
    pub(crate) fn builder(extra: &str) -> MessageBuilder {
        MessageBuilder::new(&config(extra), None, "broker")
    }

    /// An event with a key, a type, a field, headers and a commit time.
    pub(crate) fn event() -> Event {
        let mut event = Event::new("id-1", Position(3), Bytes::from_static(br#"{"a":1}"#));
        event.key = Some("order-9".into());
        event.event_type = "OrderCreated".into();
        event.fields.set("aggregatetype", Some("order".into()));
        event.headers.set(
            "traceparent",
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        );
        event.headers.set("nullable", None);
        event.meta.commit_time = Some(UNIX_EPOCH + Duration::from_millis(1_700_000_000_500));
        event
    }

    fn header<'a>(properties: &'a BasicProperties, name: &str) -> Option<&'a AMQPValue> {
        properties.headers().as_ref()?.inner().get(name)
    }

    /// The text of header `name` (it must be a long string).
    pub(crate) fn header_text(properties: &BasicProperties, name: &str) -> String {
        match header(properties, name) {
            Some(AMQPValue::LongString(s)) => s.to_string(),
            other => panic!("{name}: {other:?}"),
        }
    }

    #[test]
    fn a_message_carries_the_event() {
        let b = builder(
            "exchange = \"outbox.{aggregatetype}\"\nheaders = { tenant = \"t-{key}\" }\nproperties = [\"content_type\", \"correlation_id\", \"timestamp\"]",
        );
        let m = b.build(&event()).unwrap();
        assert_eq!(m.exchange.as_str(), "outbox.order");
        assert_eq!(m.routing_key.as_str(), "outbox.event.order");
        assert_eq!(&m.body[..], br#"{"a":1}"#);
        let p = &m.properties;
        assert_eq!(*p.delivery_mode(), Some(2));
        assert_eq!(p.message_id().as_ref().unwrap().as_str(), "id-1");
        assert_eq!(p.kind().as_ref().unwrap().as_str(), "OrderCreated");
        assert_eq!(*p.timestamp(), Some(1_700_000_000));
        assert_eq!(
            p.content_type().as_ref().unwrap().as_str(),
            "application/json"
        );
        assert_eq!(p.correlation_id().as_ref().unwrap().as_str(), "order-9");
        for standard in ["id", "type", "aggregateid", "aggregatetype"] {
            assert!(header(p, standard).is_none(), "{standard} is a property");
        }
        assert!(header_text(p, "traceparent").starts_with("00-0af7"));
        assert_eq!(header(p, "nullable"), Some(&AMQPValue::Void));
        assert_eq!(header_text(p, "tenant"), "t-order-9");
        assert!(header(p, "ce-id").is_none());
    }

    #[test]
    fn properties_may_be_trimmed_to_the_identity() {
        let m = builder("properties = []").build(&event()).unwrap();
        let p = &m.properties;
        assert_eq!(p.message_id().as_ref().unwrap().as_str(), "id-1");
        assert_eq!(p.kind().as_ref().unwrap().as_str(), "OrderCreated");
        assert_eq!(*p.delivery_mode(), Some(2));
        assert_eq!(p.content_type(), &None);
        assert_eq!(p.correlation_id(), &None);
        assert_eq!(p.timestamp(), &None);
        assert_eq!(p.app_id(), &None);
        let m = builder("properties = [\"timestamp\"]")
            .build(&event())
            .unwrap();
        assert_eq!(*m.properties.timestamp(), Some(1_700_000_000));
        assert_eq!(m.properties.correlation_id(), &None);
        // The content type still decides whether payloads are checked as JSON.
        let mut bad = event();
        bad.payload = Bytes::from_static(b"not json");
        let rejection = builder("properties = []").build(&bad).unwrap_err();
        assert!(rejection.reason.contains("not JSON"), "{rejection:?}");
    }

    #[test]
    fn by_default_a_message_routes_as_debezium_and_carries_its_identity_and_key() {
        let m = builder("").build(&event()).unwrap();
        assert_eq!(m.exchange.as_str(), "");
        assert_eq!(m.routing_key.as_str(), "outbox.event.order");
        let p = &m.properties;
        assert_eq!(p.message_id().as_ref().unwrap().as_str(), "id-1");
        assert_eq!(p.kind().as_ref().unwrap().as_str(), "OrderCreated");
        assert_eq!(p.correlation_id().as_ref().unwrap().as_str(), "order-9");
        assert_eq!(p.content_type(), &None);
        assert_eq!(p.timestamp(), &None);
    }

    #[test]
    fn a_message_without_headers_has_no_header_table() {
        let mut e = event();
        e.headers = Default::default();
        let p = builder("").build(&e).unwrap().properties;
        assert!(p.headers().is_none());
        e.key = Some("k".repeat(256).into());
        assert!(
            builder("")
                .build(&e)
                .unwrap_err()
                .reason
                .starts_with("key is longer")
        );
    }

    #[test]
    fn cloudevents_headers_are_added_on_request() {
        let b = builder("cloudevents = { source = \"/shop/{aggregatetype}\" }");
        let p = b.build(&event()).unwrap().properties;
        assert_eq!(header_text(&p, "ce-source"), "/shop/order");
        assert_eq!(header_text(&p, "ce-time"), "2023-11-14T22:13:20.500000Z");
    }

    #[test]
    fn events_that_cannot_be_published_say_why() {
        let b = builder("routing_key = \"{region}.{type}\"\nmax_payload_bytes = 10");
        let mut e = event();
        e.key = None;
        assert_eq!(b.build(&e).unwrap_err().reason, NULL_KEY_REASON);
        let mut e = event();
        e.payload = Bytes::from_static(b"0123456789ab");
        let rejection = b.build(&e).unwrap_err();
        assert!(!rejection.to_exchange);
        assert_eq!(
            rejection.reason,
            "payload of 12 bytes is larger than max_payload_bytes (10)"
        );
        let rejection = b.build(&event()).unwrap_err();
        assert_eq!(
            rejection.reason,
            "routing key template \"{region}.{type}\": the event has no value for {region}"
        );
        assert!(rejection.to_exchange);
        let mut e = event();
        e.payload = Bytes::from_static(b"{nope");
        let b = builder("");
        assert!(
            b.build(&e)
                .unwrap_err()
                .reason
                .starts_with("payload is not JSON")
        );
        let b = builder("content_type = \"text/plain\"");
        assert_eq!(&b.build(&e).unwrap().body[..], b"{nope");
        let mut e = event();
        e.id = "x".repeat(256).into();
        assert!(
            b.build(&e)
                .unwrap_err()
                .reason
                .starts_with("event id is longer")
        );
        let b = builder("require_key = false");
        let mut e = event();
        e.key = None;
        assert!(b.build(&e).is_ok());
    }

    #[test]
    fn a_payload_already_checked_as_json_is_not_parsed_again() {
        let mut e = event();
        e.payload = Bytes::from_static(b"{nope");
        e.mark_payload_json();
        assert_eq!(&builder("").build(&e).unwrap().body[..], b"{nope");
        e.payload = Bytes::from_static(b"{nope!");
        assert!(builder("").build(&e).is_err(), "a new payload is checked");
    }

    #[test]
    fn quarantine_messages_carry_the_reason() {
        let b = builder("");
        assert!(
            b.quarantine(&event(), "r", ShortString::from("k"), None)
                .is_none()
        );
        let b = builder("quarantine_exchange = \"q\"");
        let mut e = event();
        e.payload = Bytes::from_static(b"{nope");
        let m = b
            .quarantine(&e, "bad", ShortString::from("rk"), None)
            .unwrap();
        assert_eq!(m.exchange.as_str(), "q");
        assert_eq!(m.routing_key.as_str(), "rk");
        assert_eq!(&m.body[..], b"{nope");
        assert!(m.properties.content_type().is_none());
        assert_eq!(header_text(&m.properties, QUARANTINE_REASON_HEADER), "bad");
        assert_eq!(
            header_text(&m.properties, QUARANTINE_COMPONENT_HEADER),
            "broker"
        );
        assert_eq!(
            m.properties.correlation_id().as_ref().unwrap().as_str(),
            "order-9"
        );
        assert!(header_text(&m.properties, "traceparent").starts_with("00-0af7"));
        assert_eq!(event_id(&m.properties), b"id-1");
        let mut long = event();
        long.id = "x".repeat(256).into();
        let m = b.quarantine(&long, "id too long", ShortString::from("rk"), None);
        assert_eq!(event_id(&m.unwrap().properties), long.id.as_bytes()[..]);

        let published = b.build(&event()).unwrap();
        let m = b
            .quarantine(
                &event(),
                "unroutable",
                published.routing_key.clone(),
                Some((&published.properties, published.body.clone())),
            )
            .unwrap();
        assert_eq!(
            m.properties.content_type(),
            published.properties.content_type()
        );
        assert_eq!(
            header_text(&m.properties, QUARANTINE_REASON_HEADER),
            "unroutable"
        );
        assert_eq!(m.routing_key.as_str(), "outbox.event.order");
    }
}
