//! The `[ids]` section: the process's id generators, each under a name that the `id`
//! transform and `GET /ids/{generator}` use.
//!
//! ```toml
//! [ids]
//! max_count = 10000                  # most ids one HTTP request may ask for
//!
//! [ids.generators.orders]
//! type = "snowflake"
//! datacenter = 1
//! worker = "${WORKER_ID}"            # a number, or a string of digits from the environment
//!
//! [ids.generators.shards]           # no `worker`: the pair is leased through [coord]
//! type = "snowflake"
//! lease = { datacenters = "0-3", workers = "0-31" }
//!
//! [ids.generators.events]
//! type = "uuid7"
//!
//! [ids.generators.tickets]
//! type = "postgres_sequence"
//! url = "${DATABASE_URL}"
//! sequence = "ticket_ids"
//! node = 1
//! nodes = 2
//! block = 1000
//!
//! [ids.generators.daily]
//! type = "redis_counter"
//! url = "${REDIS_URL}"
//! key = "ids:daily"
//! ```
//!
//! Generators are named once, per process, rather than configured inline in each transform:
//! a Snowflake generator's (datacenter, worker) pair must be used by one generator only, and
//! naming it in one place is what lets every transform and the endpoint share that one.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use sluice_pipeline::{FieldError, FieldErrors, HumanDuration, Validate};

use crate::calendar;
use crate::clock::{Clock, SystemClock};
#[cfg(feature = "redis")]
use crate::counter::{self, CounterPlan, DayFormat};
#[cfg(feature = "postgres")]
use crate::sequence::SequencePlan;
use crate::snowflake::{self, Layout, Node, OnBackward, Options, PairRange, parse_range};
#[cfg(feature = "postgres")]
use sluice_connect::postgres::PostgresUrl;

/// Default for [`IdsConfig::max_count`].
pub const DEFAULT_MAX_COUNT: usize = 10_000;
/// The largest [`IdsConfig::max_count`] accepted: a response of a million ids is ~20 MiB.
pub const MAX_MAX_COUNT: usize = 1_000_000;
/// Default for [`SnowflakeConfig::max_backward`].
pub const DEFAULT_MAX_BACKWARD: HumanDuration = HumanDuration(snowflake::DEFAULT_MAX_BACKWARD);
/// Default for [`SequenceConfig::block`]: one `nextval` per 1,000 ids.
#[cfg(feature = "postgres")]
pub const DEFAULT_SEQUENCE_BLOCK: u64 = 1000;
/// Default for [`CounterConfig::block`]: one `INCRBY` per 100 ids.
#[cfg(feature = "redis")]
pub const DEFAULT_COUNTER_BLOCK: u64 = 100;
/// Default for [`CounterConfig::retain`].
#[cfg(feature = "redis")]
pub const DEFAULT_RETAIN: HumanDuration = HumanDuration(counter::DEFAULT_RETAIN);

/// The `[ids]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdsConfig {
    /// The most ids one `GET /ids/{generator}?count=N` may ask for; more is refused (400).
    #[serde(default = "default_max_count")]
    pub max_count: usize,
    /// The generators, by name.
    #[serde(default)]
    pub generators: BTreeMap<String, GeneratorConfig>,
}

fn default_max_count() -> usize {
    DEFAULT_MAX_COUNT
}

/// One generator: its `type` and that type's settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum GeneratorConfig {
    /// 64-bit Snowflake ids.
    Snowflake(SnowflakeConfig),
    /// Random UUIDs (version 4).
    Uuid4(NoSettings),
    /// Time-ordered UUIDs (version 7), monotonic per generator.
    Uuid7(NoSettings),
    /// ULIDs, monotonic per generator.
    Ulid(NoSettings),
    /// A PostgreSQL sequence with offset/increment and block allocation.
    #[cfg(feature = "postgres")]
    PostgresSequence(SequenceConfig),
    /// A Redis `INCRBY` counter per day.
    #[cfg(feature = "redis")]
    RedisCounter(CounterConfig),
}

/// The settings of a generator that has none.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoSettings {}

/// `type = "snowflake"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnowflakeConfig {
    /// This process's datacenter: a number, or a string of digits (`"${DATACENTER}"`).
    /// Without `worker`, the datacenter to lease a worker in.
    #[serde(default)]
    pub datacenter: Option<Number>,
    /// This process's worker within the datacenter: a number, or a string of digits
    /// (`"${WORKER_ID}"`). No two live processes may share a (datacenter, worker) pair.
    /// Without it, the pair is leased through `[coord]`.
    #[serde(default)]
    pub worker: Option<Number>,
    /// Where a leased pair is taken from (only without `worker`).
    #[serde(default)]
    pub lease: Option<LeaseConfig>,
    /// The instant timestamps count from: RFC 3339 (`"2024-01-01T00:00:00Z"`) or Unix
    /// milliseconds. Not in the future.
    #[serde(default = "default_epoch")]
    pub epoch: Epoch,
    /// Timestamp bits (milliseconds since the epoch).
    #[serde(default = "default_timestamp_bits")]
    pub timestamp_bits: u8,
    /// Datacenter bits.
    #[serde(default = "default_datacenter_bits")]
    pub datacenter_bits: u8,
    /// Worker bits.
    #[serde(default = "default_worker_bits")]
    pub worker_bits: u8,
    /// Sequence bits: `2^sequence_bits` ids per millisecond. 12 makes the seed's layout a
    /// 63-bit one whose ids always fit a signed 64-bit integer.
    #[serde(default = "default_sequence_bits")]
    pub sequence_bits: u8,
    /// The largest step back of the clock waited out (with `on_backward = "wait"`).
    #[serde(default = "default_max_backward")]
    pub max_backward: HumanDuration,
    /// On a step back: `wait` (up to `max_backward`, then refuse) or `continue` (keep issuing
    /// from the last timestamp; see docs/ids.md for what that risks).
    #[serde(default)]
    pub on_backward: Backward,
}

fn default_epoch() -> Epoch {
    Epoch(snowflake::DEFAULT_EPOCH_MS)
}
fn default_timestamp_bits() -> u8 {
    snowflake::DEFAULT_TIMESTAMP_BITS
}
fn default_datacenter_bits() -> u8 {
    snowflake::DEFAULT_DATACENTER_BITS
}
fn default_worker_bits() -> u8 {
    snowflake::DEFAULT_WORKER_BITS
}
fn default_sequence_bits() -> u8 {
    snowflake::DEFAULT_SEQUENCE_BITS
}
fn default_max_backward() -> HumanDuration {
    DEFAULT_MAX_BACKWARD
}

/// `lease`: the range a Snowflake generator without a fixed pair leases its pair in.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseConfig {
    /// The datacenters, `"A-B"` or one number (default: `datacenter` if given, else all).
    pub datacenters: Option<String>,
    /// The workers, `"A-B"` or one number (default: all the layout holds).
    pub workers: Option<String>,
    /// How long a reused pair waits before issuing: above the coordination TTL plus the clock
    /// step allowed between machines (default: the TTL plus 1 s).
    pub guard: Option<HumanDuration>,
}

/// Where a Snowflake generator's (datacenter, worker) pair comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PairSource {
    /// Set by the operator.
    Static(Node),
    /// Leased through `[coord]` in this range, with this guard time (`None`: the TTL + 1 s).
    Leased {
        /// The pairs to lease among.
        range: PairRange,
        /// The guard time before a reused pair issues.
        guard: Option<Duration>,
    },
}

/// `on_backward`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backward {
    /// Wait out steps up to `max_backward`, refuse larger ones.
    #[default]
    Wait,
    /// Keep issuing from the last timestamp.
    Continue,
}

impl SnowflakeConfig {
    /// The layout, checked.
    pub fn layout(&self) -> Result<Layout, FieldError> {
        Layout::new(
            self.timestamp_bits,
            self.datacenter_bits,
            self.worker_bits,
            self.sequence_bits,
            self.epoch.0,
        )
        .map_err(|e| FieldError::new("", e.to_string()))
    }

    /// Where the (datacenter, worker) pair comes from, checked against the layout.
    pub fn pair(&self) -> Result<PairSource, FieldError> {
        let layout = self.layout()?;
        let field = |name: &'static str, n: u64| {
            layout
                .check_field(name, n)
                .map_err(|e| FieldError::new(name, e.to_string()))
        };
        match (self.datacenter, self.worker, &self.lease) {
            (Some(datacenter), Some(worker), None) => {
                field("datacenter", datacenter.0)?;
                field("worker", worker.0)?;
                Ok(PairSource::Static(Node {
                    datacenter: datacenter.0,
                    worker: worker.0,
                }))
            }
            (_, Some(_), Some(_)) => Err(FieldError::new(
                "lease",
                "a generator with a fixed `worker` leases nothing: remove `lease`, or `worker` to lease a pair",
            )),
            (None, Some(_), None) => Err(FieldError::new(
                "datacenter",
                "`worker` needs `datacenter` (or give neither, to lease a pair through [coord])",
            )),
            (datacenter, None, lease) => {
                if let Some(d) = datacenter {
                    field("datacenter", d.0)?;
                }
                let lease = lease.clone().unwrap_or_default();
                let range = |text: &Option<String>, name: &str| {
                    text.as_deref()
                        .map(parse_range)
                        .transpose()
                        .map_err(|e| FieldError::new(format!("lease.{name}"), e))
                };
                let range = PairRange::resolve(
                    &layout,
                    datacenter.map(|d| d.0),
                    range(&lease.datacenters, "datacenters")?,
                    range(&lease.workers, "workers")?,
                )
                .map_err(|e| FieldError::new("lease", e.to_string()))?;
                Ok(PairSource::Leased {
                    range,
                    guard: lease.guard.map(HumanDuration::get),
                })
            }
        }
    }

    /// The clock options.
    pub fn options(&self) -> Options {
        Options {
            max_backward: self.max_backward.get(),
            on_backward: match self.on_backward {
                Backward::Wait => OnBackward::Wait,
                Backward::Continue => OnBackward::Continue,
            },
        }
    }

    fn check(&self, now_ms: u64) -> Result<(), FieldError> {
        let layout = self.layout()?;
        self.pair()?;
        if self.epoch.0 > now_ms {
            return Err(FieldError::new(
                "epoch",
                format!(
                    "{} is in the future (the clock reads {}): ids count from it",
                    calendar::rfc3339(self.epoch.0),
                    calendar::rfc3339(now_ms)
                ),
            ));
        }
        if now_ms >= layout.runs_out_ms() {
            return Err(FieldError::new(
                "timestamp_bits",
                format!(
                    "the {}-bit timestamp from this epoch ran out on {}",
                    layout.timestamp_bits(),
                    calendar::rfc3339(layout.runs_out_ms())
                ),
            ));
        }
        Ok(())
    }
}

/// `type = "postgres_sequence"`.
#[cfg(feature = "postgres")]
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SequenceConfig {
    /// The database, as a `postgres://` URL; `sslmode` (`verify-full` with `sslrootcert`, …)
    /// asks for TLS as in libpq. Never shown with its password.
    pub url: PostgresUrl,
    /// The sequence, `name` or `schema.name`; sluice creates it if it is missing.
    pub sequence: String,
    /// This node's number, 1 to `nodes`: its ids start at `(node - 1) × block + 1`.
    pub node: u64,
    /// How many nodes share the id space, each with its own sequence (the increment is
    /// `nodes × block`).
    pub nodes: u64,
    /// Ids reserved by one `nextval`; a crash loses the unused rest of a block as a gap.
    #[serde(default = "default_sequence_block")]
    pub block: u64,
}

#[cfg(feature = "postgres")]
fn default_sequence_block() -> u64 {
    DEFAULT_SEQUENCE_BLOCK
}

#[cfg(feature = "postgres")]
impl SequenceConfig {
    /// The plan.
    pub fn plan(&self) -> SequencePlan {
        SequencePlan {
            sequence: self.sequence.clone(),
            node: self.node,
            nodes: self.nodes,
            block: self.block,
        }
    }
}

/// `type = "redis_counter"`.
#[cfg(feature = "redis")]
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CounterConfig {
    /// The Redis server, as a `redis://` URL.
    pub url: ServerUrl,
    /// The key prefix: a day's counter is `<key>:<YYYYMMDD>`.
    pub key: String,
    /// How ids are rendered: `%Y %y %m %d %j` for the date, `%6n` for the counter padded to 6
    /// digits (`%n` unpadded). It must name the day and hold the counter once.
    #[serde(default = "default_format")]
    pub format: String,
    /// Counter values reserved by one `INCRBY`; a crash loses the unused rest as a gap.
    #[serde(default = "default_counter_block")]
    pub block: u64,
    /// How long a day's key outlives the day: longer than any caller's clock may lag.
    #[serde(default = "default_retain")]
    pub retain: HumanDuration,
}

#[cfg(feature = "redis")]
fn default_format() -> String {
    counter::DEFAULT_FORMAT.to_owned()
}
#[cfg(feature = "redis")]
fn default_counter_block() -> u64 {
    DEFAULT_COUNTER_BLOCK
}
#[cfg(feature = "redis")]
fn default_retain() -> HumanDuration {
    DEFAULT_RETAIN
}

#[cfg(feature = "redis")]
impl CounterConfig {
    /// The plan, with its format checked.
    pub fn plan(&self) -> Result<CounterPlan, FieldError> {
        let format: DayFormat = self
            .format
            .parse()
            .map_err(|e: counter::FormatError| FieldError::new("format", e.to_string()))?;
        Ok(CounterPlan {
            key: self.key.clone(),
            format,
            block: self.block,
            retain: self.retain.get(),
        })
    }
}

/// A server's URL, which may hold a password: never printed, not even in debug output.
#[cfg(feature = "redis")]
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct ServerUrl(pub String);

#[cfg(feature = "redis")]
impl ServerUrl {
    /// The URL, to connect with.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

#[cfg(feature = "redis")]
impl std::fmt::Debug for ServerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerUrl(<redacted>)")
    }
}

/// A non-negative number written as a TOML integer or as a string of digits, so that it can
/// come from the environment (`"${WORKER_ID}"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Number(pub u64);

/// A TOML integer or a string: how a number that may come from the environment is written.
#[derive(Deserialize)]
#[serde(untagged)]
enum IntOrText {
    Int(u64),
    Text(String),
}

impl<'de> Deserialize<'de> for Number {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match IntOrText::deserialize(deserializer)? {
            IntOrText::Int(n) => Ok(Number(n)),
            IntOrText::Text(text) => text.trim().parse().map(Number).map_err(|_| {
                serde::de::Error::custom(format!("expected a non-negative number, got {text:?}"))
            }),
        }
    }
}

/// An epoch: RFC 3339 text or Unix milliseconds, held as Unix milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Epoch(pub u64);

impl<'de> Deserialize<'de> for Epoch {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match IntOrText::deserialize(deserializer)? {
            IntOrText::Int(ms) => Ok(Epoch(ms)),
            IntOrText::Text(text) => calendar::parse_instant(&text)
                .map(Epoch)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// Generator names are path segments (`/ids/{generator}`): letters, digits, `_` and `-`.
fn check_name(name: &str) -> Result<(), String> {
    let valid = name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "invalid generator name {name:?}: use letters, digits, '_' and '-', starting with a letter or digit"
        ))
    }
}

impl IdsConfig {
    /// Checks everything as of `now_ms` (the epoch must not be later).
    pub fn check_at(&self, now_ms: u64) -> Result<(), FieldError> {
        if self.max_count == 0 || self.max_count > MAX_MAX_COUNT {
            return Err(FieldError::new(
                "max_count",
                format!("must be between 1 and {MAX_MAX_COUNT}"),
            ));
        }
        let mut pairs: BTreeMap<Node, &str> = BTreeMap::new();
        for (name, generator) in &self.generators {
            let path = format!("generators.{name}");
            check_name(name).map_err(|message| FieldError::new(&path, message))?;
            let result: Result<(), FieldError> = match generator {
                GeneratorConfig::Snowflake(c) => c.check(now_ms).and_then(|()| {
                    let Ok(PairSource::Static(node)) = c.pair() else {
                        return Ok(());
                    };
                    match pairs.insert(node, name) {
                        Some(other) => Err(FieldError::new(
                            "",
                            format!(
                                "datacenter {} worker {} is also generator {other:?}'s: two generators with one pair issue the same ids",
                                node.datacenter, node.worker
                            ),
                        )),
                        None => Ok(()),
                    }
                }),
                #[cfg(feature = "postgres")]
                GeneratorConfig::PostgresSequence(c) => c
                    .url
                    .parse()
                    .map(drop)
                    .map_err(|problem| FieldError::new("url", problem))
                    .and_then(|()| {
                        c.plan()
                            .check()
                            .map_err(|e| FieldError::new(e.field, e.message))
                    }),
                #[cfg(feature = "redis")]
                GeneratorConfig::RedisCounter(c) => {
                    if c.key.is_empty() {
                        Err(FieldError::new("key", "must not be empty"))
                    } else if c.block == 0 {
                        Err(FieldError::new("block", "must be at least 1"))
                    } else if c.retain.get() < Duration::from_secs(1) {
                        Err(FieldError::new(
                            "retain",
                            "must be at least 1s: callers whose clock lags would count on an expired key",
                        ))
                    } else {
                        c.plan().map(drop)
                    }
                }
                GeneratorConfig::Uuid4(_) | GeneratorConfig::Uuid7(_) | GeneratorConfig::Ulid(_) => {
                    Ok(())
                }
            };
            result.map_err(|e| e.within(&path))?;
        }
        Ok(())
    }

    /// The names of the generators, for messages.
    pub fn names(&self) -> BTreeSet<&str> {
        self.generators.keys().map(String::as_str).collect()
    }
}

impl Validate for IdsConfig {
    fn validate(&self) -> Result<(), FieldErrors> {
        self.check_at(SystemClock.now_ms())
            .map_err(FieldErrors::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<IdsConfig, String> {
        let value: toml::Value = toml::from_str(text).map_err(|e| e.to_string())?;
        let config: IdsConfig =
            sluice_pipeline::config::deserialize(value).map_err(|e| e.to_string())?;
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }

    #[test]
    fn a_minimal_snowflake_takes_the_seeds_defaults() {
        let config = parse(
            r#"
            [generators.orders]
            type = "snowflake"
            datacenter = 1
            worker = "7"
            "#,
        )
        .unwrap();
        let GeneratorConfig::Snowflake(s) = &config.generators["orders"] else {
            panic!("a snowflake");
        };
        assert_eq!(s.layout().unwrap(), Layout::SEED);
        assert_eq!(
            s.pair().unwrap(),
            PairSource::Static(Node {
                datacenter: 1,
                worker: 7
            })
        );
        assert_eq!(config.max_count, DEFAULT_MAX_COUNT);
    }

    #[test]
    fn a_snowflake_without_a_worker_leases_in_its_range() {
        let config = parse(
            "[generators.a]\ntype = \"snowflake\"\ndatacenter = 2\nlease = { workers = \"4-7\", guard = \"5s\" }",
        )
        .unwrap();
        let GeneratorConfig::Snowflake(s) = &config.generators["a"] else {
            panic!("a snowflake");
        };
        assert_eq!(
            s.pair().unwrap(),
            PairSource::Leased {
                range: PairRange {
                    datacenters: 2..=2,
                    workers: 4..=7
                },
                guard: Some(Duration::from_secs(5)),
            }
        );
    }

    #[test]
    fn a_sequence_url_shows_its_tls_never_its_password() {
        let config = parse(
            r#"
            [generators.orders]
            type = "postgres_sequence"
            url = "postgres://app:s3cret@db.local/shop?sslmode=verify-full&sslrootcert=/etc/sluice/ca.pem"
            sequence = "order_ids"
            node = 1
            nodes = 2
            "#,
        )
        .unwrap();
        let debug = format!("{config:?}");
        assert!(
            !debug.contains("s3cret")
                && debug.contains("postgres://app@db.local:5432/shop?sslmode=verify-full"),
            "{debug}"
        );
    }

    #[test]
    fn bad_settings_name_the_field_and_the_rule() {
        let cases = [
            (
                "[generators.a]\ntype = \"snowflake\"\ndatacenter = 1\nworker = 32",
                "generators.a.worker: worker 32 is out of range: the 5-bit field holds 0 to 31",
            ),
            (
                "[generators.a]\ntype = \"snowflake\"\ndatacenter = 1\nworker = 1\ntimestamp_bits = 42",
                "generators.a: the fields add up to 65 bits (42/5/5/13); an id holds at most 64",
            ),
            (
                "[generators.a]\ntype = \"snowflake\"\ndatacenter = 1\nworker = 1\nsequence_bits = 0",
                "generators.a: every field needs at least 1 bit, and `sequence_bits` is 0",
            ),
            (
                "[generators.a]\ntype = \"snowflake\"\ndatacenter = 1\nworker = 1\nepoch = \"2999-01-01T00:00:00Z\"",
                "generators.a.epoch: 2999-01-01T00:00:00.000Z is in the future",
            ),
            (
                "[generators.a]\ntype = \"snowflake\"\ndatacenter = 1\nworker = 1\n[generators.b]\ntype = \"snowflake\"\ndatacenter = 1\nworker = 1",
                "generators.b: datacenter 1 worker 1 is also generator \"a\"'s",
            ),
            (
                "[generators.a]\ntype = \"postgres_sequence\"\nurl = \"postgres://x\"\nsequence = \"ids\"\nnode = 3\nnodes = 2",
                "generators.a.node: must be between 1 and nodes (2), got 3",
            ),
            (
                "[generators.a]\ntype = \"postgres_sequence\"\nurl = \"postgres://u:s3cret@x/db?sslmode=verify-all\"\nsequence = \"ids\"\nnode = 1\nnodes = 2",
                "generators.a.url: sslmode=\"verify-all\" is not an sslmode: use one of disable, prefer, require, verify-ca, verify-full",
            ),
            (
                "[generators.a]\ntype = \"redis_counter\"\nurl = \"redis://x\"\nkey = \"k\"\nformat = \"%n\"",
                "generators.a.format: invalid id format \"%n\": it must name the day",
            ),
            (
                "[generators.a]\ntype = \"snowflake\"\nworker = 1",
                "generators.a.datacenter: `worker` needs `datacenter` (or give neither",
            ),
            (
                "[generators.a]\ntype = \"snowflake\"\ndatacenter = 1\nworker = 1\nlease = { workers = \"0-3\" }",
                "generators.a.lease: a generator with a fixed `worker` leases nothing",
            ),
            (
                "[generators.a]\ntype = \"snowflake\"\nlease = { workers = \"0-x\" }",
                "generators.a.lease.workers: \"0-x\": expected A-B with whole numbers",
            ),
            (
                "[generators.a]\ntype = \"snowflake\"\nlease = { workers = \"0-40\" }",
                "generators.a.lease: worker 40 is out of range",
            ),
            (
                "[generators.a]\ntype = \"snowflake\"\nlease = { datacenters = \"3-1\" }",
                "generators.a.lease: the datacenter range is empty",
            ),
            ("max_count = 0", "max_count: must be between 1 and 1000000"),
            (
                "[generators.\"a b\"]\ntype = \"uuid7\"",
                "invalid generator name \"a b\"",
            ),
            (
                "[generators.a]\ntype = \"uuid7\"\nbits = 3",
                "unknown field `bits`",
            ),
            (
                "[generators.a]\ntype = \"snowflake\"\ndatacenter = \"one\"\nworker = 1",
                "expected a non-negative number, got \"one\"",
            ),
        ];
        for (text, expected) in cases {
            let error = parse(text).unwrap_err();
            assert!(
                error.contains(expected),
                "{text}\n  gave: {error}\n  want: {expected}"
            );
        }
    }
}
