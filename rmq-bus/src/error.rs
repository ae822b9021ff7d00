//! The one error type of rmq-bus, with messages that say what to do next.

use crate::context::Settlement;

/// The underlying error of a transport (a [`lapin::Error`] on RabbitMQ).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Shorthand for `Result<T, rmq_bus::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in rmq-bus.
///
/// Each message names the thing at fault (a variable, a queue, a pattern) and, where there is one,
/// the fix. Broker errors keep the transport's error (a [`lapin::Error`] on RabbitMQ) as their
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
        "the connection to RabbitMQ is closed ({context}): {source}; the operation did not take place and may be retried"
    )]
    Disconnected {
        /// What was being done.
        context: &'static str,
        /// The underlying error.
        #[source]
        source: BoxError,
    },

    /// Any other broker error during an operation.
    #[error("RabbitMQ refused {operation}: {source}")]
    Broker {
        /// What was being done.
        operation: &'static str,
        /// The underlying error.
        #[source]
        source: BoxError,
    },

    /// The broker answered a publish with a negative confirm: the message was not stored.
    #[error(
        "RabbitMQ did not accept the message for queue {queue:?} (publisher nack); it was not stored, publish it again"
    )]
    Nacked {
        /// The target queue or routing key.
        queue: String,
    },

    /// No queue is bound for the message, so the broker returned it.
    #[error(
        "the message for {routing_key:?} is unroutable: no queue named or bound to it exists; declare the queue first (start the consumer, or let the client declare it by not setting no_assert)"
    )]
    Unroutable {
        /// The routing key used.
        routing_key: String,
    },

    /// The broker blocked publishers (a memory or disk alarm) for longer than the reconnect timeout.
    #[error(
        "RabbitMQ has blocked publishers (memory or disk alarm) for {waited:?}; the message was not sent. Free broker resources or raise its limits"
    )]
    Blocked {
        /// How long the client waited.
        waited: std::time::Duration,
    },

    /// The broker did not confirm a publish in time.
    #[error(
        "RabbitMQ did not confirm the message for {queue:?} within {timeout:?}; it may or may not be stored"
    )]
    ConfirmTimeout {
        /// The target queue.
        queue: String,
        /// The bound that passed.
        timeout: std::time::Duration,
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
        timeout: std::time::Duration,
    },

    /// The remote handler answered with an error.
    #[error("request {pattern:?} failed remotely: {error}")]
    Remote {
        /// The request's pattern.
        pattern: String,
        /// The error payload as sent (`{"status":"error","message":…}` for NestJS `RpcException("…")`).
        error: serde_json::Value,
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

    /// In-flight handlers did not finish within the drain timeout at shutdown.
    #[error(
        "{0} handler(s) were still running when the drain timeout passed; their messages were returned to the queue"
    )]
    DrainTimeout(usize),
}

impl Error {
    /// Classifies a lapin error: connection and channel losses become [`Error::Disconnected`].
    pub(crate) fn from_lapin(operation: &'static str, source: lapin::Error) -> Self {
        use lapin::ErrorKind as K;
        let lost = matches!(
            source.kind(),
            K::InvalidChannelState(..)
                | K::InvalidConnectionState(..)
                | K::IOError(_)
                | K::MissingHeartbeatError
        );
        if lost {
            Error::Disconnected {
                context: operation,
                source: Box::new(source),
            }
        } else {
            Error::Broker {
                operation,
                source: Box::new(source),
            }
        }
    }
}
