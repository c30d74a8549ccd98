//! The response cache, in Redis, for GET and HEAD: a key per route rendered from a template
//! (`cache:products:{id}`), a TTL (300 s by default, or the response's `max-age`/`s-maxage`
//! when shorter), `X-Cache: HIT|MISS|BYPASS`.
//!
//! - A request with `Cache-Control: no-store` or `no-cache` bypasses it, as does one whose key
//!   cannot be rendered (a `{param}` the path lacks), or when Redis does not answer.
//! - A response is stored only if it is a 200 without `Set-Cookie`, its `Cache-Control` has
//!   neither `no-store`, `no-cache` nor `private` (unless the key is per user), and its body's
//!   length is known (`Content-Length`) and within `max_body_bytes`.
//! - An authenticated request's response is cached per user (the key gets `:user:<id>`)
//!   unless the route says `public = true`.
//! - No stampede: concurrent misses for one key in one gateway make one upstream call; the
//!   others wait for it and are answered with its response.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use http_body_util::BodyExt;
use serde::Deserialize;
use sluice_pipeline::template::Template;
use sluice_pipeline::{FieldError, FieldErrors, HumanDuration, Validate};
use tokio::sync::watch;

use crate::body::{self, Request, Response};
use crate::context::{CacheStatus, RequestContext};
use crate::metrics;
use crate::phase::{Next, Phase, PhaseFuture};
use crate::redis::Redis;

/// Default for [`CacheConfig::ttl`] (Kong's and APISIX's).
pub const DEFAULT_TTL: HumanDuration = HumanDuration::from_secs(300);
/// Default for [`CacheConfig::max_body_bytes`]: 1 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// Names a key template may use besides the route's `params`.
pub const BUILTIN_NAMES: [&str; 4] = ["path", "query", "method", "host"];

/// `cache`: a route's response cache.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// The key template: literal text with `{name}` placeholders, each one of the route's
    /// `params` or `path` (the path after the prefix), `query`, `method`, `host`.
    pub key: String,
    /// How long a response is kept (at most; a shorter `max-age` wins).
    #[serde(default = "default_ttl")]
    pub ttl: HumanDuration,
    /// Share responses to authenticated requests between users (the key is not per user).
    #[serde(default)]
    pub public: bool,
    /// Responses with a larger body are not stored.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
}

fn default_ttl() -> HumanDuration {
    DEFAULT_TTL
}
fn default_max_body_bytes() -> usize {
    DEFAULT_MAX_BODY_BYTES
}

impl CacheConfig {
    /// The key template, parsed (the engine's templates: `{name}`, `{{` for a brace).
    pub fn template(&self) -> Result<Template, FieldError> {
        Template::parse(&self.key).map_err(|e| FieldError::new("key", e.to_string()))
    }
}

impl CacheConfig {
    /// The first rule the section breaks.
    pub(crate) fn check(&self) -> Result<(), FieldError> {
        self.template()?;
        if self.ttl.get() < Duration::from_secs(1) {
            return Err(FieldError::new("ttl", "must be at least 1s"));
        }
        Ok(())
    }
}

/// The header saying how the cache treated a request.
const X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// A stored response.
#[derive(Debug, Clone)]
struct Stored {
    status: StatusCode,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
}

impl Stored {
    /// `status u16 | header count u16 | (len u16, name, len u32, value)* | body`.
    fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.body.len() + 256);
        out.put_u16(self.status.as_u16());
        out.put_u16(u16::try_from(self.headers.len()).unwrap_or(u16::MAX));
        for (name, value) in self.headers.iter().take(usize::from(u16::MAX)) {
            out.put_u16(u16::try_from(name.as_str().len()).unwrap_or(0));
            out.put_slice(name.as_str().as_bytes());
            out.put_u32(u32::try_from(value.len()).unwrap_or(0));
            out.put_slice(value.as_bytes());
        }
        out.put_slice(&self.body);
        out.freeze()
    }

    fn decode(mut bytes: Bytes) -> Option<Self> {
        use bytes::Buf;
        if bytes.remaining() < 4 {
            return None;
        }
        let status = StatusCode::from_u16(bytes.get_u16()).ok()?;
        let count = bytes.get_u16();
        let mut headers = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            if bytes.remaining() < 2 {
                return None;
            }
            let len = usize::from(bytes.get_u16());
            if bytes.remaining() < len + 4 {
                return None;
            }
            let name = HeaderName::from_bytes(&bytes.split_to(len)).ok()?;
            let len = bytes.get_u32() as usize;
            if bytes.remaining() < len {
                return None;
            }
            let value = HeaderValue::from_maybe_shared(bytes.split_to(len)).ok()?;
            headers.push((name, value));
        }
        Some(Stored {
            status,
            headers,
            body: bytes,
        })
    }

    fn response(&self, status: CacheStatus, head: bool) -> Response {
        let mut response = http::Response::new(if head {
            body::empty()
        } else {
            body::full(self.body.clone())
        });
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.reserve(self.headers.len() + 1);
        for (name, value) in &self.headers {
            headers.append(name.clone(), value.clone());
        }
        headers.insert(X_CACHE, HeaderValue::from_static(status.as_str()));
        response.extensions_mut().insert(status);
        response
    }
}

/// A fill's result as its waiters see it: `None` while in progress, then `Some(None)` when
/// nothing was stored, or the stored response.
type Fill = Option<Option<Arc<Stored>>>;

/// One route's cache.
pub struct Cache {
    route: Arc<str>,
    config: CacheConfig,
    key: Template,
    params: Vec<String>,
    redis: Arc<Redis>,
    /// Keys being fetched from the upstream now, with the channel their result comes on.
    filling: Mutex<HashMap<String, watch::Receiver<Fill>>>,
    counters: [::metrics::Counter; 3],
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache").field("route", &self.route).finish()
    }
}

fn directives(headers: &HeaderMap) -> impl Iterator<Item = String> + '_ {
    headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|d| d.trim().to_ascii_lowercase())
}

impl Cache {
    /// The cache of route `route`, whose path parameters are `params`.
    pub fn new(
        route: &str,
        config: CacheConfig,
        params: Vec<String>,
        redis: Arc<Redis>,
    ) -> Result<Self, FieldError> {
        let key = config.template()?;
        let counter = |result: &'static str| ::metrics::counter!(metrics::CACHE, "route" => route.to_owned(), "result" => result);
        Ok(Cache {
            route: Arc::from(route),
            counters: [counter("hit"), counter("miss"), counter("bypass")],
            config,
            key,
            params,
            redis,
            filling: Mutex::new(HashMap::new()),
        })
    }

    fn count(&self, status: CacheStatus) {
        let i = match status {
            CacheStatus::Hit => 0,
            CacheStatus::Miss => 1,
            CacheStatus::Bypass => 2,
        };
        self.counters[i].increment(1);
    }

    /// The key for `request`, if it can be rendered.
    fn key_for(&self, request: &Request) -> Option<String> {
        let cx = request.extensions().get::<RequestContext>()?;
        let rest = cx.rest.trim_start_matches('/');
        let segments: Vec<&str> = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split('/').collect()
        };
        let mut key = String::with_capacity(64);
        self.key
            .render_with(
                |name| match name {
                    "path" => Some(rest),
                    "query" => Some(request.uri().query().unwrap_or("")),
                    "method" => Some(request.method().as_str()),
                    "host" => Some(cx.host.as_deref().unwrap_or("")),
                    _ => {
                        let at = self.params.iter().position(|p| p == name)?;
                        segments.get(at).copied().filter(|s| !s.is_empty())
                    }
                },
                &mut key,
            )
            .ok()?;
        if !self.config.public
            && let Some(user) = &cx.user
        {
            key.push_str(":user:");
            key.push_str(user);
        }
        Some(key)
    }

    /// What may be stored from `response` and for how long; `None` if it may not be.
    fn storable(&self, response: &Response, per_user: bool) -> Option<Duration> {
        if response.status() != StatusCode::OK
            || response.headers().contains_key(header::SET_COOKIE)
        {
            return None;
        }
        let mut ttl = self.config.ttl.get();
        let mut s_maxage = None;
        for directive in directives(response.headers()) {
            match directive.as_str() {
                "no-store" | "no-cache" => return None,
                "private" if !per_user => return None,
                d => {
                    if let Some(n) = d.strip_prefix("s-maxage=").and_then(|n| n.parse().ok()) {
                        s_maxage = Some(Duration::from_secs(n));
                    } else if let Some(n) = d.strip_prefix("max-age=").and_then(|n| n.parse().ok())
                    {
                        ttl = ttl.min(Duration::from_secs(n));
                    }
                }
            }
        }
        if let Some(s) = s_maxage {
            ttl = s.min(self.config.ttl.get());
        }
        (!ttl.is_zero()).then_some(ttl)
    }
}

/// The cache phase of a route.
#[derive(Clone, Debug)]
pub struct CachePhase {
    cache: Option<Arc<Cache>>,
}

impl CachePhase {
    /// A layer caching in `cache` (passing everything through without one).
    pub fn new(cache: Option<Arc<Cache>>) -> Self {
        CachePhase { cache }
    }
}

fn mark(mut response: Response, status: CacheStatus) -> Response {
    response
        .headers_mut()
        .insert(X_CACHE, HeaderValue::from_static(status.as_str()));
    response.extensions_mut().insert(status);
    response
}

/// Removes the fill entry of a key when its leader is done (or gone), so later misses lead.
struct Filling<'a> {
    cache: &'a Cache,
    key: &'a str,
    sender: watch::Sender<Fill>,
}

impl Drop for Filling<'_> {
    fn drop(&mut self) {
        self.cache
            .filling
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(self.key);
    }
}

impl Phase for CachePhase {
    fn passes(&self) -> bool {
        self.cache.is_none()
    }

    fn call<S: Next>(&self, request: Request, mut inner: S) -> PhaseFuture {
        let cache = self.cache.clone();
        Box::pin(async move {
            let Some(cache) = cache else {
                return inner.call(request).await;
            };
            let head = request.method() == Method::HEAD;
            let cacheable_request = (head || request.method() == Method::GET)
                && !directives(request.headers()).any(|d| d == "no-store" || d == "no-cache");
            let key = cacheable_request.then(|| cache.key_for(&request)).flatten();
            let Some(key) = key else {
                cache.count(CacheStatus::Bypass);
                return Ok(mark(inner.call(request).await?, CacheStatus::Bypass));
            };
            let per_user = !cache.config.public
                && request
                    .extensions()
                    .get::<RequestContext>()
                    .is_some_and(|c| c.user.is_some());
            let found = cache
                .redis
                .run(|mut c| {
                    let key = key.clone();
                    async move {
                        redis::cmd("GET")
                            .arg(&key)
                            .query_async::<Option<Vec<u8>>>(&mut c)
                            .await
                    }
                })
                .await;
            match found {
                Ok(Some(bytes)) => {
                    if let Some(stored) = Stored::decode(Bytes::from(bytes)) {
                        cache.count(CacheStatus::Hit);
                        return Ok(stored.response(CacheStatus::Hit, head));
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(route = %cache.route, error = %e, "cache lookup failed: bypassing");
                    cache.count(CacheStatus::Bypass);
                    return Ok(mark(inner.call(request).await?, CacheStatus::Bypass));
                }
            }
            // A miss: lead the fill, or wait for the one in progress.
            let waiting = {
                let mut filling = cache.filling.lock().unwrap_or_else(PoisonError::into_inner);
                match filling.get(&key) {
                    Some(receiver) => Err(receiver.clone()),
                    None => {
                        let (sender, receiver) = watch::channel(None);
                        filling.insert(key.clone(), receiver);
                        Ok(sender)
                    }
                }
            };
            let sender = match waiting {
                Ok(sender) => sender,
                Err(mut receiver) => {
                    let filled = receiver
                        .wait_for(Option::is_some)
                        .await
                        .ok()
                        .and_then(|v| v.clone())
                        .flatten();
                    if let Some(stored) = filled {
                        cache.count(CacheStatus::Hit);
                        return Ok(stored.response(CacheStatus::Hit, head));
                    }
                    // The fill stored nothing (not cacheable, or it failed): go on alone.
                    cache.count(CacheStatus::Miss);
                    return Ok(mark(inner.call(request).await?, CacheStatus::Miss));
                }
            };
            let filling = Filling {
                cache: &cache,
                key: &key,
                sender,
            };
            cache.count(CacheStatus::Miss);
            let response = inner.call(request).await?;
            let Some(ttl) = cache.storable(&response, per_user) else {
                let _ = filling.sender.send(Some(None));
                return Ok(mark(response, CacheStatus::Miss));
            };
            let (parts, body_stream) = response.into_parts();
            // Only a body of known size within the limit is stored: one of unknown size could
            // turn out too large after part of it was read.
            let fits = http_body::Body::size_hint(&body_stream)
                .exact()
                .is_some_and(|n| n <= cache.config.max_body_bytes as u64);
            if !fits {
                let _ = filling.sender.send(Some(None));
                return Ok(mark(
                    Response::from_parts(parts, body_stream),
                    CacheStatus::Miss,
                ));
            }
            let Ok(collected) = body_stream.collect().await else {
                let _ = filling.sender.send(Some(None));
                return Ok(body::error(StatusCode::BAD_GATEWAY, "Bad gateway"));
            };
            let stored = Arc::new(Stored {
                status: parts.status,
                headers: parts
                    .headers
                    .iter()
                    .filter(|(name, _)| *name != X_CACHE)
                    .map(|(n, v)| (n.clone(), v.clone()))
                    .collect(),
                body: collected.to_bytes(),
            });
            let encoded = stored.encode();
            let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
            let set = cache
                .redis
                .run(|mut c| {
                    let key = key.clone();
                    async move {
                        redis::cmd("SET")
                            .arg(&key)
                            .arg(encoded.as_ref())
                            .arg("PX")
                            .arg(ttl_ms)
                            .query_async::<()>(&mut c)
                            .await
                    }
                })
                .await;
            if let Err(e) = set {
                tracing::debug!(route = %cache.route, error = %e, "cache store failed");
            }
            let _ = filling.sender.send(Some(Some(Arc::clone(&stored))));
            drop(filling);
            let mut response = stored.response(CacheStatus::Miss, head);
            *response.extensions_mut() = parts.extensions;
            response.extensions_mut().insert(CacheStatus::Miss);
            Ok(response)
        })
    }
}

impl Validate for CacheConfig {
    fn validate(&self) -> Result<(), FieldErrors> {
        self.check().map_err(FieldErrors::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_responses_round_trip() {
        let stored = Stored {
            status: StatusCode::OK,
            headers: vec![
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                ),
                (
                    HeaderName::from_static("x-a"),
                    HeaderValue::from_static("1"),
                ),
            ],
            body: Bytes::from_static(b"{\"id\":123}"),
        };
        let back = Stored::decode(stored.encode()).unwrap();
        assert_eq!(back.status, stored.status);
        assert_eq!(back.headers, stored.headers);
        assert_eq!(back.body, stored.body);
        assert!(Stored::decode(Bytes::from_static(b"\x00")).is_none());
        assert!(Stored::decode(Bytes::from_static(b"\x00\xc8\x00\x05")).is_none());
    }
}
