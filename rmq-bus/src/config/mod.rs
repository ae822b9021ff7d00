//! Settings: which broker, which queue, how it is declared and how its deliveries are settled,
//! in code or from the environment.
//!
//! Mirrors NestJS's `RmqModule.register({ name })` / `RmqService.getOptions(queue, noAck)`: one
//! [`RmqOptions`] names a broker and a queue, and is shared by the [`ClientProxy`](crate::ClientProxy)
//! that emits to the queue and the [`Microservice`](crate::Microservice) that consumes it.

mod env;
mod partition;
mod policy;
mod queue;
pub(crate) mod uri;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

pub use policy::{AckMode, FailurePolicy, RetryPolicy};
pub use queue::{Exchange, ExchangeKind, QueueOptions};

use crate::error::{Error, Result};

/// Broker URI used when `RABBIT_MQ_URI` is not set: a local RabbitMQ with the default account.
pub const DEFAULT_URI: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Default prefetch: how many unsettled messages a consumer holds, and so how many handlers run
/// at once. NestJS's default of 0 (unlimited) lets one consumer take a whole backlog into memory;
/// 250 bounds that, and keeps the broker's pipe full even when each handler waits a few
/// milliseconds on I/O (measured: with a 5 ms handler, 100 caps a consumer near 10k messages/s,
/// 250 lets it run at the broker's pace).
pub const DEFAULT_PREFETCH: u16 = 250;

/// Default limit on a message body: larger deliveries are dead-lettered, larger emits refused.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Default bound on waiting for the broker to confirm a publish.
pub const DEFAULT_CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// Default bound on waiting for the broker to come back: how long `emit` waits through an
/// outage, and how long a microservice tries at start.
pub const DEFAULT_RECONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Default AMQP heartbeat: how often each side shows it is alive on a quiet connection. A peer
/// that vanished without closing (a dead NAT entry, a frozen VM) is noticed after two missed
/// heartbeats, 20 s: before an emit caught by it gives up ([`DEFAULT_CONFIRM_TIMEOUT`], 30 s),
/// so it publishes again on a new connection instead of failing. RabbitMQ proposes 60 s (noticed
/// after 2 minutes); below about 5 s, a busy process or broker risks false alarms. It costs one
/// 8-byte frame every 5 s each way, and only on a connection that is otherwise quiet.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(10);

/// Default bound on one connection attempt (TCP, TLS and the AMQP handshake): a node that takes
/// TCP connections but does not answer is given up for the next URI after this. A healthy broker
/// answers in milliseconds; RabbitMQ itself gives a client 10 s to complete its side.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Default bound on waiting for the reply to a request (`ClientProxy::send`).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Default time in-flight handlers get to finish at shutdown.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Settings for one broker and one queue (or, with [`for_exchange`](Self::for_exchange), one
/// exchange to publish to).
///
/// ```
/// use rmq_bus::RmqOptions;
/// use rmq_bus::config::AckMode;
/// let options = RmqOptions::new("BILLING").prefetch(20).ack_mode(AckMode::Manual);
/// assert_eq!(options.queue(), "BILLING");
/// ```
#[derive(Clone, PartialEq)]
pub struct RmqOptions {
    pub(crate) uri: String,
    /// Empty for an exchange publisher ([`for_exchange`](Self::for_exchange)).
    pub(crate) queue: String,
    pub(crate) queue_options: QueueOptions,
    pub(crate) exchange: Option<Exchange>,
    pub(crate) no_assert: bool,
    pub(crate) prefetch: u16,
    pub(crate) ack_mode: AckMode,
    pub(crate) failure_policy: FailurePolicy,
    pub(crate) persistent: bool,
    pub(crate) max_message_bytes: usize,
    pub(crate) confirm_timeout: Duration,
    pub(crate) reconnect_timeout: Duration,
    pub(crate) heartbeat: Duration,
    pub(crate) handshake_timeout: Duration,
    pub(crate) tls_ca_file: Option<PathBuf>,
    pub(crate) retry: Option<RetryPolicy>,
    dead_letters: DeadLetters,
    /// How many messages of one ordering key may wait in process (`None`: half the prefetch window).
    pub(crate) max_waiting_per_key: Option<usize>,
    /// Partition queues behind a consistent-hash exchange (see [`partitions`](Self::partitions)).
    pub(crate) partitions: Option<u16>,
}

/// Where rmq-bus puts messages it dead-letters.
#[derive(Clone, Debug, PartialEq, Eq)]
enum DeadLetters {
    /// `<queue>.dlq`, unless the queue has a dead-letter exchange of its own.
    Default,
    Named(String),
    /// Reject, leaving them to the queue's dead-letter exchange (or to be dropped).
    Reject,
}

impl fmt::Debug for RmqOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RmqOptions")
            .field("uri", &self.display_uri())
            .field("queue", &self.queue)
            .field("queue_options", &self.queue_options)
            .field("exchange", &self.exchange)
            .field("no_assert", &self.no_assert)
            .field("prefetch", &self.prefetch)
            .field("ack_mode", &self.ack_mode)
            .field("failure_policy", &self.failure_policy)
            .field("persistent", &self.persistent)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("confirm_timeout", &self.confirm_timeout)
            .field("reconnect_timeout", &self.reconnect_timeout)
            .field("heartbeat", &self.heartbeat)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("retry", &self.retry)
            .field("dead_letters", &self.dead_letters)
            .field("max_waiting_per_key", &self.max_waiting_per_key)
            .field("partitions", &self.partitions)
            .finish()
    }
}

impl RmqOptions {
    /// Options for `queue` on the local default broker ([`DEFAULT_URI`]), with the defaults:
    /// durable queue, prefetch [`DEFAULT_PREFETCH`], manual acks, persistent messages.
    pub fn new(queue: impl Into<String>) -> Self {
        Self {
            uri: DEFAULT_URI.to_owned(),
            queue: queue.into(),
            queue_options: QueueOptions::default(),
            exchange: None,
            no_assert: false,
            prefetch: DEFAULT_PREFETCH,
            ack_mode: AckMode::default(),
            failure_policy: FailurePolicy::default(),
            persistent: true,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            confirm_timeout: DEFAULT_CONFIRM_TIMEOUT,
            reconnect_timeout: DEFAULT_RECONNECT_TIMEOUT,
            heartbeat: DEFAULT_HEARTBEAT,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            tls_ca_file: None,
            retry: None,
            dead_letters: DeadLetters::Default,
            max_waiting_per_key: None,
            partitions: None,
        }
    }

    /// Options for publishing to `exchange` only, with no queue of its own: a
    /// [`ClientProxy`](crate::ClientProxy) made from them declares the exchange (unless
    /// [`no_assert`](Self::no_assert)) and emits with the pattern as routing key. To subscribe, a
    /// microservice binds a queue of its own: `RmqOptions::new("shipping").exchange(…)`.
    ///
    /// ```
    /// use rmq_bus::{ClientProxy, RmqOptions};
    /// use rmq_bus::config::Exchange;
    /// let carriers = ClientProxy::new(RmqOptions::for_exchange(Exchange::topic("shipments")));
    /// ```
    pub fn for_exchange(exchange: Exchange) -> Self {
        Self::new("").exchange(exchange)
    }

    /// Sets the broker URI, `amqp://user:password@host:port/vhost` (vhost `/` is `%2f`), or
    /// several comma-separated: rmq-bus connects to the first that answers, and on losing it
    /// tries them again in order.
    pub fn uri(mut self, uri: impl Into<String>) -> Self {
        self.uri = uri.into();
        self
    }

    /// Sets how the queue is declared.
    pub fn queue_options(mut self, queue_options: QueueOptions) -> Self {
        self.queue_options = queue_options;
        self
    }

    /// Declares the queue as durable or not (durable by default; shorthand for
    /// [`QueueOptions::durable`]).
    pub fn durable(mut self, durable: bool) -> Self {
        self.queue_options.durable = durable;
        self
    }

    /// Routes through `exchange` instead of the default exchange (see [`Exchange`]).
    pub fn exchange(mut self, exchange: Exchange) -> Self {
        self.exchange = Some(exchange);
        self
    }

    /// Skips declaring the queue and exchange (NestJS `noAssert`): they must already exist.
    pub fn no_assert(mut self, no_assert: bool) -> Self {
        self.no_assert = no_assert;
        self
    }

    /// Sets the prefetch window, which also bounds how many handlers run at once (0 is taken as 1).
    pub fn prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = prefetch.max(1);
        self
    }

    /// Sets who acknowledges deliveries.
    pub fn ack_mode(mut self, ack_mode: AckMode) -> Self {
        self.ack_mode = ack_mode;
        self
    }

    /// Sets what happens to messages whose handler failed without settling them, when no
    /// [`RetryPolicy`] applies.
    pub fn failure_policy(mut self, failure_policy: FailurePolicy) -> Self {
        self.failure_policy = failure_policy;
        self
    }

    /// Retries failed handlers of this queue with `policy` (see [`RetryPolicy`]); a handler's
    /// or controller's own policy, set with [`Microservice::retry`](crate::Microservice::retry),
    /// takes precedence.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// Dead-letters into queue `name` (by default `<queue>.dlq`). rmq-bus declares it (durable)
    /// when it first needs it and publishes to it itself, confirmed, with headers saying why:
    /// `x-rmq-bus-error`, `x-rmq-bus-queue`, `x-rmq-bus-pattern`, `x-rmq-bus-attempts`,
    /// `x-rmq-bus-failed-at`. Bad input goes there at once; failed handlers after their last
    /// retry. It needs no arguments on the consumed queue, so it works with queues NestJS or an
    /// operator declared. A queue declared with its own `x-dead-letter-exchange` gets no default
    /// dead-letter queue: its rejected messages go to that exchange.
    pub fn dead_letter_queue(mut self, name: impl Into<String>) -> Self {
        self.dead_letters = DeadLetters::Named(name.into());
        self
    }

    /// Rejects what would be dead-lettered instead (NestJS's behaviour): RabbitMQ routes it to
    /// the queue's dead-letter exchange, or drops it if there is none.
    pub fn reject_dead_letters(mut self) -> Self {
        self.dead_letters = DeadLetters::Reject;
        self
    }

    /// Publishes messages as persistent (delivery mode 2, the default) or transient.
    pub fn persistent(mut self, persistent: bool) -> Self {
        self.persistent = persistent;
        self
    }

    /// Sets the largest message body accepted, in both directions.
    pub fn max_message_bytes(mut self, max: usize) -> Self {
        self.max_message_bytes = max;
        self
    }

    /// Sets how long `emit` waits for the broker's confirm (default 30 s), handing the message
    /// over included: a connection the broker blocks in the meantime ends the wait with
    /// [`Error::Blocked`].
    pub fn confirm_timeout(mut self, timeout: Duration) -> Self {
        self.confirm_timeout = timeout;
        self
    }

    /// Sets how long `emit` waits through a broker outage before failing, and how long a
    /// microservice tries to connect at start (default 30 s). A running microservice keeps trying.
    pub fn reconnect_timeout(mut self, timeout: Duration) -> Self {
        self.reconnect_timeout = timeout;
        self
    }

    /// Bounds how many messages of one ordering key wait in process behind the one running
    /// (default: half the prefetch window, at least 1), so that a stuck key cannot fill the
    /// window: beyond it, that key's messages are parked on the broker, in order (see the README's
    /// *Ordering* section). Only queues with ordered handlers use it.
    pub fn max_waiting_per_key(mut self, max: usize) -> Self {
        self.max_waiting_per_key = Some(max.max(1));
        self
    }

    /// How many messages of one key may wait in process.
    pub(crate) fn waiting_per_key(&self) -> usize {
        self.max_waiting_per_key
            .unwrap_or(usize::from(self.prefetch) / 2)
            .max(1)
    }

    /// Sets the AMQP heartbeat asked of the broker (default [`DEFAULT_HEARTBEAT`], 10 s; whole
    /// seconds, at most 65535): a connection whose peer went silent is given up after two missed
    /// heartbeats, and rmq-bus reconnects. `Duration::ZERO` takes the broker's proposal (60 s on
    /// RabbitMQ). A `?heartbeat=` in the URI takes precedence.
    pub fn heartbeat(mut self, heartbeat: Duration) -> Self {
        self.heartbeat = heartbeat;
        self
    }

    /// Sets how long one connection attempt may take, TCP, TLS and the AMQP handshake together
    /// (default [`DEFAULT_HANDSHAKE_TIMEOUT`], 5 s), before the next broker URI is tried.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Trusts the CA certificates of the PEM file at `path` for `amqps://` brokers, besides the
    /// system's (`SSL_CERT_FILE` replaces those): for a broker whose certificate a private CA
    /// signed. The file is read at each connection.
    pub fn tls_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls_ca_file = Some(path.into());
        self
    }

    /// The heartbeat in whole seconds, as AMQP negotiates it.
    pub(crate) fn heartbeat_secs(&self) -> u16 {
        u16::try_from(self.heartbeat.as_secs()).unwrap_or(u16::MAX)
    }

    /// The queue name (empty for an exchange publisher).
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The broker URI(s) with passwords replaced by `***`, for logs and messages.
    pub fn display_uri(&self) -> String {
        uri::redact(&self.uri)
    }

    /// The dead-letter queue rmq-bus publishes to, if any (see
    /// [`dead_letter_queue`](Self::dead_letter_queue)).
    pub(crate) fn dead_letters(&self) -> Option<String> {
        match &self.dead_letters {
            DeadLetters::Named(name) => Some(name.clone()),
            DeadLetters::Reject => None,
            DeadLetters::Default
                if self
                    .queue_options
                    .arguments
                    .contains_key("x-dead-letter-exchange") =>
            {
                None
            }
            DeadLetters::Default => Some(format!("{}.dlq", self.queue)),
        }
    }

    /// The name of the in-memory broker the URI names (`memory://name`), if it does.
    pub(crate) fn memory_broker(&self) -> Option<&str> {
        self.uri.trim().strip_prefix(uri::MEMORY_SCHEME)
    }

    /// The broker URIs, in the order they are tried.
    pub(crate) fn broker_uris(&self) -> impl Iterator<Item = &str> {
        uri::split(&self.uri)
    }

    /// Checks what the broker would otherwise refuse later, with a clearer message. An exchange
    /// publisher has no queue; everything else needs one.
    pub(crate) fn validate(&self) -> Result<()> {
        uri::check(&self.uri).map_err(|reason| {
            Error::Config(format!("broker URI {}: {reason}", self.display_uri()))
        })?;
        if self.queue.is_empty() {
            return match self.exchange {
                Some(_) => Ok(()),
                None => Err(Error::Config(
                    "the queue name is empty; name a queue, or publish to an exchange with RmqOptions::for_exchange".to_owned(),
                )),
            };
        }
        self.validate_partitions()?;
        for name in [Some(self.queue.clone()), self.dead_letters()]
            .into_iter()
            .flatten()
        {
            if name.is_empty() || name.len() > 200 {
                return Err(Error::Config(format!(
                    "queue name {name:?} must have 1 to 200 bytes (room is kept for retry queue suffixes)"
                )));
            }
        }
        Ok(())
    }

    /// Checks that these options name a queue to consume, as a microservice needs.
    pub(crate) fn validate_consumer(&self) -> Result<()> {
        self.validate()?;
        if self.queue.is_empty() {
            return Err(Error::Config(
                "a microservice consumes a queue, and these options name none (RmqOptions::for_exchange publishes only); subscribe with RmqOptions::new(queue).exchange(…)".to_owned(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letters_go_to_a_queue_of_their_own_by_default() {
        assert_eq!(
            RmqOptions::new("BILLING").dead_letters().as_deref(),
            Some("BILLING.dlq")
        );
        assert_eq!(
            RmqOptions::new("B")
                .dead_letter_queue("dead")
                .dead_letters()
                .as_deref(),
            Some("dead")
        );
        assert_eq!(
            RmqOptions::new("B").reject_dead_letters().dead_letters(),
            None
        );
        let with_dlx =
            RmqOptions::new("B").queue_options(QueueOptions::default().dead_letter("dlx", None));
        assert_eq!(
            with_dlx.dead_letters(),
            None,
            "the queue's own DLX takes the rejects"
        );
    }
}
