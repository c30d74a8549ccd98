//! `${VAR}` and `${VAR:-default}` in config values, resolved from the environment.
//!
//! Interpolation runs over the parsed TOML document, string value by string value, so that a
//! variable holding quotes or newlines cannot change the document's structure, and an unset
//! variable is reported with the field it appears in. `$$` writes a literal `$`.

/// Why a string could not be interpolated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InterpolationError {
    /// `${NAME}` with `NAME` unset and no default.
    #[error(
        "environment variable {0} is not set and has no default (set it, or write ${{{0}:-default}})"
    )]
    Unset(String),
    /// `${` without a closing `}`.
    #[error("unterminated \"${{\": close it with \"}}\", or write \"$$\" for a literal \"$\"")]
    Unterminated,
    /// A name that is not `[A-Za-z_][A-Za-z0-9_]*`.
    #[error("invalid variable name {0:?}: use letters, digits and underscores")]
    InvalidName(String),
}

/// Replaces every `${NAME}` / `${NAME:-default}` in `input` using `lookup`.
pub fn interpolate(
    input: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, InterpolationError> {
    if !input.contains('$') {
        return Ok(input.to_owned());
    }
    let mut output = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        output.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            output.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body.find('}').ok_or(InterpolationError::Unterminated)?;
            let (name, default) = match body[..end].split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (&body[..end], None),
            };
            if !is_valid_name(name) {
                return Err(InterpolationError::InvalidName(name.to_owned()));
            }
            match (lookup(name), default) {
                (Some(value), _) => output.push_str(&value),
                (None, Some(default)) => output.push_str(default),
                (None, None) => return Err(InterpolationError::Unset(name.to_owned())),
            }
            rest = &body[end + 1..];
        } else {
            output.push('$');
            rest = after;
        }
    }
    output.push_str(rest);
    Ok(output)
}

fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("db.local".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn substitutes_and_defaults() {
        let run = |s| interpolate(s, &env);
        assert_eq!(
            run("postgres://${HOST}/x").unwrap(),
            "postgres://db.local/x"
        );
        assert_eq!(run("${MISSING:-fallback}").unwrap(), "fallback");
        assert_eq!(run("${HOST:-fallback}").unwrap(), "db.local");
        assert_eq!(run("${EMPTY:-fallback}").unwrap(), "");
        assert_eq!(run("cost $$5 and $x").unwrap(), "cost $5 and $x");
        assert_eq!(run("no vars").unwrap(), "no vars");
    }

    #[test]
    fn reports_what_is_wrong() {
        let run = |s| interpolate(s, &env);
        assert_eq!(
            run("${MISSING}"),
            Err(InterpolationError::Unset("MISSING".into()))
        );
        assert_eq!(run("${HOST"), Err(InterpolationError::Unterminated));
        assert_eq!(
            run("${1BAD}"),
            Err(InterpolationError::InvalidName("1BAD".into()))
        );
    }

    proptest! {
        #[test]
        fn text_without_dollar_is_unchanged(s in "[^$]{0,40}") {
            prop_assert_eq!(interpolate(&s, &env).unwrap(), s);
        }

        #[test]
        fn never_panics(s in ".{0,40}") {
            let _ = interpolate(&s, &env);
        }
    }
}
