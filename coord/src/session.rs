//! The session a [`Coord`](crate::Coord) keeps alive, and until when it may act on it.
//!
//! # Why a leader never acts after its lease
//! The server ends a session `ttl` after the last renewal it *received*. The client cannot
//! know when that was, but it knows a bound: a renewal is received after it was *sent*. So
//! when a renewal sent at instant `s` (on this process's monotonic clock) is answered with a
//! TTL `t`, the session lives on the server until at least `s + t` — measured on the
//! server's clock, which may run a little faster than ours. The session's **deadline** is
//! `s + t − t/5`: the margin `t/5` (400 ms at the 2 s minimum TTL) covers the two clocks'
//! different rates over one TTL (a fraction of a per cent on any real machine) and the time
//! from checking validity to the act reaching the resource it protects.
//!
//! Everything held under the session — a term, a lock — is valid only while
//! `Instant::now() < deadline`, checked on the monotonic clock at the moment of asking: a
//! process frozen by `SIGSTOP` (or a long pause) for longer than the margin wakes up with its
//! deadline already behind it, so the first check after the pause says "not valid" before
//! anything is done; no timer or task needs to have run first. Renewals go out every `t/3`,
//! so two can be lost before the deadline comes. When the deadline passes without a renewal,
//! the session is given up for good: its terms and locks end, the keeper asks the server to
//! close it (freeing its keys sooner than the TTL would) and opens a new session. Because
//! deadline < `s + t` ≤ the server's expiry, a new leader can only be elected (its
//! predecessor's key deleted) after the old one stopped being valid.
//!
//! A renewal unanswered after a quarter of the TTL is abandoned and sent again (a request
//! can hang on a cluster member that just died while the others answer at once), and none is
//! awaited past the deadline; a late answer could only extend from its own send instant,
//! which is already accounted for. A session *revoked* on the server before it could expire
//! is not covered: the process learns of it from its key's deletion or its next renewal.
//! What remains, for that case and for a process that ignores its deadline, is the fencing
//! token: a resource that refuses writes with a token lower than the highest it has seen
//! makes even a process that ignored its deadline harmless.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use sluice_pipeline::HumanDuration;
use sluice_pipeline::backoff::{Backoff, BackoffConfig};
use tokio::sync::watch;

use crate::backend::{Backend, SessionId};
use crate::error::CoordError;

/// How much of a granted TTL the deadline keeps in hand.
pub(crate) fn margin(ttl: Duration) -> Duration {
    ttl / 5
}

/// How often a session is renewed: three times per TTL.
fn renew_interval(ttl: Duration) -> Duration {
    ttl / 3
}

/// How long one renewal may take before another is sent: a quarter of the TTL, so that
/// several attempts fit between the last renewal and the deadline.
fn attempt_timeout(ttl: Duration) -> Duration {
    ttl / 4
}

/// One session, as this process sees it.
pub(crate) struct Session {
    id: SessionId,
    deadline: Mutex<Instant>,
    /// Set once the session is given up (deadline passed, or the server says it is gone).
    lost: watch::Sender<bool>,
}

impl Session {
    fn new(id: SessionId, deadline: Instant) -> Self {
        Session {
            id,
            deadline: Mutex::new(deadline),
            lost: watch::channel(false).0,
        }
    }

    /// The backend's session.
    pub(crate) fn id(&self) -> SessionId {
        self.id
    }

    /// Until when what is held under this session may be acted on.
    pub(crate) fn deadline(&self) -> Instant {
        *self.deadline.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the session may still be acted on, right now.
    pub(crate) fn is_valid(&self) -> bool {
        !*self.lost.borrow() && Instant::now() < self.deadline()
    }

    /// Resolves once the session may no longer be acted on: given up, or its deadline passed.
    pub(crate) async fn ended(&self) {
        let mut lost = self.lost.subscribe();
        loop {
            if !self.is_valid() {
                return;
            }
            let deadline = self.deadline();
            tokio::select! {
                () = tokio::time::sleep_until(deadline.into()) => {}
                _ = lost.changed() => {}
            }
        }
    }

    /// Gives the session up: whatever is held under it ends now.
    pub(crate) fn give_up(&self) {
        self.lost.send_replace(true);
    }

    fn extend(&self, deadline: Instant) {
        let mut current = self.deadline.lock().unwrap_or_else(PoisonError::into_inner);
        *current = (*current).max(deadline);
    }
}

/// Keeps a session open on `backend` for as long as it runs, publishing each one in
/// `current` (`None` while there is none): opens it, renews it every `ttl/3`, and when it is
/// lost, closes it on the server and opens the next.
pub(crate) async fn keep(
    backend: Arc<dyn Backend>,
    ttl: Duration,
    current: watch::Sender<Option<Arc<Session>>>,
) {
    let mut backoff = Backoff::new(BackoffConfig {
        initial: HumanDuration::from_millis(100),
        max: HumanDuration(ttl),
    });
    loop {
        let sent = Instant::now();
        let (id, granted) = match backend.open_session(ttl).await {
            Ok(opened) => opened,
            Err(error) => {
                let wait = backoff.failed();
                tracing::warn!(
                    backend = %backend.describe(),
                    error = %sluice_pipeline::error::chain(&error),
                    retry_in = ?wait,
                    "cannot open a coordination session"
                );
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        backoff.reset();
        let session = Arc::new(Session::new(id, sent + granted - margin(granted)));
        tracing::debug!(session = %id, ?granted, "coordination session opened");
        current.send_replace(Some(Arc::clone(&session)));
        renew_until_lost(&*backend, &session, sent, granted).await;
        session.give_up();
        current.send_replace(None);
        tracing::info!(session = %id, "coordination session lost; opening a new one");
        // The server may still hold the session (renewals lost on the way): closing it frees
        // its keys now rather than at its expiry. Best effort, off the path to a new session.
        let closing = Arc::clone(&backend);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(granted, closing.close_session(id)).await;
        });
    }
}

/// Renews `session` until its deadline passes unrenewed or the server says it is gone.
async fn renew_until_lost(
    backend: &dyn Backend,
    session: &Session,
    opened: Instant,
    mut granted: Duration,
) {
    let mut lost = session.lost.subscribe();
    let mut next = opened + renew_interval(granted);
    loop {
        let wake = next.min(session.deadline());
        tokio::select! {
            () = tokio::time::sleep_until(wake.into()) => {}
            _ = lost.changed() => return,
        }
        if !session.is_valid() {
            return;
        }
        let now = Instant::now();
        // One attempt may hang (a request routed to a member that just died): it gets a part
        // of the time left, so that others, to other members, fit before the deadline.
        let give_up_at = session.deadline().min(now + attempt_timeout(granted));
        let renewed = tokio::time::timeout_at(give_up_at.into(), backend.renew(session.id())).await;
        match renewed {
            Err(_) if Instant::now() >= session.deadline() => return,
            Err(_) => {
                tracing::debug!(session = %session.id(), "a renewal went unanswered; trying again before the deadline");
                next = Instant::now();
            }
            Ok(Ok(ttl)) => {
                granted = ttl;
                session.extend(now + ttl - margin(ttl));
                next = now + renew_interval(ttl);
            }
            Ok(Err(CoordError::SessionExpired)) => return,
            Ok(Err(error)) => {
                tracing::debug!(
                    session = %session.id(),
                    error = %sluice_pipeline::error::chain(&error),
                    "a renewal failed; trying again before the deadline"
                );
                next = now + granted / 10;
            }
        }
    }
}
