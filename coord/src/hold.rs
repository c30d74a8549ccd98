//! What a won election and a taken lock share: a [`Held`] under a session, valid while both
//! its key and the session's deadline last, given back when done or dropped.

use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use bytes::Bytes;
use tokio::sync::{OwnedMutexGuard, watch};
use tokio::task::JoinHandle;

use crate::backend::{Backend, Held};
use crate::coord::Coord;
use crate::error::CoordError;
use crate::session::Session;

/// Whether a hold is a term of an election or a lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Election,
    Lock,
}

impl Kind {
    /// The in-process queue's name for `name`.
    fn queue(self, name: &str) -> String {
        match self {
            Kind::Election => format!("election/{name}"),
            Kind::Lock => format!("lock/{name}"),
        }
    }
}

/// A held election or lock.
pub(crate) struct Hold {
    kind: Kind,
    held: Held,
    session: Arc<Session>,
    backend: Arc<dyn Backend>,
    /// Set once the key is gone (seen by `watcher`) or given back.
    over: watch::Sender<bool>,
    /// Watches the key, from the first time anyone asks whether the hold is still valid or
    /// waits for its end: a lock taken and given back at once costs no watch.
    watcher: OnceLock<JoinHandle<()>>,
    runtime: tokio::runtime::Handle,
    /// Keeps other tasks of this process out of the same name until the hold is over and
    /// given back (a second candidacy under the same session would be the same key).
    queue: Queue,
}

/// The hold's place in the in-process queue of its name, until freed.
type Queue = Arc<Mutex<Option<OwnedMutexGuard<()>>>>;

fn free(queue: &Queue) {
    queue.lock().unwrap_or_else(PoisonError::into_inner).take();
}

impl Hold {
    /// Waits until this process holds `name`, under whichever session is current: a
    /// candidacy whose session is lost while it waits starts again under the next one.
    pub(crate) async fn take(
        coord: &Coord,
        kind: Kind,
        name: &str,
        value: Bytes,
    ) -> Result<Hold, CoordError> {
        let queue = coord.local_queue(kind.queue(name)).lock_owned().await;
        loop {
            let session = coord.session().await;
            let backend = coord.connected().await;
            let asking = async {
                match kind {
                    Kind::Election => backend.campaign(session.id(), name, value.clone()).await,
                    Kind::Lock => backend.lock(session.id(), name).await,
                }
            };
            let taken = tokio::select! {
                taken = asking => taken,
                // Dropping the request withdraws the candidacy.
                () = session.ended() => continue,
            };
            match taken {
                Ok(held) if session.is_valid() => {
                    return Ok(Hold::new(kind, held, session, backend, queue));
                }
                Ok(held) => {
                    // Won after the deadline: not usable, so let the next candidate have it.
                    let _ = release(kind, &*backend, &held).await;
                }
                Err(CoordError::SessionExpired) => session.give_up(),
                Err(error) => return Err(error),
            }
        }
    }

    fn new(
        kind: Kind,
        held: Held,
        session: Arc<Session>,
        backend: Arc<dyn Backend>,
        queue: OwnedMutexGuard<()>,
    ) -> Hold {
        Hold {
            kind,
            held,
            session,
            backend,
            over: watch::channel(false).0,
            watcher: OnceLock::new(),
            runtime: tokio::runtime::Handle::current(),
            queue: Arc::new(Mutex::new(Some(queue))),
        }
    }

    /// Starts watching the key, once.
    fn watch(&self) {
        self.watcher.get_or_init(|| {
            let backend = Arc::clone(&self.backend);
            let held = self.held.clone();
            let over = self.over.clone();
            let session = Arc::clone(&self.session);
            let queue = Arc::clone(&self.queue);
            self.runtime.spawn(async move {
                let released = async {
                    // An error says nothing about the key; the session's deadline still
                    // bounds the hold, so keep asking while it lasts.
                    while let Err(error) = backend.released(&held).await {
                        tracing::debug!(
                            key = %held.key,
                            error = %sluice_pipeline::error::chain(&error),
                            "cannot watch a held key"
                        );
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    }
                };
                tokio::select! {
                    () = released => {}
                    () = session.ended() => {}
                }
                over.send_replace(true);
                // The key is gone, or the session is (a next candidacy is under another).
                free(&queue);
            })
        });
    }

    pub(crate) fn held(&self) -> &Held {
        &self.held
    }

    /// Not over, and the session within its deadline.
    pub(crate) fn is_valid(&self) -> bool {
        self.watch();
        !*self.over.borrow() && self.session.is_valid()
    }

    /// Resolves once the hold is no longer valid; it borrows nothing, so a task can wait on
    /// it while the hold is used elsewhere.
    pub(crate) fn ended(&self) -> impl Future<Output = ()> + Send + 'static {
        self.watch();
        let mut over = self.over.subscribe();
        let session = Arc::clone(&self.session);
        async move {
            tokio::select! {
                _ = over.wait_for(|over| *over) => {}
                () = session.ended() => {}
            }
        }
    }

    /// Gives it back, so that the next candidate or waiter has it.
    pub(crate) async fn release(&self) -> Result<(), CoordError> {
        let was_over = self.over.send_replace(true);
        let released = if was_over || !self.session.is_valid() {
            Ok(())
        } else {
            release(self.kind, &*self.backend, &self.held).await
        };
        free(&self.queue);
        released
    }
}

async fn release(kind: Kind, backend: &dyn Backend, held: &Held) -> Result<(), CoordError> {
    match kind {
        Kind::Election => backend.resign(held).await,
        Kind::Lock => backend.unlock(held).await,
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if let Some(watcher) = self.watcher.get() {
            watcher.abort();
        }
        let runtime = tokio::runtime::Handle::try_current();
        let (true, Ok(runtime)) = (!*self.over.borrow(), runtime) else {
            free(&self.queue);
            return;
        };
        let (kind, backend, held) = (self.kind, Arc::clone(&self.backend), self.held.clone());
        let queue = Arc::clone(&self.queue);
        runtime.spawn(async move {
            if let Err(error) = release(kind, &*backend, &held).await {
                tracing::debug!(
                    key = %held.key,
                    error = %sluice_pipeline::error::chain(&error),
                    "cannot give back a dropped hold; it ends with its session"
                );
            }
            free(&queue);
        });
    }
}
