//! What is confirmed to PostgreSQL: the end of each transaction the checkpoint has passed,
//! or, with nothing in flight, the furthest position seen; and the lag that follows from it.

use std::time::{Duration, SystemTime};

use pgwire_replication::ReplicationClient;
use sluice_pipeline::SourceContext;

use super::Stream;
use crate::postgres::pgoutput::Lsn;

const FINAL_CONFIRM_GRACE: Duration = Duration::from_secs(1);

impl Stream {
    /// Passes `lsn`, with nothing to deliver up to it, written at server time `time` when known.
    pub(super) fn saw(&mut self, lsn: Lsn, time: Option<SystemTime>) {
        self.seen = self.seen.max(lsn);
        self.seen_time = self.seen_time.max(time);
    }

    /// Sets the lag in seconds: from the commit of the oldest transaction awaiting delivery,
    /// or, with none, from the newest time everything before which is delivered.
    pub(super) fn lag_seconds(&self) -> Option<f64> {
        let oldest = self.awaiting.front().and_then(|&(_, _, time)| time);
        self.metrics.lag_seconds(oldest.or(self.delivered_until))
    }

    /// Confirms to PostgreSQL the end of every transaction the checkpoint has passed, or, with
    /// nothing in flight, the furthest position seen.
    pub(super) fn confirm(&mut self, cx: &mut SourceContext, client: Option<&ReplicationClient>) {
        let checkpoint = cx.checkpoint().map(|p| Lsn(p.0));
        let mut target = self.confirmed;
        let mut committed = None;
        while let Some(&(position, confirms, commit_time)) = self.awaiting.front() {
            if checkpoint.is_none_or(|c| c < position) {
                break;
            }
            target = target.max(confirms);
            committed = commit_time.or(committed);
            self.awaiting.pop_front();
        }
        if let Some(time) = committed {
            self.confirmed_commit.send_if_modified(|last| {
                let newer = last.is_none_or(|l| l < time);
                if newer {
                    *last = Some(time);
                }
                newer
            });
        }
        self.delivered_until = self.delivered_until.max(committed);
        if self.awaiting.is_empty() && self.pending.is_empty() && self.transaction.is_none() {
            target = target.max(self.seen);
            self.delivered_until = self.delivered_until.max(self.seen_time);
        }
        self.lag_seconds();
        if target > self.confirmed {
            self.confirmed = target;
            self.metrics.confirmed.set(target.0 as f64);
            if let Some(client) = client {
                client.update_applied_lsn(pgwire_replication::Lsn::from_u64(target.0));
            }
        }
    }

    /// Waits (briefly) until the confirmed position has been sent to the server, so a clean
    /// shutdown leaves the slot exactly at the checkpoint.
    pub(super) async fn flush_confirmation(&self, client: &ReplicationClient) {
        client.update_applied_lsn(pgwire_replication::Lsn::from_u64(self.confirmed.0));
        let metrics = client.metrics();
        let deadline = tokio::time::Instant::now() + self.status_interval + FINAL_CONFIRM_GRACE;
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        while metrics.last_applied_lsn().as_u64() < self.confirmed.0
            && tokio::time::Instant::now() < deadline
            && client.is_running()
        {
            tick.tick().await;
        }
    }
}
