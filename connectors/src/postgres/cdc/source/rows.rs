//! The stream's messages turned into events: rows of the configured tables, logical decoding
//! messages, heartbeats; what cannot become an event is quarantined with its bytes. Events
//! wait in `pending` until they are emitted, complete or, inside a transaction, open.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use pgwire_replication::ReplicationEvent;
use sluice_pipeline::{Error, Event, Fields, Position, SourceContext, Text};

use super::super::config::{HEARTBEAT_PREFIX, Operation};
use super::Stream;
use crate::postgres::pgoutput::{self as pgoutput, Column, Lsn, Message, PgTimestamp, TupleData};
use crate::postgres::row::{self, MESSAGE_PREFIX_HEADER};
use crate::postgres::table::TableName;

/// A relation (table) as its last Relation message described it.
#[derive(Debug)]
pub(super) struct Relation {
    name: Text,
    columns: Vec<Text>,
    /// Whether its rows become events (it is one of the configured tables).
    included: bool,
}

/// The transaction being read.
#[derive(Debug)]
pub(super) struct Transaction {
    commit: Lsn,
    xid: u32,
    commit_time: Option<SystemTime>,
    /// Events read from it so far.
    events: u32,
}

impl Stream {
    pub(super) fn handle(&mut self, event: ReplicationEvent) {
        match event {
            ReplicationEvent::KeepAlive { wal_end, .. } => {
                if self.transaction.is_none() {
                    self.seen = self.seen.max(Lsn(wal_end.as_u64()));
                }
            }
            ReplicationEvent::Begin {
                final_lsn,
                xid,
                commit_time_micros,
            } => {
                self.transaction = Some(Transaction {
                    commit: Lsn(final_lsn.as_u64()),
                    xid,
                    commit_time: PgTimestamp(commit_time_micros).to_system_time(),
                    events: 0,
                });
            }
            ReplicationEvent::XLogData { data, .. } => {
                self.metrics.bytes.increment(data.len() as u64);
                self.change(data);
            }
            ReplicationEvent::Message {
                transactional,
                lsn,
                prefix,
                content,
            } => self.message(transactional, Lsn(lsn.as_u64()), prefix, content),
            ReplicationEvent::Commit {
                end_lsn,
                commit_time_micros,
                ..
            } => {
                self.metrics.transactions.increment(1);
                if let Some(time) = PgTimestamp(commit_time_micros).to_system_time()
                    && let Ok(since) = time.duration_since(std::time::UNIX_EPOCH)
                {
                    self.metrics.last_commit.set(since.as_secs_f64());
                }
                let end = Lsn(end_lsn.as_u64());
                match self.transaction.take() {
                    Some(t) if t.events > 0 => {
                        self.awaiting.push_back((t.commit, end, t.commit_time));
                    }
                    Some(t) => self.saw(end, t.commit_time),
                    None => self.saw(end, None),
                }
            }
            ReplicationEvent::StoppedAt { .. } => {}
        }
    }

    /// A pgoutput change message inside a transaction.
    fn change(&mut self, data: Bytes) {
        let message = match pgoutput::decode(data.clone()) {
            Ok(message) => message,
            Err(e) => {
                self.metrics.decode_errors.increment(1);
                self.reject_raw(data, format!("undecodable pgoutput message: {e}"));
                return;
            }
        };
        let (relation_id, operation, tuple) = match message {
            Message::Relation(relation) => return self.relation(relation),
            Message::Insert(insert) => (insert.relation_id, Operation::Insert, insert.new),
            Message::Update(update) => (update.relation_id, Operation::Update, update.new),
            Message::Delete(delete) => {
                let old = match delete.old {
                    pgoutput::OldTuple::Key(t) | pgoutput::OldTuple::Full(t) => t,
                };
                (delete.relation_id, Operation::Delete, old)
            }
            Message::Truncate(_) => {
                self.metrics.ignored.increment(1);
                tracing::warn!("a published table was truncated; truncates are not events");
                return;
            }
            // A type's name and a transaction's origin say nothing a row event carries.
            Message::Type(_) | Message::Origin(_) => return,
        };
        if !self.operations.contains(&operation) {
            self.metrics.ignored.increment(1);
            return;
        }
        self.row(relation_id, operation, tuple, data);
    }

    fn relation(&mut self, relation: pgoutput::Relation) {
        let name = TableName::new(relation.namespace.as_str(), relation.name.as_str());
        let included = self.tables.contains(&name);
        self.relations.insert(
            relation.id,
            Relation {
                name: Text::from(name.to_string()),
                columns: relation.columns.into_iter().map(|c| c.name).collect(),
                included,
            },
        );
    }

    fn row(&mut self, relation_id: u32, operation: Operation, tuple: TupleData, raw: Bytes) {
        let Some(table) = self.relations.get(&relation_id) else {
            self.reject_raw(
                raw,
                format!("row of relation {relation_id}, which no Relation message described"),
            );
            return;
        };
        if !table.included {
            self.metrics.ignored.increment(1);
            return;
        }
        let mut problem = None;
        if table.columns.len() != tuple.columns.len() {
            problem = Some(format!(
                "{} has {} columns but the row has {}",
                table.name,
                table.columns.len(),
                tuple.columns.len()
            ));
        }
        let mut fields = Fields::with_capacity(table.columns.len());
        for (name, column) in table.columns.iter().zip(tuple.columns) {
            let value = match column {
                Column::Null => None,
                Column::Text(bytes) => match Text::from_utf8(bytes) {
                    Ok(text) => Some(text),
                    Err(_) => {
                        problem.get_or_insert_with(|| format!("column {name} is not valid UTF-8"));
                        None
                    }
                },
                Column::UnchangedToast => {
                    problem.get_or_insert_with(|| format!(
                        "column {name} arrived as an unchanged TOAST value, so its content is unknown (keep the outbox insert-only, or set REPLICA IDENTITY FULL)"
                    ));
                    None
                }
                Column::Binary(_) => {
                    problem
                        .get_or_insert_with(|| format!("column {name} arrived in binary format"));
                    None
                }
            };
            fields.push(name.clone(), value);
        }
        let kind = match operation {
            Operation::Insert => row::INSERT,
            Operation::Update => row::UPDATE,
            Operation::Delete => row::DELETE,
        };
        let table = table.name.clone();
        let Some(event) = self.event(kind, table, fields) else {
            return;
        };
        match problem {
            Some(reason) => self.pending.reject(event, reason),
            None => self.pending.push(event),
        }
    }

    /// A logical decoding message: a heartbeat, an outbox message, or something ignored.
    fn message(&mut self, transactional: bool, lsn: Lsn, prefix: String, content: Bytes) {
        let wanted = self.message_prefixes.contains(&prefix);
        if !transactional && (prefix == HEARTBEAT_PREFIX || !wanted) {
            if self.transaction.is_none() {
                let written = (prefix == HEARTBEAT_PREFIX)
                    .then(|| heartbeat_time(&content))
                    .flatten();
                self.saw(lsn, written);
            }
            return;
        }
        if !wanted {
            return;
        }
        let mut event = if transactional {
            match self.event(row::MESSAGE, Text::default(), Fields::new()) {
                Some(event) => event,
                None => return,
            }
        } else {
            self.metrics.events.increment(1);
            self.awaiting.push_back((lsn, lsn, None));
            Event::new(format!("{lsn}/0"), Position(lsn.0), Bytes::new())
        };
        event.event_type = row::MESSAGE;
        event.headers = Fields::new();
        event.headers.push(
            Text::from_static(MESSAGE_PREFIX_HEADER),
            Some(Text::from(prefix)),
        );
        event.payload = content;
        self.pending.push(event);
    }

    /// A new event of the current transaction, with its id and metadata; `None` (after
    /// quarantining nothing: there is no event to quarantine) outside a transaction, which the
    /// protocol does not allow.
    fn event(&mut self, kind: Text, table: Text, fields: Fields) -> Option<Event> {
        let Some(transaction) = self.transaction.as_mut() else {
            tracing::error!("pgoutput sent a change outside a transaction; ignoring it");
            self.metrics.decode_errors.increment(1);
            return None;
        };
        let ordinal = transaction.events;
        transaction.events += 1;
        let id = Text::from(format!("{}/{ordinal}", transaction.commit));
        let mut event = row::row_event(id, kind, table, fields, Position(transaction.commit.0));
        event.meta.commit_time = transaction.commit_time;
        event.meta.transaction = Some(u64::from(transaction.xid));
        self.metrics.events.increment(1);
        Some(event)
    }

    /// Quarantines bytes that could not become a row, keeping them as the payload.
    fn reject_raw(&mut self, raw: Bytes, reason: String) {
        if let Some(mut event) = self.event(row::INSERT, Text::default(), Fields::new()) {
            event.payload = raw;
            self.pending.reject(event, reason);
        }
    }

    /// Emits what was read: complete when no transaction is in progress, open otherwise.
    pub(super) async fn flush(&mut self, cx: &mut SourceContext) -> Result<(), Error> {
        let in_transaction = self.transaction.is_some();
        if self.pending.is_empty() {
            if self.open && !in_transaction {
                cx.seal();
                self.open = false;
            }
            return Ok(());
        }
        let out = std::mem::take(&mut self.pending);
        if in_transaction {
            cx.emit_open(out).await?;
        } else {
            cx.emit(out).await?;
        }
        self.open = in_transaction;
        Ok(())
    }
}

/// The write time a heartbeat carries (see [`super::super::slot::heartbeat`]); `None` for one
/// written without it.
fn heartbeat_time(content: &[u8]) -> Option<SystemTime> {
    let micros: u64 = std::str::from_utf8(content).ok()?.parse().ok()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_micros(micros))
}
