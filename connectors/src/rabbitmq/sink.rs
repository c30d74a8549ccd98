//! The running `rabbitmq` sink: reads events, publishes each on the lane its key hashes to,
//! settles it on the broker's answer, and keeps going across nacks; a lost connection ends the
//! run, and the runtime starts it again with everything it had not settled.
//!
//! The rules are units of their own: which of a key's events may go out and what a settle or
//! a nack releases is `order`'s (a nack holds the key's later events back until the retried
//! one is settled); when a nacked record goes out again is `retry`'s; where an event that
//! cannot be delivered goes is `quarantine`'s. This module drives them with the connection.
//!
//! After a lost connection every unsettled record is published again, each lane in the order
//! the records were first accepted, before anything new; the events of a key therefore reach
//! the queue in commit order, with duplicates of any that had arrived but were not confirmed.

use std::collections::VecDeque;
use std::collections::hash_map::DefaultHasher;
use std::future::poll_fn;
use std::hash::{Hash, Hasher};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use amq_protocol::types::ShortString;
use sluice_pipeline::backoff::BackoffConfig;
use sluice_pipeline::error::chain;
use sluice_pipeline::{Error, ErrorKind, Event, Sink, SinkContext, Text};

use super::avro::AvroEncoder;
use super::broker::{Answer, Broker, ExchangeState};
use super::config::{Encoding, RabbitmqSinkConfig};
use super::lane::{Lane, Outcome, Purpose, Record, Returned, Settled};
use super::message::{Message, MessageBuilder};
use super::metrics::RabbitmqMetrics;
use super::order::KeyOrder;
use super::quarantine::{self, Route};
use super::retry::{Retries, next_broker_after};
use super::wire::WireError;
use sluice_connect::amqp::Endpoint;

/// The running `rabbitmq` sink.
#[derive(Debug)]
pub struct RabbitmqSink {
    config: RabbitmqSinkConfig,
    endpoints: Vec<Endpoint>,
    /// Made on the first start, and kept across restarts with what it has not settled.
    relay: Option<Relay>,
}

impl RabbitmqSink {
    /// A sink for a validated `config` (no I/O).
    pub fn new(config: RabbitmqSinkConfig) -> Result<Self, Error> {
        let endpoints = config
            .endpoints()
            .map_err(|errors| Error::new(ErrorKind::Config, errors.to_string()))?;
        Ok(RabbitmqSink {
            config,
            endpoints,
            relay: None,
        })
    }
}

impl Sink for RabbitmqSink {
    /// Connects (the first time, after loading the Avro schema), declares the topology and
    /// publishes what the last connection left unconfirmed.
    async fn start(&mut self, cx: &mut SinkContext) -> Result<(), Error> {
        let relay = match &mut self.relay {
            Some(relay) => relay,
            None => {
                let avro = match &self.config.encoding {
                    Encoding::Avro {
                        schema_file,
                        confluent_schema_id,
                    } => Some(AvroEncoder::load(schema_file, *confluent_schema_id)?),
                    Encoding::Json => None,
                };
                let builder = MessageBuilder::new(&self.config, avro, cx.id());
                let relay = Relay::new(
                    self.config.clone(),
                    self.endpoints.clone(),
                    builder,
                    cx.id(),
                );
                self.relay.insert(relay)
            }
        };
        relay.connect(cx).await
    }

    async fn run(&mut self, cx: &mut SinkContext) -> Result<(), Error> {
        match &mut self.relay {
            Some(relay) => relay.run(cx).await,
            None => Err(Error::new(ErrorKind::Internal, "run before start")),
        }
    }

    async fn stop(&mut self) {
        if let Some(relay) = &mut self.relay {
            if let Some(broker) = relay.broker.take() {
                broker.close().await;
            }
            relay.metrics.in_flight.set(relay.in_flight as f64);
        }
    }
}

/// What woke the relay up.
enum Wake {
    /// Lanes have settled records.
    Settled,
    /// Nacked records are due to be retried.
    RetryDue,
    /// The connection failed.
    Lost(WireError),
    /// The broker blocked (true) or unblocked (false) publishing.
    Blocked(bool),
}

/// The sink's state: the connection, and every record it holds until the broker settles it.
struct Relay {
    /// The brokers (`url`, or the nodes of `urls`).
    endpoints: Vec<Endpoint>,
    /// The broker connected to, or last tried.
    node: usize,
    /// The broker the next connection tries first: a random one at first, so that sinks
    /// spread over a cluster's nodes, then the one after the last tried.
    next_node: usize,
    name: String,
    config: RabbitmqSinkConfig,
    builder: MessageBuilder,
    /// The type of the exchanges the sink declares itself (`exchange_type`).
    declare_as: Option<ShortString>,
    metrics: RabbitmqMetrics,
    broker: Option<Broker>,
    lanes: Vec<Lane>,
    /// The order of each key's records.
    keys: KeyOrder<Record>,
    /// Keys with nacked records waiting out a backoff.
    retries: Retries,
    /// Received, not yet turned into records.
    incoming: VecDeque<Event>,
    /// Unsettled when the connection failed: published first on the next one.
    unsent: Vec<Record>,
    /// For the pipeline's quarantine, sent after each step.
    rejects: Vec<(Event, Text)>,
    settled: Vec<Settled>,
    /// A failure seen while settling, handled once the rest is settled.
    failure: Option<WireError>,
    next_seq: u64,
    /// Records published and not yet settled, over all lanes.
    in_flight: usize,
    connected_once: bool,
    /// The broker blocks publishing (a resource alarm): input waits, nothing new is published.
    blocked: bool,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("connected", &self.broker.is_some())
            .field("in_flight", &self.in_flight)
            .field("unsent", &self.unsent.len())
            .finish_non_exhaustive()
    }
}

impl Relay {
    fn new(
        config: RabbitmqSinkConfig,
        endpoints: Vec<Endpoint>,
        builder: MessageBuilder,
        id: &str,
    ) -> Self {
        let first = random_below(endpoints.len());
        Relay {
            endpoints,
            node: first,
            next_node: first,
            name: id.to_owned(),
            builder,
            declare_as: config
                .exchange_type
                .as_deref()
                .and_then(|kind| ShortString::try_new(kind).ok()),
            metrics: RabbitmqMetrics::new(id, config.confirm_window),
            broker: None,
            lanes: (0..config.channels).map(|_| Lane::default()).collect(),
            keys: KeyOrder::new(config.max_in_flight_per_key),
            retries: Retries::new(BackoffConfig {
                initial: config.backoff_initial,
                max: config.backoff_max,
            }),
            incoming: VecDeque::new(),
            unsent: Vec::new(),
            rejects: Vec::new(),
            settled: Vec::new(),
            failure: None,
            next_seq: 0,
            in_flight: 0,
            connected_once: false,
            blocked: false,
            config,
        }
    }

    /// Publishes and settles until the input has ended and everything is settled; a lost
    /// connection ends it with a retryable error, keeping what is unsettled for the next one.
    async fn run(&mut self, cx: &mut SinkContext) -> Result<(), Error> {
        let mut input_open = true;
        loop {
            self.accept_pending().await;
            self.step_done(cx).await?;
            self.metrics.in_flight.set(self.in_flight as f64);
            if !input_open && self.is_idle() {
                break;
            }
            let room =
                !self.blocked && self.in_flight + self.incoming.len() < self.config.confirm_window;
            // Biased: the connection is polled first, so what was just published is written
            // before more input is taken.
            let input = tokio::select! {
                biased;
                wake = poll_fn(|task| self.poll_wake(task)) => Err(wake),
                batch = cx.next(), if input_open && room => Ok(batch),
            };
            match input {
                Ok(Some(batch)) => {
                    self.incoming.extend(batch);
                    while self.in_flight + self.incoming.len() < self.config.confirm_window {
                        let Some(batch) = cx.try_next() else { break };
                        self.incoming.extend(batch);
                    }
                }
                Ok(None) => input_open = false,
                Err(Wake::Settled) => self.settle(),
                Err(Wake::RetryDue) => self.retry_due(),
                Err(Wake::Lost(error)) => self.failure = Some(error),
                Err(Wake::Blocked(blocked)) => self.set_blocked(blocked, cx),
            }
            self.step_done(cx).await?;
        }
        if let Some(broker) = self.broker.take() {
            broker.close().await;
        }
        Ok(())
    }

    /// Follows the broker's `connection.blocked`/`unblocked`: while blocked, the sink takes no
    /// input and publishes nothing new (what is published may still be confirmed), and is not
    /// ready; each change is logged once and counted.
    fn set_blocked(&mut self, blocked: bool, cx: &SinkContext) {
        if blocked == self.blocked {
            return;
        }
        self.blocked = blocked;
        self.metrics.blocked.set(if blocked { 1.0 } else { 0.0 });
        cx.set_ready(!blocked);
        if blocked {
            self.metrics.blocks.increment(1);
            let reason = self.broker.as_ref().and_then(Broker::blocked).unwrap_or("");
            tracing::warn!(
                reason,
                "the broker blocks publishing (resource alarm): pausing"
            );
        } else {
            tracing::info!("the broker unblocked publishing: resuming");
        }
    }

    /// After each step: sends the rejects on, and ends the run if the connection failed.
    async fn step_done(&mut self, cx: &SinkContext) -> Result<(), Error> {
        let lost = self.failure.take().map(|error| self.teardown(error, cx));
        self.flush_rejects(cx).await;
        match lost {
            Some(error) => {
                self.metrics.in_flight.set(self.in_flight as f64);
                Err(Error::new(
                    ErrorKind::Connect,
                    format!(
                        "lost the connection to RabbitMQ at {}",
                        self.endpoints[self.node]
                    ),
                )
                .with_source(error))
            }
            None => Ok(()),
        }
    }

    fn is_idle(&self) -> bool {
        self.in_flight == 0
            && self.keys.is_empty()
            && self.incoming.is_empty()
            && self.unsent.is_empty()
    }

    /// Connects to one of the brokers, trying each once from `next_node` on, and publishes
    /// what the last connection left unsettled. Each failure is reported once: logged when
    /// another broker is tried after it, or returned. An error retrying cannot fix (a
    /// refused password) stops the pipeline on the first connection only, and is the one
    /// returned when several brokers fail; once the sink has delivered, every failure to
    /// connect is retried.
    async fn connect(&mut self, cx: &SinkContext) -> Result<(), Error> {
        let mut failed: Option<Error> = None;
        for _ in 0..self.endpoints.len() {
            self.node = self.next_node;
            self.next_node = (self.node + 1) % self.endpoints.len();
            let error = match self.try_connect().await {
                Ok(()) => {
                    tracing::info!(
                        broker = %self.endpoints[self.node],
                        republished = self.in_flight,
                        "connected to RabbitMQ"
                    );
                    self.connected_once = true;
                    cx.set_ready(true);
                    return Ok(());
                }
                Err(error) => error,
            };
            self.detach_all();
            self.broker = None;
            self.metrics.reconnects.increment(1);
            let (kept, passed) = match failed.take() {
                Some(previous) if !previous.is_retryable() => (previous, Some(error)),
                previous => (error, previous),
            };
            if let Some(passed) = passed {
                tracing::warn!(
                    error = %chain(&passed),
                    "could not connect to a RabbitMQ node; trying the next"
                );
            }
            failed = Some(kept);
        }
        let error = failed.unwrap_or_else(|| {
            Error::new(ErrorKind::Internal, "connecting with no broker configured")
        });
        if self.connected_once && !error.is_retryable() {
            return Err(
                Error::new(ErrorKind::Connect, "reconnecting to RabbitMQ").with_source(error)
            );
        }
        Err(error)
    }

    /// Connects to broker `node`, declares the topology and publishes what is unsent.
    async fn try_connect(&mut self) -> Result<(), Error> {
        let endpoint = &self.endpoints[self.node];
        let wire_error =
            |context: String| move |e: WireError| Error::new(e.kind(), context).with_source(e);
        let broker = Broker::connect(
            endpoint,
            &self.name,
            self.config.connect_timeout.get(),
            &self.config.topology(),
            &mut self.lanes,
        )
        .await
        .map_err(wire_error(format!("connecting to RabbitMQ at {endpoint}")))?;
        let republishing =
            format!("publishing again on {endpoint} what the last connection left unconfirmed");
        self.broker = Some(broker);
        self.ensure_quarantine_exchange().await?;
        self.publish_unsent()
            .await
            .map_err(wire_error(republishing))
    }

    /// Checks (or declares) the quarantine exchange; a missing one is a configuration error.
    async fn ensure_quarantine_exchange(&mut self) -> Result<(), Error> {
        let (Some(exchange), Some(broker)) = (
            self.builder.quarantine_exchange().cloned(),
            &mut self.broker,
        ) else {
            return Ok(());
        };
        match broker
            .ensure_exchange(&exchange, self.declare_as.as_ref())
            .await
        {
            Ok(ExchangeState::Ready) => Ok(()),
            Ok(ExchangeState::Missing) => Err(Error::new(
                ErrorKind::Config,
                format!(
                    "quarantine_exchange {exchange:?} does not exist: declare it in `declare.exchanges` or set `exchange_type`"
                ),
            )),
            Err(error) => {
                Err(Error::new(error.kind(), "checking the quarantine exchange").with_source(error))
            }
        }
    }

    /// Publishes the records the last connection left unsettled, each lane in acceptance
    /// order, before anything new.
    async fn publish_unsent(&mut self) -> Result<(), WireError> {
        let mut unsent = std::mem::take(&mut self.unsent);
        unsent.sort_by_key(|r| r.seq);
        let mut records = unsent.into_iter();
        let now = Instant::now();
        while let Some(record) = records.next() {
            let message = match self.message_for(&record) {
                Ok(message) => message,
                Err(reason) => {
                    self.reject_record(record, reason, now);
                    continue;
                }
            };
            match self
                .exchange_state(&message.exchange, &record.purpose)
                .await
            {
                Ok(ExchangeState::Ready) => {
                    self.metrics.republished.increment(1);
                    self.publish(record, message, now);
                }
                Ok(ExchangeState::Missing) => {
                    self.requarantine(record, missing_exchange(&message.exchange), None);
                }
                Err(error) => {
                    self.unsent.push(record);
                    self.unsent.extend(records);
                    return Err(error);
                }
            }
        }
        Ok(())
    }

    /// Whether `exchange` exists on this connection (the quarantine exchange is checked once
    /// per connection).
    async fn exchange_state(
        &mut self,
        exchange: &ShortString,
        purpose: &Purpose,
    ) -> Result<ExchangeState, WireError> {
        let Some(broker) = &mut self.broker else {
            return Err(WireError::NotConnected);
        };
        match purpose {
            Purpose::Deliver => {
                broker
                    .ensure_exchange(exchange, self.declare_as.as_ref())
                    .await
            }
            Purpose::Quarantine { .. } => Ok(ExchangeState::Ready),
        }
    }

    /// The message `record` is published as: built from its event for every attempt.
    fn message_for(&self, record: &Record) -> Result<Message, String> {
        let event = &record.event;
        match &record.purpose {
            Purpose::Deliver => self.builder.build(event).map_err(|r| r.reason),
            Purpose::Quarantine { reason, returned } => {
                quarantine::rebuild(&self.builder, event, reason, *returned)
            }
        }
    }

    /// Turns received events into records and publishes or holds them.
    async fn accept_pending(&mut self) {
        let now = Instant::now();
        while self.broker.is_some() && !self.blocked {
            let Some(event) = self.incoming.pop_front() else {
                break;
            };
            let key = ordering_key(&event);
            let lane = self.lane_of(&key);
            let (mut message, mut purpose) = match self.builder.build(&event) {
                Ok(message) => (message, Purpose::Deliver),
                Err(rejection) => {
                    let route = if rejection.to_exchange {
                        self.divert(&event, &Purpose::Deliver, rejection.reason, None)
                    } else {
                        Route::Pipeline(rejection.reason)
                    };
                    match route {
                        Route::Exchange(message, purpose) => (*message, purpose),
                        Route::Pipeline(reason) => {
                            self.rejects.push((event, Text::from(reason)));
                            continue;
                        }
                    }
                }
            };
            match self.exchange_state(&message.exchange, &purpose).await {
                Ok(ExchangeState::Ready) => {}
                Ok(ExchangeState::Missing) => {
                    let reason = missing_exchange(&message.exchange);
                    match self.divert(&event, &Purpose::Deliver, reason, None) {
                        Route::Exchange(quarantined, diverted) => {
                            message = *quarantined;
                            purpose = diverted;
                        }
                        Route::Pipeline(reason) => {
                            self.rejects.push((event, Text::from(reason)));
                            continue;
                        }
                    }
                }
                Err(error) => {
                    self.incoming.push_front(event);
                    self.failure = Some(error);
                    break;
                }
            }
            let record = Record {
                seq: self.next_seq,
                event,
                key,
                lane,
                purpose,
                nacks: 0,
                returned: None,
            };
            self.next_seq += 1;
            self.admit(record, message, now);
        }
    }

    /// Publishes a new record as `message`, or holds it behind its key's earlier ones (its
    /// message is built again when it is released).
    fn admit(&mut self, record: Record, message: Message, now: Instant) {
        if let Some(record) = self.keys.admit(record) {
            self.publish(record, message, now);
        }
    }

    /// Queues `message` on the record's lane; without a connection, the record waits for
    /// the next one.
    fn publish(&mut self, record: Record, message: Message, now: Instant) {
        let Some(broker) = &mut self.broker else {
            self.unsent.push(record);
            return;
        };
        match broker.publish(record.lane, &message) {
            Ok(()) => {
                self.metrics.published.increment(1);
                self.in_flight += 1;
                self.lanes[record.lane].push(record, now);
            }
            Err(error) => {
                let reason = format!("cannot be encoded as an AMQP message: {error}");
                self.reject_record(record, reason, now);
            }
        }
    }

    /// Publishes a record whose first message is gone (released, retried): built anew.
    fn send(&mut self, record: Record, now: Instant) {
        match self.message_for(&record) {
            Ok(message) => self.publish(record, message, now),
            Err(reason) => self.reject_record(record, reason, now),
        }
    }

    fn lane_of(&self, key: &Text) -> usize {
        let mut hasher = DefaultHasher::new();
        key.as_str().hash(&mut hasher);
        (hasher.finish() % self.lanes.len() as u64) as usize
    }

    /// Polls for what the relay waits on: lost connection, settled records, due retries.
    fn poll_wake(&mut self, task: &mut Context<'_>) -> Poll<Wake> {
        if let Some(broker) = &mut self.broker {
            // Answers that arrived before a failure still count.
            let polled = broker.poll(task);
            let answered = answer_lanes(&mut self.lanes, broker);
            if let Err(error) = polled.and(answered) {
                return Poll::Ready(Wake::Lost(error));
            }
            if broker.blocked().is_some() != self.blocked {
                return Poll::Ready(Wake::Blocked(!self.blocked));
            }
        }
        let mut settled = false;
        for lane in &mut self.lanes {
            settled |= lane.settle(&mut self.settled);
        }
        if settled {
            return Poll::Ready(Wake::Settled);
        }
        if self.retries.poll_due(task).is_ready() {
            return Poll::Ready(Wake::RetryDue);
        }
        Poll::Pending
    }

    /// Acts on every settled record.
    fn settle(&mut self) {
        let now = Instant::now();
        let wall = SystemTime::now();
        let mut confirmed = 0;
        // Taken and put back so that its capacity is reused.
        let mut settled = std::mem::take(&mut self.settled);
        for Settled {
            record,
            published_at,
            outcome,
        } in settled.drain(..)
        {
            self.in_flight -= 1;
            match outcome {
                Outcome::Confirmed => {
                    confirmed += 1;
                    self.metrics
                        .confirm_latency
                        .record(now.saturating_duration_since(published_at));
                    if let Some(commit) = record.event.meta.commit_time
                        && let Ok(latency) = wall.duration_since(commit)
                    {
                        self.metrics.commit_to_confirm_latency.record(latency);
                    }
                    self.delivered(record, now);
                }
                Outcome::Returned(returned) => {
                    self.metrics.returned.increment(1);
                    let Returned { reason, message } = *returned;
                    self.requarantine(record, reason, Some(message));
                }
                Outcome::Nacked => {
                    self.metrics.nacked.increment(1);
                    self.nacked(record, now);
                }
            }
        }
        self.settled = settled;
        if confirmed > 0 {
            self.metrics.confirmed.increment(confirmed);
        }
    }

    /// A record the broker holds: its event is done.
    fn delivered(&mut self, record: Record, now: Instant) {
        if let Purpose::Quarantine { reason, .. } = &record.purpose {
            self.metrics.quarantined.increment(1);
            tracing::warn!(event_id = %record.event.id, %reason, "event quarantined to the quarantine exchange");
        }
        let key = record.key.clone();
        let was_nacked = record.nacks > 0;
        record.event.ack();
        self.key_settled(&key, was_nacked, now);
    }

    /// Sends a record to the quarantine exchange with `reason` (it keeps its place as its
    /// key's record in flight), or to the pipeline's quarantine when there is no exchange for
    /// it. `returned`: the message as the broker returned it, whose body and properties the
    /// quarantined copy keeps.
    fn requarantine(&mut self, record: Record, reason: String, returned: Option<Message>) {
        let now = Instant::now();
        match self.divert(&record.event, &record.purpose, reason, returned.as_ref()) {
            Route::Exchange(message, purpose) => {
                let record = Record {
                    purpose,
                    returned: None,
                    ..record
                };
                self.publish(record, *message, now);
            }
            Route::Pipeline(reason) => self.reject_record(record, reason, now),
        }
    }

    /// Where `event`, last published for `purpose`, goes for `reason` (see `quarantine`).
    fn divert(
        &self,
        event: &Event,
        purpose: &Purpose,
        reason: String,
        returned: Option<&Message>,
    ) -> Route {
        quarantine::divert(&self.builder, event, purpose, reason, returned)
    }

    /// Sends a record's event to the pipeline's quarantine; its key moves on.
    fn reject_record(&mut self, record: Record, reason: String, now: Instant) {
        let key = record.key.clone();
        let was_nacked = record.nacks > 0;
        self.rejects.push((record.event, Text::from(reason)));
        self.key_settled(&key, was_nacked, now);
    }

    /// A nacked record waits out its backoff, and its key is held back until it is settled.
    fn nacked(&mut self, mut record: Record, now: Instant) {
        record.nacks += 1;
        let wait = self.retries.nacked(record.key.clone(), record.nacks);
        tracing::warn!(event_id = %record.event.id, nacks = record.nacks, retry_in = ?wait, "the broker nacked a message; retrying");
        if next_broker_after(record.nacks, self.endpoints.len()) && self.failure.is_none() {
            self.failure = Some(WireError::Nacking(record.nacks));
        }
        let first = record.nacks == 1;
        self.keys.nacked(record, first, now + wait);
        self.retries.arm(&self.keys);
    }

    /// Republishes the nacked records whose backoff is over, each key's in acceptance order.
    fn retry_due(&mut self) {
        let now = Instant::now();
        for key in self.retries.due(&self.keys, now) {
            for record in self.keys.retry(&key) {
                self.metrics.republished.increment(1);
                self.send(record, now);
            }
        }
        self.retries.arm(&self.keys);
    }

    /// One of `key`'s records is settled: release what it held back.
    fn key_settled(&mut self, key: &Text, was_nacked: bool, now: Instant) {
        for record in self.keys.settled(key, was_nacked) {
            self.send(record, now);
        }
    }

    /// The connection is gone: settle what was answered, keep the rest for the next one, and
    /// hand the cause back.
    fn teardown(&mut self, error: WireError, cx: &SinkContext) -> WireError {
        cx.set_ready(false);
        // A new connection starts unblocked; the broker says again if the alarm holds.
        self.blocked = false;
        self.metrics.blocked.set(0.0);
        self.metrics.reconnects.increment(1);
        tracing::warn!(
            broker = %self.endpoints[self.node],
            unsettled = self.in_flight,
            "lost the connection to RabbitMQ"
        );
        // Answers that arrived before the failure still count; what settling releases waits
        // for the next connection.
        if let Some(mut broker) = self.broker.take()
            && let Err(error) = answer_lanes(&mut self.lanes, &mut broker)
        {
            tracing::debug!(%error, "an answer read before the failure matches nothing");
        }
        for lane in &mut self.lanes {
            lane.settle(&mut self.settled);
        }
        self.settle();
        self.failure = None;
        self.detach_all();
        self.keys.retry_all(&mut self.unsent);
        self.retries.clear();
        error
    }

    /// Takes every unsettled record off the lanes into `unsent`.
    fn detach_all(&mut self) {
        for lane in &mut self.lanes {
            let records = lane.detach();
            self.in_flight -= records.len();
            self.unsent.extend(records);
        }
    }

    async fn flush_rejects(&mut self, cx: &SinkContext) {
        if !self.rejects.is_empty() {
            cx.reject(std::mem::take(&mut self.rejects)).await;
        }
    }
}

/// A number below `n` (at least 1), different from run to run: std's hasher keys are random.
fn random_below(n: usize) -> usize {
    let random = std::hash::BuildHasher::build_hasher(&std::hash::RandomState::new()).finish();
    (random % n.max(1) as u64) as usize
}

fn missing_exchange(exchange: &ShortString) -> String {
    format!("exchange {:?} does not exist", exchange.as_str())
}

/// Hands the broker's answers to the lanes they are about.
fn answer_lanes(lanes: &mut [Lane], broker: &mut Broker) -> Result<(), WireError> {
    broker.answers().try_for_each(|answer| match answer {
        Answer::Confirm {
            lane,
            tag,
            multiple,
            ack,
        } => lanes[lane].confirm(tag, multiple, ack),
        Answer::Return { lane, returned } => {
            lanes[lane].returned(returned);
            Ok(())
        }
    })
}

/// The key that orders an event: its key, or for an event without one (when the config allows
/// that), its id, which orders it with nothing else.
fn ordering_key(event: &Event) -> Text {
    event.key.clone().unwrap_or_else(|| event.id.clone())
}
