//! The connection to RabbitMQ: connecting, declaring the configured topology, opening the
//! publishing channels, making sure exchanges exist before messages go to them, noticing a
//! lost connection, and classifying lapin's errors.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use lapin::options::{
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::uri::AMQPUri;
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use sluice_pipeline::ErrorKind;

use super::config::{Argument, Declare};
use super::lane::Lane;

/// How long an exchange found missing is taken as missing before it is checked again.
const MISSING_EXCHANGE_RECHECK: Duration = Duration::from_secs(1);
/// How long closing the connection politely may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Most exchange names remembered as existing (templates could produce many).
const MAX_KNOWN_EXCHANGES: usize = 10_000;

/// Whether an exchange can take messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExchangeState {
    /// It exists (or was just declared).
    Ready,
    /// It does not exist and may not be declared.
    Missing,
}

/// A live connection with its control channel.
pub(crate) struct Broker {
    connection: Connection,
    /// For declarations and existence checks; never for publishing.
    control: Channel,
    events: Pin<Box<dyn Stream<Item = lapin::Event> + Send>>,
    known: HashSet<ShortString>,
    missing: HashMap<ShortString, Instant>,
}

impl Broker {
    /// Connects, declares `declare`, and attaches one confirm-mode channel to each lane.
    pub async fn connect(
        uri: &AMQPUri,
        name: &str,
        timeout: Duration,
        declare: &Declare,
        lanes: &mut [Lane],
    ) -> lapin::Result<Broker> {
        let properties =
            ConnectionProperties::default().with_connection_name(format!("sluice {name}").into());
        let connection =
            match tokio::time::timeout(timeout, Connection::connect_uri(uri.clone(), properties))
                .await
            {
                Ok(connection) => connection?,
                Err(_) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("connecting took longer than {timeout:?}"),
                    )
                    .into());
                }
            };
        let events = Box::pin(connection.events_listener());
        let control = connection.create_channel().await?;
        declare_topology(&control, declare).await?;
        for lane in lanes.iter_mut() {
            let channel = connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            lane.attach(channel);
        }
        let mut known = HashSet::new();
        // The default exchange always exists and cannot be declared.
        known.insert(ShortString::default());
        known.extend(
            declare
                .exchanges
                .iter()
                .filter_map(|e| ShortString::try_new(e.name.as_str()).ok()),
        );
        Ok(Broker {
            connection,
            control,
            events,
            known,
            missing: HashMap::new(),
        })
    }

    /// Makes sure `exchange` exists: declares it as `kind` when given (durable), otherwise
    /// checks it passively. An error here is a connection failure, not a missing exchange.
    pub async fn ensure_exchange(
        &mut self,
        exchange: &ShortString,
        kind: Option<&ExchangeKind>,
    ) -> lapin::Result<ExchangeState> {
        if self.known.contains(exchange) {
            return Ok(ExchangeState::Ready);
        }
        if let Some(since) = self.missing.get(exchange) {
            if since.elapsed() < MISSING_EXCHANGE_RECHECK {
                return Ok(ExchangeState::Missing);
            }
            self.missing.remove(exchange);
        }
        let options = ExchangeDeclareOptions {
            passive: kind.is_none(),
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        let result = self
            .control
            .exchange_declare(
                exchange.clone(),
                kind.cloned().unwrap_or_default(),
                options,
                FieldTable::default(),
            )
            .await;
        match result {
            Ok(()) => {
                if self.known.len() >= MAX_KNOWN_EXCHANGES {
                    self.known.clear();
                    self.known.insert(ShortString::default());
                }
                self.known.insert(exchange.clone());
                Ok(ExchangeState::Ready)
            }
            Err(error) if is_not_found(&error) => {
                // The broker closes a channel whose passive declaration fails.
                self.control = self.connection.create_channel().await?;
                self.missing.insert(exchange.clone(), Instant::now());
                Ok(ExchangeState::Missing)
            }
            Err(error) => Err(error),
        }
    }

    /// Ready with the error once lapin reports that the connection failed.
    pub fn poll_failure(&mut self, cx: &mut Context<'_>) -> Poll<lapin::Error> {
        loop {
            match self.events.poll_next_unpin(cx) {
                // lapin reports a closed channel here too (the control channel after a failed
                // existence check); publishing channels report theirs through their confirms.
                Poll::Ready(Some(lapin::Event::Error(error))) => {
                    if !self.connection.status().connected() {
                        return Poll::Ready(error);
                    }
                }
                Poll::Ready(Some(lapin::Event::ConnectionBlocked(reason))) => {
                    tracing::warn!(%reason, "the broker blocked publishing (resource alarm)");
                }
                Poll::Ready(Some(lapin::Event::ConnectionUnblocked)) => {
                    tracing::info!("the broker unblocked publishing");
                }
                Poll::Ready(Some(_)) => {}
                Poll::Ready(None) => {
                    return Poll::Ready(
                        lapin::ErrorKind::InvalidConnectionState(lapin::ConnectionState::Closed)
                            .into(),
                    );
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Closes the connection, waiting a little for the broker to agree.
    pub async fn close(self) {
        let closing = self.connection.close(200, "sluice is stopping".into());
        if let Ok(Err(error)) = tokio::time::timeout(CLOSE_TIMEOUT, closing).await {
            tracing::debug!(error = %error, "closing the connection failed");
        }
    }
}

async fn declare_topology(channel: &Channel, declare: &Declare) -> lapin::Result<()> {
    for exchange in &declare.exchanges {
        let options = ExchangeDeclareOptions {
            durable: exchange.durable,
            auto_delete: exchange.auto_delete,
            internal: exchange.internal,
            ..ExchangeDeclareOptions::default()
        };
        channel
            .exchange_declare(
                short(&exchange.name)?,
                exchange_kind(&exchange.kind),
                options,
                arguments(&exchange.arguments)?,
            )
            .await?;
    }
    for queue in &declare.queues {
        let options = QueueDeclareOptions {
            durable: queue.durable,
            exclusive: queue.exclusive,
            auto_delete: queue.auto_delete,
            ..QueueDeclareOptions::default()
        };
        channel
            .queue_declare(short(&queue.name)?, options, arguments(&queue.arguments)?)
            .await?;
    }
    for binding in &declare.bindings {
        channel
            .queue_bind(
                short(&binding.queue)?,
                short(&binding.exchange)?,
                short(&binding.routing_key)?,
                QueueBindOptions::default(),
                arguments(&binding.arguments)?,
            )
            .await?;
    }
    Ok(())
}

/// An exchange type as lapin names it.
pub(crate) fn exchange_kind(kind: &str) -> ExchangeKind {
    match kind {
        "direct" => ExchangeKind::Direct,
        "fanout" => ExchangeKind::Fanout,
        "topic" => ExchangeKind::Topic,
        "headers" => ExchangeKind::Headers,
        other => ExchangeKind::Custom(other.to_owned()),
    }
}

/// Validation bounds declared names to short strings; this only turns a broken invariant into
/// an error rather than a panic.
fn short(name: &str) -> lapin::Result<ShortString> {
    ShortString::try_new(name)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e).into())
}

fn arguments(
    arguments: &std::collections::BTreeMap<String, Argument>,
) -> lapin::Result<FieldTable> {
    let mut table = FieldTable::default();
    for (name, value) in arguments {
        let value = match value {
            Argument::Bool(b) => AMQPValue::Boolean(*b),
            Argument::Int(i) => AMQPValue::LongLongInt(*i),
            Argument::Float(f) => AMQPValue::Double(*f),
            Argument::String(s) => AMQPValue::LongString(s.as_str().into()),
        };
        table.insert(short(name)?, value);
    }
    Ok(table)
}

fn is_not_found(error: &lapin::Error) -> bool {
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(e)
        if *e.kind() == AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND))
}

/// A lapin error as the cause of a sluice error. lapin's message already ends with its own
/// cause, so this hides that cause from the chain rather than print it twice.
#[derive(Debug)]
pub(crate) struct AmqpError(pub lapin::Error);

impl std::fmt::Display for AmqpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for AmqpError {}

/// The one place that says which lapin errors are worth retrying: refusals and mismatches in
/// what was asked for are configuration errors, broken frames are protocol errors, and
/// everything else (I/O, a closed connection, a missed heartbeat, a forced close) is a
/// connection error.
pub(crate) fn error_kind(error: &lapin::Error) -> ErrorKind {
    use AMQPErrorKind::{Hard, Soft};
    match error.kind() {
        lapin::ErrorKind::ProtocolError(e) => match e.kind() {
            Soft(
                AMQPSoftError::ACCESSREFUSED
                | AMQPSoftError::NOTFOUND
                | AMQPSoftError::PRECONDITIONFAILED,
            )
            | Hard(
                AMQPHardError::NOTALLOWED
                | AMQPHardError::INVALIDPATH
                | AMQPHardError::NOTIMPLEMENTED,
            ) => ErrorKind::Config,
            Hard(
                AMQPHardError::FRAMEERROR
                | AMQPHardError::SYNTAXERROR
                | AMQPHardError::COMMANDINVALID
                | AMQPHardError::UNEXPECTEDFRAME
                | AMQPHardError::CHANNELERROR,
            ) => ErrorKind::Protocol,
            _ => ErrorKind::Connect,
        },
        lapin::ErrorKind::ParsingError(_)
        | lapin::ErrorKind::SerialisationError(_)
        | lapin::ErrorKind::InvalidProtocolVersion(_) => ErrorKind::Protocol,
        lapin::ErrorKind::AuthProviderError(_) | lapin::ErrorKind::NoDefaultRuntime => {
            ErrorKind::Config
        }
        _ => ErrorKind::Connect,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::protocol::AMQPError;

    fn protocol(kind: AMQPErrorKind) -> lapin::Error {
        lapin::ErrorKind::ProtocolError(AMQPError::new(kind, "x".into())).into()
    }

    #[test]
    fn classifies_errors() {
        let refused = protocol(AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED));
        assert_eq!(error_kind(&refused), ErrorKind::Config);
        let forced = protocol(AMQPErrorKind::Hard(AMQPHardError::CONNECTIONFORCED));
        assert_eq!(error_kind(&forced), ErrorKind::Connect);
        let io: lapin::Error = std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into();
        assert_eq!(error_kind(&io), ErrorKind::Connect);
        assert!(is_not_found(&protocol(AMQPErrorKind::Soft(
            AMQPSoftError::NOTFOUND
        ))));
        assert!(!is_not_found(&forced));
    }

    #[test]
    fn arguments_keep_their_types() {
        let mut given = std::collections::BTreeMap::new();
        given.insert("x-max-length".to_owned(), Argument::Int(5));
        given.insert("x-queue-type".to_owned(), Argument::String("quorum".into()));
        let table = arguments(&given).unwrap();
        assert_eq!(
            table.inner().get("x-max-length"),
            Some(&AMQPValue::LongLongInt(5))
        );
        assert_eq!(
            exchange_kind("x-consistent-hash"),
            ExchangeKind::Custom("x-consistent-hash".into())
        );
    }
}
