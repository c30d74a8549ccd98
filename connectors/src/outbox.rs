//! `outbox`: the Debezium-compatible outbox event router. Turns outbox rows (from
//! `postgres_cdc` or `postgres_poll`) into events:
//!
//! | outbox column | becomes |
//! |---|---|
//! | `id` | the event id (AMQP `message_id`, the dedupe key) |
//! | `aggregatetype` | field `aggregatetype` (for routing templates) |
//! | `aggregateid` | the ordering key (AMQP `correlation_id`), and field `aggregateid` |
//! | `type` | the event type (AMQP `type`) |
//! | `payload` | the body, the JSON bytes as stored |
//! | `traceparent`, and columns listed in `headers` | headers, when not NULL |
//!
//! A row without one of these columns, with a NULL or empty one, or whose payload is not JSON
//! goes to the quarantine with the reason. Updates and deletes of outbox rows are not events:
//! they are dropped and counted. With `message_prefix`, `pg_logical_emit_message` records with
//! that prefix are accepted too (the table-less outbox): their content is a JSON object with
//! the same keys, such as
//! `{"id":"…","aggregatetype":"order","aggregateid":"42","type":"OrderCreated","payload":{…}}`.
//!
//! ```toml
//! [transforms.events]
//! type = "outbox"
//! inputs = ["outbox"]
//! headers = { tenant_id = "tenant" }    # extra column -> header
//! ```

use std::collections::BTreeMap;
use std::future::Future;

use bytes::Bytes;
use serde::Deserialize;
use sluice_pipeline::component::{BuildContext, DynTransform};
use sluice_pipeline::{
    Batch, Error, Event, FieldError, FieldErrors, Fields, Output, Text, Transform, TransformConfig,
    Validate,
};

use crate::postgres::row::{INSERT, MESSAGE, MESSAGE_PREFIX_HEADER, TABLE_HEADER};

/// The header carrying a W3C trace context, mapped from a column of the same name when the
/// outbox has one.
pub const TRACEPARENT: &str = "traceparent";

/// Config of the `outbox` transform. Column names default to Debezium's.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxConfig {
    /// The column holding the event id.
    #[serde(default = "default_id")]
    pub id_column: String,
    /// The column holding the aggregate type (the routing value).
    #[serde(default = "default_aggregate_type")]
    pub aggregate_type_column: String,
    /// The column holding the aggregate id (the ordering key).
    #[serde(default = "default_aggregate_id")]
    pub aggregate_id_column: String,
    /// The column holding the event type.
    #[serde(default = "default_type")]
    pub type_column: String,
    /// The column holding the payload.
    #[serde(default = "default_payload")]
    pub payload_column: String,
    /// What the payload must be: `json` (default: anything else is quarantined) or `any`.
    #[serde(default)]
    pub payload_format: PayloadFormat,
    /// Extra columns to deliver as headers: column name → header name. A column named
    /// `traceparent` is always carried as the `traceparent` header.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Accept `pg_logical_emit_message` records with this prefix as outbox events.
    pub message_prefix: Option<String>,
}

/// What the payload must be.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PayloadFormat {
    /// Valid JSON.
    #[default]
    Json,
    /// Any bytes.
    Any,
}

fn default_id() -> String {
    "id".into()
}
fn default_aggregate_type() -> String {
    "aggregatetype".into()
}
fn default_aggregate_id() -> String {
    "aggregateid".into()
}
fn default_type() -> String {
    "type".into()
}
fn default_payload() -> String {
    "payload".into()
}

impl Validate for OutboxConfig {
    fn validate(&self) -> Result<(), FieldErrors> {
        for (field, value) in [
            ("id_column", &self.id_column),
            ("aggregate_type_column", &self.aggregate_type_column),
            ("aggregate_id_column", &self.aggregate_id_column),
            ("type_column", &self.type_column),
            ("payload_column", &self.payload_column),
        ] {
            if value.is_empty() {
                return Err(FieldError::new(field, "must name a column").into());
            }
        }
        if let Some((column, _)) = self
            .headers
            .iter()
            .find(|(c, h)| c.is_empty() || h.is_empty())
        {
            return Err(FieldError::new(
                format!("headers.{column}"),
                "map a column name to a non-empty header name",
            )
            .into());
        }
        if self.message_prefix.as_deref() == Some("") {
            return Err(
                FieldError::new("message_prefix", "must not be empty (omit it for none)").into(),
            );
        }
        Ok(())
    }
}

impl TransformConfig for OutboxConfig {
    fn build(&self, _cx: &BuildContext) -> Result<Box<dyn DynTransform>, Error> {
        Ok(Box::new(Outbox::new(self)))
    }
}

/// The running `outbox` transform.
#[derive(Debug)]
pub struct Outbox {
    config: OutboxConfig,
    /// Extra columns carried as headers: (column, header).
    headers: Vec<(String, Text)>,
}

const AGGREGATE_TYPE: Text = Text::from_static("aggregatetype");
const AGGREGATE_ID: Text = Text::from_static("aggregateid");

/// The parts of an outbox event, wherever they came from.
struct Parts {
    id: Text,
    aggregate_type: Text,
    aggregate_id: Text,
    event_type: Text,
    payload: Bytes,
    extra: Vec<(Text, Text)>,
}

impl Outbox {
    /// The transform for `config`.
    pub fn new(config: &OutboxConfig) -> Self {
        let mut headers: Vec<(String, Text)> = config
            .headers
            .iter()
            .map(|(column, header)| (column.clone(), Text::from(header.as_str())))
            .collect();
        if !config.headers.contains_key(TRACEPARENT) {
            headers.push((TRACEPARENT.to_owned(), Text::from_static(TRACEPARENT)));
        }
        Outbox {
            config: config.clone(),
            headers,
        }
    }

    /// The event for one outbox row or message, or why it cannot be one.
    fn route(&self, event: &Event) -> Result<Option<Parts>, String> {
        if event.event_type == MESSAGE {
            return self.message(event).map(Some);
        }
        let Some(table) = event.headers.text(TABLE_HEADER) else {
            return Err(
                "not a PostgreSQL row: the outbox transform reads postgres_cdc or postgres_poll"
                    .into(),
            );
        };
        if event.event_type != INSERT {
            return Ok(None);
        }
        let column = |name: &str| -> Result<Text, String> {
            match event.fields.get(name) {
                None => Err(format!(
                    "outbox row of {table} has no column {name:?} (it has: {})",
                    event
                        .fields
                        .iter()
                        .map(|(n, _)| n.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
                Some(None) => Err(format!("outbox column {name:?} is NULL")),
                Some(Some(value)) if value.is_empty() && name != self.config.payload_column => {
                    Err(format!("outbox column {name:?} is empty"))
                }
                Some(Some(value)) => Ok(value.clone()),
            }
        };
        let parts = Parts {
            id: column(&self.config.id_column)?,
            aggregate_type: column(&self.config.aggregate_type_column)?,
            aggregate_id: column(&self.config.aggregate_id_column)?,
            event_type: column(&self.config.type_column)?,
            payload: column(&self.config.payload_column)?.as_bytes().clone(),
            extra: self
                .headers
                .iter()
                .filter_map(|(column, header)| {
                    event
                        .fields
                        .text(column)
                        .map(|v| (header.clone(), v.clone()))
                })
                .collect(),
        };
        self.check_payload(&parts.payload)?;
        Ok(Some(parts))
    }

    fn message(&self, event: &Event) -> Result<Parts, String> {
        let prefix = event
            .headers
            .text(MESSAGE_PREFIX_HEADER)
            .map_or("", |p| p.as_str());
        if self.config.message_prefix.as_deref() != Some(prefix) {
            return Err(format!(
                "logical decoding message with prefix {prefix:?}: set message_prefix = {prefix:?} to accept it"
            ));
        }
        let value: serde_json::Value = serde_json::from_slice(&event.payload)
            .map_err(|e| format!("outbox message is not JSON: {e}"))?;
        let object = value
            .as_object()
            .ok_or("outbox message is not a JSON object")?;
        let text = |name: &str| -> Result<Text, String> {
            match object.get(name) {
                Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(Text::from(s.as_str())),
                Some(serde_json::Value::Number(n)) => Ok(Text::from(n.to_string())),
                Some(serde_json::Value::Null) | None => {
                    Err(format!("outbox message has no {name:?}"))
                }
                Some(_) => Err(format!(
                    "outbox message key {name:?} is not a non-empty string"
                )),
            }
        };
        let payload = match object.get(&self.config.payload_column) {
            None | Some(serde_json::Value::Null) => {
                return Err(format!(
                    "outbox message has no {:?}",
                    self.config.payload_column
                ));
            }
            Some(serde_json::Value::String(s))
                if self.config.payload_format == PayloadFormat::Any =>
            {
                Bytes::from(s.clone().into_bytes())
            }
            Some(other) => Bytes::from(other.to_string().into_bytes()),
        };
        let extra = match object.get("headers") {
            Some(serde_json::Value::Object(headers)) => headers
                .iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (Text::from(k.as_str()), Text::from(v))))
                .collect(),
            _ => Vec::new(),
        };
        Ok(Parts {
            id: text(&self.config.id_column)?,
            aggregate_type: text(&self.config.aggregate_type_column)?,
            aggregate_id: text(&self.config.aggregate_id_column)?,
            event_type: text(&self.config.type_column)?,
            payload,
            extra,
        })
    }

    fn check_payload(&self, payload: &[u8]) -> Result<(), String> {
        if self.config.payload_format == PayloadFormat::Json {
            serde_json::from_slice::<serde::de::IgnoredAny>(payload).map_err(|e| {
                format!(
                    "outbox column {:?} is not JSON: {e}",
                    self.config.payload_column
                )
            })?;
        }
        Ok(())
    }
}

impl Transform for Outbox {
    fn process(
        &mut self,
        events: Batch,
        out: &mut Output,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        for mut event in events {
            match self.route(&event) {
                Ok(Some(parts)) => {
                    let mut headers = Fields::with_capacity(parts.extra.len());
                    for (name, value) in parts.extra {
                        headers.set(name, Some(value));
                    }
                    let mut fields = Fields::with_capacity(2);
                    fields.push(AGGREGATE_TYPE, Some(parts.aggregate_type));
                    fields.push(AGGREGATE_ID, Some(parts.aggregate_id.clone()));
                    event.id = parts.id;
                    event.key = Some(parts.aggregate_id);
                    event.event_type = parts.event_type;
                    event.fields = fields;
                    event.headers = headers;
                    event.payload = parts.payload;
                    if self.config.payload_format == PayloadFormat::Json {
                        // Checked by `route`, or made by serializing JSON: a sink need not
                        // parse it again.
                        event.mark_payload_json();
                    }
                    out.push(event);
                }
                Ok(None) => out.drop_event(event),
                Err(reason) => out.reject(event, reason),
            }
        }
        std::future::ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::row::{UPDATE, row_event};
    use sluice_pipeline::Position;

    fn outbox(extra: &str) -> Outbox {
        let config: OutboxConfig =
            sluice_pipeline::config::deserialize(toml::from_str::<toml::Value>(extra).unwrap())
                .unwrap();
        config.validate().unwrap();
        Outbox::new(&config)
    }

    fn row(columns: &[(&str, Option<&str>)]) -> Event {
        let fields = columns
            .iter()
            .map(|(n, v)| (Text::from(*n), v.map(Text::from)))
            .collect();
        row_event(
            "0/1/0".into(),
            INSERT,
            "public.outbox".into(),
            fields,
            Position(1),
        )
    }

    fn good() -> Vec<(&'static str, Option<&'static str>)> {
        vec![
            ("id", Some("6f1c…-uuid")),
            ("aggregatetype", Some("order")),
            ("aggregateid", Some("42")),
            ("type", Some("OrderCreated")),
            ("payload", Some(r#"{"total": 10}"#)),
            ("traceparent", Some("00-abc-def-01")),
            ("tenant_id", Some("acme")),
        ]
    }

    async fn run(outbox: &mut Outbox, events: Vec<Event>) -> (Batch, Vec<(Event, Text)>, u64) {
        let mut out = Output::default();
        outbox.process(events, &mut out).await.unwrap();
        out.split()
    }

    #[tokio::test]
    async fn maps_a_row_to_an_event() {
        let mut o = outbox("headers = { tenant_id = \"tenant\" }");
        let (kept, rejected, _) = run(&mut o, vec![row(&good())]).await;
        assert!(rejected.is_empty());
        let e = &kept[0];
        assert_eq!(e.id, "6f1c…-uuid");
        assert_eq!(e.key.as_deref(), Some("42"));
        assert_eq!(e.event_type, "OrderCreated");
        assert_eq!(&e.payload[..], br#"{"total": 10}"#);
        assert_eq!(e.lookup("aggregatetype").unwrap(), "order");
        let headers: Vec<(String, String)> = e
            .headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.unwrap().to_string()))
            .collect();
        assert_eq!(
            headers,
            [("tenant", "acme"), ("traceparent", "00-abc-def-01")]
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
        );
        let mut columns = good();
        columns.retain(|(n, _)| *n != "tenant_id");
        columns.push(("tenant_id", None));
        let (kept, _, _) = run(&mut o, vec![row(&columns)]).await;
        let names: Vec<&str> = kept[0].headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["traceparent"], "a NULL column is no header");
    }

    #[tokio::test]
    async fn payloads_checked_as_json_are_marked_so_sinks_do_not_parse_them_again() {
        let (kept, _, _) = run(&mut outbox(""), vec![row(&good())]).await;
        assert!(kept[0].payload_is_json());
        let (kept, _, _) = run(&mut outbox("payload_format = \"any\""), vec![row(&good())]).await;
        assert!(!kept[0].payload_is_json(), "not checked, so not marked");
    }

    #[tokio::test]
    async fn bad_rows_are_rejected_with_the_reason() {
        let mut o = outbox("");
        let with = |name: &str, value: Option<&'static str>| {
            let mut columns = good();
            match columns.iter_mut().find(|(n, _)| *n == name) {
                Some(c) => c.1 = value,
                None => unreachable!(),
            }
            row(&columns)
        };
        let missing = row(&good()
            .into_iter()
            .filter(|(n, _)| *n != "type")
            .collect::<Vec<_>>());
        let events = vec![
            with("aggregateid", None),
            with("id", Some("")),
            with("payload", Some("not json")),
            missing,
        ];
        let (kept, rejected, _) = run(&mut o, events).await;
        assert!(kept.is_empty());
        let reasons: Vec<String> = rejected.iter().map(|(_, r)| r.to_string()).collect();
        assert_eq!(reasons[0], "outbox column \"aggregateid\" is NULL");
        assert_eq!(reasons[1], "outbox column \"id\" is empty");
        assert!(
            reasons[2].starts_with("outbox column \"payload\" is not JSON"),
            "{}",
            reasons[2]
        );
        assert!(
            reasons[3].starts_with("outbox row of public.outbox has no column \"type\""),
            "{}",
            reasons[3]
        );
    }

    #[tokio::test]
    async fn updates_are_dropped_and_messages_mapped() {
        let mut o = outbox("message_prefix = \"outbox\"");
        let mut update = row(&good());
        update.event_type = UPDATE;
        let mut message = Event::new("0/2/0", Position(2), Bytes::from_static(
            br#"{"id":"m1","aggregatetype":"order","aggregateid":7,"type":"Paid","payload":{"ok":true}}"#,
        ));
        message.event_type = MESSAGE;
        message
            .headers
            .set(MESSAGE_PREFIX_HEADER, Some("outbox".into()));
        let mut other = message.clone();
        other
            .headers
            .set(MESSAGE_PREFIX_HEADER, Some("other".into()));
        let (kept, rejected, dropped) = run(&mut o, vec![update, message, other]).await;
        assert_eq!(dropped, 1);
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].id, "m1");
        assert_eq!(kept[0].key.as_deref(), Some("7"));
        assert_eq!(&kept[0].payload[..], br#"{"ok":true}"#);
        assert_eq!(rejected.len(), 1);
        assert!(rejected[0].1.contains("prefix \"other\""));
    }
}
