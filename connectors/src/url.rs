//! What connection URLs of every kind share: refusing user information that needed
//! percent-encoding, and reading query parameters.

use percent_encoding::percent_decode_str;

/// Refuses a URL whose user name or password holds an `@` or `/` that should have been
/// percent-encoded, without echoing any of it (it is likely part of a password).
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
