//! The `[redis]` resource: multiplexed, self-reconnecting Redis connections,
//! shared by the rate limiter, the response cache, `cache_invalidate` and anything else that
//! asks for a [`Redis`].
//!
//! ```toml
//! [redis]
//! url = "${REDIS_URL}"          # redis://[:password@]host:port[/db], or rediss:// for TLS
//! timeout = "100ms"             # the longest one command may take before it counts as failed
//! ```
//!
//! The connection is opened lazily and reopened by itself after a failure (one per gateway
//! serving thread, see [`crate::worker`], and one for everything else); the resource pings
//! Redis every [`PING_INTERVAL`] to say in `/ready` whether it answers.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::Deserialize;
use sluice_pipeline::component::BoxFuture;
use sluice_pipeline::resource::Provider;

use crate::worker::PerWorker;
use sluice_pipeline::{
    BuildContext, Error, ErrorKind, FieldError, FieldErrors, Finding, HumanDuration, Resource,
    ResourceConfig, ResourceContext, Validate,
};

/// Default for [`RedisConfig::timeout`]: short, so that a gateway whose Redis is down answers
/// (failing open or closed) within a bounded time.
pub const DEFAULT_TIMEOUT: HumanDuration = HumanDuration::from_millis(100);
/// How often the resource checks that Redis answers.
pub const PING_INTERVAL: Duration = Duration::from_secs(1);

/// The `[redis]` section.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// The server: `redis://[:password@]host:port[/db]` (`rediss://` for TLS). Never printed.
    pub url: String,
    /// The longest one command may take (and one connection attempt); longer counts as a
    /// failure.
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
}

fn default_timeout() -> HumanDuration {
    DEFAULT_TIMEOUT
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redacted(&self.url))
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// `url` with any password replaced by `***`.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

impl RedisConfig {
    /// The first rule the section breaks.
    pub(crate) fn check(&self) -> Result<(), FieldError> {
        redis::Client::open(self.url.as_str()).map_err(|_| {
            FieldError::new(
                "url",
                "not a Redis URL: write redis://host:port or rediss://host:port",
            )
        })?;
        if self.timeout.get().is_zero() {
            return Err(FieldError::new("timeout", "must be more than 0"));
        }
        Ok(())
    }
}

impl ResourceConfig for RedisConfig {
    fn build(&self, _cx: &BuildContext) -> Result<Arc<dyn Resource>, Error> {
        Ok(Arc::new(Redis::new(self)?))
    }

    fn check(&self) -> BoxFuture<'_, Vec<Finding>> {
        Box::pin(async move {
            let redis = match Redis::new(self) {
                Ok(redis) => redis,
                Err(e) => return vec![Finding::fail(e.to_string())],
            };
            match redis.ping().await {
                Ok(()) => vec![Finding::ok(format!(
                    "Redis at {} answers",
                    redacted(&self.url)
                ))],
                Err(e) => vec![Finding::fail(format!(
                    "Redis at {} does not answer ({e}): start it, or fix [redis] url",
                    redacted(&self.url)
                ))],
            }
        })
    }
}

/// The shared Redis connection.
pub struct Redis {
    client: redis::Client,
    /// One per serving thread, made at its first command there (it spawns its driver on
    /// that thread's runtime, which must therefore be the one using it).
    connection: PerWorker<ConnectionManager>,
    timeout: Duration,
}

impl fmt::Debug for Redis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Redis")
    }
}

/// Why a Redis command did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    /// No answer within the configured timeout.
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    /// The command failed or the connection is down.
    #[error("Redis command failed")]
    Command(#[source] redis::RedisError),
}

impl Redis {
    /// A connection to the server of `config`, opened at its first use. No I/O.
    pub fn new(config: &RedisConfig) -> Result<Self, Error> {
        let client = redis::Client::open(config.url.as_str())
            .map_err(|e| Error::new(ErrorKind::Config, "reading [redis] url").with_source(e))?;
        Ok(Redis {
            client,
            connection: PerWorker::default(),
            timeout: config.timeout.get(),
        })
    }

    fn connection(&self) -> Result<ConnectionManager, RedisError> {
        if let Some(connection) = self.connection.get() {
            return Ok(connection.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(self.timeout))
            .set_connection_timeout(Some(self.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let made = ConnectionManager::new_lazy_with_config(self.client.clone(), config)
            .map_err(RedisError::Command)?;
        // Two first commands at once may both make one; the first stored is the one kept.
        Ok(self.connection.get_or_init(|| made).clone())
    }

    /// The longest a command may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Runs `command` (a command, a pipeline or a script invocation) with the timeout.
    pub async fn run<T, F, Fut>(&self, command: F) -> Result<T, RedisError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let connection = self.connection()?;
        match tokio::time::timeout(self.timeout, command(connection)).await {
            Ok(result) => result.map_err(RedisError::Command),
            Err(_) => Err(RedisError::Timeout(self.timeout)),
        }
    }

    /// `PING`.
    pub async fn ping(&self) -> Result<(), RedisError> {
        self.run(|mut c| async move { redis::cmd("PING").query_async::<()>(&mut c).await })
            .await
    }
}

impl Resource for Redis {
    fn run<'a>(&'a self, cx: &'a mut ResourceContext) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let mut tick = tokio::time::interval(PING_INTERVAL);
            let mut answering = None;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = cx.shutdown().requested() => return Ok(()),
                }
                let up = self.ping().await.is_ok();
                if answering != Some(up) {
                    if up {
                        tracing::info!("redis answers");
                    } else {
                        tracing::warn!("redis does not answer");
                    }
                    answering = Some(up);
                }
                cx.set_ready(up);
            }
        })
    }

    fn provide(self: Arc<Self>, provider: &mut Provider) {
        provider.insert(self);
    }
}

impl Validate for RedisConfig {
    fn validate(&self) -> Result<(), FieldErrors> {
        self.check().map_err(FieldErrors::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_never_shows() {
        let config = RedisConfig {
            url: "redis://:hunter2@127.0.0.1:6379/0".into(),
            timeout: DEFAULT_TIMEOUT,
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("redis://***@127.0.0.1:6379/0"), "{shown}");
    }

    #[test]
    fn a_bad_url_is_refused_naming_the_field() {
        let config = RedisConfig {
            url: "http://x".into(),
            timeout: DEFAULT_TIMEOUT,
        };
        assert_eq!(config.check().unwrap_err().path, "url");
    }
}
