//! CloudEvents binary mode: the event described by `ce-*` headers, its data as the body.
//!
//! The attributes follow CloudEvents 1.0: `ce-specversion` is `1.0`, `ce-id` the event id,
//! `ce-source` the configured template, `ce-type` the event type, `ce-time` the commit time
//! (RFC 3339, UTC, when the source knows it) and `ce-subject` the event key (when it has one).
//! The data's content type is the message's `content_type` property.

use std::time::{SystemTime, UNIX_EPOCH};

use amq_protocol::types::{AMQPValue, FieldTable, ShortString};
use sluice_pipeline::Event;

/// Adds the CloudEvents attributes of `event` to `headers`; `source` is the rendered source.
pub(crate) fn add_headers(headers: &mut FieldTable, event: &Event, source: String) {
    let mut put = |name: &'static str, value: String| {
        headers.insert(ShortString::from(name), AMQPValue::LongString(value.into()));
    };
    put("ce-specversion", "1.0".to_owned());
    put("ce-id", event.id.to_string());
    put("ce-source", source);
    put("ce-type", event.event_type.to_string());
    if let Some(time) = event.meta.commit_time {
        put("ce-time", rfc3339(time));
    }
    if let Some(key) = &event.key {
        put("ce-subject", key.to_string());
    }
}

/// `time` as an RFC 3339 UTC timestamp with microseconds: `2026-11-26T05:57:01.123456Z`.
/// Times before 1970 are written as the epoch (no source produces them).
pub(crate) fn rfc3339(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, of_day) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60,
        since.subsec_micros()
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use sluice_pipeline::Position;
    use std::time::Duration;

    #[test]
    fn formats_rfc3339() {
        let at = |secs: u64, micros: u64| {
            rfc3339(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros))
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(951_782_400, 1), "2000-02-29T00:00:00.000001Z");
        assert_eq!(at(1_798_761_599, 999_999), "2026-12-31T23:59:59.999999Z");
        assert_eq!(at(4_107_542_400, 0), "2100-03-01T00:00:00.000000Z");
    }

    #[test]
    fn adds_the_attributes() {
        let mut event = Event::new("e-1", Position(1), Bytes::new());
        event.event_type = "OrderCreated".into();
        event.key = Some("order-7".into());
        event.meta.commit_time = Some(UNIX_EPOCH + Duration::from_secs(86_400));
        let mut headers = FieldTable::default();
        add_headers(&mut headers, &event, "/orders".into());
        let get = |name: &str| match headers.inner().get(name) {
            Some(AMQPValue::LongString(s)) => s.to_string(),
            other => panic!("{name}: {other:?}"),
        };
        assert_eq!(get("ce-specversion"), "1.0");
        assert_eq!(get("ce-id"), "e-1");
        assert_eq!(get("ce-source"), "/orders");
        assert_eq!(get("ce-type"), "OrderCreated");
        assert_eq!(get("ce-time"), "1970-01-02T00:00:00.000000Z");
        assert_eq!(get("ce-subject"), "order-7");
    }
}
