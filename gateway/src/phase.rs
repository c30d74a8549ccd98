//! A route's phases (authentication, rate limit, cache, transforms, breaker, timeout) as tower
//! layers, with the layer and service plumbing written once: a phase only says what it does
//! with a request and the rest of the stack.

use std::convert::Infallible;
use std::task::{Context, Poll};

use futures::future::BoxFuture;

use crate::body::{Request, Response};

/// What a phase's call returns.
pub type PhaseFuture = BoxFuture<'static, Result<Response, Infallible>>;

/// The rest of a route's stack, as a phase calls it.
pub trait Next:
    tower::Service<Request, Response = Response, Error = Infallible, Future = PhaseFuture>
    + Send
    + 'static
{
}

impl<S> Next for S where
    S: tower::Service<Request, Response = Response, Error = Infallible, Future = PhaseFuture>
        + Send
        + 'static
{
}

/// One phase of a route.
pub trait Phase: Clone + Send + Sync + 'static {
    /// Handles `request`: answers it, or calls `next` (ready) with it and works on the answer.
    fn call<S: Next>(&self, request: Request, next: S) -> PhaseFuture;

    /// Whether it hands every request on untouched (a route without that phase configured),
    /// so that its layer costs a request nothing.
    fn passes(&self) -> bool {
        false
    }
}

/// A phase as a tower layer.
#[derive(Clone, Debug)]
pub struct PhaseLayer<P>(pub P);

impl<P: Phase, S> tower::Layer<S> for PhaseLayer<P> {
    type Service = Phased<P, S>;

    fn layer(&self, inner: S) -> Phased<P, S> {
        Phased {
            phase: self.0.clone(),
            inner,
        }
    }
}

/// A phase in front of the rest of the stack.
#[derive(Clone, Debug)]
pub struct Phased<P, S> {
    phase: P,
    inner: S,
}

impl<P: Phase, S: Next + Clone> tower::Service<Request> for Phased<P, S> {
    type Response = Response;
    type Error = Infallible;
    type Future = PhaseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        if self.phase.passes() {
            return self.inner.call(request);
        }
        // The service made ready by `poll_ready` goes with this request; a clone stays.
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        self.phase.call(request, ready)
    }
}
