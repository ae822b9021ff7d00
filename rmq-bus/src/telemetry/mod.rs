//! Telemetry: the metrics rmq-bus records, in the names of OpenTelemetry's semantic conventions
//! for messaging (`messaging.client.sent.messages`, `messaging.process.duration`, …) and its
//! own (`rmq_bus.*`: handlers in flight, the prefetch window in use, settlements, reconnects,
//! the outbox backlog), and the trace context a handler continues (feature `opentelemetry`, in [`trace`]).
//!
//! Metrics go through the `metrics` facade (feature `metrics`): nothing is recorded until the
//! application installs a recorder, and the handles are made once per queue, route or client,
//! so a message costs a branch per instrument. Attributes are low-cardinality only: the queue or
//! exchange, the pattern, the outcome; never ids. The code that records sits here; its call
//! sites elsewhere are one line each.

mod facade;
pub(crate) mod names;
pub(crate) mod trace;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Instant;

#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub(crate) use facade::RECORDING;
use facade::{Attribute, Counter, TIMED, counter, describe, gauge, histogram};
pub(crate) use facade::{Gauge, Histogram};
use names::*;

use crate::config::{ExchangeKind, RmqOptions};
use crate::delivery::{Outcome, Settlement};
use crate::error::Error;

/// When something timed began; `None` without the feature `metrics`, so no clock is read.
#[derive(Clone, Copy)]
pub(crate) struct Started(Option<Instant>);

impl Started {
    pub(crate) fn now() -> Self {
        Started(TIMED.then(Instant::now))
    }

    /// Timing from `at`, a clock reading the caller took anyway.
    pub(crate) fn at(at: Instant) -> Self {
        Started(TIMED.then_some(at))
    }

    /// Seconds since, for a histogram.
    fn seconds(self) -> f64 {
        self.0.map_or(0.0, |at| at.elapsed().as_secs_f64())
    }
}

/// `messaging.destination.name` on the consumer side, as the RabbitMQ conventions spell it:
/// `{exchange}:{routing key}:{queue}` without the empty parts, and the queue left out when it
/// equals the routing key (the default exchange).
pub(crate) fn consumer_destination(exchange: &str, routing_key: &str, queue: &str) -> String {
    let queue = if routing_key == queue { "" } else { queue };
    join([exchange, routing_key, queue])
}

/// `messaging.destination.name` on the producer side: `{exchange}:{routing key}`, either alone
/// when the other is empty, `amq.default` when both are.
pub(crate) fn producer_destination(exchange: &str, routing_key: &str) -> String {
    match join([exchange, routing_key]) {
        name if name.is_empty() => "amq.default".to_owned(),
        name => name,
    }
}

fn join<const N: usize>(parts: [&str; N]) -> String {
    parts
        .iter()
        .filter(|part| !part.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(":")
}

/// What a consumer is bound to, for the attributes of its instruments.
pub(crate) struct Binding<'a> {
    queue: &'a str,
    /// The exchange its queue is bound to (`None`: the default exchange, keyed by the queue).
    exchange: Option<&'a str>,
    /// A fanout exchange ignores routing keys.
    fanout: bool,
}

impl<'a> Binding<'a> {
    /// The binding of the queue of `options`.
    pub(crate) fn of(options: &'a RmqOptions) -> Self {
        let exchange = options.exchange.as_ref();
        Binding {
            queue: &options.queue,
            exchange: exchange.map(|exchange| exchange.name.as_str()),
            fanout: exchange.is_some_and(|exchange| exchange.kind == ExchangeKind::Fanout),
        }
    }

    /// The destination of the queue as a whole, for rmq-bus's own per-queue instruments.
    fn queue_destination(&self) -> String {
        consumer_destination(self.exchange.unwrap_or(""), "", self.queue)
    }

    /// The routing key the messages of `pattern` arrive with: the queue's name through the
    /// default exchange, the pattern through a topic or direct exchange, none through a fanout.
    fn routing_key<'p>(&'p self, pattern: &'p str) -> &'p str {
        match self.exchange {
            None => self.queue,
            Some(_) if self.fanout => "",
            Some(_) => pattern,
        }
    }

    fn process_attributes(&self, pattern: Option<&str>) -> Vec<Attribute> {
        let routing_key = pattern.map_or("", |pattern| self.routing_key(pattern));
        let destination = match pattern {
            Some(_) => consumer_destination(self.exchange.unwrap_or(""), routing_key, self.queue),
            None => self.queue_destination(),
        };
        let mut attributes = vec![
            (SYSTEM, RABBITMQ.to_owned()),
            (OPERATION_NAME, "process".to_owned()),
            (OPERATION_TYPE, "process".to_owned()),
            (DESTINATION, destination),
        ];
        if !routing_key.is_empty() {
            attributes.push((ROUTING_KEY, routing_key.to_owned()));
        }
        if let Some(pattern) = pattern {
            attributes.push((PATTERN, pattern.to_owned()));
        }
        attributes
    }
}

/// The instruments of one queue's consumer, made when it starts consuming.
pub(crate) struct QueueMetrics {
    in_flight: Gauge,
    acked: Counter,
    /// Deliveries that reached no handler.
    unrouted: Counter,
    /// By route index ([`QueueMetrics::route`]).
    routes: Vec<RouteMetrics>,
    /// For the instruments of rarer outcomes, made when first needed.
    queue_attributes: Vec<Attribute>,
    process_attributes: Vec<Vec<Attribute>>,
}

/// The instruments of one handler on one queue.
struct RouteMetrics {
    consumed: Counter,
    processed: Histogram,
}

/// Why a delivery failed, as `error.type` and `rmq_bus.reason`: a short, fixed set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// Not a message any handler takes: not JSON, no or unknown pattern, wrong shape, too large.
    Poison,
    /// The handler said so (`HandlerError::BadInput`).
    BadInput,
    /// The handler returned an error.
    Handler,
    /// The handler panicked.
    Panic,
}

impl Failure {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Failure::Poison => "poison",
            Failure::BadInput => "bad_input",
            Failure::Handler => "handler_error",
            Failure::Panic => "panic",
        }
    }
}

/// How a delivery ended, for `rmq_bus.consumer.settlements`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Settled {
    /// Settled on the wire as it says.
    As(Settlement),
    /// Republished to a delay queue, then acked.
    Retried,
    /// Republished to the dead-letter queue, then acked.
    DeadLettered,
}

impl Settled {
    /// How a delivery settled with `settlement` for `outcome` ended.
    pub(crate) fn of(settlement: Settlement, outcome: &Outcome) -> Self {
        match outcome {
            Outcome::Retried { .. } => Settled::Retried,
            Outcome::DeadLettered { .. } => Settled::DeadLettered,
            _ => Settled::As(settlement),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Settled::As(Settlement::Ack) => "ack",
            Settled::As(Settlement::Nack { requeue: true }) => "requeue",
            Settled::As(Settlement::Nack { requeue: false }) => "nack",
            Settled::As(Settlement::Reject) => "reject",
            Settled::Retried => "retry",
            Settled::DeadLettered => "dead_letter",
        }
    }
}

impl QueueMetrics {
    /// The instruments of the consumer of `binding`, whose handlers' patterns are `patterns`
    /// (in the router's order: route `i` is `patterns[i]`), with `prefetch`.
    pub(crate) fn new(binding: &Binding<'_>, patterns: &[&str], prefetch: u16) -> Self {
        describe();
        let queue_attributes = vec![
            (SYSTEM, RABBITMQ.to_owned()),
            (DESTINATION, binding.queue_destination()),
        ];
        gauge(PREFETCH, &queue_attributes).set(f64::from(prefetch));
        let process_attributes: Vec<Vec<Attribute>> = patterns
            .iter()
            .map(|pattern| binding.process_attributes(Some(pattern)))
            .collect();
        let routes = process_attributes
            .iter()
            .map(|attributes| RouteMetrics {
                consumed: counter(CONSUMED, attributes),
                processed: histogram(PROCESS_DURATION, attributes),
            })
            .collect();
        QueueMetrics {
            in_flight: gauge(IN_FLIGHT, &queue_attributes),
            acked: counter(
                SETTLEMENTS,
                &settlement_attributes(&queue_attributes, "ack", None),
            ),
            unrouted: counter(CONSUMED, &binding.process_attributes(None)),
            routes,
            queue_attributes,
            process_attributes,
        }
    }

    /// Handlers running now.
    pub(crate) fn in_flight(&self, running: usize) {
        self.in_flight.set(running as f64);
    }

    /// A delivery reached the handler of route `route`.
    pub(crate) fn consumed(&self, route: usize) {
        if let Some(route) = self.routes.get(route) {
            route.consumed.increment(1);
        }
    }

    /// A delivery reached no handler.
    pub(crate) fn unrouted(&self) {
        self.unrouted.increment(1);
    }

    /// The handler of route `route` ran from `started`, and failed if `failure` says so.
    pub(crate) fn processed(&self, route: usize, started: Started, failure: Option<Failure>) {
        match failure {
            None => {
                if let Some(route) = self.routes.get(route) {
                    route.processed.record(started.seconds());
                }
            }
            Some(failure) => {
                let Some(attributes) = self.process_attributes.get(route) else {
                    return;
                };
                let mut attributes = attributes.clone();
                attributes.push((ERROR_TYPE, failure.name().to_owned()));
                histogram(PROCESS_DURATION, &attributes).record(started.seconds());
            }
        }
    }

    /// A delivery was settled as `settled`; `failure` says why, when it failed.
    pub(crate) fn settled(&self, settled: Settled, failure: Option<Failure>) {
        if settled == Settled::As(Settlement::Ack) {
            return self.acked.increment(1);
        }
        let attributes = settlement_attributes(&self.queue_attributes, settled.name(), failure);
        counter(SETTLEMENTS, &attributes).increment(1);
    }
}

fn settlement_attributes(
    queue: &[Attribute],
    settlement: &str,
    failure: Option<Failure>,
) -> Vec<Attribute> {
    let mut attributes = queue.to_vec();
    attributes.push((SETTLEMENT, settlement.to_owned()));
    if let Some(failure) = failure {
        attributes.push((REASON, failure.name().to_owned()));
    }
    attributes
}

/// The gauge of a consumer channel's deliveries not acked on the wire yet (with the feature
/// `metrics`, after [`describe`]: the consumer's first instruments).
pub(crate) fn unacked_gauge(binding: &Binding<'_>) -> Gauge {
    gauge(
        UNACKED,
        &[
            (SYSTEM, RABBITMQ.to_owned()),
            (DESTINATION, binding.queue_destination()),
        ],
    )
}

/// The histogram of a consumer channel's multiple acks, in deliveries each.
pub(crate) fn ack_batch_histogram(binding: &Binding<'_>) -> Histogram {
    histogram(
        ACK_BATCH,
        &[
            (SYSTEM, RABBITMQ.to_owned()),
            (DESTINATION, binding.queue_destination()),
        ],
    )
}

/// Who holds a connection.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Role {
    Client,
    Microservice,
}

impl Role {
    fn attributes(self) -> [Attribute; 2] {
        let role = match self {
            Role::Client => "client",
            Role::Microservice => "microservice",
        };
        [(SYSTEM, RABBITMQ.to_owned()), (ROLE, role.to_owned())]
    }
}

/// A connection of `role` was opened.
pub(crate) fn connected(role: Role) {
    describe();
    gauge(CONNECTIONS, &role.attributes()).increment(1.0);
}

/// A connection of `role` was closed or lost.
pub(crate) fn disconnected(role: Role) {
    gauge(CONNECTIONS, &role.attributes()).decrement(1.0);
}

/// A connection of `role` was opened again after one was lost at `lost` (when known).
pub(crate) fn reconnected(role: Role, lost: Option<Started>) {
    let attributes = role.attributes();
    counter(RECONNECTS, &attributes).increment(1);
    if let Some(lost) = lost {
        histogram(OUTAGE_DURATION, &attributes).record(lost.seconds());
    }
}

/// The instruments of a client's publishes, per destination: made on the first publish to it.
#[derive(Default)]
pub(crate) struct SendMetrics {
    /// Through the default exchange a client always publishes to its queue.
    queue: OnceLock<Arc<Sent>>,
    /// Through an exchange, by routing key (the pattern).
    by_key: Mutex<HashMap<String, Arc<Sent>>>,
}

/// The instruments of publishes to one destination.
pub(crate) struct Sent {
    attributes: Vec<Attribute>,
    sent: Counter,
    confirmed: Histogram,
}

impl SendMetrics {
    /// The instruments of publishes to `exchange` (`""`: the default one) with `routing_key`.
    pub(crate) fn to(&self, exchange: &str, routing_key: &str) -> Arc<Sent> {
        if exchange.is_empty() {
            return self
                .queue
                .get_or_init(|| Sent::new(exchange, routing_key))
                .clone();
        }
        let mut by_key = self.by_key.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(sent) = by_key.get(routing_key) {
            return sent.clone();
        }
        let sent = Sent::new(exchange, routing_key);
        by_key.insert(routing_key.to_owned(), sent.clone());
        sent
    }
}

impl Sent {
    fn new(exchange: &str, routing_key: &str) -> Arc<Self> {
        describe();
        let mut attributes = vec![
            (SYSTEM, RABBITMQ.to_owned()),
            (OPERATION_NAME, "send".to_owned()),
            (OPERATION_TYPE, "send".to_owned()),
            (DESTINATION, producer_destination(exchange, routing_key)),
        ];
        if !routing_key.is_empty() {
            attributes.push((ROUTING_KEY, routing_key.to_owned()));
        }
        Arc::new(Sent {
            sent: counter(SENT, &attributes),
            confirmed: histogram(OPERATION_DURATION, &attributes),
            attributes,
        })
    }

    /// A message was published from `started`: confirmed, or failed with `error`.
    pub(crate) fn published(&self, started: Started, error: Option<&Error>) {
        match error.map(error_type) {
            None => {
                self.sent.increment(1);
                self.confirmed.record(started.seconds());
            }
            Some(error) => {
                let mut attributes = self.attributes.clone();
                attributes.push((ERROR_TYPE, error.to_owned()));
                counter(SENT, &attributes).increment(1);
                histogram(OPERATION_DURATION, &attributes).record(started.seconds());
            }
        }
    }
}

/// The instruments of an outbox relay, made when it starts.
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub(crate) struct OutboxMetrics {
    backlog: Gauge,
    published: Counter,
    dead: Counter,
}

#[cfg(any(feature = "postgres", feature = "sqlite"))]
impl OutboxMetrics {
    /// The instruments of a relay on a database whose `db.system.name` is `database`.
    pub(crate) fn new(database: &'static str) -> Self {
        describe();
        let attributes = [
            (SYSTEM, RABBITMQ.to_owned()),
            (DB_SYSTEM, database.to_owned()),
        ];
        OutboxMetrics {
            backlog: gauge(OUTBOX_BACKLOG, &attributes),
            published: counter(OUTBOX_PUBLISHED, &attributes),
            dead: counter(OUTBOX_DEAD, &attributes),
        }
    }

    /// `rows` wait in the outbox.
    pub(crate) fn backlog(&self, rows: i64) {
        self.backlog.set(rows as f64);
    }

    /// A batch was settled: `published` rows removed once confirmed, `dead` moved aside.
    pub(crate) fn settled(&self, published: usize, dead: usize) {
        self.published.increment(published as u64);
        self.dead.increment(dead as u64);
    }
}

/// `error.type` of a failed publish: a short, fixed set.
pub(crate) fn error_type(error: &Error) -> &'static str {
    match error {
        Error::Nacked { .. } => "nacked",
        Error::Unroutable { .. } => "unroutable",
        Error::ConfirmTimeout { .. } => "confirm_timeout",
        Error::Blocked { .. } => "blocked",
        Error::Connect { .. } => "connect",
        Error::Disconnected { .. } | Error::ChannelClosed { .. } => "disconnected",
        Error::TooLarge { .. } => "too_large",
        Error::Encode(_) => "encode",
        Error::RequestTimeout { .. } => "timeout",
        _ => "_OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_follow_the_rabbitmq_conventions() {
        assert_eq!(consumer_destination("", "BILLING", "BILLING"), "BILLING");
        assert_eq!(
            consumer_destination("events", "order.*", "invoices"),
            "events:order.*:invoices"
        );
        assert_eq!(
            consumer_destination("prices", "", "mailer"),
            "prices:mailer"
        );
        assert_eq!(producer_destination("", "BILLING"), "BILLING");
        assert_eq!(
            producer_destination("events", "order.created"),
            "events:order.created"
        );
        assert_eq!(producer_destination("", ""), "amq.default");
    }
}
