//! Where sluice's names live in etcd's key space: the namespace prefix, and the candidate keys
//! of elections and locks named the way etcd's own `concurrency` package names them.

use crate::error::CoordError;

/// The key prefix of a namespace: `NS/`, or nothing without one.
pub fn namespace_prefix(namespace: Option<&str>) -> Result<String, CoordError> {
    match namespace {
        None => Ok(String::new()),
        Some(ns) if ns.is_empty() || ns.starts_with('/') || ns.ends_with('/') => {
            Err(CoordError::Config(format!(
                "etcd namespace {ns:?}: expected a non-empty name without a leading or trailing /"
            )))
        }
        Some(ns) => Ok(format!("{ns}/")),
    }
}

/// The namespace prefix and what the backend does with it.
#[derive(Debug, Clone)]
pub struct Keys {
    /// `NS/`, or empty.
    prefix: String,
}

impl Keys {
    /// Keys under `prefix` (from [`namespace_prefix`]).
    pub fn new(prefix: String) -> Self {
        Keys { prefix }
    }

    /// The etcd key of key `key`, which must not be empty (etcd refuses the empty key).
    pub fn key(&self, key: &str) -> Result<String, CoordError> {
        if key.is_empty() {
            return Err(CoordError::Config("key \"\": is empty".to_owned()));
        }
        Ok(self.prefixed(key))
    }

    /// The etcd key prefix of key prefix `prefix` (empty: the whole namespace).
    pub fn prefixed(&self, prefix: &str) -> String {
        format!("{}{prefix}", self.prefix)
    }

    /// The key sluice names by etcd key `raw`, or `None` for a key outside the namespace or
    /// not UTF-8 (written by some other client).
    pub fn unprefixed(&self, raw: &[u8]) -> Option<String> {
        let key = std::str::from_utf8(raw).ok()?.strip_prefix(&self.prefix)?;
        (!key.is_empty()).then(|| key.to_owned())
    }

    /// The prefix of election or lock `name`: `NS/NAME/`, the keyPrefix of etcd's
    /// `concurrency.NewElection` and `concurrency.NewMutex`.
    pub fn recipe(&self, name: &str) -> Result<String, CoordError> {
        if name.is_empty() {
            return Err(CoordError::Config("name \"\": is empty".to_owned()));
        }
        Ok(format!("{}{name}/", self.prefix))
    }
}

/// The candidate key of a session in an election or lock: the prefix and the lease id in
/// lower-case hex, as etcd's `concurrency` package writes it (`fmt.Sprintf("%s%x", pfx, lease)`).
pub fn candidate(recipe: &str, lease: i64) -> String {
    format!("{recipe}{lease:x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_prefix_every_key() {
        assert_eq!(namespace_prefix(None).unwrap(), "");
        assert_eq!(namespace_prefix(Some("team/a")).unwrap(), "team/a/");
        for bad in ["", "/a", "a/"] {
            assert!(namespace_prefix(Some(bad)).is_err(), "{bad:?} accepted");
        }
        let keys = Keys::new(namespace_prefix(Some("ns")).unwrap());
        assert_eq!(keys.key("config/a").unwrap(), "ns/config/a");
        assert_eq!(keys.prefixed(""), "ns/");
        assert_eq!(keys.unprefixed(b"ns/config/a").as_deref(), Some("config/a"));
        assert_eq!(keys.unprefixed(b"other/config/a"), None);
        assert_eq!(keys.unprefixed(b"ns/"), None);
        assert_eq!(keys.unprefixed(b"ns/\xff"), None);
        assert!(keys.key("").is_err());
    }

    #[test]
    fn candidates_are_named_as_etcd_names_them() {
        let plain = Keys::new(String::new());
        let recipe = plain.recipe("jobs").unwrap();
        assert_eq!(recipe, "jobs/");
        assert_eq!(
            candidate(&recipe, 0x694d_9a3b_c2f1_0a07),
            "jobs/694d9a3bc2f10a07"
        );
        assert_eq!(candidate("ns/l/", 10), "ns/l/a");
        assert!(plain.recipe("").is_err());
    }
}
