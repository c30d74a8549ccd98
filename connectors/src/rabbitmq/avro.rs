//! The `avro` codec: a JSON payload encoded as one Avro datum of a configured schema,
//! optionally behind the Confluent wire-format header.
//!
//! The JSON is read as Avro's JSON-like value model (objects become records when the schema
//! says so, integers become `int` or `long`, `null` picks the null branch of a union) and
//! resolved against the schema. A payload that does not fit is an [`AvroMismatch`], whose
//! text names the schema and, where it can, the field — never a value, since reasons are
//! logged and payloads must not be.

use std::path::Path;

use apache_avro::Schema;
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use bytes::{BufMut, Bytes, BytesMut};
use sluice_pipeline::{Error, ErrorKind};

/// The first byte of the Confluent wire format.
const CONFLUENT_MAGIC: u8 = 0;

/// Encodes JSON payloads with one schema.
#[derive(Debug)]
pub(crate) struct AvroEncoder {
    schema: Schema,
    confluent_schema_id: Option<u32>,
}

/// Why a payload could not be encoded (for a person; holds no payload values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AvroMismatch(pub String);

impl AvroEncoder {
    /// Reads and parses the schema in `path`.
    pub fn load(path: &Path, confluent_schema_id: Option<u32>) -> Result<Self, Error> {
        let shown = path.display();
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::new(
                ErrorKind::Config,
                format!("reading the Avro schema {shown}"),
            )
            .with_source(e)
        })?;
        Self::from_schema_text(&text, confluent_schema_id).map_err(|e| {
            Error::new(
                ErrorKind::Config,
                format!("the Avro schema {shown} is invalid"),
            )
            .with_source(e)
        })
    }

    fn from_schema_text(
        text: &str,
        confluent_schema_id: Option<u32>,
    ) -> Result<Self, apache_avro::Error> {
        let schema = Schema::parse_str(text)?;
        // Fail now, not on the first message, if the schema refers to unknown names.
        GenericDatumWriter::builder(&schema).build()?;
        Ok(AvroEncoder {
            schema,
            confluent_schema_id,
        })
    }

    /// Encodes a JSON `payload`.
    pub fn encode(&self, payload: &[u8]) -> Result<Bytes, AvroMismatch> {
        let json: serde_json::Value = serde_json::from_slice(payload)
            .map_err(|e| AvroMismatch(format!("payload is not JSON ({e})")))?;
        let value = Value::try_from(json)
            .and_then(|value| value.resolve(&self.schema))
            .map_err(|_| self.mismatch(payload))?;
        let writer = GenericDatumWriter::builder(&self.schema)
            .build()
            .map_err(|_| self.mismatch(payload))?;
        let mut out = BytesMut::new();
        if let Some(id) = self.confluent_schema_id {
            out.put_u8(CONFLUENT_MAGIC);
            out.put_u32(id);
        }
        let mut body = out.writer();
        writer
            .write_value(&mut body, value)
            .map_err(|_| self.mismatch(payload))?;
        Ok(body.into_inner().freeze())
    }

    /// Explains a misfit of `payload` (parsed again: misfits are rare, copies on every
    /// message are not).
    fn mismatch(&self, payload: &[u8]) -> AvroMismatch {
        let json = serde_json::from_slice(payload).unwrap_or(serde_json::Value::Null);
        let name = self.schema.name().map_or_else(
            || "of the sink".to_owned(),
            |n| format!("{:?}", n.fullname(None)),
        );
        if let (Schema::Record(record), serde_json::Value::Object(object)) = (&self.schema, &json)
            && let Some(field) = record.fields.iter().find(|f| {
                f.default.is_none() && !object.contains_key(&f.name) && !nullable(&f.schema)
            })
        {
            return AvroMismatch(format!(
                "payload does not fit the Avro schema {name}: field {:?} is missing",
                field.name
            ));
        }
        AvroMismatch(format!(
            "payload does not fit the Avro schema {name}: a value does not match its type"
        ))
    }
}

fn nullable(schema: &Schema) -> bool {
    matches!(schema, Schema::Union(u) if u.variants().iter().any(|v| matches!(v, Schema::Null)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::reader::datum::GenericDatumReader;

    const ORDER: &str = r#"{
        "type": "record", "name": "Order", "namespace": "shop",
        "fields": [
            {"name": "id", "type": "long"},
            {"name": "customer", "type": "string"},
            {"name": "note", "type": ["null", "string"], "default": null},
            {"name": "lines", "type": {"type": "array", "items": {
                "type": "record", "name": "Line",
                "fields": [{"name": "sku", "type": "string"}, {"name": "qty", "type": "int"}]
            }}}
        ]
    }"#;

    fn encoder(id: Option<u32>) -> AvroEncoder {
        AvroEncoder::from_schema_text(ORDER, id).unwrap()
    }

    #[test]
    fn json_that_fits_round_trips() {
        let e = encoder(None);
        let body = e
            .encode(br#"{"id": 7, "customer": "c-1", "lines": [{"sku": "a", "qty": 2}]}"#)
            .unwrap();
        let reader = GenericDatumReader::builder(&e.schema).build().unwrap();
        let value = reader.read_value(&mut &body[..]).unwrap();
        let Value::Record(fields) = value else {
            panic!("not a record: {value:?}")
        };
        assert_eq!(fields[0], ("id".into(), Value::Long(7)));
        assert_eq!(fields[1], ("customer".into(), Value::String("c-1".into())));
        assert_eq!(
            fields[2],
            ("note".into(), Value::Union(0, Box::new(Value::Null)))
        );
    }

    #[test]
    fn the_confluent_header_comes_first() {
        let body = encoder(Some(0x0102_0304))
            .encode(br#"{"id": 1, "customer": "c", "lines": []}"#)
            .unwrap();
        assert_eq!(&body[..5], &[0, 1, 2, 3, 4]);
        let plain = encoder(None)
            .encode(br#"{"id": 1, "customer": "c", "lines": []}"#)
            .unwrap();
        assert_eq!(&body[5..], &plain[..]);
    }

    #[test]
    fn misfits_are_explained_without_values() {
        let e = encoder(None);
        let reason = e.encode(br#"{"id": 1, "lines": []}"#).unwrap_err().0;
        assert_eq!(
            reason,
            "payload does not fit the Avro schema \"shop.Order\": field \"customer\" is missing"
        );
        let reason = e
            .encode(br#"{"id": "secret-value", "customer": "c", "lines": []}"#)
            .unwrap_err()
            .0;
        assert!(reason.contains("does not match its type"), "{reason}");
        assert!(!reason.contains("secret-value"), "{reason}");
        let reason = e.encode(b"not json").unwrap_err().0;
        assert!(reason.starts_with("payload is not JSON"), "{reason}");
    }

    #[test]
    fn a_bad_schema_is_a_config_error() {
        let dir = std::env::temp_dir().join(format!("sluice-avro-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.avsc");
        std::fs::write(
            &path,
            r#"{"type": "record", "name": "X", "fields": [{"name": "a", "type": "Nope"}]}"#,
        )
        .unwrap();
        let error = AvroEncoder::load(&path, None).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Config);
        let error = AvroEncoder::load(&dir.join("absent.avsc"), None).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Config);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
