//! The names of instruments and attributes: OpenTelemetry's messaging conventions where they
//! have one, `rmq_bus.*` for rmq-bus's own.

// OpenTelemetry semantic conventions for messaging (metrics).
/// Counter: messages published.
pub(crate) const SENT: &str = "messaging.client.sent.messages";
/// Histogram, seconds: publish until the broker's confirm.
pub(crate) const OPERATION_DURATION: &str = "messaging.client.operation.duration";
/// Counter: messages delivered to a consumer.
pub(crate) const CONSUMED: &str = "messaging.client.consumed.messages";
/// Histogram, seconds: a handler's run.
pub(crate) const PROCESS_DURATION: &str = "messaging.process.duration";

// rmq-bus's own.
/// Gauge: handlers running, per queue.
pub(crate) const IN_FLIGHT: &str = "rmq_bus.consumer.in_flight";
/// Gauge: the prefetch window, per queue.
pub(crate) const PREFETCH: &str = "rmq_bus.consumer.prefetch";
/// Gauge: deliveries not acked on the wire yet, per queue (the prefetch window in use).
pub(crate) const UNACKED: &str = "rmq_bus.consumer.unacked";
/// Counter: settlements by outcome and reason.
pub(crate) const SETTLEMENTS: &str = "rmq_bus.consumer.settlements";
/// Histogram: deliveries per multiple ack.
pub(crate) const ACK_BATCH: &str = "rmq_bus.consumer.ack_batch.size";
/// Counter: connections opened again after a loss.
pub(crate) const RECONNECTS: &str = "rmq_bus.connection.reconnects";
/// Histogram, seconds: from losing a connection to consuming again.
pub(crate) const OUTAGE_DURATION: &str = "rmq_bus.connection.outage.duration";
/// Gauge: open connections, by role.
pub(crate) const CONNECTIONS: &str = "rmq_bus.connections";
// The outbox's instruments: described with `metrics`, recorded with a database feature.
/// Gauge: rows waiting in the outbox, per relay's database.
#[cfg(any(feature = "metrics", feature = "postgres", feature = "sqlite"))]
pub(crate) const OUTBOX_BACKLOG: &str = "rmq_bus.outbox.backlog";
/// Counter: outbox rows published (confirmed, then removed).
#[cfg(any(feature = "metrics", feature = "postgres", feature = "sqlite"))]
pub(crate) const OUTBOX_PUBLISHED: &str = "rmq_bus.outbox.published";
/// Counter: outbox rows moved aside to `rmq_bus_outbox_dead`.
#[cfg(any(feature = "metrics", feature = "postgres", feature = "sqlite"))]
pub(crate) const OUTBOX_DEAD: &str = "rmq_bus.outbox.dead";

// Attributes.
pub(crate) const SYSTEM: &str = "messaging.system";
pub(crate) const RABBITMQ: &str = "rabbitmq";
pub(crate) const OPERATION_NAME: &str = "messaging.operation.name";
pub(crate) const OPERATION_TYPE: &str = "messaging.operation.type";
pub(crate) const DESTINATION: &str = "messaging.destination.name";
pub(crate) const ROUTING_KEY: &str = "messaging.rabbitmq.destination.routing_key";
pub(crate) const ERROR_TYPE: &str = "error.type";
/// The outbox's database: `postgresql` or `sqlite`.
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub(crate) const DB_SYSTEM: &str = "db.system.name";
/// The handler's pattern: NestJS routes by it, not by the routing key.
pub(crate) const PATTERN: &str = "rmq_bus.pattern";
/// `ack`, `requeue`, `nack`, `reject`, `retry`, `dead_letter`.
pub(crate) const SETTLEMENT: &str = "rmq_bus.settlement";
/// `poison`, `bad_input`, `handler_error`, `panic`.
pub(crate) const REASON: &str = "rmq_bus.reason";
/// `client` or `microservice`.
pub(crate) const ROLE: &str = "rmq_bus.connection.role";
