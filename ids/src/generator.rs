//! Any generator behind one call, for the places that take a generator by name (the `[ids]`
//! resource, the `id` transform, the HTTP endpoint).

use crate::error::IdError;
use crate::id::Id;
use crate::random::{Ulids, Uuid7, uuid4};
use crate::snowflake::Snowflake;

/// A generator of any kind.
#[derive(Debug)]
#[non_exhaustive]
pub enum IdGenerator {
    /// Snowflake ids.
    Snowflake(Snowflake),
    /// Random UUIDs.
    Uuid4,
    /// Monotonic UUID v7.
    Uuid7(Uuid7),
    /// Monotonic ULIDs.
    Ulid(Ulids),
    /// A PostgreSQL sequence, a block at a time.
    #[cfg(feature = "postgres")]
    Sequence(crate::sequence::PgSequence),
    /// A Redis day counter.
    #[cfg(feature = "redis")]
    Counter(crate::counter::RedisCounter),
}

impl IdGenerator {
    /// The kind, as configs name it (`snowflake`, `uuid4`, …).
    pub fn kind(&self) -> &'static str {
        match self {
            IdGenerator::Snowflake(_) => "snowflake",
            IdGenerator::Uuid4 => "uuid4",
            IdGenerator::Uuid7(_) => "uuid7",
            IdGenerator::Ulid(_) => "ulid",
            #[cfg(feature = "postgres")]
            IdGenerator::Sequence(_) => "postgres_sequence",
            #[cfg(feature = "redis")]
            IdGenerator::Counter(_) => "redis_counter",
        }
    }

    /// Issues `count` ids, in issue order. Either all of them or an error and none that the
    /// caller sees (ids spent before a failure within the call are gaps).
    ///
    /// A Snowflake generator may block the calling thread briefly: under a millisecond when a
    /// millisecond's sequence is used up, up to `max_backward` when the clock stepped back.
    pub async fn generate(&self, count: usize) -> Result<Vec<Id>, IdError> {
        match self {
            IdGenerator::Snowflake(g) => {
                let mut ids = Vec::with_capacity(count);
                g.fill(count, &mut ids)?;
                Ok(ids.into_iter().map(Id::Int).collect())
            }
            IdGenerator::Uuid4 => Ok((0..count).map(|_| Id::Uuid(uuid4())).collect()),
            IdGenerator::Uuid7(g) => Ok((0..count).map(|_| Id::Uuid(g.next_id())).collect()),
            IdGenerator::Ulid(g) => Ok((0..count).map(|_| Id::Ulid(g.next_id())).collect()),
            #[cfg(feature = "postgres")]
            IdGenerator::Sequence(g) => Ok(g
                .next_ids(count)
                .await?
                .into_iter()
                .map(|n| Id::Int(n as u64))
                .collect()),
            #[cfg(feature = "redis")]
            IdGenerator::Counter(g) => {
                Ok(g.next_ids(count).await?.into_iter().map(Id::Text).collect())
            }
        }
    }
}
