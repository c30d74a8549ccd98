//! Request and response transforms: header operations, in the order remove → rename → set →
//! add (Kong's, so a `set` overrides and an `add` appends), the path's prefix rewrite and query
//! parameter operations (remove, then set).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use serde::Deserialize;
use sluice_pipeline::{FieldError, FieldErrors, Validate};

use crate::body::Request;
use crate::context::RequestContext;
use crate::phase::{Next, Phase, PhaseFuture};

/// Operations on a set of headers.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderOps {
    /// Headers removed.
    #[serde(default)]
    pub remove: Vec<String>,
    /// Headers renamed (old name → new name).
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
    /// Headers set, replacing any value.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Headers added beside any existing value.
    #[serde(default)]
    pub add: BTreeMap<String, String>,
}

fn name(field: &str, text: &str) -> Result<HeaderName, FieldError> {
    HeaderName::from_bytes(text.as_bytes())
        .map_err(|_| FieldError::new(field, format!("{text:?} is not a header name")))
}

fn value(field: &str, text: &str) -> Result<HeaderValue, FieldError> {
    HeaderValue::from_str(text)
        .map_err(|_| FieldError::new(field, format!("{text:?} is not a header value")))
}

/// [`HeaderOps`], parsed.
#[derive(Debug, Clone, Default)]
pub struct Compiled {
    remove: Vec<HeaderName>,
    rename: Vec<(HeaderName, HeaderName)>,
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
}

impl HeaderOps {
    /// The operations, parsed.
    pub fn compile(&self) -> Result<Compiled, FieldError> {
        Ok(Compiled {
            remove: self
                .remove
                .iter()
                .map(|n| name("remove", n))
                .collect::<Result<_, _>>()?,
            rename: self
                .rename
                .iter()
                .map(|(a, b)| Ok((name("rename", a)?, name("rename", b)?)))
                .collect::<Result<_, FieldError>>()?,
            set: self
                .set
                .iter()
                .map(|(n, v)| Ok((name("set", n)?, value("set", v)?)))
                .collect::<Result<_, FieldError>>()?,
            add: self
                .add
                .iter()
                .map(|(n, v)| Ok((name("add", n)?, value("add", v)?)))
                .collect::<Result<_, FieldError>>()?,
        })
    }
}

impl HeaderOps {
    /// The first rule the section breaks.
    pub(crate) fn check(&self) -> Result<(), FieldError> {
        self.compile().map(drop)
    }
}

impl Compiled {
    /// Whether there is no operation.
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty()
            && self.rename.is_empty()
            && self.set.is_empty()
            && self.add.is_empty()
    }

    /// Applies the operations to `headers`.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (from, to) in &self.rename {
            let values: Vec<_> = match headers.entry(from) {
                http::header::Entry::Occupied(entry) => entry.remove_entry_mult().1.collect(),
                http::header::Entry::Vacant(_) => continue,
            };
            for value in values {
                headers.append(to, value);
            }
        }
        for (name, value) in &self.set {
            headers.insert(name, value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name, value.clone());
        }
    }
}

/// Operations on the query string.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryOps {
    /// Parameters removed.
    #[serde(default)]
    pub remove: Vec<String>,
    /// Parameters set (replacing every value of that name).
    #[serde(default)]
    pub set: BTreeMap<String, String>,
}

impl QueryOps {
    fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty()
    }

    /// `query` with the operations applied (`None` when nothing is left).
    pub fn apply(&self, query: Option<&str>) -> Option<String> {
        let enc = |s: &str| {
            percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
        };
        let mut pairs: Vec<String> = query
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .filter(|p| {
                let key = p.split('=').next().unwrap_or("");
                let key = percent_encoding::percent_decode_str(key).decode_utf8_lossy();
                !self.remove.iter().any(|r| *r == key) && !self.set.contains_key(key.as_ref())
            })
            .map(str::to_owned)
            .collect();
        for (k, v) in &self.set {
            pairs.push(format!("{}={}", enc(k), enc(v)));
        }
        (!pairs.is_empty()).then(|| pairs.join("&"))
    }
}

/// What a route changes on the way in and out.
#[derive(Debug, Clone)]
pub struct Transforms {
    /// What replaces the matched prefix (`None`: the path is kept).
    pub rewrite: Option<String>,
    /// Request header operations.
    pub request: Compiled,
    /// Response header operations.
    pub response: Compiled,
    /// Query operations.
    pub query: QueryOps,
}

impl Transforms {
    /// Writes the upstream's path for a request to `path` into `target`.
    fn write_path(&self, target: &mut String, path: &str, cx: Option<&RequestContext>) {
        match (&self.rewrite, cx) {
            (Some(replacement), Some(cx)) => {
                target.push_str(replacement);
                target.push_str(&cx.rest);
                if target.is_empty() {
                    target.push('/');
                }
            }
            _ => target.push_str(path),
        }
    }
}

/// The transform phase of a route.
#[derive(Clone, Debug)]
pub struct TransformPhase {
    transforms: Arc<Transforms>,
}

impl TransformPhase {
    /// A layer applying `transforms`.
    pub fn new(transforms: Transforms) -> Self {
        TransformPhase {
            transforms: Arc::new(transforms),
        }
    }
}

impl Phase for TransformPhase {
    fn passes(&self) -> bool {
        let t = &self.transforms;
        t.rewrite.is_none() && t.request.is_empty() && t.response.is_empty() && t.query.is_empty()
    }

    fn call<S: Next>(&self, mut request: Request, mut inner: S) -> PhaseFuture {
        let t = &self.transforms;
        t.request.apply(request.headers_mut());
        if t.rewrite.is_some() || !t.query.is_empty() {
            let uri = request.uri();
            let query = if t.query.is_empty() {
                uri.query().map(Cow::Borrowed)
            } else {
                t.query.apply(uri.query()).map(Cow::Owned)
            };
            let mut target = String::with_capacity(
                t.rewrite.as_ref().map_or(0, String::len)
                    + uri.path().len()
                    + query.as_ref().map_or(0, |q| q.len() + 1),
            );
            t.write_path(
                &mut target,
                uri.path(),
                request.extensions().get::<RequestContext>(),
            );
            if let Some(query) = query {
                target.push('?');
                target.push_str(&query);
            }
            if let Ok(uri) = Uri::try_from(target) {
                *request.uri_mut() = uri;
            }
        }
        let transforms = Arc::clone(&self.transforms);
        Box::pin(async move {
            let mut response = inner.call(request).await?;
            transforms.response.apply(response.headers_mut());
            Ok(response)
        })
    }
}

impl Validate for HeaderOps {
    fn validate(&self) -> Result<(), FieldErrors> {
        self.check().map_err(FieldErrors::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_operations_run_remove_rename_set_add() {
        let ops: HeaderOps = toml::from_str(
            r#"remove = ["x-drop"]
               rename = { x-old = "x-new" }
               set = { x-set = "s" }
               add = { x-set = "a" }"#,
        )
        .unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("x-drop", HeaderValue::from_static("1"));
        headers.insert("x-old", HeaderValue::from_static("o"));
        headers.insert("x-set", HeaderValue::from_static("before"));
        ops.compile().unwrap().apply(&mut headers);
        assert!(!headers.contains_key("x-drop") && !headers.contains_key("x-old"));
        assert_eq!(headers["x-new"], "o");
        let set: Vec<_> = headers.get_all("x-set").iter().collect();
        assert_eq!(set, ["s", "a"]);
    }

    #[test]
    fn query_parameters_are_removed_then_set() {
        let ops: QueryOps = toml::from_str(
            r#"remove = ["debug"]
            set = { v = "2 x" }"#,
        )
        .unwrap();
        assert_eq!(
            ops.apply(Some("a=1&debug=true&v=1")).as_deref(),
            Some("a=1&v=2%20x")
        );
        assert_eq!(ops.apply(None).as_deref(), Some("v=2%20x"));
        let bad: HeaderOps = toml::from_str(r#"set = { "bad name" = "x" }"#).unwrap();
        assert_eq!(bad.check().unwrap_err().path, "set");
    }
}
