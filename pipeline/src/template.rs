//! Templates over event values, such as `"outbox.{aggregatetype}"`: parsed once when the config
//! is read, rendered for every message.
//!
//! A template is literal text with `{name}` placeholders; `{{` and `}}` stand for literal
//! braces. A name is resolved with [`Event::lookup`]: `id`, `key` and `type` first, then the
//! event's fields, then its headers. A name with no value (absent or null) makes rendering
//! fail with that name, so the sink can quarantine the event with a reason instead of
//! publishing somewhere unintended.

use std::fmt;

use crate::event::Event;
use serde::{Deserialize, Deserializer};

/// A parsed template.
#[derive(Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    parts: Box<[Part]>,
}

/// One piece of a template.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Literal(String),
    Value(String),
}

/// Why a string is not a template.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// A `{` with no matching `}`.
    #[error("the `{{` at byte {at} is not closed (write `{{{{` for a literal brace)")]
    Unclosed {
        /// Byte offset of the brace.
        at: usize,
    },
    /// A `}` that closes nothing.
    #[error("the `}}` at byte {at} closes nothing (write `}}}}` for a literal brace)")]
    Unopened {
        /// Byte offset of the brace.
        at: usize,
    },
    /// A placeholder whose name is empty or holds whitespace or a brace.
    #[error(
        "the placeholder at byte {at} needs a name without spaces or braces, such as `{{type}}`"
    )]
    BadName {
        /// Byte offset of the placeholder's `{`.
        at: usize,
    },
}

/// Rendering met a placeholder whose value the event does not have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Missing<'a>(pub &'a str);

impl fmt::Display for Missing<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the event has no value for {{{}}}", self.0)
    }
}

impl Template {
    /// Parses `source`.
    pub fn parse(source: &str) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = source.char_indices().peekable();
        while let Some((at, c)) = rest.next() {
            match c {
                '{' if rest.next_if(|(_, c)| *c == '{').is_some() => literal.push('{'),
                '}' if rest.next_if(|(_, c)| *c == '}').is_some() => literal.push('}'),
                '}' => return Err(TemplateError::Unopened { at }),
                '{' => {
                    let start = at + 1;
                    let end = loop {
                        match rest.next() {
                            Some((end, '}')) => break end,
                            Some((_, '{')) => return Err(TemplateError::BadName { at }),
                            Some(_) => {}
                            None => return Err(TemplateError::Unclosed { at }),
                        }
                    };
                    let name = &source[start..end];
                    if name.is_empty() || name.chars().any(char::is_whitespace) {
                        return Err(TemplateError::BadName { at });
                    }
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(Part::Value(name.to_owned()));
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Template {
            source: source.to_owned(),
            parts: parts.into(),
        })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The text of a template without placeholders; `None` if it has any.
    pub fn constant(&self) -> Option<&str> {
        match &*self.parts {
            [] => Some(""),
            [Part::Literal(text)] => Some(text),
            _ => None,
        }
    }

    /// The placeholder names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|part| match part {
            Part::Value(name) => Some(name.as_str()),
            Part::Literal(_) => None,
        })
    }

    /// Appends the template rendered for `event` to `out`.
    pub fn render_into<'t>(&'t self, event: &Event, out: &mut String) -> Result<(), Missing<'t>> {
        self.render_with(|name| event.lookup(name).map(|v| v.as_str()), out)
    }

    /// The template rendered for `event`.
    pub fn render<'t>(&'t self, event: &Event) -> Result<String, Missing<'t>> {
        let mut out = String::new();
        self.render_into(event, &mut out)?;
        Ok(out)
    }

    /// Appends the template rendered with `lookup` (for names resolved another way than
    /// [`Event::lookup`]'s) to `out`.
    pub fn render_with<'e, 't>(
        &'t self,
        lookup: impl Fn(&str) -> Option<&'e str>,
        out: &mut String,
    ) -> Result<(), Missing<'t>> {
        for part in &*self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Value(name) => out.push_str(lookup(name).ok_or(Missing(name))?),
            }
        }
        Ok(())
    }
}

impl Default for Template {
    /// The empty template (renders as `""`).
    fn default() -> Self {
        Template {
            source: String::new(),
            parts: Box::new([]),
        }
    }
}

impl fmt::Debug for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.source, f)
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for Template {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let source = String::deserialize(deserializer)?;
        Template::parse(&source)
            .map_err(|e| serde::de::Error::custom(format!("invalid template {source:?}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Position;
    use bytes::Bytes;
    use proptest::prelude::*;

    fn event() -> Event {
        let mut event = Event::new("e-1", Position(1), Bytes::new());
        event.key = Some("order-7".into());
        event.event_type = "OrderCreated".into();
        event.fields.set("aggregatetype", Some("order".into()));
        event.fields.set("nothing", None);
        event.headers.set("tenant", Some("acme".into()));
        event
    }

    #[test]
    fn renders_values_from_the_event() {
        let t = Template::parse("outbox.{aggregatetype}.{type}/{key}/{tenant}").unwrap();
        assert_eq!(
            t.render(&event()).unwrap(),
            "outbox.order.OrderCreated/order-7/acme"
        );
        assert_eq!(
            t.names().collect::<Vec<_>>(),
            ["aggregatetype", "type", "key", "tenant"]
        );
        assert_eq!(t.constant(), None);
    }

    #[test]
    fn a_missing_or_null_value_names_the_placeholder() {
        let t = Template::parse("x.{nothing}").unwrap();
        assert_eq!(t.render(&event()), Err(Missing("nothing")));
        let t = Template::parse("{absent}").unwrap();
        assert_eq!(
            t.render(&event()).unwrap_err().to_string(),
            "the event has no value for {absent}"
        );
    }

    #[test]
    fn escaped_braces_are_literal() {
        let t = Template::parse("{{literal}} {type}}}").unwrap();
        assert_eq!(t.render(&event()).unwrap(), "{literal} OrderCreated}");
        assert_eq!(Template::parse("a{{b}}").unwrap().constant(), Some("a{b}"));
        assert_eq!(Template::parse("").unwrap().constant(), Some(""));
    }

    #[test]
    fn malformed_templates_say_where() {
        assert_eq!(
            Template::parse("ab{type"),
            Err(TemplateError::Unclosed { at: 2 })
        );
        assert_eq!(
            Template::parse("a}b"),
            Err(TemplateError::Unopened { at: 1 })
        );
        assert_eq!(Template::parse("{}"), Err(TemplateError::BadName { at: 0 }));
        assert_eq!(
            Template::parse("x{a b}"),
            Err(TemplateError::BadName { at: 1 })
        );
        assert_eq!(
            Template::parse("{a{b}}"),
            Err(TemplateError::BadName { at: 0 })
        );
    }

    #[test]
    fn deserializing_reports_the_template_and_the_rule() {
        let error = crate::config::deserialize::<Template>(toml::Value::String(
            "outbox.{aggregatetype".into(),
        ))
        .unwrap_err();
        assert!(
            error
                .message
                .contains("invalid template \"outbox.{aggregatetype\""),
            "{error}"
        );
    }

    /// A template as pieces: literal text (any characters, braces included) or a name.
    fn pieces() -> impl Strategy<Value = Vec<(bool, String)>> {
        let literal = "[^\\x00]{1,8}".prop_map(|s| (false, s));
        let name = "[a-zA-Z_][a-zA-Z0-9_.-]{0,7}".prop_map(|s| (true, s));
        proptest::collection::vec(prop_oneof![literal, name], 0..8)
    }

    fn source(pieces: &[(bool, String)]) -> String {
        pieces
            .iter()
            .map(|(is_name, text)| {
                if *is_name {
                    format!("{{{text}}}")
                } else {
                    text.replace('{', "{{").replace('}', "}}")
                }
            })
            .collect()
    }

    proptest! {
        #[test]
        fn parsing_never_panics(input in "\\PC{0,32}") {
            let _ = Template::parse(&input);
        }

        #[test]
        fn written_templates_parse_and_render_piece_by_piece(pieces in pieces()) {
            let template = Template::parse(&source(&pieces)).unwrap();
            // Each name renders as a value derived from it, so a wrong split would show.
            let value = |name: &str| format!("<{}>", name.len());
            let mut rendered = String::new();
            let values: Vec<(String, String)> =
                pieces.iter().filter(|(n, _)| *n).map(|(_, name)| (name.clone(), value(name))).collect();
            template
                .render_with(
                    |name| values.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str()),
                    &mut rendered,
                )
                .unwrap();
            let expected: String = pieces
                .iter()
                .map(|(is_name, text)| if *is_name { value(text) } else { text.clone() })
                .collect();
            prop_assert_eq!(rendered, expected);
            let names: Vec<&str> = pieces.iter().filter(|(n, _)| *n).map(|(_, t)| t.as_str()).collect();
            prop_assert_eq!(template.names().collect::<Vec<_>>(), names);
            prop_assert_eq!(template.constant().is_some(), pieces.iter().all(|(n, _)| !n));
        }

        #[test]
        fn rendering_with_no_values_fails_on_the_first_name(pieces in pieces()) {
            let template = Template::parse(&source(&pieces)).unwrap();
            let first = pieces.iter().find(|(n, _)| *n).map(|(_, t)| t.as_str());
            let result = template.render_with(|_| None, &mut String::new());
            prop_assert_eq!(result.err().map(|m| m.0), first);
        }
    }
}
