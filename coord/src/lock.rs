//! Locks: [`Coord::lock`] gives a [`LockGuard`], held while its key lasts and the session
//! is within its deadline, with a fencing token for the resource it protects.

use bytes::Bytes;
use sluice_pipeline::leadership::FencingToken;

use crate::backend::Held;
use crate::coord::Coord;
use crate::error::CoordError;
use crate::hold::{Hold, Kind};

/// A held lock. Dropping it unlocks (in the background); [`LockGuard::unlock`] waits for it.
pub struct LockGuard {
    name: String,
    hold: Hold,
}

impl LockGuard {
    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The fencing token: larger than every earlier holder's. Pass it to the resource the
    /// lock protects, and have it refuse lower ones.
    pub fn token(&self) -> FencingToken {
        FencingToken(self.hold.held().token)
    }

    /// The backend's key of the lock and its token, for [`Coord::fenced`].
    pub fn held(&self) -> &Held {
        self.hold.held()
    }

    /// Whether the lock is still held right now (its key exists and the session is within
    /// its deadline). Check it before each act the lock protects.
    pub fn is_valid(&self) -> bool {
        self.hold.is_valid()
    }

    /// Resolves once the lock is lost: its key deleted, or its session past its deadline.
    pub async fn lost(&self) {
        self.hold.ended().await;
    }

    /// Releases the lock, so that the next waiter takes it.
    pub async fn unlock(self) -> Result<(), CoordError> {
        self.hold.release().await
    }
}

impl std::fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockGuard")
            .field("name", &self.name)
            .field("token", &self.hold.held().token)
            .field("valid", &self.hold.is_valid())
            .finish()
    }
}

impl Coord {
    /// Takes lock `name`, waiting behind earlier holders and waiters (of any process) in the
    /// order they asked. Waits for the backend and a session as needed; dropping the future
    /// gives up the wait.
    pub async fn lock(&self, name: &str) -> Result<LockGuard, CoordError> {
        let hold = Hold::take(self, Kind::Lock, name, Bytes::new()).await?;
        Ok(LockGuard {
            name: name.to_owned(),
            hold,
        })
    }
}
