//! Rate limiting shared by every gateway using the same Redis: one atomic Lua script per
//! request (`INCR` + `PEXPIRE` on a window key; for the sliding window, the previous window's
//! count weighted by how much of it still overlaps), windows aligned on Redis's own clock so
//! replicas agree. Over the limit: 429 with `Retry-After`; every answer carries
//! `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` (draft-polli-ratelimit-headers,
//! seconds) and their `X-RateLimit-*` twins.
//!
//! When Redis fails or does not answer within its timeout, `on_store_error = "open"` (the
//! default) lets requests through under an in-process limit (`fallback_limit` per window, per
//! gateway), `"closed"` answers 503; each is counted, and the change of state is logged once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use serde::Deserialize;
use sluice_pipeline::{FieldError, FieldErrors, HumanDuration, Validate};

use crate::body::{self, Request};
use crate::context::RequestContext;
use crate::metrics;
use crate::phase::{Next, Phase, PhaseFuture};
use crate::redis::Redis;

/// Default for [`RateLimitConfig::window`].
pub const DEFAULT_WINDOW: HumanDuration = HumanDuration::from_secs(60);
/// Most identities the in-process fallback tracks per route; beyond it, the oldest windows
/// are forgotten first.
pub const FALLBACK_MAX_KEYS: usize = 100_000;

/// `rate_limit`: a route's limit.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Requests allowed per window, per identity.
    pub limit: u64,
    /// The window.
    #[serde(default = "default_window")]
    pub window: HumanDuration,
    /// What a limit counts by: `user` (the verified user, else the client IP), `ip`, `route`
    /// (everyone together) or `header:NAME`.
    #[serde(default = "default_by")]
    pub by: String,
    /// `fixed` (calendar-aligned windows) or `sliding` (the previous window weighted in).
    #[serde(default)]
    pub algorithm: Algorithm,
    /// When Redis fails: `open` (let through under `fallback_limit`) or `closed` (503).
    #[serde(default)]
    pub on_store_error: OnStoreError,
    /// The in-process limit per window and identity while failing open; unset, `limit`.
    pub fallback_limit: Option<u64>,
}

fn default_window() -> HumanDuration {
    DEFAULT_WINDOW
}
fn default_by() -> String {
    "user".to_owned()
}

/// A rate-limit window kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// Counts per window aligned on multiples of its length.
    #[default]
    Fixed,
    /// The current window's count plus the previous one's, weighted by their overlap.
    Sliding,
}

/// What happens when Redis cannot answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnStoreError {
    /// Let requests through under the in-process fallback limit.
    #[default]
    Open,
    /// Refuse them (503).
    Closed,
}

/// What a limit counts by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum By {
    /// The user, or the client IP when anonymous.
    User,
    /// The client IP.
    Ip,
    /// The route as a whole.
    Route,
    /// A request header's value (the client IP when absent).
    Header(HeaderName),
}

impl RateLimitConfig {
    /// What the limit counts by, parsed.
    pub fn parsed_by(&self) -> Result<By, FieldError> {
        match self.by.as_str() {
            "user" => Ok(By::User),
            "ip" => Ok(By::Ip),
            "route" => Ok(By::Route),
            other => match other.strip_prefix("header:") {
                Some(name) => HeaderName::from_bytes(name.as_bytes())
                    .map(By::Header)
                    .map_err(|_| FieldError::new("by", format!("{name:?} is not a header name"))),
                None => Err(FieldError::new(
                    "by",
                    format!("{other:?} is not one of user, ip, route, header:NAME"),
                )),
            },
        }
    }
}

impl RateLimitConfig {
    /// The first rule the section breaks.
    pub(crate) fn check(&self) -> Result<(), FieldError> {
        if self.limit == 0 {
            return Err(FieldError::new("limit", "must be at least 1"));
        }
        if self.window.get() < Duration::from_secs(1) {
            return Err(FieldError::new("window", "must be at least 1s"));
        }
        self.parsed_by()?;
        Ok(())
    }
}

/// Fixed window: KEYS[1] is the key prefix; ARGV[1] the window in ms. Returns
/// {count, ms until the window ends}.
const FIXED: &str = r"
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local window = tonumber(ARGV[1])
local start = ms - (ms % window)
local key = KEYS[1] .. ':' .. start
local count = redis.call('INCR', key)
if count == 1 then redis.call('PEXPIRE', key, window) end
return {count, start + window - ms}
";

/// Sliding window: as [`FIXED`], ARGV[2] the limit; the request is counted only if allowed.
/// Returns {estimated count including this request (limit + 1 when refused), ms until the
/// window ends}.
const SLIDING: &str = r"
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local window = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local start = ms - (ms % window)
local current = KEYS[1] .. ':' .. start
local previous = KEYS[1] .. ':' .. (start - window)
local before = tonumber(redis.call('GET', previous) or '0')
local now_count = tonumber(redis.call('GET', current) or '0')
local weight = (window - (ms - start)) / window
local estimate = math.floor(before * weight) + now_count
if estimate >= limit then return {limit + 1, start + window - ms} end
local count = redis.call('INCR', current)
if count == 1 then redis.call('PEXPIRE', current, window * 2) end
return {estimate + 1, start + window - ms}
";

/// One route's limiter.
pub struct Limiter {
    route: Arc<str>,
    config: RateLimitConfig,
    by: By,
    redis: Arc<Redis>,
    script: redis::Script,
    store_up: AtomicBool,
    fallback: Mutex<HashMap<String, (u64, u64)>>,
    limited: ::metrics::Counter,
    store_errors: ::metrics::Counter,
    /// The limit as a header value, made once.
    limit_header: HeaderValue,
}

const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("route", &self.route)
            .finish()
    }
}

/// A limiter's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may go on.
    pub allowed: bool,
    /// Requests left in the window.
    pub remaining: u64,
    /// Seconds until the window ends.
    pub reset: u64,
    /// Whether the store failed (and the fallback, or a refusal, decided).
    pub store_failed: bool,
}

impl Limiter {
    /// The limiter of route `route`.
    pub fn new(
        route: &str,
        config: RateLimitConfig,
        redis: Arc<Redis>,
    ) -> Result<Self, FieldError> {
        let by = config.parsed_by()?;
        let script = redis::Script::new(match config.algorithm {
            Algorithm::Fixed => FIXED,
            Algorithm::Sliding => SLIDING,
        });
        let mode = match config.on_store_error {
            OnStoreError::Open => "open",
            OnStoreError::Closed => "closed",
        };
        Ok(Limiter {
            route: Arc::from(route),
            limited: ::metrics::counter!(metrics::RATE_LIMITED, "route" => route.to_owned()),
            store_errors: ::metrics::counter!(metrics::RATE_LIMIT_STORE_ERRORS, "route" => route.to_owned(), "mode" => mode),
            limit_header: HeaderValue::from(config.limit),
            config,
            by,
            redis,
            script,
            store_up: AtomicBool::new(true),
            fallback: Mutex::new(HashMap::new()),
        })
    }

    /// The identity `request` is counted under.
    pub fn identity(&self, request: &Request) -> String {
        let cx = request.extensions().get::<RequestContext>();
        let ip = || cx.map_or("unknown", |c| c.client.ip_text());
        match &self.by {
            By::User => match cx.and_then(|c| c.user.as_deref()) {
                Some(user) => format!("user:{user}"),
                None => format!("ip:{}", ip()),
            },
            By::Ip => format!("ip:{}", ip()),
            By::Route => "route".to_owned(),
            By::Header(name) => match request.headers().get(name).and_then(|v| v.to_str().ok()) {
                Some(value) => format!("header:{value}"),
                None => format!("ip:{}", ip()),
            },
        }
    }

    /// Counts one request of `identity` and decides.
    pub async fn check(&self, identity: &str) -> Decision {
        let key = format!("ratelimit:{}:{identity}", self.route);
        let window_ms = u64::try_from(self.config.window.get().as_millis()).unwrap_or(u64::MAX);
        let limit = self.config.limit;
        let answer = self
            .redis
            .run(|mut c| {
                let mut invocation = self.script.key(&key);
                invocation.arg(window_ms).arg(limit);
                async move { invocation.invoke_async::<(u64, u64)>(&mut c).await }
            })
            .await;
        match answer {
            Ok((count, reset_ms)) => {
                if !self.store_up.swap(true, Ordering::Relaxed) {
                    tracing::info!(route = %self.route, "rate limit store answers again");
                }
                Decision {
                    allowed: count <= limit,
                    remaining: limit.saturating_sub(count),
                    reset: reset_ms.div_ceil(1000).max(1),
                    store_failed: false,
                }
            }
            Err(e) => {
                self.store_errors.increment(1);
                if self.store_up.swap(false, Ordering::Relaxed) {
                    tracing::warn!(route = %self.route, error = %e, mode = ?self.config.on_store_error, "rate limit store failed");
                }
                match self.config.on_store_error {
                    OnStoreError::Open => self.fallback(identity, window_ms),
                    OnStoreError::Closed => Decision {
                        allowed: false,
                        remaining: 0,
                        reset: 1,
                        store_failed: true,
                    },
                }
            }
        }
    }

    /// The in-process limit, while Redis is away.
    fn fallback(&self, identity: &str, window_ms: u64) -> Decision {
        let limit = self.config.fallback_limit.unwrap_or(self.config.limit);
        let ms = u64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis(),
        )
        .unwrap_or(0);
        let start = ms - ms % window_ms;
        let mut windows = self.fallback.lock().unwrap_or_else(PoisonError::into_inner);
        if windows.len() >= FALLBACK_MAX_KEYS {
            windows.retain(|_, (s, _)| *s == start);
        }
        let entry = windows.entry(identity.to_owned()).or_insert((start, 0));
        if entry.0 != start {
            *entry = (start, 0);
        }
        entry.1 += 1;
        Decision {
            allowed: entry.1 <= limit,
            remaining: limit.saturating_sub(entry.1),
            reset: (start + window_ms - ms).div_ceil(1000).max(1),
            store_failed: true,
        }
    }

    fn headers(&self, decision: &Decision, headers: &mut HeaderMap) {
        let remaining = HeaderValue::from(decision.remaining);
        headers.insert(RATELIMIT_LIMIT, self.limit_header.clone());
        headers.insert(RATELIMIT_REMAINING, remaining.clone());
        headers.insert(RATELIMIT_RESET, HeaderValue::from(decision.reset));
        headers.insert(X_RATELIMIT_LIMIT, self.limit_header.clone());
        headers.insert(X_RATELIMIT_REMAINING, remaining);
    }
}

/// The rate-limit phase of a route.
#[derive(Clone, Debug)]
pub struct RateLimitPhase {
    limiter: Option<Arc<Limiter>>,
}

impl RateLimitPhase {
    /// A layer limiting with `limiter` (passing everything through without one).
    pub fn new(limiter: Option<Arc<Limiter>>) -> Self {
        RateLimitPhase { limiter }
    }
}

impl Phase for RateLimitPhase {
    fn passes(&self) -> bool {
        self.limiter.is_none()
    }

    fn call<S: Next>(&self, request: Request, mut inner: S) -> PhaseFuture {
        let limiter = self.limiter.clone();
        Box::pin(async move {
            let Some(limiter) = limiter else {
                return inner.call(request).await;
            };
            let identity = limiter.identity(&request);
            let decision = limiter.check(&identity).await;
            if !decision.allowed {
                let mut response = if decision.store_failed
                    && limiter.config.on_store_error == OnStoreError::Closed
                {
                    body::error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "Rate limit store unavailable",
                    )
                } else {
                    limiter.limited.increment(1);
                    body::error(StatusCode::TOO_MANY_REQUESTS, "Too many requests")
                };
                limiter.headers(&decision, response.headers_mut());
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(decision.reset));
                return Ok(response);
            }
            let mut response = inner.call(request).await?;
            limiter.headers(&decision, response.headers_mut());
            Ok(response)
        })
    }
}

impl Validate for RateLimitConfig {
    fn validate(&self) -> Result<(), FieldErrors> {
        self.check().map_err(FieldErrors::from)
    }
}
