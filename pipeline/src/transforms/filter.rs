//! `filter`: keeps (or drops) the events whose field meets one condition.
//!
//! ```toml
//! [transforms.orders_only]
//! type = "filter"
//! inputs = ["events"]
//! field = "aggregatetype"      # id, key, type, fields.NAME, headers.NAME, payload.a.b, or NAME
//! equals = "order"             # or: not_equals, one_of, starts_with, exists
//! action = "keep"              # keep matching events (default), "drop" or "quarantine" them
//! ```

use std::borrow::Cow;
use std::future::Future;

use serde::Deserialize;

use crate::component::{BuildContext, DynTransform, Output, Transform, TransformConfig, Validate};
use crate::config::{FieldError, FieldErrors};
use crate::error::Error;
use crate::event::{Batch, Event, Text};

/// Config of the `filter` transform. Exactly one condition must be set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// What to test: `id`, `key`, `type`, `fields.NAME`, `headers.NAME`, `payload.PATH` (a
    /// dot-separated path into a JSON payload; array items by index), or a bare `NAME`, looked
    /// up in fields, then headers. A null or absent value is absent.
    pub field: String,
    /// The value equals this.
    pub equals: Option<String>,
    /// The value is absent or differs from this.
    pub not_equals: Option<String>,
    /// The value is one of these.
    pub one_of: Option<Vec<String>>,
    /// The value starts with this.
    pub starts_with: Option<String>,
    /// The value is present (`true`) or absent (`false`).
    pub exists: Option<bool>,
    /// What to do with matching events: `keep` them and drop the rest (default), `drop` them
    /// and keep the rest, or `quarantine` them (a validation rule) and keep the rest.
    #[serde(default)]
    pub action: FilterAction,
}

/// What a filter does with the events that match.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FilterAction {
    /// Keep matching events, drop the others.
    #[default]
    Keep,
    /// Drop matching events, keep the others.
    Drop,
    /// Send matching events to the quarantine with the condition as the reason, keep the
    /// others.
    Quarantine,
}

#[derive(Debug, Clone)]
enum Selector {
    Id,
    Key,
    Type,
    Field(String),
    Header(String),
    Payload(Vec<String>),
    Named(String),
}

impl Selector {
    fn parse(field: &str) -> Result<Self, String> {
        let non_empty = |rest: &str, what: &str| {
            if rest.is_empty() {
                Err(format!("{what} needs a name after the dot"))
            } else {
                Ok(rest.to_owned())
            }
        };
        Ok(match field {
            "" => return Err("must name a field".into()),
            "id" => Selector::Id,
            "key" => Selector::Key,
            "type" => Selector::Type,
            _ => {
                if let Some(rest) = field.strip_prefix("fields.") {
                    Selector::Field(non_empty(rest, "fields.")?)
                } else if let Some(rest) = field.strip_prefix("headers.") {
                    Selector::Header(non_empty(rest, "headers.")?)
                } else if let Some(rest) = field.strip_prefix("payload.") {
                    let path: Vec<String> = rest.split('.').map(str::to_owned).collect();
                    if path.iter().any(String::is_empty) {
                        return Err(format!("invalid payload path {rest:?}: empty segment"));
                    }
                    Selector::Payload(path)
                } else {
                    Selector::Named(field.to_owned())
                }
            }
        })
    }

    fn read<'e>(&self, event: &'e Event) -> Option<Cow<'e, str>> {
        match self {
            Selector::Id => Some(Cow::Borrowed(&event.id)),
            Selector::Key => event.key.as_deref().map(Cow::Borrowed),
            Selector::Type => Some(Cow::Borrowed(&event.event_type)),
            Selector::Field(name) => event.fields.text(name).map(|t| Cow::Borrowed(t.as_str())),
            Selector::Header(name) => event.headers.text(name).map(|t| Cow::Borrowed(t.as_str())),
            Selector::Named(name) => event.lookup(name).map(|t| Cow::Borrowed(t.as_str())),
            Selector::Payload(path) => {
                let root: serde_json::Value = serde_json::from_slice(&event.payload).ok()?;
                let mut value = &root;
                for segment in path {
                    value = match value {
                        serde_json::Value::Object(map) => map.get(segment)?,
                        serde_json::Value::Array(items) => {
                            items.get(segment.parse::<usize>().ok()?)?
                        }
                        _ => return None,
                    };
                }
                match value {
                    serde_json::Value::Null => None,
                    serde_json::Value::String(s) => Some(Cow::Owned(s.clone())),
                    other => Some(Cow::Owned(other.to_string())),
                }
            }
        }
    }
}

#[derive(Debug, Clone)]
enum Condition {
    Equals(String),
    NotEquals(String),
    OneOf(Vec<String>),
    StartsWith(String),
    Exists(bool),
}

impl Condition {
    fn holds(&self, value: Option<&str>) -> bool {
        match (self, value) {
            (Condition::Equals(x), Some(v)) => v == x,
            (Condition::NotEquals(x), v) => v != Some(x.as_str()),
            (Condition::OneOf(xs), Some(v)) => xs.iter().any(|x| x == v),
            (Condition::StartsWith(x), Some(v)) => v.starts_with(x.as_str()),
            (Condition::Exists(expected), v) => v.is_some() == *expected,
            (_, None) => false,
        }
    }
}

impl FilterConfig {
    fn condition(&self) -> Result<Condition, FieldError> {
        let mut set: Vec<(&str, Condition)> = Vec::new();
        if let Some(x) = &self.equals {
            set.push(("equals", Condition::Equals(x.clone())));
        }
        if let Some(x) = &self.not_equals {
            set.push(("not_equals", Condition::NotEquals(x.clone())));
        }
        if let Some(x) = &self.one_of {
            set.push(("one_of", Condition::OneOf(x.clone())));
        }
        if let Some(x) = &self.starts_with {
            set.push(("starts_with", Condition::StartsWith(x.clone())));
        }
        if let Some(x) = self.exists {
            set.push(("exists", Condition::Exists(x)));
        }
        match set.len() {
            1 => Ok(set.remove(0).1),
            0 => Err(FieldError::new(
                "",
                "no condition: set one of equals, not_equals, one_of, starts_with, exists",
            )),
            _ => {
                let names: Vec<_> = set.iter().map(|(n, _)| *n).collect();
                Err(FieldError::new(
                    names[1],
                    format!(
                        "only one condition may be set, found {}",
                        names.join(" and ")
                    ),
                ))
            }
        }
    }
}

impl FilterConfig {
    /// The condition in words, for quarantine reasons.
    fn describe(&self) -> String {
        match self.condition() {
            Ok(Condition::Equals(x)) => format!("equals {x:?}"),
            Ok(Condition::NotEquals(x)) => format!("does not equal {x:?}"),
            Ok(Condition::OneOf(xs)) => format!("is one of {xs:?}"),
            Ok(Condition::StartsWith(x)) => format!("starts with {x:?}"),
            Ok(Condition::Exists(true)) => "exists".to_owned(),
            Ok(Condition::Exists(false)) => "is absent".to_owned(),
            Err(_) => "has no valid condition".to_owned(),
        }
    }
}

impl Validate for FilterConfig {
    fn validate(&self) -> Result<(), FieldErrors> {
        let mut problems = FieldErrors::new();
        problems.add(
            Selector::parse(&self.field)
                .map(drop)
                .map_err(|m| FieldError::new("field", m)),
        );
        problems.add(self.condition().map(drop));
        problems.into_result()
    }
}

impl TransformConfig for FilterConfig {
    fn build(&self, cx: &BuildContext) -> Result<Box<dyn DynTransform>, Error> {
        let invalid = |e: String| Error::new(crate::error::ErrorKind::Config, e);
        Ok(Box::new(Filter {
            selector: Selector::parse(&self.field).map_err(invalid)?,
            condition: self.condition().map_err(|e| invalid(e.to_string()))?,
            action: self.action,
            reason: Text::from(format!(
                "filter {}: field {} {}",
                cx.id,
                self.field,
                self.describe()
            )),
        }))
    }
}

/// The running `filter` transform.
#[derive(Debug)]
pub struct Filter {
    selector: Selector,
    condition: Condition,
    action: FilterAction,
    reason: Text,
}

#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Keep,
    Drop,
    Quarantine,
}

impl Filter {
    fn verdict(&self, event: &Event) -> Verdict {
        let matched = self.condition.holds(self.selector.read(event).as_deref());
        match (self.action, matched) {
            (FilterAction::Keep, true) | (FilterAction::Drop | FilterAction::Quarantine, false) => {
                Verdict::Keep
            }
            (FilterAction::Keep, false) | (FilterAction::Drop, true) => Verdict::Drop,
            (FilterAction::Quarantine, true) => Verdict::Quarantine,
        }
    }
}

impl Transform for Filter {
    fn process(
        &mut self,
        events: Batch,
        out: &mut Output,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        for event in events {
            match self.verdict(&event) {
                Verdict::Keep => out.push(event),
                Verdict::Drop => out.drop_event(event),
                Verdict::Quarantine => out.reject(event, self.reason.clone()),
            }
        }
        std::future::ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Position;
    use bytes::Bytes;

    fn config(field: &str, extra: &str) -> FilterConfig {
        let text = format!("field = {field:?}\n{extra}");
        crate::config::deserialize(toml::from_str::<toml::Value>(&text).unwrap()).unwrap()
    }

    fn filter(field: &str, extra: &str) -> Filter {
        let c = config(field, extra);
        c.validate().unwrap();
        Filter {
            selector: Selector::parse(&c.field).unwrap(),
            condition: c.condition().unwrap(),
            action: c.action,
            reason: Text::from(c.describe()),
        }
    }

    fn event() -> Event {
        let mut e = Event::new(
            "id-1",
            Position(1),
            Bytes::from_static(
                br#"{"customer":{"tier":"gold","n":3},"items":[{"sku":"a"}],"none":null}"#,
            ),
        );
        e.event_type = "OrderCreated".into();
        e.key = Some("order-7".into());
        e.fields.set("aggregatetype", Some("order".into()));
        e.fields.set("nullable", None);
        e.headers.set("tenant", Some("acme".into()));
        e
    }

    #[test]
    fn conditions_on_every_selector() {
        let e = event();
        let cases = [
            ("type", "equals = \"OrderCreated\"", true),
            ("key", "starts_with = \"order-\"", true),
            ("id", "one_of = [\"x\", \"id-1\"]", true),
            ("fields.aggregatetype", "equals = \"order\"", true),
            ("aggregatetype", "not_equals = \"order\"", false),
            ("headers.tenant", "equals = \"acme\"", true),
            ("tenant", "exists = true", true),
            ("nullable", "exists = false", true),
            ("missing", "not_equals = \"x\"", true),
            ("missing", "equals = \"x\"", false),
            ("payload.customer.tier", "equals = \"gold\"", true),
            ("payload.customer.n", "equals = \"3\"", true),
            ("payload.items.0.sku", "equals = \"a\"", true),
            ("payload.none", "exists = false", true),
            ("payload.customer.absent", "exists = true", false),
        ];
        for (field, condition, expected) in cases {
            let verdict = if expected {
                Verdict::Keep
            } else {
                Verdict::Drop
            };
            assert_eq!(
                filter(field, condition).verdict(&e),
                verdict,
                "{field} {condition}"
            );
        }
    }

    #[test]
    fn drop_and_quarantine_act_on_matching_events() {
        let f = filter("type", "equals = \"OrderCreated\"\naction = \"drop\"");
        assert_eq!(f.verdict(&event()), Verdict::Drop);
        let f = filter("type", "equals = \"Other\"\naction = \"drop\"");
        assert_eq!(f.verdict(&event()), Verdict::Keep);
        let f = filter("key", "starts_with = \"order\"\naction = \"quarantine\"");
        assert_eq!(f.verdict(&event()), Verdict::Quarantine);
        assert_eq!(&*f.reason, "starts with \"order\"");
    }

    #[test]
    fn refuses_zero_or_two_conditions() {
        let none = config("type", "");
        assert!(
            none.validate().unwrap_err().0[0]
                .message
                .contains("no condition")
        );
        let two = config("type", "equals = \"a\"\nexists = true");
        let error = &two.validate().unwrap_err().0[0];
        assert_eq!(error.path, "exists");
        assert!(error.message.contains("equals and exists"));
        let bad = config("payload..x", "exists = true");
        assert_eq!(bad.validate().unwrap_err().0[0].path, "field");
    }
}
