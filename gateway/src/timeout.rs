//! The route's timeout: an upstream that has not answered (its response head) within it gets
//! the request answered with 504, as Envoy does (503 stays the open breaker's answer).

use std::time::Duration;

use http::StatusCode;

use crate::body::{self, Request};
use crate::phase::{Next, Phase, PhaseFuture};

/// The timeout phase of a route.
#[derive(Clone, Copy, Debug)]
pub struct TimeoutPhase {
    timeout: Duration,
}

impl TimeoutPhase {
    /// Answers 504 after `timeout`.
    pub fn new(timeout: Duration) -> Self {
        TimeoutPhase { timeout }
    }
}

impl Phase for TimeoutPhase {
    fn call<S: Next>(&self, request: Request, mut inner: S) -> PhaseFuture {
        let timeout = self.timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, inner.call(request)).await {
                Ok(response) => response,
                Err(_) => Ok(body::error(StatusCode::GATEWAY_TIMEOUT, "Gateway timeout")),
            }
        })
    }
}
