//! Leader election: [`Coord::campaign`] gives a [`LeaderTerm`], the engine's [`Term`], valid
//! while the candidacy's key lasts and the session is within its deadline. (The engine's
//! [`Leadership`](sluice_pipeline::Leadership) campaigns through it, in the elections the
//! cluster assigns to this node: see [`cluster`](crate::cluster).)

use std::any::Any;

use bytes::Bytes;
use sluice_pipeline::component::BoxFuture;
use sluice_pipeline::leadership::{FencingToken, Term};

use crate::backend::{Fenced, Held, Op};
use crate::coord::Coord;
use crate::error::CoordError;
use crate::hold::{Hold, Kind};

/// A won election: this process leads until the term ends.
pub struct LeaderTerm {
    election: String,
    coord: Coord,
    hold: Hold,
}

/// Who leads an election, as any process sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    /// The value the leader campaigned with (sluice: its node name).
    pub value: Bytes,
    /// The leader's term's fencing token.
    pub token: FencingToken,
}

impl LeaderTerm {
    /// The backend's key of the term and its fencing token, for [`Coord::fenced`].
    pub fn held(&self) -> &Held {
        self.hold.held()
    }

    /// Writes `op` only while this term lasts (see [`Coord::fenced`]).
    pub async fn fenced(&self, op: Op) -> Result<Fenced, CoordError> {
        self.coord.fenced(self.held(), op).await
    }

    /// Resolves once the term is over, as [`Term::ended`] does, borrowing nothing.
    pub(crate) fn over(&self) -> impl Future<Output = ()> + Send + 'static {
        self.hold.ended()
    }
}

impl std::fmt::Debug for LeaderTerm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderTerm")
            .field("election", &self.election)
            .field("token", &self.held().token)
            .field("valid", &self.hold.is_valid())
            .finish()
    }
}

impl Term for LeaderTerm {
    fn election(&self) -> &str {
        &self.election
    }

    fn token(&self) -> FencingToken {
        FencingToken(self.held().token)
    }

    /// Not resigned, the key not deleted, and the session within its deadline right now.
    fn is_valid(&self) -> bool {
        self.hold.is_valid()
    }

    fn ended(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.hold.ended())
    }

    fn resign(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Err(error) = self.hold.release().await {
                tracing::warn!(
                    election = %self.election,
                    error = %sluice_pipeline::error::chain(&error),
                    "cannot resign; the term ends with the session"
                );
            }
        })
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl Coord {
    /// Campaigns in election `name` with `value` (what [`Coord::leader`] shows), and resolves
    /// once this process leads. Waits for the backend and a session as needed; a candidacy
    /// whose session is lost while waiting starts over under the next session. Dropping the
    /// future withdraws the candidacy. One candidacy per name per process: a second campaign
    /// for the same name waits for the first term to end.
    pub async fn campaign(
        &self,
        name: &str,
        value: impl Into<Bytes>,
    ) -> Result<LeaderTerm, CoordError> {
        let hold = Hold::take(self, Kind::Election, name, value.into()).await?;
        Ok(LeaderTerm {
            election: name.to_owned(),
            coord: self.clone(),
            hold,
        })
    }

    /// The current leader of election `name`, if any.
    pub async fn leader(&self, name: &str) -> Result<Option<Leader>, CoordError> {
        let backend = self.connected().await;
        Ok(backend.leader(name).await?.map(|(value, token)| Leader {
            value,
            token: FencingToken(token),
        }))
    }
}
