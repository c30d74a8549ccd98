//! What connection URLs of every kind share: the config type that holds one without ever
//! showing its password, refusing user information that needed percent-encoding, and reading
//! query parameters.

use std::fmt;
use std::marker::PhantomData;

use percent_encoding::percent_decode_str;
use serde::{Deserialize, Deserializer};

/// A connection URL parsed into `T`, which says where to connect and shows itself without
/// the password.
pub trait ParseUrl: fmt::Display + Sized {
    /// Parses `url`; the error never repeats any part of it.
    fn parse_url(url: &str) -> Result<Self, String>;
}

/// A connection URL as written in a config. It holds a password, so it is never shown as
/// written: `Debug` shows the parsed URL without the password (or `<invalid url>`).
pub struct ConnectionUrl<T> {
    text: String,
    parsed: PhantomData<fn() -> T>,
}

impl<T: ParseUrl> ConnectionUrl<T> {
    /// Wraps `url` (not checked until validation).
    pub fn new(url: impl Into<String>) -> Self {
        ConnectionUrl {
            text: url.into(),
            parsed: PhantomData,
        }
    }

    /// Parses the URL, with a message that does not repeat it.
    pub fn parse(&self) -> Result<T, String> {
        T::parse_url(&self.text)
    }

    /// The URL as written, for hints about its shape (a comma, a missing scheme); never to be
    /// shown.
    pub fn text(&self) -> &str {
        &self.text
    }
}

impl<T> Clone for ConnectionUrl<T> {
    fn clone(&self) -> Self {
        ConnectionUrl {
            text: self.text.clone(),
            parsed: PhantomData,
        }
    }
}

impl<T> PartialEq for ConnectionUrl<T> {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl<T> Eq for ConnectionUrl<T> {}

impl<T: ParseUrl> fmt::Debug for ConnectionUrl<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.parse() {
            Ok(parsed) => write!(f, "\"{parsed}\""),
            Err(_) => f.write_str("\"<invalid url>\""),
        }
    }
}

impl<'de, T> Deserialize<'de> for ConnectionUrl<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(|text| ConnectionUrl {
            text,
            parsed: PhantomData,
        })
    }
}

/// Refuses a URL whose user name or password holds an `@` or `/` that should have been
/// percent-encoded, without echoing any of it (it is likely part of a password).
#[cfg_attr(not(any(feature = "postgres", feature = "amqp")), allow(dead_code))]
pub(crate) fn check_userinfo(url: &str) -> Result<(), String> {
    let Some((_, rest)) = url.split_once("://") else {
        return Ok(());
    };
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let ats = authority.matches('@').count();
    if ats > 1 || (ats == 0 && path.split('/').nth(1).is_some_and(|s| s.contains('@'))) {
        return Err(
            "the URL's user name or password holds an unescaped '@' or '/': percent-encode them (@ as %40, / as %2F, : as %3A)".into(),
        );
    }
    Ok(())
}

/// The pairs of a URL query string (`a=1&b=%2Fx`), each with its name and value decoded and
/// the pair as written.
#[cfg_attr(not(any(feature = "postgres", feature = "amqp")), allow(dead_code))]
pub(crate) fn query_pairs(query: &str) -> Result<Vec<(String, String, &str)>, String> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((decode(name)?, decode(value)?, pair))
        })
        .collect()
}

#[cfg_attr(not(any(feature = "postgres", feature = "amqp")), allow(dead_code))]
fn decode(text: &str) -> Result<String, String> {
    percent_decode_str(text)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| "a URL query parameter is not UTF-8 once percent-decoded".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescaped_userinfo_is_refused_without_echo() {
        for url in ["amqp://u:s3c@r3t@h/v", "postgres://u:s3c/r3t@h/db"] {
            let error = check_userinfo(url).unwrap_err();
            assert!(error.contains("percent-encode"), "{error}");
            assert!(!error.contains("s3c") && !error.contains("r3t"), "{error}");
        }
        for url in [
            "amqp://u:s3c%40r3t@h/%2f",
            "postgres://h/db",
            "host=h user=u",
        ] {
            assert!(check_userinfo(url).is_ok(), "{url}");
        }
    }

    #[test]
    fn query_pairs_are_decoded() {
        let pairs = query_pairs("a=1&&b=%2Fx%20y&c").unwrap();
        let decoded: Vec<_> = pairs
            .iter()
            .map(|(n, v, _)| (n.as_str(), v.as_str()))
            .collect();
        assert_eq!(decoded, [("a", "1"), ("b", "/x y"), ("c", "")]);
        assert_eq!(pairs[1].2, "b=%2Fx%20y");
    }
}
