//! Path normalisation, before any route is matched: `/api/products/../orders` is matched (and
//! forwarded) as `/api/orders`, and what cannot be normalised safely is refused.
//!
//! Each segment is percent-decoded once; `.` segments are removed, `..` removes the segment
//! before it, empty segments (`//`) collapse. A decoded segment holding `/`, `\` or a control
//! character is refused rather than guessed at (an encoded slash would otherwise let
//! `/api/products%2F..%2Forders` reach a route it does not match on some upstream), as is a
//! `..` that would climb above the root, or bytes that are not UTF-8. The result is encoded
//! again, so it is the one form both the router and the upstream see.

use std::borrow::Cow;
use std::fmt::Write as _;

use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str};

/// What is encoded when a normalised path is written back: everything but the unreserved
/// characters and the sub-delimiters, `:` and `@` (RFC 3986 `pchar`).
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'[')
    .add(b'\\')
    .add(b']')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

/// Why a path was refused (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path does not start with `/` (an origin-form request target).
    #[error("the path must start with /")]
    NotAbsolute,
    /// `..` would climb above the root.
    #[error("the path climbs above the root with ..")]
    AboveRoot,
    /// A segment decodes to a `/`, `\` or a control character.
    #[error("a path segment decodes to a slash, a backslash or a control character")]
    EncodedSeparator,
    /// A segment does not decode to UTF-8.
    #[error("a path segment does not decode to UTF-8")]
    NotUtf8,
}

/// The normalised form of `path` (without its query).
pub fn normalize(path: &str) -> Result<String, PathError> {
    let rest = path.strip_prefix('/').ok_or(PathError::NotAbsolute)?;
    let mut segments: Vec<Cow<'_, str>> = Vec::new();
    let mut trailing = false;
    for raw in rest.split('/') {
        let segment = percent_decode_str(raw)
            .decode_utf8()
            .map_err(|_| PathError::NotUtf8)?;
        if segment
            .chars()
            .any(|c| c == '/' || c == '\\' || c.is_control())
        {
            return Err(PathError::EncodedSeparator);
        }
        trailing = false;
        match &*segment {
            "" | "." => trailing = true,
            ".." => {
                segments.pop().ok_or(PathError::AboveRoot)?;
                trailing = true;
            }
            _ => segments.push(segment),
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &segments {
        out.push('/');
        let _ = write!(
            out,
            "{}",
            percent_encoding::utf8_percent_encode(segment, SEGMENT)
        );
    }
    if out.is_empty() || trailing {
        out.push('/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn dot_segments_resolve_before_matching() {
        assert_eq!(normalize("/api/products/../orders").unwrap(), "/api/orders");
        assert_eq!(
            normalize("/api/./products//123").unwrap(),
            "/api/products/123"
        );
        assert_eq!(normalize("/api/%2e%2e/orders").unwrap(), "/orders");
        assert_eq!(normalize("/api/products/").unwrap(), "/api/products/");
        assert_eq!(normalize("/").unwrap(), "/");
        assert_eq!(normalize("/a/b/..").unwrap(), "/a/");
        assert_eq!(normalize("/caf%C3%A9").unwrap(), "/caf%C3%A9");
        assert_eq!(normalize("/a%20b").unwrap(), "/a%20b");
    }

    #[test]
    fn unsafe_paths_are_refused() {
        assert_eq!(normalize("/.."), Err(PathError::AboveRoot));
        assert_eq!(normalize("/api/../../etc"), Err(PathError::AboveRoot));
        assert_eq!(
            normalize("/api/products%2F..%2Forders"),
            Err(PathError::EncodedSeparator)
        );
        assert_eq!(normalize("/a%5C..%5Cb"), Err(PathError::EncodedSeparator));
        assert_eq!(normalize("/a%00"), Err(PathError::EncodedSeparator));
        assert_eq!(normalize("/%ff"), Err(PathError::NotUtf8));
        assert_eq!(normalize("api"), Err(PathError::NotAbsolute));
    }

    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(".".to_owned()),
            Just("..".to_owned()),
            Just(String::new()),
            Just("%2e%2e".to_owned()),
            Just("%2F".to_owned()),
            Just("%25".to_owned()),
            "[a-z0-9%._~-]{1,6}",
        ]
    }

    proptest! {
        #[test]
        fn normal_forms_are_fixed_points_without_dot_segments(
            segments in proptest::collection::vec(segment(), 0..8)
        ) {
            let path = format!("/{}", segments.join("/"));
            if let Ok(normal) = normalize(&path) {
                prop_assert!(normal.starts_with('/'));
                prop_assert!(!normal.contains("//"), "{normal}");
                for seg in normal.split('/') {
                    prop_assert!(seg != "." && seg != "..", "{normal}");
                }
                prop_assert_eq!(normalize(&normal), Ok(normal.clone()));
            }
        }

        #[test]
        fn no_input_decodes_to_an_escape_of_the_root(raw in "[/a-z.%2eEfF5cC]{0,24}") {
            let path = format!("/{raw}");
            if let Ok(normal) = normalize(&path) {
                // What was refused never reaches the router; what passed has no way up.
                let decoded = percent_decode_str(&normal).decode_utf8_lossy().into_owned();
                prop_assert!(!decoded.split('/').any(|s| s == ".."), "{path} -> {normal}");
            }
        }
    }
}
