//! [`Coord`]: the one coordination API that users and components see, over any [`Backend`].
//!
//! A `Coord` keeps one session open on its backend (see [`session`](crate::session) for the
//! timing rules) and builds on it: elections ([`Coord::campaign`]), locks ([`Coord::lock`]),
//! fenced writes ([`Coord::fenced`]), the service registry ([`Coord::register`]), the
//! configuration store ([`Coord::put_config`]), prefix following ([`Coord::follow`]) and the
//! cluster of nodes that spreads the engine's elections ([`Coord::nodes`]).
//! Clones share the session; the session is closed when the last clone is dropped, or at
//! [`Coord::close`].

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sluice_pipeline::Validate;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::backend::{Backend, Fenced, Held, Op};
use crate::cluster::Cluster;
use crate::config::{BackendKind, CoordConfig};
use crate::embedded::Embedded;
use crate::error::CoordError;
use crate::session::{Session, keep};

/// A handle on the coordination service. Cheap to clone; clones share one session.
#[derive(Clone)]
pub struct Coord {
    inner: Arc<Inner>,
}

struct Inner {
    ttl: Duration,
    node: String,
    /// The backend once connected (a `Coord` built by the `[coord]` resource connects later).
    backend: watch::Sender<Option<Arc<dyn Backend>>>,
    session: watch::Sender<Option<Arc<Session>>>,
    keeper: Mutex<Option<JoinHandle<()>>>,
    /// One at a time per election or lock name in this process: a backend's candidacy is one
    /// per session and name.
    locals: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// What this process runs and leads in the cluster, and who should lead what.
    cluster: Cluster,
}

impl fmt::Debug for Coord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let backend = self
            .backend()
            .map_or_else(|| "not connected".to_owned(), |b| b.describe());
        f.debug_struct("Coord")
            .field("backend", &backend)
            .field("node", &self.inner.node)
            .field("ttl", &self.inner.ttl)
            .finish()
    }
}

impl Coord {
    /// Connects to the backend `config` names and starts keeping a session on it. Fails with
    /// a retryable [`CoordError::Unreachable`] naming the endpoints when no server answers
    /// within the connect timeout.
    pub async fn connect(config: &CoordConfig) -> Result<Coord, CoordError> {
        let backend = connect_backend(config).await?;
        Ok(Coord::with_backend(backend, config.ttl(), config.node()))
    }

    /// A `Coord` on `backend` (such as a shared [`Embedded`] store in tests) with sessions of
    /// `ttl`, campaigning as `node`.
    ///
    /// # Panics
    /// Outside a Tokio runtime: the session is kept by a task.
    pub fn with_backend(
        backend: Arc<dyn Backend>,
        ttl: Duration,
        node: impl Into<String>,
    ) -> Coord {
        let coord = Coord::pending(ttl, node.into());
        coord.attach(backend);
        coord
    }

    /// A `Coord` whose backend comes later, through [`Coord::attach`].
    pub(crate) fn pending(ttl: Duration, node: String) -> Coord {
        Coord {
            inner: Arc::new(Inner {
                ttl,
                node,
                backend: watch::channel(None).0,
                session: watch::channel(None).0,
                keeper: Mutex::new(None),
                locals: Mutex::default(),
                cluster: Cluster::default(),
            }),
        }
    }

    /// Starts using `backend`: operations that were waiting for it go on.
    pub(crate) fn attach(&self, backend: Arc<dyn Backend>) {
        let task = tokio::spawn(keep(
            Arc::clone(&backend),
            self.inner.ttl,
            self.inner.session.clone(),
        ));
        if let Some(old) = self
            .inner
            .keeper
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .replace(task)
        {
            old.abort();
        }
        self.inner.backend.send_replace(Some(backend));
    }

    /// The backend, once connected.
    pub fn backend(&self) -> Option<Arc<dyn Backend>> {
        self.inner.backend.borrow().clone()
    }

    /// This process's node name (the value its elections show).
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// This process's part in the cluster.
    pub(crate) fn cluster(&self) -> &Cluster {
        &self.inner.cluster
    }

    /// The session TTL asked for.
    pub fn ttl(&self) -> Duration {
        self.inner.ttl
    }

    /// Whether a session is open and within its deadline right now.
    pub fn is_connected(&self) -> bool {
        self.inner
            .session
            .borrow()
            .as_ref()
            .is_some_and(|s| s.is_valid())
    }

    /// Resolves once [`Coord::is_connected`] may have changed (a session opened or lost).
    pub(crate) async fn session_changed(&self) {
        let mut sessions = self.inner.session.subscribe();
        let current = sessions.borrow_and_update().clone();
        match current {
            Some(session) if session.is_valid() => {
                tokio::select! {
                    () = session.ended() => {}
                    _ = sessions.changed() => {}
                }
            }
            _ => {
                let _ = sessions.changed().await;
            }
        }
    }

    /// Stops keeping the session and closes it on the server, giving up every term, lock and
    /// registration of every clone at once.
    pub async fn close(&self) {
        if let Some(task) = self
            .inner
            .keeper
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            task.abort();
        }
        let session = self.inner.session.send_replace(None);
        if let (Some(session), Some(backend)) = (session, self.backend()) {
            session.give_up();
            let _ = tokio::time::timeout(self.inner.ttl, backend.close_session(session.id())).await;
        }
    }

    /// Stops renewing the session without closing it, as a process killed with `kill -9`
    /// would: what it holds ends here at once, and on the server only when the TTL runs out.
    /// For failover drills and tests; a `Coord` is not usable afterwards.
    pub fn abandon(&self) {
        if let Some(task) = self
            .inner
            .keeper
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            task.abort();
        }
        if let Some(session) = self.inner.session.send_replace(None) {
            session.give_up();
        }
    }

    /// The backend, waiting for it to be connected.
    pub(crate) async fn connected(&self) -> Arc<dyn Backend> {
        let mut backend = self.inner.backend.subscribe();
        loop {
            if let Some(backend) = backend.borrow_and_update().clone() {
                return backend;
            }
            // The sender lives in `self`.
            let _ = backend.changed().await;
        }
    }

    /// The current session, waiting for one that is valid.
    pub(crate) async fn session(&self) -> Arc<Session> {
        let mut sessions = self.inner.session.subscribe();
        loop {
            let current = sessions.borrow_and_update().clone();
            if let Some(session) = current.filter(|s| s.is_valid()) {
                return session;
            }
            let _ = sessions.changed().await;
        }
    }

    /// The current session if it is `id`'s and valid.
    pub(crate) fn valid_session(&self, id: crate::backend::SessionId) -> Option<Arc<Session>> {
        self.inner
            .session
            .borrow()
            .clone()
            .filter(|s| s.id() == id && s.is_valid())
    }

    /// The in-process queue of election or lock `name`.
    pub(crate) fn local_queue(&self, name: String) -> Arc<tokio::sync::Mutex<()>> {
        let mut locals = self
            .inner
            .locals
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        locals.retain(|_, queue| Arc::strong_count(queue) > 1);
        Arc::clone(locals.entry(name).or_default())
    }

    /// Applies `op` only while `held` is held: refused here, without asking the server, when
    /// its session is not this `Coord`'s current one or its deadline has passed; otherwise
    /// the backend applies it in one atomic step with a check that `held` is still held.
    pub async fn fenced(&self, held: &Held, op: Op) -> Result<Fenced, CoordError> {
        if self.valid_session(held.session).is_none() {
            return Ok(Fenced::Refused);
        }
        let backend = self.connected().await;
        backend.fenced(held, op).await
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = self
            .keeper
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            task.abort();
        }
        let session = self.session.send_replace(None);
        let backend = self.backend.borrow().clone();
        if let (Some(session), Some(backend), Ok(runtime)) =
            (session, backend, tokio::runtime::Handle::try_current())
        {
            session.give_up();
            let ttl = self.ttl;
            runtime.spawn(async move {
                let _ = tokio::time::timeout(ttl, backend.close_session(session.id())).await;
            });
        }
    }
}

/// Connects to the backend `config` names, within its connect timeout.
pub(crate) async fn connect_backend(config: &CoordConfig) -> Result<Arc<dyn Backend>, CoordError> {
    config
        .validate()
        .map_err(|e| CoordError::Config(format!("[coord] {e}")))?;
    let timeout = config.connect_timeout.get();
    let unanswered = || CoordError::Unreachable {
        endpoints: config.describe_endpoints(),
        source: format!("no answer within {}", config.connect_timeout).into(),
    };
    match config.backend {
        BackendKind::Embedded => Ok(Arc::new(Embedded::shared(config.namespace.as_deref()))),
        #[cfg(feature = "zookeeper")]
        BackendKind::Zookeeper => {
            use crate::zookeeper::{ZooKeeper, ZooKeeperOptions};
            let connecting = ZooKeeper::connect(ZooKeeperOptions {
                endpoints: config.endpoints.clone(),
                namespace: config.namespace.clone(),
            });
            match tokio::time::timeout(timeout, connecting).await {
                Ok(connected) => Ok(Arc::new(connected?)),
                Err(_) => Err(unanswered()),
            }
        }
        #[cfg(not(feature = "zookeeper"))]
        BackendKind::Zookeeper => Err(CoordError::Config(
            "the zookeeper backend is not part of this build".to_owned(),
        )),
        #[cfg(feature = "etcd")]
        BackendKind::Etcd => {
            use crate::etcd::{Etcd, EtcdOptions};
            let connecting = Etcd::connect(EtcdOptions {
                endpoints: config.endpoints.clone(),
                namespace: config.namespace.clone(),
                connect_timeout: timeout,
                user: config.user.clone(),
                password: config.password.clone(),
                tls: config.tls.clone(),
            });
            match tokio::time::timeout(timeout, connecting).await {
                Ok(connected) => Ok(Arc::new(connected?)),
                Err(_) => Err(unanswered()),
            }
        }
        #[cfg(not(feature = "etcd"))]
        BackendKind::Etcd => {
            let _ = (timeout, unanswered);
            Err(CoordError::Config(
                "the etcd backend is not part of this build".to_owned(),
            ))
        }
    }
}
