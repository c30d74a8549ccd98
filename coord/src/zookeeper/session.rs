//! ZooKeeper sessions behind sluice's [`SessionId`]s: one client connection per session, the
//! shared connection for writes and reads that belong to no session, and how ZooKeeper's
//! errors and session states become [`CoordError`]s.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use zookeeper_client as zk;

use crate::backend::SessionId;
use crate::error::CoordError;

/// The session timeout asked for the shared connection and the watch connections, which carry
/// no ephemeral nodes: long enough to ride out a short partition.
pub const SHARED_SESSION_TIMEOUT: Duration = Duration::from_secs(10);

/// The sessions by id.
type Open = Arc<Mutex<HashMap<i64, Arc<Session>>>>;

/// A session opened through [`Sessions::open`].
pub struct Session {
    /// Its only connection; the session ends when the last clone of it is dropped.
    pub client: zk::Client,
    /// Set once the session is closed, so that waits on it give up their clones at once.
    closed: watch::Sender<bool>,
    /// When the last successful renewal (or the open) was sent: the session is closed when
    /// its timeout passes after that without another.
    renewed: watch::Sender<Instant>,
}

impl Session {
    /// Records a renewal sent at `sent`; `false` when the session was closed meanwhile.
    pub fn renewed(&self, sent: Instant) -> bool {
        self.renewed.send_replace(sent);
        !*self.closed.borrow()
    }

    /// Resolves once [`Sessions::close`] closed this session.
    pub async fn closed(&self) {
        let mut closed = self.closed.subscribe();
        // The sender lives in `self`, so the wait cannot fail before `self` is dropped.
        let _ = closed.wait_for(|closed| *closed).await;
    }

    /// `SessionExpired` when the client knows the session is over, `Unreachable` while it is
    /// disconnected (it cannot prove the session alive, which a leader must take as "not
    /// leading"), `Ok` while connected.
    pub fn check(&self, endpoints: &str) -> Result<(), CoordError> {
        match self.client.state() {
            zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => Ok(()),
            zk::SessionState::Disconnected => Err(CoordError::Unreachable {
                endpoints: endpoints.to_owned(),
                source: "disconnected from the zookeeper ensemble".into(),
            }),
            zk::SessionState::AuthFailed => Err(CoordError::Refused {
                doing: "the session's credentials".to_owned(),
                source: zk::Error::AuthFailed.into(),
            }),
            zk::SessionState::Expired | zk::SessionState::Closed => Err(CoordError::SessionExpired),
        }
    }
}

/// The sessions this backend opened, by id, and the shared connection.
pub struct Sessions {
    /// The connect string: endpoints separated by commas.
    pub endpoints: String,
    open: Open,
    shared: tokio::sync::Mutex<Option<zk::Client>>,
}

impl Sessions {
    /// Nothing connected yet.
    pub fn new(endpoints: String) -> Self {
        Sessions {
            endpoints,
            open: Open::default(),
            shared: tokio::sync::Mutex::default(),
        }
    }

    /// A new connection with its own session of about `timeout` (the server clamps it to its
    /// `minSessionTimeout`..`maxSessionTimeout`).
    pub async fn connect(&self, timeout: Duration) -> Result<zk::Client, CoordError> {
        zk::Client::connector()
            .with_session_timeout(timeout)
            .with_fail_eagerly()
            .connect(&self.endpoints)
            .await
            .map_err(|err| to_coord(err, &self.endpoints, "connecting"))
    }

    /// Opens a session with the given timeout; returns it with the timeout negotiated.
    ///
    /// The client keeps a ZooKeeper session alive by itself while connected; to live `ttl`
    /// after its last renewal as the trait says, the session is also closed here when its
    /// timeout passes after the last renewal sent without another.
    pub async fn open(&self, ttl: Duration) -> Result<(SessionId, Duration), CoordError> {
        let sent = Instant::now();
        let client = self.connect(ttl).await?;
        let id = client.session_id().0;
        let granted = client.session_timeout();
        let (closed, _) = watch::channel(false);
        let (renewed, _) = watch::channel(sent);
        let session = Arc::new(Session {
            client,
            closed,
            renewed,
        });
        lock(&self.open).insert(id, Arc::clone(&session));
        tokio::spawn(lease(Arc::clone(&self.open), id, session, granted));
        tracing::debug!(session = %SessionId(id), granted_ms = granted.as_millis() as u64, "zookeeper session opened");
        Ok((SessionId(id), granted))
    }

    /// The session `id`, `SessionExpired` when this backend does not have it (closed, never
    /// opened here, or ended: an ended session is forgotten here).
    pub fn get(&self, id: SessionId) -> Result<Arc<Session>, CoordError> {
        let mut open = lock(&self.open);
        match open.get(&id.0) {
            Some(session) if session.client.state().is_terminated() => {
                open.remove(&id.0);
                Err(CoordError::SessionExpired)
            }
            Some(session) => Ok(Arc::clone(session)),
            None => Err(CoordError::SessionExpired),
        }
    }

    /// Ends session `id`: waits stop, the connection closes and ZooKeeper deletes the session's
    /// ephemeral nodes as part of closing it. Closing an unknown session does nothing.
    pub async fn close(&self, id: SessionId) -> Result<(), CoordError> {
        let Some(session) = lock(&self.open).remove(&id.0) else {
            return Ok(());
        };
        session.closed.send_replace(true);
        let mut state = session.client.state_watcher();
        // The close request goes out once the last clone of the client is dropped; the waits
        // that held clones stop on `closed`, so this is the last one or soon will be.
        drop(session);
        let closing = async {
            while !state.state().is_terminated() {
                state.changed().await;
            }
        };
        if tokio::time::timeout(SHARED_SESSION_TIMEOUT, closing)
            .await
            .is_err()
        {
            tracing::warn!(session = %id, "zookeeper session still open after close; it expires on its own");
        }
        Ok(())
    }

    /// The shared connection, reconnected when its session ended.
    pub async fn shared(&self) -> Result<zk::Client, CoordError> {
        let mut shared = self.shared.lock().await;
        if let Some(client) = shared.as_ref() {
            if !client.state().is_terminated() {
                return Ok(client.clone());
            }
            tracing::info!("zookeeper shared session ended; reconnecting");
        }
        let client = self.connect(SHARED_SESSION_TIMEOUT).await?;
        *shared = Some(client.clone());
        Ok(client)
    }
}

fn lock(open: &Open) -> std::sync::MutexGuard<'_, HashMap<i64, Arc<Session>>> {
    // The map stays consistent whatever panicked while holding it: every change is one call.
    open.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Closes `session` once `granted` passes after its last renewal without another.
async fn lease(open: Open, id: i64, session: Arc<Session>, granted: Duration) {
    let mut renewed = session.renewed.subscribe();
    let mut closed = session.closed.subscribe();
    loop {
        let deadline = *renewed.borrow_and_update() + granted;
        tokio::select! {
            () = tokio::time::sleep_until(deadline.into()) => break,
            changed = renewed.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = closed.wait_for(|closed| *closed) => return,
        }
    }
    tracing::info!(session = %SessionId(id), "zookeeper session not renewed within its timeout; closing it");
    let mut open = lock(&open);
    if open.get(&id).is_some_and(|s| Arc::ptr_eq(s, &session)) {
        open.remove(&id);
    }
    drop(open);
    session.closed.send_replace(true);
}

/// The backend's error for a ZooKeeper error met while `doing` something.
pub fn to_coord(err: zk::Error, endpoints: &str, doing: &str) -> CoordError {
    use zk::Error as E;
    match err {
        // The client fails the requests in flight with the connection's own error (an I/O
        // error, "no response from connection"): `Custom`.
        E::ConnectionLoss | E::Timeout | E::NoHosts | E::Throttled | E::Custom(_) => {
            CoordError::Unreachable {
                endpoints: endpoints.to_owned(),
                source: err.into(),
            }
        }
        E::SessionExpired | E::SessionMoved | E::ClientClosed => CoordError::SessionExpired,
        E::NoAuth | E::AuthFailed | E::InvalidAcl | E::QuotaExceeded => CoordError::Refused {
            doing: doing.to_owned(),
            source: err.into(),
        },
        other => CoordError::Protocol(format!("{doing}: {other}")),
    }
}

/// Whether an error means "try again once reconnected" rather than an answer: the requests in
/// flight when a connection breaks fail with `ConnectionLoss` or with the connection's own
/// error (`Custom`: an I/O error, no response within the connection timeout).
pub fn is_connection_loss(err: &zk::Error) -> bool {
    matches!(
        err,
        zk::Error::ConnectionLoss | zk::Error::Timeout | zk::Error::Custom(_)
    )
}

/// Resolves once the connection is lost: `Unreachable` on a disconnection, `SessionExpired`
/// when the session ended.
pub async fn connection_lost(state: &mut zk::StateWatcher, endpoints: &str) -> CoordError {
    loop {
        match state.changed().await {
            zk::SessionState::Disconnected => {
                return CoordError::Unreachable {
                    endpoints: endpoints.to_owned(),
                    source: "disconnected from the zookeeper ensemble".into(),
                };
            }
            s if s.is_terminated() => return CoordError::SessionExpired,
            _ => {}
        }
    }
}

/// Waits until `client` is connected again (`Ok`) or its session is over (`SessionExpired`).
pub async fn reconnected(client: &zk::Client) -> Result<(), CoordError> {
    let mut state = client.state_watcher();
    loop {
        match state.state() {
            zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => return Ok(()),
            s if s.is_terminated() => return Err(CoordError::SessionExpired),
            _ => {
                state.changed().await;
            }
        }
    }
}
