//! The circuit breaker, one per upstream (shared by the routes that use it): closed → open
//! after `failures` failures in a row, or when at least `min_requests` in a `window` failed in
//! a ratio of `failure_ratio`; open for `open_for`, doubled each time it opens again without
//! having recovered, up to `max_open_for`; then half-open, letting `half_open_probes` requests
//! through: if they succeed it closes, if one fails it opens again. While open, requests are
//! answered at once with the fallback (503 `{"error": "Service temporarily unavailable"}` by
//! default) without calling the upstream.
//!
//! A failure is a response whose status is listed in `failure_statuses` (by default 500, 502,
//! 503, 504 — so the gateway's own 502 for an unreachable upstream and its 504 for a timeout
//! count). The 503 of an upstream without any instance is not counted: nothing was called.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::{HeaderValue, StatusCode, header};
use serde::Deserialize;
use sluice_pipeline::{FieldError, FieldErrors, HumanDuration, Validate};

use crate::body::{self, Request, Response};
use crate::context::NoInstance;
use crate::metrics;
use crate::phase::{Next, Phase, PhaseFuture};

/// Default for [`BreakerConfig::failures`].
pub const DEFAULT_FAILURES: u32 = 5;
/// Default for [`BreakerConfig::open_for`].
pub const DEFAULT_OPEN_FOR: HumanDuration = HumanDuration::from_secs(5);
/// Default for [`BreakerConfig::max_open_for`] (APISIX's `max_breaker_sec`).
pub const DEFAULT_MAX_OPEN_FOR: HumanDuration = HumanDuration::from_secs(300);
/// Default for [`BreakerConfig::window`].
pub const DEFAULT_WINDOW: HumanDuration = HumanDuration::from_secs(10);
/// Default for [`BreakerConfig::min_requests`].
pub const DEFAULT_MIN_REQUESTS: u32 = 20;
/// Default for [`BreakerConfig::fallback_body`].
pub const DEFAULT_FALLBACK_BODY: &str = r#"{"error": "Service temporarily unavailable"}"#;

/// `breaker`: an upstream's circuit breaker.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// Whether the breaker is on.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Failures in a row that open it.
    #[serde(default = "default_failures")]
    pub failures: u32,
    /// A failure ratio (0 < r ≤ 1) within `window` that opens it; unset, only `failures`.
    pub failure_ratio: Option<f64>,
    /// The window of `failure_ratio`.
    #[serde(default = "default_window")]
    pub window: HumanDuration,
    /// Requests needed within `window` before `failure_ratio` applies.
    #[serde(default = "default_min_requests")]
    pub min_requests: u32,
    /// How long it stays open the first time; doubled each time it opens again before
    /// recovering.
    #[serde(default = "default_open_for")]
    pub open_for: HumanDuration,
    /// The longest it stays open.
    #[serde(default = "default_max_open_for")]
    pub max_open_for: HumanDuration,
    /// Requests let through while half-open; all must succeed for it to close.
    #[serde(default = "default_probes")]
    pub half_open_probes: u32,
    /// Statuses that count as failures.
    #[serde(default = "default_failure_statuses")]
    pub failure_statuses: Vec<u16>,
    /// The status of the fallback answer.
    #[serde(default = "default_fallback_status")]
    pub fallback_status: u16,
    /// The fallback answer's body (JSON).
    #[serde(default = "default_fallback_body")]
    pub fallback_body: String,
}

fn yes() -> bool {
    true
}
fn default_failures() -> u32 {
    DEFAULT_FAILURES
}
fn default_window() -> HumanDuration {
    DEFAULT_WINDOW
}
fn default_min_requests() -> u32 {
    DEFAULT_MIN_REQUESTS
}
fn default_open_for() -> HumanDuration {
    DEFAULT_OPEN_FOR
}
fn default_max_open_for() -> HumanDuration {
    DEFAULT_MAX_OPEN_FOR
}
fn default_probes() -> u32 {
    1
}
fn default_failure_statuses() -> Vec<u16> {
    vec![500, 502, 503, 504]
}
fn default_fallback_status() -> u16 {
    503
}
fn default_fallback_body() -> String {
    DEFAULT_FALLBACK_BODY.to_owned()
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            enabled: true,
            failures: DEFAULT_FAILURES,
            failure_ratio: None,
            window: DEFAULT_WINDOW,
            min_requests: DEFAULT_MIN_REQUESTS,
            open_for: DEFAULT_OPEN_FOR,
            max_open_for: DEFAULT_MAX_OPEN_FOR,
            half_open_probes: 1,
            failure_statuses: default_failure_statuses(),
            fallback_status: 503,
            fallback_body: DEFAULT_FALLBACK_BODY.to_owned(),
        }
    }
}

impl BreakerConfig {
    /// The first rule the section breaks.
    pub(crate) fn check(&self) -> Result<(), FieldError> {
        if self.failures == 0 {
            return Err(FieldError::new("failures", "must be at least 1"));
        }
        if let Some(r) = self.failure_ratio
            && !(r > 0.0 && r <= 1.0)
        {
            return Err(FieldError::new("failure_ratio", "must be in (0, 1]"));
        }
        if self.open_for.get().is_zero() || self.max_open_for.get() < self.open_for.get() {
            return Err(FieldError::new(
                "max_open_for",
                "open_for must be more than 0 and max_open_for at least open_for",
            ));
        }
        if self.half_open_probes == 0 {
            return Err(FieldError::new("half_open_probes", "must be at least 1"));
        }
        StatusCode::from_u16(self.fallback_status)
            .map_err(|_| FieldError::new("fallback_status", "not an HTTP status"))?;
        serde_json::from_str::<serde_json::Value>(&self.fallback_body)
            .map_err(|e| FieldError::new("fallback_body", format!("not JSON: {e}")))?;
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Closed,
    Open { until: Instant },
    HalfOpen { let_through: u32, succeeded: u32 },
}

#[derive(Debug)]
struct Inner {
    state: State,
    consecutive: u32,
    window_start: Instant,
    window_total: u32,
    window_failed: u32,
    /// How many times it opened without recovering in between (the backoff's exponent).
    openings: u32,
}

/// One upstream's breaker.
#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    upstream: Arc<str>,
    inner: Mutex<Inner>,
    gauge: ::metrics::Gauge,
    rejected: ::metrics::Counter,
}

/// What [`Breaker::admit`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Call the upstream, and record the outcome.
    Call,
    /// Call it as a half-open probe.
    Probe,
    /// Do not call it: answer with the fallback.
    Reject,
}

impl Breaker {
    /// A closed breaker for `upstream`.
    pub fn new(upstream: &str, config: BreakerConfig) -> Self {
        let labels = [("upstream", upstream.to_owned())];
        let gauge = ::metrics::gauge!(metrics::BREAKER_STATE, &labels);
        gauge.set(0.0);
        Breaker {
            config,
            upstream: Arc::from(upstream),
            inner: Mutex::new(Inner {
                state: State::Closed,
                consecutive: 0,
                window_start: Instant::now(),
                window_total: 0,
                window_failed: 0,
                openings: 0,
            }),
            gauge,
            rejected: ::metrics::counter!(metrics::BREAKER_REJECTED, &labels),
        }
    }

    /// Whether a request may call the upstream now.
    pub fn admit(&self) -> Admission {
        if !self.config.enabled {
            return Admission::Call;
        }
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        match inner.state {
            State::Closed => Admission::Call,
            State::Open { until } if Instant::now() >= until => {
                inner.state = State::HalfOpen {
                    let_through: 1,
                    succeeded: 0,
                };
                self.gauge.set(2.0);
                tracing::info!(upstream = %self.upstream, "circuit half-open: probing");
                Admission::Probe
            }
            State::HalfOpen {
                let_through,
                succeeded,
            } if let_through < self.config.half_open_probes => {
                inner.state = State::HalfOpen {
                    let_through: let_through + 1,
                    succeeded,
                };
                Admission::Probe
            }
            State::Open { .. } | State::HalfOpen { .. } => {
                self.rejected.increment(1);
                Admission::Reject
            }
        }
    }

    /// Records how a call it admitted went.
    pub fn record(&self, admission: Admission, failed: bool) {
        if !self.config.enabled || admission == Admission::Reject {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        match (inner.state, admission) {
            (
                State::HalfOpen {
                    let_through,
                    succeeded,
                },
                Admission::Probe,
            ) => {
                if failed {
                    self.open(&mut inner, now);
                } else if succeeded + 1 >= self.config.half_open_probes {
                    inner.state = State::Closed;
                    inner.openings = 0;
                    inner.consecutive = 0;
                    inner.window_start = now;
                    inner.window_total = 0;
                    inner.window_failed = 0;
                    self.gauge.set(0.0);
                    tracing::info!(upstream = %self.upstream, "circuit closed: the upstream recovered");
                } else {
                    inner.state = State::HalfOpen {
                        let_through,
                        succeeded: succeeded + 1,
                    };
                }
            }
            (State::Closed, Admission::Call) => {
                if now.duration_since(inner.window_start) > self.config.window.get() {
                    inner.window_start = now;
                    inner.window_total = 0;
                    inner.window_failed = 0;
                }
                inner.window_total += 1;
                if failed {
                    inner.consecutive += 1;
                    inner.window_failed += 1;
                } else {
                    inner.consecutive = 0;
                }
                let ratio_tripped = self.config.failure_ratio.is_some_and(|ratio| {
                    inner.window_total >= self.config.min_requests
                        && f64::from(inner.window_failed) / f64::from(inner.window_total) >= ratio
                });
                if inner.consecutive >= self.config.failures || ratio_tripped {
                    self.open(&mut inner, now);
                }
            }
            // A call admitted before the state changed: its outcome is stale.
            _ => {}
        }
    }

    /// Gives back what `admission` took when nothing was called (the upstream had no
    /// instance): a half-open probe's turn goes to the next request, and no outcome counts.
    pub fn abstain(&self, admission: Admission) {
        if !self.config.enabled || admission != Admission::Probe {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let State::HalfOpen {
            let_through,
            succeeded,
        } = inner.state
        {
            inner.state = State::HalfOpen {
                let_through: let_through.saturating_sub(1),
                succeeded,
            };
        }
    }

    fn open(&self, inner: &mut Inner, now: Instant) {
        let factor = 2u32.saturating_pow(inner.openings.min(16));
        let open_for = self
            .config
            .open_for
            .get()
            .saturating_mul(factor)
            .min(self.config.max_open_for.get());
        inner.openings += 1;
        inner.consecutive = 0;
        inner.state = State::Open {
            until: now + open_for,
        };
        self.gauge.set(1.0);
        tracing::warn!(upstream = %self.upstream, ?open_for, "circuit open: answering with the fallback");
    }

    fn fallback(&self) -> Response {
        let status = StatusCode::from_u16(self.config.fallback_status)
            .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        let mut response = body::json(status, self.config.fallback_body.clone());
        let retry_after = match self
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .state
        {
            State::Open { until } => until.saturating_duration_since(Instant::now()),
            _ => Duration::from_secs(1),
        };
        let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        response
    }
}

/// The breaker phase of a route (its upstream's breaker).
#[derive(Clone, Debug)]
pub struct BreakerPhase {
    breaker: Arc<Breaker>,
}

impl BreakerPhase {
    /// A layer guarding calls with `breaker`.
    pub fn new(breaker: Arc<Breaker>) -> Self {
        BreakerPhase { breaker }
    }
}

impl Phase for BreakerPhase {
    fn call<S: Next>(&self, request: Request, mut inner: S) -> PhaseFuture {
        let breaker = Arc::clone(&self.breaker);
        Box::pin(async move {
            let admission = breaker.admit();
            if admission == Admission::Reject {
                return Ok(breaker.fallback());
            }
            let response = inner.call(request).await?;
            if response.extensions().get::<NoInstance>().is_some() {
                breaker.abstain(admission);
                return Ok(response);
            }
            let failed = breaker
                .config
                .failure_statuses
                .contains(&response.status().as_u16());
            breaker.record(admission, failed);
            Ok(response)
        })
    }
}

impl Validate for BreakerConfig {
    fn validate(&self) -> Result<(), FieldErrors> {
        self.check().map_err(FieldErrors::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(config: &str) -> Breaker {
        let config: BreakerConfig = toml::from_str(config).unwrap();
        config.check().unwrap();
        Breaker::new("test", config)
    }

    fn state(b: &Breaker) -> State {
        b.inner.lock().unwrap().state
    }

    #[test]
    fn consecutive_failures_open_it_and_a_probe_closes_it() {
        let b = breaker("failures = 3\nopen_for = \"1ms\"\nmax_open_for = \"1ms\"");
        for _ in 0..2 {
            assert_eq!(b.admit(), Admission::Call);
            b.record(Admission::Call, true);
        }
        b.record(Admission::Call, false);
        assert_eq!(state(&b), State::Closed, "a success resets the count");
        for _ in 0..3 {
            b.record(b.admit(), true);
        }
        assert!(matches!(state(&b), State::Open { .. }));
        let deadline = Instant::now() + Duration::from_secs(5);
        while b.admit() == Admission::Reject {
            assert!(Instant::now() < deadline, "never half-opened");
            std::thread::yield_now();
        }
        // The probe is out: nobody else gets through.
        assert_eq!(b.admit(), Admission::Reject);
        b.record(Admission::Probe, false);
        assert_eq!(state(&b), State::Closed);
    }

    #[test]
    fn a_probe_that_called_nothing_gives_its_turn_back() {
        let b = breaker("failures = 1\nopen_for = \"10s\"");
        b.record(b.admit(), true);
        b.inner.lock().unwrap().state = State::Open {
            until: Instant::now(),
        };
        assert_eq!(b.admit(), Admission::Probe);
        assert_eq!(b.admit(), Admission::Reject, "one probe at a time");
        b.abstain(Admission::Probe);
        assert_eq!(b.admit(), Admission::Probe, "the turn was given back");
        b.abstain(Admission::Call);
        assert!(
            matches!(state(&b), State::HalfOpen { .. }),
            "no outcome counted"
        );
    }

    #[test]
    fn a_failed_probe_opens_it_for_longer() {
        let b = breaker("failures = 1\nopen_for = \"10s\"\nmax_open_for = \"15s\"");
        b.record(b.admit(), true);
        {
            let mut inner = b.inner.lock().unwrap();
            inner.state = State::Open {
                until: Instant::now(),
            };
        }
        assert_eq!(b.admit(), Admission::Probe);
        let before = Instant::now();
        b.record(Admission::Probe, true);
        let State::Open { until } = state(&b) else {
            panic!("a failed probe must open it again")
        };
        let open_for = until - before;
        assert!(
            open_for > Duration::from_secs(14) && open_for < Duration::from_secs(16),
            "{open_for:?}: doubled, capped"
        );
        assert_eq!(b.admit(), Admission::Reject);
    }

    #[test]
    fn a_failure_ratio_opens_it() {
        let b = breaker("failures = 100\nfailure_ratio = 0.5\nmin_requests = 4");
        for failed in [false, true, false] {
            b.record(b.admit(), failed);
        }
        assert_eq!(state(&b), State::Closed, "below min_requests");
        b.record(b.admit(), true);
        assert!(matches!(state(&b), State::Open { .. }));
    }
}
