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

/// The normalised form of `path` (without its query): `path` itself when it is already
/// normal, as nearly every request's path is.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    if is_normal(path) {
        return Ok(Cow::Borrowed(path));
    }
    resolve(path).map(Cow::Owned)
}

/// Whether `path` is its own normal form at sight: absolute, only characters written as
/// they are (RFC 3986 `pchar` without `%`, and `/`), no empty segment but a trailing one, no
/// dot segment.
fn is_normal(path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    let kept = |b: u8| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&b);
    if !rest.bytes().all(kept) {
        return false;
    }
    let mut segments = rest.split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        if segment == "." || segment == ".." || (segment.is_empty() && !last) {
            return false;
        }
    }
    true
}

/// The normal form of `path`, segment by segment.
fn resolve(path: &str) -> Result<String, PathError> {
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

    /// What a hostile path is made of: separators and dots, plain and percent-encoded in
    /// both cases, double encodings, backslashes, controls, bytes that are not UTF-8 and
    /// multi-byte characters, beside plain names.
    fn hostile() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("/"),
            Just("."),
            Just(".."),
            Just("%2e"),
            Just("%2E"),
            Just("%2f"),
            Just("%2F"),
            Just("%5c"),
            Just("%5C"),
            Just("\\"),
            Just("%25"),
            Just("%252e"),
            Just("%00"),
            Just("%0a"),
            Just("%c3%a9"),
            Just("é"),
            Just("%ff"),
            Just("%"),
            Just("%2"),
            Just("a"),
            Just("b"),
            Just("~"),
            Just(";"),
            Just("?"),
            Just("#"),
        ];
        proptest::collection::vec(piece, 0..16).prop_map(|pieces| format!("/{}", pieces.concat()))
    }

    /// What must hold of every normal form: it is absolute, a fixed point, has no empty
    /// segment but a trailing one, and no segment that decodes (once, as an upstream
    /// would) to a dot segment, a separator or a control character.
    fn check_normal_form(raw: &str, normal: &str) -> Result<(), TestCaseError> {
        prop_assert!(normal.starts_with('/'), "{raw} -> {normal}");
        prop_assert_eq!(
            normalize(normal),
            Ok(Cow::Borrowed(normal)),
            "idempotent, from {}",
            raw
        );
        let body = normal.strip_suffix('/').unwrap_or(normal);
        for segment in body.split('/').skip(1) {
            let decoded = percent_decode_str(segment).decode_utf8_lossy();
            prop_assert!(!segment.is_empty(), "{raw} -> {normal}: an empty segment");
            prop_assert!(
                decoded != "." && decoded != "..",
                "{raw} -> {normal}: a dot segment, maybe encoded"
            );
            prop_assert!(
                !decoded
                    .chars()
                    .any(|c| c == '/' || c == '\\' || c.is_control()),
                "{raw} -> {normal}: an encoded separator or control"
            );
        }
        Ok(())
    }

    proptest! {
        /// The shortcut for paths already normal never answers differently from resolving
        /// them segment by segment.
        #[test]
        fn a_path_seen_as_normal_is_its_own_resolution(
            raw in prop_oneof![hostile(), any::<String>().prop_map(|t| format!("/{t}"))]
        ) {
            if is_normal(&raw) {
                prop_assert_eq!(resolve(&raw), Ok(raw.clone()));
            }
        }

        #[test]
        fn hostile_paths_normalise_to_safe_fixed_points(raw in hostile()) {
            if let Ok(normal) = normalize(&raw) {
                check_normal_form(&raw, &normal)?;
            }
        }

        #[test]
        fn any_text_normalises_to_a_safe_fixed_point_or_is_refused(text in any::<String>()) {
            let raw = format!("/{text}");
            if let Ok(normal) = normalize(&raw) {
                check_normal_form(&raw, &normal)?;
            }
        }

        /// Resolving dot segments never climbs: what was under a prefix after resolution is
        /// what the client's own segments, resolved one by one, leave.
        #[test]
        fn dot_segments_resolve_like_a_stack(
            segments in proptest::collection::vec(
                prop_oneof![Just("a"), Just("b"), Just(".."), Just("."), Just("%2e%2e"), Just("%2E")],
                0..10,
            )
        ) {
            let raw = format!("/{}", segments.join("/"));
            let mut stack = Vec::new();
            let mut climbs = false;
            for segment in &segments {
                match percent_decode_str(segment).decode_utf8_lossy().as_ref() {
                    "." => {}
                    ".." => climbs |= stack.pop().is_none(),
                    name => stack.push(name.to_owned()),
                }
            }
            match normalize(&raw) {
                Err(PathError::AboveRoot) => prop_assert!(climbs, "{raw}"),
                Ok(normal) => {
                    prop_assert!(!climbs, "{raw} -> {normal}");
                    let body = normal.strip_suffix('/').unwrap_or(&normal);
                    let got: Vec<_> = body.split('/').skip(1).collect();
                    prop_assert_eq!(got, stack, "{}", raw);
                }
                Err(other) => prop_assert!(false, "{raw}: {other}"),
            }
        }
    }
}
