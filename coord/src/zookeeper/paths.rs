//! Where sluice's names live in the ZooKeeper tree: the namespace root, keys as paths below it,
//! and the candidate nodes of elections and locks named the way Python's kazoo names them.

use crate::error::CoordError;

/// The namespace used when `[coord] namespace` is not set: the tree lives under `/sluice`.
pub const DEFAULT_NAMESPACE: &str = "sluice";

/// What kazoo puts between a contender's UUID and its sequence number
/// (`kazoo.recipe.lock.Lock._NODE_NAME`); an `Election` is a `Lock` underneath, so both use it.
pub const LOCK_NODE_NAME: &str = "__lock__";

/// The sub-tree of elections and of locks under the namespace root.
pub const ELECTIONS: &str = "elections";
/// See [`ELECTIONS`].
pub const LOCKS: &str = "locks";

/// The digits ZooKeeper appends to a sequential node (`%010d` of the parent's `cversion`).
const SEQUENCE_DIGITS: usize = 10;

/// The namespace root, such as `/sluice`, from the configured namespace (`None`: the default).
pub fn root(namespace: Option<&str>) -> Result<String, CoordError> {
    let namespace = namespace.unwrap_or(DEFAULT_NAMESPACE);
    validate_key(namespace)
        .map_err(|rule| CoordError::Config(format!("zookeeper namespace {namespace:?}: {rule}")))?;
    if namespace == "zookeeper" || namespace.starts_with("zookeeper/") {
        return Err(CoordError::Config(
            "zookeeper namespace: /zookeeper is ZooKeeper's own".to_owned(),
        ));
    }
    Ok(format!("/{namespace}"))
}

/// The path of `key` under `root`, after checking the key can be a ZooKeeper path.
pub fn key_path(root: &str, key: &str) -> Result<String, CoordError> {
    validate_key(key).map_err(|rule| CoordError::Config(format!("key {key:?}: {rule}")))?;
    Ok(format!("{root}/{key}"))
}

/// The key of a path under `root`, or `None` for the root itself or a path outside it.
pub fn path_key<'p>(root: &str, path: &'p str) -> Option<&'p str> {
    path.strip_prefix(root)?
        .strip_prefix('/')
        .filter(|key| !key.is_empty())
}

/// The parent of an absolute path (`/` for a top-level node), `None` for `/` itself.
pub fn parent(path: &str) -> Option<&str> {
    match path.rfind('/') {
        Some(0) if path.len() > 1 => Some("/"),
        Some(0) | None => None,
        Some(i) => Some(&path[..i]),
    }
}

/// Joins a directory and a child name.
pub fn child(dir: &str, name: &str) -> String {
    if dir == "/" {
        format!("/{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// The node a scan of key prefix `prefix` starts from: the deepest directory every matching
/// key lies under (`config/` → `{root}/config`, `app/x` → `{root}/app`, `` → `{root}`).
pub fn prefix_base(root: &str, prefix: &str) -> Result<String, CoordError> {
    match prefix.rfind('/') {
        None => Ok(root.to_owned()),
        Some(i) => key_path(root, &prefix[..i]),
    }
}

/// The directory of election or lock `name`: `{root}/{kind}/{name}`.
pub fn recipe_dir(root: &str, kind: &str, name: &str) -> Result<String, CoordError> {
    validate_key(name).map_err(|rule| CoordError::Config(format!("name {name:?}: {rule}")))?;
    Ok(format!("{root}/{kind}/{name}"))
}

/// The prefix of a new candidate node in `dir`, which ZooKeeper completes with the sequence:
/// `{dir}/{uuid hex}__lock__`, as kazoo's `Lock` creates it. The UUID finds the node again
/// when the reply to its create was lost.
pub fn candidate_prefix(dir: &str) -> String {
    format!("{dir}/{}{LOCK_NODE_NAME}", uuid::Uuid::new_v4().simple())
}

/// The sequence of a contender node name, as the string kazoo sorts by, or `None` when the
/// child is not a contender (kazoo's `(?:__lock__)(-?\d{10})$`).
pub fn contender_sequence(name: &str) -> Option<&str> {
    let digits_at = name.len().checked_sub(SEQUENCE_DIGITS)?;
    let digits = name.get(digits_at..)?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let head = &name[..digits_at];
    let (head, sequence_at) = match head.strip_suffix('-') {
        Some(head) => (head, digits_at - 1),
        None => (head, digits_at),
    };
    head.ends_with(LOCK_NODE_NAME).then(|| &name[sequence_at..])
}

/// The contenders among `children`, lowest sequence first, as kazoo orders them (by the
/// sequence string; with ten digits that is the numeric order).
pub fn contenders(children: &[String]) -> Vec<(&str, &str)> {
    let mut found: Vec<(&str, &str)> = children
        .iter()
        .filter_map(|name| Some((contender_sequence(name)?, name.as_str())))
        .collect();
    found.sort_unstable();
    found
}

/// The fencing token of a contender's sequence string.
pub fn token(sequence: &str) -> Result<u64, CoordError> {
    sequence.parse::<u64>().map_err(|_| {
        CoordError::Protocol(format!(
            "contender sequence {sequence} is no token (the parent's counter wrapped past 2^31)"
        ))
    })
}

/// Checks that `key` can name a ZooKeeper node below the root: `/`-separated segments, none
/// empty, `.` or `..`, no control characters and none of the code points ZooKeeper refuses.
pub fn validate_key(key: &str) -> Result<(), &'static str> {
    if key.is_empty() {
        return Err("is empty");
    }
    for segment in key.split('/') {
        match segment {
            "" => return Err("has an empty segment (a leading, trailing or double /)"),
            "." | ".." => return Err("has a . or .. segment"),
            _ => {}
        }
    }
    if key.chars().any(refused_char) {
        return Err(
            "has a character ZooKeeper refuses in paths (control, surrogate or private use)",
        );
    }
    Ok(())
}

/// The characters `org.apache.zookeeper.common.PathUtils.validatePath` refuses.
fn refused_char(c: char) -> bool {
    matches!(c, '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}' | '\u{e000}'..='\u{f8ff}' | '\u{fff0}'..='\u{ffff}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_defaults_to_sluice_and_takes_nested_namespaces() {
        assert_eq!(root(None).unwrap(), "/sluice");
        assert_eq!(root(Some("team/a")).unwrap(), "/team/a");
        assert!(root(Some("/abs")).is_err());
        assert!(root(Some("zookeeper")).is_err());
        assert!(root(Some("a//b")).is_err());
    }

    #[test]
    fn keys_map_to_paths_and_back() {
        assert_eq!(key_path("/sluice", "a/b").unwrap(), "/sluice/a/b");
        assert_eq!(path_key("/sluice", "/sluice/a/b"), Some("a/b"));
        assert_eq!(path_key("/sluice", "/sluice"), None);
        assert_eq!(path_key("/sluice", "/sluicex/a"), None);
        for bad in [
            "",
            "/a",
            "a/",
            "a//b",
            "a/./b",
            "..",
            "a\u{1}b",
            "a\u{e000}",
        ] {
            assert!(key_path("/sluice", bad).is_err(), "{bad:?} accepted");
        }
        assert!(key_path("/sluice", "config/pipeline-a.toml").is_ok());
        assert!(key_path("/sluice", "ünïcode/ключ").is_ok());
    }

    #[test]
    fn parents_and_children() {
        assert_eq!(parent("/a/b"), Some("/a"));
        assert_eq!(parent("/a"), Some("/"));
        assert_eq!(parent("/"), None);
        assert_eq!(child("/", "a"), "/a");
        assert_eq!(child("/a", "b"), "/a/b");
    }

    #[test]
    fn prefix_base_is_the_deepest_directory() {
        assert_eq!(prefix_base("/s", "").unwrap(), "/s");
        assert_eq!(prefix_base("/s", "conf").unwrap(), "/s");
        assert_eq!(prefix_base("/s", "config/").unwrap(), "/s/config");
        assert_eq!(prefix_base("/s", "app/x").unwrap(), "/s/app");
        assert!(prefix_base("/s", "/x").is_err());
    }

    #[test]
    fn contender_names_follow_kazoo() {
        let prefix = candidate_prefix("/s/locks/n");
        let name = prefix.rsplit('/').next().unwrap();
        assert_eq!(name.len(), 32 + LOCK_NODE_NAME.len());
        let full = format!("{name}0000000042");
        assert_eq!(contender_sequence(&full), Some("0000000042"));
        assert_eq!(contender_sequence("abc__lock__-000000001x"), None);
        assert_eq!(
            contender_sequence("abc__lock__-0000000001"),
            Some("-0000000001")
        );
        assert_eq!(contender_sequence("abc__rlock__0000000001"), None);
        assert_eq!(contender_sequence("_c_abc-lock-0000000001"), None);
        assert_eq!(contender_sequence("0000000001"), None);
    }

    #[test]
    fn contenders_sort_by_sequence_not_by_name() {
        let children = vec![
            "ffff__lock__0000000003".to_owned(),
            "0000__lock__0000000007".to_owned(),
            "not-a-contender".to_owned(),
            "aaaa__lock__0000000001".to_owned(),
        ];
        let sorted: Vec<&str> = contenders(&children).into_iter().map(|(_, n)| n).collect();
        assert_eq!(
            sorted,
            [
                "aaaa__lock__0000000001",
                "ffff__lock__0000000003",
                "0000__lock__0000000007"
            ]
        );
        assert_eq!(token("0000000007").unwrap(), 7);
        assert!(token("-0000000001").is_err());
    }
}
