//! The `[coord]` section, and the `--coord URL` / `SLUICE_COORD` form of it.
//!
//! ```toml
//! [coord]
//! backend = "etcd"                        # "etcd", "zookeeper" or "embedded"
//! endpoints = ["127.0.0.1:2379"]          # host:port each; none for "embedded"
//! namespace = "prod"                      # optional key prefix (etcd) or root (ZooKeeper)
//! ttl = "10s"                             # session (lease) TTL, at least 2 s
//! node = "relay-1"                        # this process's name; default hostname-pid
//! connect_timeout = "5s"
//! user = "sluice"                         # etcd only, with `password`
//! password = "${ETCD_PASSWORD}"
//! tls = { ca = "/etc/sluice/ca.pem" }     # etcd only; `cert` and `key` for client auth
//! ```

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use sluice_pipeline::{FieldError, FieldErrors, HumanDuration, Validate};

use crate::error::CoordError;

/// Default for [`CoordConfig::ttl`].
pub const DEFAULT_TTL: HumanDuration = HumanDuration::from_secs(10);
/// The shortest [`CoordConfig::ttl`] accepted: what etcd grants at least, and below which
/// the renewal margins become shorter than a scheduling hiccup.
pub const MIN_TTL: Duration = Duration::from_secs(2);
/// Default for [`CoordConfig::connect_timeout`].
pub const DEFAULT_CONNECT_TIMEOUT: HumanDuration = HumanDuration::from_secs(5);

/// Which coordination service to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// etcd v3 (leases, revisions, its election and lock services).
    Etcd,
    /// A ZooKeeper ensemble (3.6 or later).
    Zookeeper,
    /// In process: one node, or tests.
    Embedded,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Etcd => "etcd",
            BackendKind::Zookeeper => "zookeeper",
            BackendKind::Embedded => "embedded",
        })
    }
}

/// The `[coord]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordConfig {
    /// The coordination service: `etcd`, `zookeeper` or `embedded`.
    pub backend: BackendKind,
    /// The servers, `host:port` each (none for `embedded`). An entry may list several,
    /// comma-separated, and carry an `http://` scheme, as `ETCD_ENDPOINTS` does
    /// (`endpoints = ["${ETCD_ENDPOINTS}"]`); a single string is a one-entry list.
    #[serde(default, deserialize_with = "endpoint_list")]
    pub endpoints: Vec<String>,
    /// A prefix that keeps this deployment's keys apart: etcd keys start with `NAMESPACE/`,
    /// the ZooKeeper tree lives under `/NAMESPACE` (default `/sluice`), the embedded store is
    /// one per namespace. Without one, etcd election `NAME` is etcd's election `NAME`.
    #[serde(default)]
    pub namespace: Option<String>,
    /// The session (lease) TTL: how long after its last renewal a silent process keeps its
    /// leadership, locks and registrations on the server; failover takes about this long.
    #[serde(default = "default_ttl")]
    pub ttl: HumanDuration,
    /// This process's name, the value an election it wins shows and its id among the
    /// cluster's nodes (unique in the cluster, no `/`); `hostname-pid` by default.
    #[serde(default)]
    pub node: Option<String>,
    /// How long to wait for a server to answer when connecting.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: HumanDuration,
    /// The user to authenticate as (etcd), with [`CoordConfig::password`].
    #[serde(default)]
    pub user: Option<String>,
    /// The user's password (etcd); never printed.
    #[serde(default)]
    pub password: Option<Password>,
    /// TLS to the servers (etcd).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

fn default_ttl() -> HumanDuration {
    DEFAULT_TTL
}

fn default_connect_timeout() -> HumanDuration {
    DEFAULT_CONNECT_TIMEOUT
}

/// TLS to the coordination servers.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the authorities that sign the servers' certificates; the system's roots
    /// when absent.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// PEM file of this client's certificate, for servers that authenticate clients (with
    /// `key`).
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// PEM file of this client's private key (with `cert`).
    #[serde(default)]
    pub key: Option<PathBuf>,
}

/// A password: never printed, not even in debug output.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// A password.
    pub fn new(password: impl Into<String>) -> Self {
        Password(password.into())
    }

    /// The password, to authenticate with.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

impl<'de> Deserialize<'de> for Password {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Password)
    }
}

impl CoordConfig {
    /// A config for `backend` at `endpoints` with every other key at its default.
    pub fn new(backend: BackendKind, endpoints: Vec<String>) -> Self {
        CoordConfig {
            backend,
            endpoints,
            namespace: None,
            ttl: DEFAULT_TTL,
            node: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            user: None,
            password: None,
            tls: None,
        }
    }

    /// Reads the `--coord URL` / `SLUICE_COORD` form: `etcd://HOST:PORT[,HOST:PORT…]`,
    /// `zookeeper://HOST:PORT[,…]` or `embedded:`, optionally followed by
    /// `?namespace=NS&ttl=5s&node=NAME`; every other key at its default. The result is
    /// validated.
    pub fn from_url(url: &str) -> Result<Self, CoordError> {
        // A URL with credentials is shown without them.
        let shown = match (url.find("//"), url.rfind('@')) {
            (Some(start), Some(at)) if at > start => {
                format!("{}<redacted>{}", &url[..start + 2], &url[at..])
            }
            _ => url.to_owned(),
        };
        let bad = |why: &str| {
            CoordError::Config(format!(
                "coordination URL {shown:?}: {why} (write etcd://HOST:PORT[,HOST:PORT...], zookeeper://HOST:PORT[,...] or embedded:)"
            ))
        };
        let (scheme, rest) = url.split_once(':').ok_or_else(|| bad("no scheme"))?;
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let backend = match scheme {
            "etcd" => BackendKind::Etcd,
            "zookeeper" => BackendKind::Zookeeper,
            "embedded" => BackendKind::Embedded,
            _ => return Err(bad(&format!("unknown scheme {scheme:?}"))),
        };
        let endpoints = if backend == BackendKind::Embedded {
            if !rest.is_empty() && rest != "//" {
                return Err(bad("embedded: takes no endpoints"));
            }
            Vec::new()
        } else {
            let hosts = rest
                .strip_prefix("//")
                .ok_or_else(|| bad("expected // after the scheme"))?;
            if hosts.contains('@') {
                return Err(bad(
                    "credentials do not belong in the URL: set user and password in [coord]",
                ));
            }
            let hosts = hosts.strip_suffix('/').unwrap_or(hosts);
            hosts.split(',').map(str::to_owned).collect()
        };
        let mut config = CoordConfig::new(backend, endpoints);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=').unwrap_or((pair, "")) {
                ("namespace", ns) if !ns.is_empty() => config.namespace = Some(ns.to_owned()),
                ("ttl", ttl) => {
                    config.ttl = ttl.parse().map_err(|e| bad(&format!("ttl={ttl:?}: {e}")))?;
                }
                ("node", node) if !node.is_empty() => config.node = Some(node.to_owned()),
                (name, _) => {
                    return Err(bad(&format!(
                        "unknown or empty parameter {name:?} (expected namespace, ttl, node)"
                    )));
                }
            }
        }
        config.validate().map_err(|e| bad(&e.to_string()))?;
        Ok(config)
    }

    /// The session TTL.
    pub fn ttl(&self) -> Duration {
        self.ttl.get()
    }

    /// This process's node name: [`CoordConfig::node`], or `hostname-pid`.
    pub fn node(&self) -> String {
        self.node.clone().unwrap_or_else(default_node)
    }

    /// The endpoints joined for messages.
    pub fn describe_endpoints(&self) -> String {
        match self.backend {
            BackendKind::Embedded => "the embedded store".to_owned(),
            kind => format!("{kind} {}", self.endpoints.join(",")),
        }
    }
}

/// `hostname-pid`: unique among the live processes of a cluster whose hosts have distinct names.
fn default_node() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{host}-{}", std::process::id())
}

/// Why `endpoint` is not `host:port`, if it is not.
/// `endpoints` as written: a string or a list of strings, each split at commas, without an
/// `http://` scheme.
fn endpoint_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Written {
        One(String),
        Many(Vec<String>),
    }
    let written = match Written::deserialize(d)? {
        Written::One(one) => vec![one],
        Written::Many(many) => many,
    };
    Ok(written
        .iter()
        .flat_map(|entry| entry.split(','))
        .map(|e| e.trim().trim_start_matches("http://").to_owned())
        .filter(|e| !e.is_empty())
        .collect())
}

fn check_endpoint(endpoint: &str) -> Result<(), String> {
    let Some((host, port)) = endpoint.rsplit_once(':') else {
        return Err(format!("{endpoint:?} has no port: write host:port"));
    };
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() || host.contains(['/', ',', ' ', '@']) {
        return Err(format!(
            "{endpoint:?}: the host is not a host name or address"
        ));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!(
            "{endpoint:?}: the port is not a number from 1 to 65535"
        )),
    }
}

impl Validate for CoordConfig {
    fn validate(&self) -> Result<(), FieldErrors> {
        self.first_problem().map_err(FieldErrors::from)
    }
}

impl CoordConfig {
    /// The first rule the section breaks (they depend on each other: one at a time reads best).
    fn first_problem(&self) -> Result<(), FieldError> {
        if self.ttl() < MIN_TTL {
            return Err(FieldError::new(
                "ttl",
                format!(
                    "{} is shorter than the {} s minimum",
                    self.ttl,
                    MIN_TTL.as_secs()
                ),
            ));
        }
        if self.connect_timeout.get().is_zero() {
            return Err(FieldError::new("connect_timeout", "must be longer than 0"));
        }
        match self.backend {
            BackendKind::Embedded => {
                if !self.endpoints.is_empty() {
                    return Err(FieldError::new(
                        "endpoints",
                        "the embedded backend runs in process: remove the endpoints",
                    ));
                }
            }
            BackendKind::Etcd | BackendKind::Zookeeper => {
                if self.endpoints.is_empty() {
                    return Err(FieldError::new(
                        "endpoints",
                        format!("the {} backend needs at least one host:port", self.backend),
                    ));
                }
                for (i, endpoint) in self.endpoints.iter().enumerate() {
                    check_endpoint(endpoint)
                        .map_err(|why| FieldError::new(format!("endpoints[{i}]"), why))?;
                }
            }
        }
        if self.backend != BackendKind::Etcd {
            let etcd_only = [
                ("user", self.user.is_some()),
                ("password", self.password.is_some()),
                ("tls", self.tls.is_some()),
            ];
            if let Some((key, _)) = etcd_only.iter().find(|(_, set)| *set) {
                return Err(FieldError::new(
                    *key,
                    format!(
                        "only the etcd backend takes {key}; the {} backend has none",
                        self.backend
                    ),
                ));
            }
        }
        if self.user.is_some() != self.password.is_some() {
            return Err(FieldError::new(
                if self.user.is_some() {
                    "password"
                } else {
                    "user"
                },
                "user and password go together: set both or neither",
            ));
        }
        if let Some(tls) = &self.tls
            && tls.cert.is_some() != tls.key.is_some()
        {
            return Err(FieldError::new(
                "tls",
                "cert and key go together: set both or neither",
            ));
        }
        if let Some(namespace) = &self.namespace {
            let valid = !namespace.is_empty()
                && !namespace.starts_with('/')
                && !namespace.ends_with('/')
                && !namespace.contains("//")
                && !namespace.chars().any(char::is_control);
            if !valid {
                return Err(FieldError::new(
                    "namespace",
                    format!(
                        "{namespace:?}: write /-separated names without a leading or trailing /"
                    ),
                ));
            }
        }
        if let Some(node) = &self.node
            && (node.trim().is_empty() || node.contains('/') || node.chars().any(char::is_control))
        {
            // The name is also the node's id in the cluster's registry: one key segment.
            return Err(FieldError::new(
                "node",
                format!("{node:?}: must be a non-empty name without '/' or control characters"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<CoordConfig, String> {
        let value: toml::Value = toml::from_str(text).map_err(|e| e.to_string())?;
        let config: CoordConfig =
            sluice_pipeline::config::deserialize(value).map_err(|e| e.to_string())?;
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }

    #[test]
    fn a_full_section_is_read() {
        let config = parse(
            r#"
            backend = "etcd"
            endpoints = ["127.0.0.1:2379", "[::1]:2380"]
            namespace = "prod/eu"
            ttl = "5s"
            node = "relay-1"
            user = "sluice"
            password = "hunter2"
            tls = { ca = "/etc/ca.pem" }
            "#,
        )
        .unwrap();
        assert_eq!(config.backend, BackendKind::Etcd);
        assert_eq!(config.ttl(), Duration::from_secs(5));
        assert_eq!(config.node(), "relay-1");
        assert_eq!(config.namespace.as_deref(), Some("prod/eu"));
        let debug = format!("{config:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");
    }

    #[test]
    fn endpoints_may_be_written_as_etcd_endpoints_is() {
        for written in [
            r#"endpoints = "http://127.0.0.1:2379,http://127.0.0.1:22379""#,
            r#"endpoints = ["http://127.0.0.1:2379, 127.0.0.1:22379"]"#,
        ] {
            let config = parse(&format!("backend = \"etcd\"\n{written}")).unwrap();
            assert_eq!(
                config.endpoints,
                ["127.0.0.1:2379", "127.0.0.1:22379"],
                "{written}"
            );
        }
    }

    #[test]
    fn defaults_fill_the_rest() {
        let config = parse("backend = \"embedded\"").unwrap();
        assert_eq!(config.ttl, DEFAULT_TTL);
        assert_eq!(config.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        let node = config.node();
        assert!(
            node.ends_with(&format!("-{}", std::process::id())),
            "{node}"
        );
    }

    #[test]
    fn invalid_sections_name_the_key_and_the_rule() {
        let cases = [
            ("backend = \"consul\"", "backend", "unknown variant"),
            ("backend = \"etcd\"", "endpoints", "at least one host:port"),
            (
                "backend = \"etcd\"\nendpoints = [\"localhost\"]",
                "endpoints[0]",
                "no port",
            ),
            (
                "backend = \"zookeeper\"\nendpoints = [\"h:99999\"]",
                "endpoints[0]",
                "1 to 65535",
            ),
            (
                "backend = \"embedded\"\nendpoints = [\"h:1\"]",
                "endpoints",
                "remove the endpoints",
            ),
            (
                "backend = \"embedded\"\nttl = \"1500ms\"",
                "ttl",
                "2 s minimum",
            ),
            (
                "backend = \"embedded\"\nttl = \"ten\"",
                "ttl",
                "invalid duration",
            ),
            (
                "backend = \"zookeeper\"\nendpoints = [\"h:1\"]\nuser = \"u\"\npassword = \"p\"",
                "user",
                "only the etcd backend",
            ),
            (
                "backend = \"etcd\"\nendpoints = [\"h:1\"]\nuser = \"u\"",
                "password",
                "go together",
            ),
            (
                "backend = \"etcd\"\nendpoints = [\"h:1\"]\ntls = { cert = \"c.pem\" }",
                "tls",
                "go together",
            ),
            (
                "backend = \"embedded\"\nnamespace = \"/a\"",
                "namespace",
                "leading",
            ),
            ("backend = \"embedded\"\nnode = \"\"", "node", "non-empty"),
            (
                "backend = \"embedded\"\nnode = \"rack/1\"",
                "node",
                "without '/'",
            ),
            (
                "backend = \"embedded\"\nttls = \"5s\"",
                "ttls",
                "unknown field",
            ),
        ];
        for (text, key, rule) in cases {
            let error = parse(text).unwrap_err();
            assert!(
                error.contains(key) && error.contains(rule),
                "{text:?} gave {error:?}, expected {key:?} and {rule:?}"
            );
        }
    }

    #[test]
    fn urls_name_a_backend_and_its_endpoints() {
        let etcd = CoordConfig::from_url("etcd://127.0.0.1:2379,127.0.0.1:22379").unwrap();
        assert_eq!(etcd.backend, BackendKind::Etcd);
        assert_eq!(etcd.endpoints, ["127.0.0.1:2379", "127.0.0.1:22379"]);
        let zk = CoordConfig::from_url("zookeeper://127.0.0.1:2181/").unwrap();
        assert_eq!(zk.backend, BackendKind::Zookeeper);
        assert_eq!(zk.endpoints, ["127.0.0.1:2181"]);
        let embedded = CoordConfig::from_url("embedded:").unwrap();
        assert_eq!(embedded.backend, BackendKind::Embedded);
        assert!(embedded.endpoints.is_empty());
        let tuned = CoordConfig::from_url("etcd://h:1?namespace=team/a&ttl=5s&node=n1").unwrap();
        assert_eq!(tuned.namespace.as_deref(), Some("team/a"));
        assert_eq!(tuned.ttl(), Duration::from_secs(5));
        assert_eq!(tuned.node(), "n1");
        for (url, why) in [
            ("etcd://h:1?ttl=1s", "ttl"),
            (
                "etcd://h:1?color=red",
                "unknown or empty parameter \"color\"",
            ),
            ("consul://h:1", "unknown scheme"),
            ("etcd:h:1", "expected //"),
            ("etcd://", "has no port"),
            ("etcd://h:1,,h:2", "has no port"),
            ("etcd://u:secret@h:1", "credentials do not belong"),
            ("embedded://h:1", "takes no endpoints"),
            ("127.0.0.1", "no scheme"),
        ] {
            let error = CoordConfig::from_url(url).unwrap_err().to_string();
            assert!(error.contains(why), "{url}: {error}");
            assert!(!error.contains("secret"), "{error}");
        }
    }
}
