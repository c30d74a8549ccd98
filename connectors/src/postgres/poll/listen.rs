//! Wake-ups by `LISTEN`/`NOTIFY`: a connection of its own listens on the configured channel,
//! and every notification (sent by a trigger on the outbox table when rows are inserted) wakes
//! the poller, so delivery latency is not bounded by the polling interval.
//!
//! Notifications are only hints: one that is lost (while the connection is down) costs latency,
//! never data, because the poller still polls on its interval and polls once more after every
//! reconnection.

use std::future::poll_fn;
use std::pin::pin;
use std::sync::Arc;

use sluice_connect::postgres::tls::RustlsStream;
use sluice_pipeline::Error;
use sluice_pipeline::error::chain;
use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, Client, Connection, Socket};

use super::metrics::PollMetrics;
use crate::postgres::connect::{Database, Sessions, quote_ident};
use crate::postgres::error::DbError;
use sluice_pipeline::backoff::Backoff;

/// A connection that has run `LISTEN` on the channel.
pub(super) struct Listener {
    // Held so the connection stays open: it closes when its client is dropped.
    _client: Client,
    connection: Connection<Socket, RustlsStream<Socket>>,
}

impl Listener {
    /// Connects and listens on `channel`; notifications are delivered from then on.
    pub(super) async fn start(database: &Database, channel: &str) -> Result<Listener, Error> {
        let (client, mut connection) = database.connect_raw().await?;
        let sql = format!("LISTEN {}", quote_ident(channel));
        {
            let mut listen = pin!(client.batch_execute(&sql));
            // The connection carries the request only while it is driven.
            loop {
                tokio::select! {
                    result = &mut listen => {
                        result.map_err(DbError::statement("listening for notifications"))?;
                        break;
                    }
                    message = poll_fn(|cx| connection.poll_message(cx)) => match message {
                        Some(Ok(_)) => {}
                        Some(Err(e)) => {
                            return Err(DbError::statement("listening for notifications")(e).into());
                        }
                        None => return Err(closed().into()),
                    },
                }
            }
        }
        Ok(Listener {
            _client: client,
            connection,
        })
    }

    /// Wakes `wake` for every notification until the connection is lost, and says why.
    async fn forward(mut self, wake: &Notify, metrics: &PollMetrics) -> DbError {
        loop {
            match poll_fn(|cx| self.connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(_))) => {
                    metrics.notified();
                    wake.notify_one();
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return DbError::statement("listening for notifications")(e),
                None => return closed(),
            }
        }
    }

    /// Forwards notifications for as long as the task runs, reconnecting with backoff when the
    /// connection is lost (and waking the poller after each reconnection, to catch up on
    /// whatever was inserted meanwhile).
    pub(super) async fn run(
        self,
        database: Database,
        channel: String,
        wake: Arc<Notify>,
        metrics: PollMetrics,
        mut backoff: Backoff,
    ) {
        let mut listener = self;
        loop {
            let error = listener.forward(&wake, &metrics).await;
            metrics.error(error.kind());
            tracing::warn!(
                error = %chain(&error),
                "lost the notification connection; reconnecting, polling continues on the interval"
            );
            listener = loop {
                tokio::time::sleep(backoff.failed()).await;
                match Listener::start(&database, &channel).await {
                    Ok(listener) => break listener,
                    Err(error) => {
                        metrics.error(error.kind());
                        tracing::warn!(error = %chain(&error), "cannot listen for notifications");
                    }
                }
            };
            backoff.reset();
            tracing::info!("listening for notifications again");
            wake.notify_one();
        }
    }
}

fn closed() -> DbError {
    DbError::Closed {
        doing: "listening for notifications",
    }
}
