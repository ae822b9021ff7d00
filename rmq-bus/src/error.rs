//! The one error type of rmq-bus, with messages that say what to do next.

use std::time::Duration;

use crate::delivery::Settlement;
use crate::rpc::RpcError;

/// The underlying error of a transport (a `lapin::Error` on RabbitMQ).
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Shorthand for `Result<T, rmq_bus::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in rmq-bus.
///
/// Each message names the thing at fault (a variable, a queue, a pattern) and, where there is one,
/// the fix. Broker errors keep the transport's error (a `lapin::Error` on RabbitMQ) as their
/// [`source`](std::error::Error::source).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An environment variable holds a value rmq-bus cannot use.
    #[error("environment variable {var}={value:?} is invalid: {reason}")]
    InvalidEnv {
        /// The variable's name.
        var: String,
        /// The value found (credentials redacted).
        value: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A setting given in code is invalid.
    #[error("invalid rmq-bus configuration: {0}")]
    Config(String),

    /// A name or text AMQP carries as a short string (queue, exchange, routing key, header) is
    /// longer than its 255 bytes.
    #[error("{what} {} is longer than the 255 bytes AMQP allows", shorten(value))]
    TooLong {
        /// What the text is (`"routing key"`, `"queue name"`, …).
        what: &'static str,
        /// The text (its start, when it is very long).
        value: String,
    },

    /// The broker could not be reached or refused the login.
    #[error(
        "cannot connect to RabbitMQ at {uri}: {source}; check that the broker is running and that RABBIT_MQ_URI (host, port, vhost, credentials) is right"
    )]
    Connect {
        /// The URI tried, with its password redacted.
        uri: String,
        /// The underlying error.
        #[source]
        source: BoxError,
    },

    /// Declaring a queue failed, usually because it exists with other settings.
    #[error(
        "cannot declare queue {queue:?}: {source}; if it already exists with other settings (durable, x-* arguments), make QueueOptions match its declaration, or skip the declaration with RmqOptions::no_assert"
    )]
    Declare {
        /// The queue.
        queue: String,
        /// The underlying error.
        #[source]
        source: BoxError,
    },

    /// Declaring an exchange failed, usually because it exists with another kind or durability.
    #[error(
        "cannot declare exchange {exchange:?}: {source}; if it already exists as another kind (topic, direct, fanout) or durability, make Exchange match it, or skip declarations with RmqOptions::no_assert"
    )]
    DeclareExchange {
        /// The exchange.
        exchange: String,
        /// The underlying error.
        #[source]
        source: BoxError,
    },

    /// A queue could not be consumed, usually because it does not exist.
    #[error(
        "cannot consume queue {queue:?}: {source}; with RmqOptions::no_assert the queue must already exist (declared by another service or an operator)"
    )]
    Consume {
        /// The queue.
        queue: String,
        /// The underlying error.
        #[source]
        source: BoxError,
    },

    /// The connection or channel is gone; the operation did not happen.
    #[error(
        "the connection to the broker is closed ({context}): {source}; the operation did not take place and may be retried"
    )]
    Disconnected {
        /// What was being done.
        context: &'static str,
        /// The underlying error.
        #[source]
        source: BoxError,
    },

    /// Any other broker error during an operation.
    #[error("the broker refused {operation}: {source}")]
    Broker {
        /// What was being done.
        operation: &'static str,
        /// The underlying error.
        #[source]
        source: BoxError,
    },

    /// The broker answered a publish with a negative confirm: the message was not stored. It is
    /// not retried: a nack means the broker will not take it now (a queue full with
    /// `x-overflow: reject-publish`, a quorum queue at its limit, an internal error).
    #[error(
        "the broker refused the message for {target} (publisher nack): it was not stored. The queue may be full (x-overflow=reject-publish, a quorum queue at its limit) or the broker short of resources; publish it again later"
    )]
    Nacked {
        /// Where it was published: the queue, or the exchange and routing key.
        target: String,
    },

    /// No queue is bound for the message, so the broker returned it.
    #[error("{}", unroutable(exchange, routing_key))]
    Unroutable {
        /// The exchange published to (`""`: the default exchange, which routes to the queue
        /// named by the routing key).
        exchange: String,
        /// The routing key used.
        routing_key: String,
    },

    /// The broker blocked publishers (a memory or disk alarm) for longer than the reconnect timeout.
    #[error(
        "RabbitMQ has blocked publishers (memory or disk alarm) for {waited:?}; the message was not sent. Free broker resources or raise its limits"
    )]
    Blocked {
        /// How long the client waited.
        waited: Duration,
    },

    /// The broker did not confirm a publish in time.
    #[error(
        "the broker did not confirm the message for {target} within {timeout:?}; it may or may not be stored"
    )]
    ConfirmTimeout {
        /// Where it was published.
        target: String,
        /// The bound that passed.
        timeout: Duration,
    },

    /// The data could not be encoded as JSON.
    #[error("cannot encode the message data as JSON: {0}")]
    Encode(#[source] serde_json::Error),

    /// The message is larger than allowed.
    #[error(
        "message of {size} bytes exceeds the limit of {max} bytes (RmqOptions::max_message_bytes)"
    )]
    TooLarge {
        /// The encoded size.
        size: usize,
        /// The configured limit.
        max: usize,
    },

    /// A delivery was acked, nacked or rejected a second time.
    #[error("this message was already settled ({previous}); a delivery is settled exactly once")]
    AlreadySettled {
        /// How it was settled first.
        previous: Settlement,
    },

    /// Settling a delivery failed because its channel is gone.
    #[error(
        "cannot {attempted} the message: its channel is closed; the broker requeues unsettled messages of a closed channel, so it will be delivered again"
    )]
    ChannelClosed {
        /// What was attempted.
        attempted: Settlement,
    },

    /// A consumer stopped receiving: its channel or connection closed, or the broker cancelled it.
    #[error(
        "the consumer of queue {queue:?} stopped: {reason}; its unsettled messages return to the queue, and the microservice reconnects by itself"
    )]
    ConsumerStopped {
        /// The queue.
        queue: String,
        /// What stopped it.
        reason: String,
    },

    /// A request got no reply within its timeout.
    #[error(
        "no reply to request {pattern:?} within {timeout:?}; is a service consuming the queue and handling that pattern? (the request may still be processed)"
    )]
    RequestTimeout {
        /// The request's pattern.
        pattern: String,
        /// The bound that passed.
        timeout: Duration,
    },

    /// The remote handler answered with an error.
    #[error("request {pattern:?} failed remotely: {error}")]
    Remote {
        /// The request's pattern.
        pattern: String,
        /// The error as sent (`{"status":"error","message":…}` for NestJS `RpcException("…")`):
        /// [`RpcError::message`] reads its text.
        error: RpcError,
    },

    /// The remote service has no handler for the request's pattern.
    #[error(
        "the remote service has no handler for request pattern {pattern:?}; check the pattern and that the right service consumes the queue"
    )]
    NoHandler {
        /// The request's pattern.
        pattern: String,
    },

    /// The connection was lost while waiting for a reply.
    #[error(
        "the connection closed before the reply to {pattern:?} arrived; the request may or may not have been processed"
    )]
    ReplyLost {
        /// The request's pattern.
        pattern: String,
    },

    /// A reply arrived but does not fit the expected type.
    #[error("the reply to {pattern:?} does not fit the expected type: {reason}")]
    BadReply {
        /// The request's pattern.
        pattern: String,
        /// What did not fit.
        reason: String,
    },

    /// The same pattern was registered for two handlers.
    #[error("pattern {0:?} has two handlers; each pattern routes to exactly one handler")]
    DuplicatePattern(String),

    /// A typed event names its ordering key, and the event to publish has none.
    #[error(
        "cannot publish {pattern:?}: {reason}; its contract names this ordering key (ordered_by), so every event needs one"
    )]
    OrderingKey {
        /// The event's pattern.
        pattern: String,
        /// What is wrong with its key.
        reason: String,
    },

    /// In-flight handlers did not finish within the drain timeout at shutdown.
    #[error(
        "{0} handler(s) were still running when the drain timeout passed; their messages were returned to the queue"
    )]
    DrainTimeout(usize),

    /// A database operation of the outbox or the inbox failed (features `postgres`, `sqlite`).
    #[error(
        "database error while {operation}: {source}; check that the database is reachable (DATABASE_URL) and has rmq-bus's tables (rmq_bus::store::migrate creates them; the SQL is in the docs of rmq_bus::store)"
    )]
    Database {
        /// What was being done.
        operation: &'static str,
        /// The underlying error (a `sqlx::Error`).
        #[source]
        source: BoxError,
    },

    /// The inbox was asked to recognise a message by its AMQP `message_id`, and it has none.
    #[error(
        "the message has no message_id (NestJS and other non-rmq-bus senders set none), so the inbox cannot recognise a redelivery of it; claim it with a key of your own instead, Inbox::claim(&mut tx, consumer, key), such as the order id the message is about"
    )]
    NoMessageId,

    /// A task rmq-bus runs in the background panicked or was cancelled (its runtime shut down).
    #[error(
        "rmq-bus's {task} task ended abnormally ({reason}); what it was doing did not complete. If the runtime is not shutting down, this is a bug: please report it"
    )]
    TaskFailed {
        /// Which task.
        task: &'static str,
        /// The panic or cancellation.
        reason: String,
    },
}

/// The message of [`Error::Unroutable`], whose advice depends on where the message went.
fn unroutable(exchange: &str, routing_key: &str) -> String {
    if exchange.is_empty() {
        format!(
            "the message for queue {routing_key:?} is unroutable: no such queue exists; declare it first (start its consumer, or let the client declare it by not setting no_assert)"
        )
    } else {
        format!(
            "the message to exchange {exchange:?} with routing key {routing_key:?} is unroutable: no queue is bound for that key; start a subscriber (a microservice whose handler pattern matches the key) first"
        )
    }
}

/// At most the first 64 characters of `text`, quoted, for error messages.
fn shorten(text: &str) -> String {
    match text.char_indices().nth(64) {
        Some((end, _)) => format!("{:?}… ({} bytes)", &text[..end], text.len()),
        None => format!("{text:?}"),
    }
}

impl From<Error> for RpcError {
    fn from(error: Error) -> Self {
        tracing::error!(%error, "request handler failed; answering \"Internal server error\"");
        Self::internal()
    }
}
