//! One event as one line of JSON, as the `file` and `stdout` sinks and the quarantine file
//! write it:
//!
//! ```json
//! {"id":"…","key":"…","type":"…","position":42,"fields":{…},"headers":{…},"payload":{…}}
//! ```
//!
//! A payload that is JSON is embedded as JSON; other UTF-8 payloads become a string with
//! `"payload_encoding":"text"`, and anything else is base64 with `"payload_encoding":"base64"`,
//! so every byte survives the round trip.

use serde_json::Value;
use sluice_pipeline::{Event, Fields};

/// Appends `event` as one JSON line (with the trailing newline) to `out`.
pub fn encode_json_line(event: &Event, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"id\":");
    string(out, &event.id);
    if let Some(key) = &event.key {
        out.extend_from_slice(b",\"key\":");
        string(out, key);
    }
    out.extend_from_slice(b",\"type\":");
    string(out, &event.event_type);
    out.extend_from_slice(b",\"position\":");
    out.extend_from_slice(event.meta.position.0.to_string().as_bytes());
    if !event.fields.is_empty() {
        out.extend_from_slice(b",\"fields\":");
        fields(out, &event.fields);
    }
    out.extend_from_slice(b",\"headers\":");
    fields(out, &event.headers);
    out.extend_from_slice(b",\"payload\":");
    payload(out, &event.payload);
    out.extend_from_slice(b"}\n");
}

fn string(out: &mut Vec<u8>, s: &str) {
    // Writing a str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn fields(out: &mut Vec<u8>, fields: &Fields) {
    out.push(b'{');
    for (i, (name, value)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(out, name);
        out.push(b':');
        match value {
            Some(value) => string(out, value),
            None => out.extend_from_slice(b"null"),
        }
    }
    out.push(b'}');
}

fn payload(out: &mut Vec<u8>, payload: &[u8]) {
    if payload.is_empty() {
        out.extend_from_slice(b"null");
        return;
    }
    if serde_json::from_slice::<serde::de::IgnoredAny>(payload).is_ok() {
        if payload.iter().any(|b| *b == b'\n' || *b == b'\r') {
            // Pretty-printed JSON would break the one-event-per-line framing: compact it.
            if let Ok(value) = serde_json::from_slice::<Value>(payload) {
                let _ = serde_json::to_writer(&mut *out, &value);
            }
        } else {
            out.extend_from_slice(payload.trim_ascii());
        }
        return;
    }
    match std::str::from_utf8(payload) {
        Ok(text) => {
            string(out, text);
            out.extend_from_slice(b",\"payload_encoding\":\"text\"");
        }
        Err(_) => {
            out.push(b'"');
            base64(out, payload);
            out.extend_from_slice(b"\",\"payload_encoding\":\"base64\"");
        }
    }
}

/// Standard base64 with padding (RFC 4648 §4).
fn base64(out: &mut Vec<u8>, bytes: &[u8]) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]);
            } else {
                out.push(b'=');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use sluice_pipeline::Position;

    fn line(payload: &'static [u8]) -> Value {
        let mut event = Event::new("e\"1", Position(7), Bytes::from_static(payload));
        event.key = Some("k".into());
        event.event_type = "T".into();
        event.headers.set("h", Some("v".into()));
        event.fields.set("n", None);
        let mut out = Vec::new();
        encode_json_line(&event, &mut out);
        assert_eq!(out.iter().filter(|b| **b == b'\n').count(), 1);
        assert_eq!(out.last(), Some(&b'\n'));
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn json_payload_is_embedded() {
        let v = line(b"{\"a\": [1, 2]}");
        assert_eq!(v["id"], "e\"1");
        assert_eq!(v["key"], "k");
        assert_eq!(v["type"], "T");
        assert_eq!(v["position"], 7);
        assert_eq!(v["headers"]["h"], "v");
        assert_eq!(v["fields"]["n"], Value::Null);
        assert_eq!(v["payload"]["a"][1], 2);
        assert!(v.get("payload_encoding").is_none());
    }

    #[test]
    fn pretty_json_is_compacted_onto_one_line() {
        let v = line(b"{\n  \"a\": 1\n}\n");
        assert_eq!(v["payload"]["a"], 1);
    }

    #[test]
    fn text_and_binary_payloads_survive() {
        let v = line(b"not json");
        assert_eq!(v["payload"], "not json");
        assert_eq!(v["payload_encoding"], "text");
        let v = line(&[0xff, 0x00, 0x10, 0x80]);
        assert_eq!(v["payload"], "/wAQgA==");
        assert_eq!(v["payload_encoding"], "base64");
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            let mut out = Vec::new();
            base64(&mut out, input.as_bytes());
            assert_eq!(String::from_utf8(out).unwrap(), expected);
        }
    }
}
