//! PostgreSQL sequences: offsets and increments across N nodes (the seed's DB1: 1, 3, 5… /
//! DB2: 2, 4, 6…), and block (hi/lo) allocation, where one `nextval` reserves a block of K ids
//! that are then handed out from memory.
//!
//! Node `i` of `N` with blocks of `K` uses its own sequence (on its own database, or beside the
//! others) created as
//!
//! ```sql
//! CREATE SEQUENCE IF NOT EXISTS ids AS bigint INCREMENT BY N*K START WITH (i-1)*K+1 MINVALUE 1 NO CYCLE
//! ```
//!
//! Each `nextval` returns the first id of a block, `[v, v + K)`; node i's blocks start at
//! `(i-1)*K + 1 + j*N*K`, so no two nodes' blocks overlap and with `K = 1` this is the plain
//! offset/increment scheme. `nextval` is never rolled back and never returns a value twice, so
//! what a crash loses — the unused rest of a block held in memory — is a **gap**, never a
//! duplicate. `NO CYCLE` makes an exhausted sequence an error rather than a wrap-around.
//! Changing `N` or `K` later needs a new plan (a new sequence starting above every id issued).

use std::fmt;

pub use sluice_connect::postgres::PostgresUrl;
use tokio::sync::Mutex;
use tokio_postgres::Client;

use crate::error::IdError;

/// Where a node's ids come from: its sequence, its place among the nodes, its block size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SequencePlan {
    /// The sequence, `name` or `schema.name` (lowercase letters, digits and `_`).
    pub sequence: String,
    /// This node's number, 1 to `nodes`.
    pub node: u64,
    /// How many nodes share the id space.
    pub nodes: u64,
    /// Ids reserved by one `nextval` (1: one `nextval` per id).
    pub block: u64,
}

/// A plan that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct PlanError {
    /// The setting at fault.
    pub field: &'static str,
    /// The rule it breaks.
    pub message: String,
}

impl SequencePlan {
    /// Checks the plan: a plain name, `1 <= node <= nodes`, a block of at least 1, and an
    /// increment that fits a `bigint`.
    pub fn check(&self) -> Result<(), PlanError> {
        let error = |field, message: String| Err(PlanError { field, message });
        if !valid_name(&self.sequence) {
            return error(
                "sequence",
                format!(
                    "{:?} is not a plain name: use lowercase letters, digits and '_', optionally as schema.name",
                    self.sequence
                ),
            );
        }
        if self.nodes == 0 {
            return error("nodes", "must be at least 1".into());
        }
        if self.node == 0 || self.node > self.nodes {
            return error(
                "node",
                format!(
                    "must be between 1 and nodes ({}), got {}",
                    self.nodes, self.node
                ),
            );
        }
        if self.block == 0 {
            return error("block", "must be at least 1".into());
        }
        if self
            .nodes
            .checked_mul(self.block)
            .is_none_or(|inc| inc > i64::MAX as u64 / 2)
        {
            return error(
                "block",
                "nodes × block does not fit a bigint increment".into(),
            );
        }
        Ok(())
    }

    /// The sequence's `INCREMENT BY`: `nodes × block`.
    pub fn increment(&self) -> i64 {
        (self.nodes * self.block) as i64
    }

    /// The sequence's `START WITH`: `(node - 1) × block + 1`.
    pub fn start(&self) -> i64 {
        ((self.node - 1) * self.block + 1) as i64
    }

    /// The statement sluice runs to create the sequence, which `sluice check` shows.
    pub fn create_sql(&self) -> String {
        format!(
            "CREATE SEQUENCE IF NOT EXISTS {} AS bigint INCREMENT BY {} START WITH {} MINVALUE 1 NO CYCLE",
            self.sequence,
            self.increment(),
            self.start()
        )
    }
}

/// `name` or `schema.name`, each part a lowercase identifier that needs no quoting.
fn valid_name(name: &str) -> bool {
    let part = |p: &str| {
        !p.is_empty()
            && p.len() <= 63
            && p.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && p.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    };
    match name.split_once('.') {
        Some((schema, rest)) => part(schema) && part(rest),
        None => part(name),
    }
}

/// What the server has, compared with the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SequenceState {
    /// The sequence exists as planned.
    AsPlanned,
    /// It does not exist; `can_create` says whether this role may create it.
    Missing {
        /// Whether the role has `CREATE` on the schema.
        can_create: bool,
    },
    /// It exists with another start or increment.
    Differs {
        /// Its `START WITH`.
        start: i64,
        /// Its `INCREMENT BY`.
        increment: i64,
    },
}

/// A node's ids from its PostgreSQL sequence, reserved a block at a time.
///
/// Safe to share: concurrent callers take from the block in memory, and when it is used up one
/// of them fetches the next blocks while the others wait for it. Connects on first use (or in
/// [`PgSequence::set_up`]) and again after a failure.
pub struct PgSequence {
    url: PostgresUrl,
    plan: SequencePlan,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    client: Option<Client>,
    /// Unused ids of the current block: `[next, end)`.
    next: i64,
    end: i64,
}

impl fmt::Debug for PgSequence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgSequence")
            .field("url", &self.url)
            .field("plan", &self.plan)
            .finish_non_exhaustive()
    }
}

fn pg_error(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> IdError {
    let context = context.into();
    move |source| IdError::Postgres { context, source }
}

impl PgSequence {
    /// A generator for `plan` on the database at `url` (with libpq's `sslmode` and
    /// `sslrootcert` for TLS). No I/O: the URL is read when connecting.
    pub fn new(url: PostgresUrl, plan: SequencePlan) -> Self {
        PgSequence {
            url,
            plan,
            state: Mutex::new(State::default()),
        }
    }

    /// The plan.
    pub fn plan(&self) -> &SequencePlan {
        &self.plan
    }

    async fn connect(&self) -> Result<Client, IdError> {
        let database = self
            .url
            .parse()
            .map_err(|problem| IdError::Setup(format!("url: {problem}")))?;
        database.open().await.map_err(IdError::Connect)
    }

    /// Connects, creates the sequence if it is missing (the statement of
    /// [`SequencePlan::create_sql`]) and checks that an existing one is as planned.
    pub async fn set_up(&self) -> Result<(), IdError> {
        let mut state = self.state.lock().await;
        let client = match state.client.take() {
            Some(client) if !client.is_closed() => client,
            _ => self.connect().await?,
        };
        let result = self.create_and_verify(&client).await;
        // A refused statement leaves the connection usable; a lost one shows as closed.
        state.client = Some(client);
        result
    }

    async fn create_and_verify(&self, client: &Client) -> Result<(), IdError> {
        client
            .batch_execute(&self.plan.create_sql())
            .await
            .map_err(pg_error(format!(
                "creating sequence {} (run it as a role that may: {})",
                self.plan.sequence,
                self.plan.create_sql()
            )))?;
        match self.state_on(client).await? {
            SequenceState::AsPlanned => Ok(()),
            SequenceState::Differs { start, increment } => Err(self.differs(start, increment)),
            SequenceState::Missing { .. } => Err(IdError::Setup(format!(
                "sequence {} is still missing after {}",
                self.plan.sequence,
                self.plan.create_sql()
            ))),
        }
    }

    fn differs(&self, start: i64, increment: i64) -> IdError {
        IdError::Setup(format!(
            "sequence {} exists with START WITH {start} INCREMENT BY {increment}, but node {} of {} with blocks of {} needs START WITH {} INCREMENT BY {}: ids would collide with other nodes' (plan a new sequence that starts above every id issued)",
            self.plan.sequence,
            self.plan.node,
            self.plan.nodes,
            self.plan.block,
            self.plan.start(),
            self.plan.increment()
        ))
    }

    /// What the server has, for `sluice check`: connects, reads, changes nothing.
    pub async fn inspect(&self) -> Result<SequenceState, IdError> {
        let client = self.connect().await?;
        self.state_on(&client).await
    }

    async fn state_on(&self, client: &Client) -> Result<SequenceState, IdError> {
        let row = client
            .query_one(
                "SELECT s.seqstart, s.seqincrement, \
                 has_schema_privilege(coalesce(nullif(split_part($1, '.', -2), ''), current_schema()), 'CREATE') \
                 FROM (SELECT to_regclass($1) AS id) r LEFT JOIN pg_sequence s ON s.seqrelid = r.id",
                &[&self.plan.sequence],
            )
            .await
            .map_err(pg_error(format!("reading sequence {}", self.plan.sequence)))?;
        let start: Option<i64> = row.get(0);
        let increment: Option<i64> = row.get(1);
        Ok(match (start, increment) {
            (Some(start), Some(increment))
                if start == self.plan.start() && increment == self.plan.increment() =>
            {
                SequenceState::AsPlanned
            }
            (Some(start), Some(increment)) => SequenceState::Differs { start, increment },
            _ => SequenceState::Missing {
                can_create: row.get::<_, Option<bool>>(2).unwrap_or(false),
            },
        })
    }

    /// Issues `count` ids, in increasing order for this node, fetching as many blocks as it
    /// takes in one round trip.
    pub async fn next_ids(&self, count: usize) -> Result<Vec<i64>, IdError> {
        let mut ids = Vec::with_capacity(count);
        let mut state = self.state.lock().await;
        let held = (state.end - state.next) as usize;
        if held < count {
            // Fetch first, so that a failure leaves the block in memory as it was: nothing
            // is issued, and nothing is lost either.
            let block = self.plan.block as i64;
            let blocks = ((count - held) as i64 + block - 1) / block;
            let starts = match self.fetch_blocks(&mut state, blocks).await {
                Ok(starts) => starts,
                Err(error) => {
                    if error.is_retryable() {
                        state.client = None;
                    }
                    return Err(error);
                }
            };
            take(&mut state, count, &mut ids);
            for start in starts {
                state.next = start;
                state.end = start + block;
                take(&mut state, count - ids.len(), &mut ids);
            }
            return Ok(ids);
        }
        take(&mut state, count, &mut ids);
        Ok(ids)
    }

    async fn fetch_blocks(&self, state: &mut State, blocks: i64) -> Result<Vec<i64>, IdError> {
        if state.client.as_ref().is_none_or(Client::is_closed) {
            state.client = Some(self.connect().await?);
        }
        let Some(client) = state.client.as_ref() else {
            unreachable!("a client was just stored");
        };
        let rows = client
            .query(
                "SELECT nextval($1::text::regclass) FROM generate_series(1, $2::bigint)",
                &[&self.plan.sequence, &blocks],
            )
            .await
            .map_err(pg_error(format!(
                "reserving {blocks} blocks from sequence {}",
                self.plan.sequence
            )))?;
        Ok(rows.iter().map(|row| row.get::<_, i64>(0)).collect())
    }
}

/// Moves up to `count` ids from the block into `ids`.
fn take(state: &mut State, count: usize, ids: &mut Vec<i64>) {
    let n = (state.end - state.next).min(count as i64).max(0);
    ids.extend(state.next..state.next + n);
    state.next += n;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(node: u64, nodes: u64, block: u64) -> SequencePlan {
        SequencePlan {
            sequence: "ids".into(),
            node,
            nodes,
            block,
        }
    }

    #[test]
    fn offsets_and_blocks_give_disjoint_ranges() {
        // The seed's DB1 and DB2: 1, 3, 5… and 2, 4, 6….
        assert_eq!((plan(1, 2, 1).start(), plan(1, 2, 1).increment()), (1, 2));
        assert_eq!((plan(2, 2, 1).start(), plan(2, 2, 1).increment()), (2, 2));
        assert_eq!(
            plan(2, 3, 1000).create_sql(),
            "CREATE SEQUENCE IF NOT EXISTS ids AS bigint INCREMENT BY 3000 START WITH 1001 MINVALUE 1 NO CYCLE"
        );
        let mut seen = std::collections::HashSet::new();
        for node in 1..=3 {
            let p = plan(node, 3, 100);
            for j in 0..20 {
                let first = p.start() + j * p.increment();
                for id in first..first + 100 {
                    assert!(seen.insert(id), "{id} twice");
                }
            }
        }
    }

    #[test]
    fn bad_plans_name_the_field() {
        let cases = [
            (
                plan(0, 2, 1),
                "node: must be between 1 and nodes (2), got 0",
            ),
            (
                plan(3, 2, 1),
                "node: must be between 1 and nodes (2), got 3",
            ),
            (plan(1, 2, 0), "block: must be at least 1"),
            (plan(1, 0, 1), "nodes: must be at least 1"),
            (
                plan(1, u64::MAX, 2),
                "block: nodes × block does not fit a bigint increment",
            ),
        ];
        for (p, message) in cases {
            assert_eq!(p.check().unwrap_err().to_string(), message);
        }
        let quoted = SequencePlan {
            sequence: "Ids; DROP TABLE x".into(),
            ..plan(1, 1, 1)
        };
        assert!(quoted.check().is_err());
        let qualified = SequencePlan {
            sequence: "app.order_ids".into(),
            ..plan(1, 1, 1)
        };
        assert!(qualified.check().is_ok());
    }
}
