//! Leader election as the engine sees it: the [`Leadership`] a resource provides (sluice-coord
//! implements it on etcd, ZooKeeper or in process), the [`Term`] a won election gives, and the
//! role each election of this process is in, for `/ready` and the `sluice_leader` gauge.
//!
//! With `[pipeline] leader = "NAME"`, the runtime campaigns in election `NAME` and runs the
//! pipeline's sources only during a term; when the term ends they stop reading, what is in
//! flight drains to the checkpoint, and the runtime campaigns again. Transforms and sinks keep
//! running (they only deliver what sources emitted), and see the current term through their
//! contexts so that a sink can fence its writes with the token.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use metrics::{Counter, Gauge};
use tokio::sync::watch;

use crate::component::BoxFuture;
use crate::error::Error;
use crate::metrics::{leader_gauge, leader_terms_counter, leader_token_gauge};

/// A number that grows with every new term of an election, so that a resource can refuse
/// writes from a leader older than the newest it has seen (etcd: the leader key's create
/// revision; ZooKeeper: the election node's sequence number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FencingToken(pub u64);

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Elections this process can take part in.
///
/// Implementations must keep one rule: a term's [`Term::is_valid`] turns false, and
/// [`Term::ended`] resolves, before another candidate can win the same election — that is,
/// before the lease or session behind the term can expire on the server.
pub trait Leadership: Send + Sync + 'static {
    /// Campaigns in `election` until this process leads it, and returns the term. Dropping the
    /// future withdraws the candidacy. Fails with a retryable error when the coordination
    /// service cannot be reached; the runtime then tries again after its backoff.
    fn campaign<'a>(&'a self, election: &'a str) -> BoxFuture<'a, Result<Arc<dyn Term>, Error>>;

    /// Says that this process runs a pipeline under `election` from now until the returned
    /// value is dropped — between terms too, while it drains or waits to campaign again. An
    /// implementation that spreads elections over a cluster counts the process among the
    /// election's candidates for that long; by default nothing is recorded.
    fn enlist(&self, election: &str) -> Enlistment {
        let _ = election;
        Box::new(())
    }
}

/// What [`Leadership::enlist`] gives: the process stays enlisted in the election until it is
/// dropped.
pub type Enlistment = Box<dyn Any + Send + Sync>;

/// One period of leadership of one election, from winning it to losing or resigning it.
pub trait Term: Send + Sync + 'static {
    /// The election's name.
    fn election(&self) -> &str;

    /// The term's fencing token.
    fn token(&self) -> FencingToken;

    /// Whether this process may still act as the leader right now: the term has not ended and
    /// its lease cannot yet have expired on the server. Check it before each act that must not
    /// happen twice; after a pause (a frozen process) it answers false before anything else
    /// could.
    fn is_valid(&self) -> bool;

    /// Resolves once the term is over: its lease could not be renewed in time, its key was
    /// deleted, it was resigned, or the implementation asks this process to give it up (to
    /// spread elections over a cluster). The runtime then stops the sources, lets them drain,
    /// and calls [`Term::resign`].
    fn ended(&self) -> BoxFuture<'_, ()>;

    /// Gives leadership up, so that another candidate can take over at once; does nothing
    /// when the term is already lost.
    fn resign(&self) -> BoxFuture<'_, ()>;

    /// The implementation, for components of the same crate that need its details (the key to
    /// fence a write on).
    fn as_any(&self) -> &dyn Any;
}

/// The current term of a pipeline's election, as components see it: `None` while this process
/// does not lead (or the pipeline has no `leader`).
#[derive(Clone)]
pub struct LeaderView(watch::Receiver<Option<Arc<dyn Term>>>);

impl LeaderView {
    /// A view that never leads, for pipelines without an election.
    pub fn none() -> Self {
        LeaderView(watch::channel(None).1)
    }

    /// The current term, if this process leads and the term is still valid.
    pub fn term(&self) -> Option<Arc<dyn Term>> {
        self.0.borrow().clone().filter(|term| term.is_valid())
    }
}

impl fmt::Debug for LeaderView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &*self.0.borrow() {
            Some(term) => write!(f, "LeaderView({} @ {})", term.election(), term.token()),
            None => f.write_str("LeaderView(none)"),
        }
    }
}

/// Where one election of this process stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Waiting for the coordination service, or campaigning behind another leader.
    Standby,
    /// Leading, with this term's token.
    Leader(FencingToken),
}

/// One election's role, published to `/ready`, the gauges and the components.
pub(crate) struct Election {
    name: Arc<str>,
    /// The running term, while this process leads.
    term: watch::Sender<Option<Arc<dyn Term>>>,
    gauge: Gauge,
    token_gauge: Gauge,
    terms: Counter,
}

impl fmt::Debug for Election {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Election({}: {:?})", self.name, self.role())
    }
}

impl Election {
    pub(crate) fn new(name: &str) -> Arc<Self> {
        let gauge = leader_gauge(name);
        gauge.set(0.0);
        Arc::new(Election {
            name: Arc::from(name),
            term: watch::channel(None).0,
            gauge,
            token_gauge: leader_token_gauge(name),
            terms: leader_terms_counter(name),
        })
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Leader while the term is valid right now: a process that was frozen past its lease
    /// says standby from the moment it runs again, before the runtime has stopped its sources.
    pub(crate) fn role(&self) -> Role {
        match &*self.term.borrow() {
            Some(term) if term.is_valid() => Role::Leader(term.token()),
            _ => Role::Standby,
        }
    }

    pub(crate) fn view(&self) -> LeaderView {
        LeaderView(self.term.subscribe())
    }

    /// This process now leads with `term`.
    pub(crate) fn won(&self, term: Arc<dyn Term>) {
        let token = term.token();
        self.gauge.set(1.0);
        self.token_gauge.set(token.0 as f64);
        self.terms.increment(1);
        self.term.send_replace(Some(term));
    }

    /// This process no longer leads.
    pub(crate) fn lost(&self) {
        self.gauge.set(0.0);
        self.term.send_replace(None);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    //! An in-memory election for the engine's own tests: one process, terms ended on demand.

    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    use tokio::sync::Notify;

    use super::*;

    #[tokio::test]
    async fn the_role_is_standby_as_soon_as_the_term_is_invalid() {
        let local = Local::default();
        let election = Election::new("roles");
        assert_eq!(election.role(), Role::Standby);
        election.won(local.campaign("roles").await.unwrap());
        assert_eq!(election.role(), Role::Leader(FencingToken(1)));
        // The lease is gone; the runtime has not yet stopped the sources and called `lost`.
        local.end_term();
        assert_eq!(election.role(), Role::Standby);
        election.lost();
        assert_eq!(election.role(), Role::Standby);
    }

    /// Grants a term whenever asked and none is running; the test ends terms.
    #[derive(Default)]
    pub(crate) struct Local {
        next: AtomicU64,
        current: Mutex<Option<Arc<LocalTerm>>>,
        granted: Notify,
    }

    pub(crate) struct LocalTerm {
        election: String,
        token: FencingToken,
        ended: AtomicBool,
        end: Notify,
    }

    impl Local {
        /// Ends the running term, as a lost lease would.
        pub(crate) fn end_term(&self) {
            if let Some(term) = self.current.lock().unwrap().take() {
                term.ended.store(true, Ordering::Release);
                term.end.notify_waiters();
            }
        }

        /// Resolves when a term is granted after it was enabled.
        pub(crate) fn granted(&self) -> tokio::sync::futures::Notified<'_> {
            self.granted.notified()
        }
    }

    impl Leadership for Local {
        fn campaign<'a>(
            &'a self,
            election: &'a str,
        ) -> BoxFuture<'a, Result<Arc<dyn Term>, Error>> {
            Box::pin(async move {
                let term = Arc::new(LocalTerm {
                    election: election.to_owned(),
                    token: FencingToken(self.next.fetch_add(1, Ordering::AcqRel) + 1),
                    ended: AtomicBool::new(false),
                    end: Notify::new(),
                });
                *self.current.lock().unwrap() = Some(Arc::clone(&term));
                self.granted.notify_waiters();
                Ok(term as Arc<dyn Term>)
            })
        }
    }

    impl Term for LocalTerm {
        fn election(&self) -> &str {
            &self.election
        }
        fn token(&self) -> FencingToken {
            self.token
        }
        fn is_valid(&self) -> bool {
            !self.ended.load(Ordering::Acquire)
        }
        fn ended(&self) -> BoxFuture<'_, ()> {
            Box::pin(async move {
                let notified = self.end.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.is_valid() {
                    notified.await;
                }
            })
        }
        fn resign(&self) -> BoxFuture<'_, ()> {
            self.ended.store(true, Ordering::Release);
            self.end.notify_waiters();
            Box::pin(std::future::ready(()))
        }
        fn as_any(&self) -> &dyn Any {
            self
        }
    }
}
