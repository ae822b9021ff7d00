//! Connection and queue settings, in code or from the environment.
//!
//! Mirrors NestJS's `RmqModule.register({ name })` / `RmqService.getOptions(queue, noAck)`: one
//! [`RmqOptions`] names a broker and a queue, and is shared by the [`ClientProxy`](crate::ClientProxy)
//! that emits to the queue and the [`Microservice`](crate::Microservice) that consumes it.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::retry::RetryPolicy;

/// Broker URI used when `RABBIT_MQ_URI` is not set: a local RabbitMQ with the default account.
pub const DEFAULT_URI: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The URI scheme of the in-memory transport: `memory://shop` names an in-memory broker that
/// every client and microservice of the process using the same name shares.
pub const MEMORY_SCHEME: &str = "memory://";

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

/// Default bound on waiting for the reply to a request (`ClientProxy::send`).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Who acknowledges deliveries to the broker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum AckMode {
    /// The handler settles through [`RmqContext`](crate::RmqContext) (NestJS `noAck: false`).
    /// A handler that returns `Ok` without settling has its message acked, with a warning; a
    /// failing one has it settled by the [`FailurePolicy`].
    #[default]
    Manual,
    /// rmq-bus acks when the handler returns `Ok`, and applies the [`FailurePolicy`] otherwise.
    AfterHandler,
    /// The broker considers a message settled as soon as it is sent (NestJS `noAck: true`).
    /// At-most-once: a crash mid-handler loses the message, and bad input cannot be dead-lettered.
    NoAck,
}

/// What happens to a message whose handler returned an error or panicked without settling it,
/// when no [`RetryPolicy`] applies.
///
/// Bad input (not JSON, no pattern, unknown pattern, data of the wrong shape, too large) is
/// always dead-lettered at once: retrying cannot fix it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailurePolicy {
    /// Requeue a first delivery once; dead-letter a redelivered one (see
    /// [`RmqOptions::dead_letter_queue`]). A transient failure gets a second chance, a
    /// persistent one cannot loop. For more and delayed attempts, use a [`RetryPolicy`].
    #[default]
    RequeueOnce,
    /// Dead-letter straight away.
    DeadLetter,
}

/// How a queue is declared. The defaults equal NestJS's (durable, no arguments), so either side,
/// or an operator, may declare the queue first.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueOptions {
    /// Survives a broker restart.
    pub durable: bool,
    /// Used by one connection only and deleted when it closes.
    pub exclusive: bool,
    /// Deleted when its last consumer goes.
    pub auto_delete: bool,
    /// `x-` arguments (`x-dead-letter-exchange`, `x-queue-type`, `x-message-ttl`, …).
    pub arguments: BTreeMap<String, serde_json::Value>,
}

impl Default for QueueOptions {
    fn default() -> Self {
        Self {
            durable: true,
            exclusive: false,
            auto_delete: false,
            arguments: BTreeMap::new(),
        }
    }
}

impl QueueOptions {
    /// Adds an `x-` argument to the declaration.
    pub fn argument(mut self, key: impl Into<String>, value: impl Into<serde_json::Value>) -> Self {
        self.arguments.insert(key.into(), value.into());
        self
    }

    /// Declares a quorum queue (replicated on a cluster; works on a single node too). Quorum
    /// queues are durable.
    pub fn quorum(mut self) -> Self {
        self.durable = true;
        self.argument("x-queue-type", "quorum")
    }

    /// Routes rejected messages to `exchange` (with `routing_key`, or their own key when `None`).
    pub fn dead_letter(self, exchange: impl Into<String>, routing_key: Option<String>) -> Self {
        let this = self.argument("x-dead-letter-exchange", exchange.into());
        match routing_key {
            Some(key) => this.argument("x-dead-letter-routing-key", key),
            None => this,
        }
    }
}

/// The kind of an exchange rmq-bus declares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExchangeKind {
    /// Routing key = pattern; queues bind with patterns, `*` and `#` wildcards included.
    Topic,
    /// Routing key = pattern, matched exactly.
    Direct,
    /// Every bound queue gets a copy: publish/subscribe, one queue per subscribing service.
    Fanout,
}

/// An exchange to publish to and bind the queue to, instead of the default exchange.
///
/// With an exchange, clients publish with the pattern as routing key, and a microservice binds its
/// queue with each of its handlers' patterns (once, for a fanout exchange).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exchange {
    /// Its name.
    pub name: String,
    /// Its kind.
    pub kind: ExchangeKind,
    /// Whether it survives a broker restart (NestJS declares durable exchanges).
    pub durable: bool,
}

impl Exchange {
    /// A durable topic exchange.
    pub fn topic(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            kind: ExchangeKind::Topic,
            durable: true,
        }
    }

    /// A durable direct exchange.
    pub fn direct(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            kind: ExchangeKind::Direct,
            durable: true,
        }
    }

    /// A durable fanout exchange.
    pub fn fanout(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            kind: ExchangeKind::Fanout,
            durable: true,
        }
    }
}

/// Settings for one broker and one queue.
///
/// ```
/// use rmq_bus::{AckMode, RmqOptions};
/// let options = RmqOptions::new("BILLING").prefetch(20).ack_mode(AckMode::Manual);
/// assert_eq!(options.queue(), "BILLING");
/// ```
#[derive(Clone, PartialEq)]
pub struct RmqOptions {
    uri: String,
    queue: String,
    queue_options: QueueOptions,
    exchange: Option<Exchange>,
    no_assert: bool,
    prefetch: u16,
    ack_mode: AckMode,
    failure_policy: FailurePolicy,
    persistent: bool,
    max_message_bytes: usize,
    confirm_timeout: Duration,
    reconnect_timeout: Duration,
    retry: Option<RetryPolicy>,
    dead_letter_queue: DeadLetters,
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
            .field("uri", &redact_uri(&self.uri))
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
            .field("retry", &self.retry)
            .field("dead_letter_queue", &self.dead_letter_queue)
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
            retry: None,
            dead_letter_queue: DeadLetters::Default,
        }
    }

    /// Options for the service `name` from the process environment, as NestJS's
    /// `RmqModule.register({ name })` does:
    ///
    /// | variable | meaning | default |
    /// |---|---|---|
    /// | `RABBIT_MQ_URI` | broker URI (`amqp://` or `amqps://`), or several comma-separated (cluster nodes) | [`DEFAULT_URI`] |
    /// | `RABBIT_MQ_<NAME>_QUEUE` | the queue | `<NAME>` |
    /// | `RABBIT_MQ_PREFETCH` | prefetch, 1–65535 | [`DEFAULT_PREFETCH`] |
    /// | `RABBIT_MQ_QUEUE_TYPE` | `classic` or `quorum` | `classic` |
    ///
    /// `RmqOptions::from_env("BILLING")` reads `RABBIT_MQ_BILLING_QUEUE`. A set but unusable
    /// value is an [`Error::InvalidEnv`] naming the variable.
    pub fn from_env(name: &str) -> Result<Self> {
        Self::from_lookup(name, |var| std::env::var(var).ok())
    }

    /// [`from_env`](Self::from_env) with another source of variables (a map in tests, a config
    /// file), so nothing has to touch the process environment.
    pub fn from_lookup(name: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let invalid = |var: &str, value: &str, reason: &str| Error::InvalidEnv {
            var: var.to_owned(),
            value: redact_uri(value),
            reason: reason.to_owned(),
        };
        let queue_var = format!("RABBIT_MQ_{}_QUEUE", name.to_uppercase());
        let queue = match lookup(&queue_var) {
            Some(value) if value.trim().is_empty() => {
                return Err(invalid(&queue_var, &value, "a queue name cannot be empty"));
            }
            Some(value) => value,
            None => name.to_owned(),
        };
        if queue.len() > 200 {
            return Err(invalid(
                &queue_var,
                &queue,
                "a queue name has at most 200 bytes (room is kept for retry queue suffixes)",
            ));
        }
        let mut options = Self::new(queue);
        if let Some(uri) = lookup("RABBIT_MQ_URI") {
            check_uri(&uri).map_err(|reason| invalid("RABBIT_MQ_URI", &uri, &reason))?;
            options.uri = uri;
        }
        if let Some(raw) = lookup("RABBIT_MQ_PREFETCH") {
            options.prefetch = match raw.trim().parse::<u16>() {
                Ok(n) if n > 0 => n,
                _ => {
                    return Err(invalid(
                        "RABBIT_MQ_PREFETCH",
                        &raw,
                        "expected a whole number from 1 to 65535",
                    ));
                }
            };
        }
        if let Some(raw) = lookup("RABBIT_MQ_QUEUE_TYPE") {
            options.queue_options = match raw.trim() {
                "classic" | "" => options.queue_options,
                "quorum" => options.queue_options.quorum(),
                _ => {
                    return Err(invalid(
                        "RABBIT_MQ_QUEUE_TYPE",
                        &raw,
                        "expected classic or quorum",
                    ));
                }
            };
        }
        Ok(options)
    }

    /// Sets the broker URI, `amqp://user:password@host:port/vhost` (vhost `/` is `%2f`), or
    /// several comma-separated: rmq-bus connects to the first that answers, and on losing it
    /// tries them again in order.
    pub fn uri(mut self, uri: impl Into<String>) -> Self {
        self.uri = uri.into();
        self
    }

    /// Sets the queue name.
    pub fn queue_name(mut self, queue: impl Into<String>) -> Self {
        self.queue = queue.into();
        self
    }

    /// Sets how the queue is declared.
    pub fn queue_options(mut self, queue_options: QueueOptions) -> Self {
        self.queue_options = queue_options;
        self
    }

    /// Routes through `exchange` instead of the default exchange (see [`Exchange`]).
    pub fn exchange(mut self, exchange: Exchange) -> Self {
        self.exchange = Some(exchange);
        self
    }

    /// Sets how long `emit` waits through a broker outage before failing, and how long a
    /// microservice tries to connect at start (default 30 s). A running microservice keeps trying.
    pub fn reconnect_timeout(mut self, timeout: Duration) -> Self {
        self.reconnect_timeout = timeout;
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
        self.dead_letter_queue = DeadLetters::Named(name.into());
        self
    }

    /// Rejects what would be dead-lettered instead (NestJS's behaviour): RabbitMQ routes it to
    /// the queue's dead-letter exchange, or drops it if there is none.
    pub fn reject_dead_letters(mut self) -> Self {
        self.dead_letter_queue = DeadLetters::Reject;
        self
    }

    /// Declares the queue as durable or not (durable by default).
    pub fn durable(mut self, durable: bool) -> Self {
        self.queue_options.durable = durable;
        self
    }

    /// Skips declaring the queue (NestJS `noAssert`): it must already exist.
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

    /// Sets what happens to messages whose handler failed without settling them.
    pub fn failure_policy(mut self, failure_policy: FailurePolicy) -> Self {
        self.failure_policy = failure_policy;
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

    /// Sets how long `emit` waits for the broker's confirm.
    pub fn confirm_timeout(mut self, timeout: Duration) -> Self {
        self.confirm_timeout = timeout;
        self
    }

    /// The broker URI, password included: keep it out of logs (`Debug` redacts it).
    pub fn broker_uri(&self) -> &str {
        &self.uri
    }
    /// The queue name.
    pub fn queue(&self) -> &str {
        &self.queue
    }
    /// How the queue is declared.
    pub fn queue_declaration(&self) -> &QueueOptions {
        &self.queue_options
    }
    /// The exchange routed through, if not the default one.
    pub fn exchange_options(&self) -> Option<&Exchange> {
        self.exchange.as_ref()
    }
    /// Whether declaring the queue is skipped.
    pub fn is_no_assert(&self) -> bool {
        self.no_assert
    }
    /// The prefetch window.
    pub fn prefetch_count(&self) -> u16 {
        self.prefetch
    }
    /// Who acknowledges deliveries.
    pub fn ack(&self) -> AckMode {
        self.ack_mode
    }
    /// What happens to messages whose handler failed.
    pub fn on_failure(&self) -> FailurePolicy {
        self.failure_policy
    }
    /// Whether messages are published as persistent.
    pub fn is_persistent(&self) -> bool {
        self.persistent
    }
    /// The largest message body accepted.
    pub fn max_bytes(&self) -> usize {
        self.max_message_bytes
    }
    /// How long `emit` waits for a confirm.
    pub fn confirm_wait(&self) -> Duration {
        self.confirm_timeout
    }
    /// How long `emit` waits through an outage.
    pub fn reconnect_wait(&self) -> Duration {
        self.reconnect_timeout
    }
    /// The queue's retry policy, if any.
    pub fn retry_policy(&self) -> Option<&RetryPolicy> {
        self.retry.as_ref()
    }
    /// The dead-letter queue rmq-bus publishes to, if any (see
    /// [`dead_letter_queue`](Self::dead_letter_queue)).
    pub fn dead_letter_queue_name(&self) -> Option<String> {
        match &self.dead_letter_queue {
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
    /// The broker URI(s) with passwords replaced by `***`, for logs and messages.
    pub fn display_uri(&self) -> String {
        redact_uri(&self.uri)
    }
    /// The name of the in-memory broker the URI names (`memory://name`), if it does.
    pub fn memory_broker(&self) -> Option<&str> {
        self.uri.trim().strip_prefix(MEMORY_SCHEME)
    }
    /// The broker URIs, in the order they are tried.
    pub fn broker_uris(&self) -> impl Iterator<Item = &str> {
        self.uri
            .split(',')
            .map(str::trim)
            .filter(|uri| !uri.is_empty())
    }

    /// Checks what the broker would otherwise refuse later, with a clearer message.
    pub(crate) fn validate(&self) -> Result<()> {
        check_uri(&self.uri).map_err(|reason| {
            Error::Config(format!("broker URI {}: {reason}", redact_uri(&self.uri)))
        })?;
        for name in [Some(self.queue.clone()), self.dead_letter_queue_name()]
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
}

/// Checks one URI or a comma-separated list.
fn check_uri(uris: &str) -> std::result::Result<(), String> {
    let mut any = false;
    for uri in uris.split(',').map(str::trim).filter(|uri| !uri.is_empty()) {
        any = true;
        if let Some(name) = uri.strip_prefix(MEMORY_SCHEME) {
            if name.is_empty() {
                return Err("memory:// needs a broker name, as memory://shop".to_owned());
            }
            continue;
        }
        if !(uri.starts_with("amqp://") || uri.starts_with("amqps://")) {
            return Err(
                "expected amqp://user:password@host:port/vhost, amqps://… or memory://name"
                    .to_owned(),
            );
        }
        uri.parse::<lapin::uri::AMQPUri>()
            .map_err(|e| format!("not a valid AMQP URI ({e})"))?;
    }
    if any {
        Ok(())
    } else {
        Err("no URI given".to_owned())
    }
}

/// Replaces the passwords of a URI (or a comma-separated list) with `***`, so it can be logged.
pub(crate) fn redact_uri(uris: &str) -> String {
    uris.split(',')
        .map(redact_one)
        .collect::<Vec<_>>()
        .join(",")
}

fn redact_one(uri: &str) -> String {
    let Some(scheme_end) = uri.find("://") else {
        return uri.to_owned();
    };
    let rest = &uri[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match (authority.rfind('@'), authority.find(':')) {
        (Some(at), Some(colon)) if colon < at => {
            format!(
                "{}{}:***{}",
                &uri[..scheme_end + 3],
                &authority[..colon],
                &rest[at..]
            )
        }
        _ => uri.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn env_defaults_follow_the_service_name() -> Result<()> {
        let options = RmqOptions::from_lookup("billing", lookup(&[]))?;
        assert_eq!(options.queue(), "billing");
        assert_eq!(options.broker_uri(), DEFAULT_URI);
        assert_eq!(options.prefetch_count(), DEFAULT_PREFETCH);
        assert_eq!(options.ack(), AckMode::Manual);
        assert!(options.is_persistent());
        assert!(options.queue_declaration().durable);
        Ok(())
    }

    #[test]
    fn env_values_are_read() -> Result<()> {
        let vars = [
            ("RABBIT_MQ_BILLING_QUEUE", "BILLING_Q"),
            ("RABBIT_MQ_URI", "amqp://u:p@broker:5673/vh"),
            ("RABBIT_MQ_PREFETCH", "7"),
        ];
        let options = RmqOptions::from_lookup("BILLING", lookup(&vars))?;
        assert_eq!(options.queue(), "BILLING_Q");
        assert_eq!(options.broker_uri(), "amqp://u:p@broker:5673/vh");
        assert_eq!(options.prefetch_count(), 7);
        Ok(())
    }

    #[test]
    fn bad_env_values_name_the_variable() {
        let cases = [
            ("RABBIT_MQ_PREFETCH", "lots", "RABBIT_MQ_PREFETCH=\"lots\""),
            ("RABBIT_MQ_PREFETCH", "0", "RABBIT_MQ_PREFETCH=\"0\""),
            ("RABBIT_MQ_URI", "http://x", "RABBIT_MQ_URI=\"http://x\""),
            ("RABBIT_MQ_BILLING_QUEUE", " ", "RABBIT_MQ_BILLING_QUEUE"),
        ];
        for (var, value, expected) in cases {
            let vars = [(var, value)];
            match RmqOptions::from_lookup("BILLING", lookup(&vars)) {
                Err(error @ Error::InvalidEnv { .. }) => {
                    assert!(error.to_string().contains(expected), "{error}")
                }
                other => panic!("{var}={value}: expected InvalidEnv, got {other:?}"),
            }
        }
    }

    #[test]
    fn several_uris_and_queue_types() -> Result<()> {
        let vars = [
            (
                "RABBIT_MQ_URI",
                "amqp://a:pw1@n1:5672/%2f, amqp://a:pw2@n2:5672/%2f",
            ),
            ("RABBIT_MQ_QUEUE_TYPE", "quorum"),
        ];
        let options = RmqOptions::from_lookup("X", lookup(&vars))?;
        let uris: Vec<&str> = options.broker_uris().collect();
        assert_eq!(
            uris,
            ["amqp://a:pw1@n1:5672/%2f", "amqp://a:pw2@n2:5672/%2f"]
        );
        assert_eq!(
            options.queue_declaration().arguments.get("x-queue-type"),
            Some(&serde_json::json!("quorum"))
        );
        let debug = format!("{options:?}");
        assert!(!debug.contains("pw1") && !debug.contains("pw2"), "{debug}");
        let bad = [("RABBIT_MQ_QUEUE_TYPE", "stream")];
        assert!(matches!(
            RmqOptions::from_lookup("X", lookup(&bad)),
            Err(Error::InvalidEnv { .. })
        ));
        Ok(())
    }

    #[test]
    fn dead_letters_go_to_a_queue_of_their_own_by_default() {
        assert_eq!(
            RmqOptions::new("BILLING")
                .dead_letter_queue_name()
                .as_deref(),
            Some("BILLING.dlq")
        );
        assert_eq!(
            RmqOptions::new("B")
                .dead_letter_queue("dead")
                .dead_letter_queue_name()
                .as_deref(),
            Some("dead")
        );
        assert_eq!(
            RmqOptions::new("B")
                .reject_dead_letters()
                .dead_letter_queue_name(),
            None
        );
        let with_dlx =
            RmqOptions::new("B").queue_options(QueueOptions::default().dead_letter("dlx", None));
        assert_eq!(
            with_dlx.dead_letter_queue_name(),
            None,
            "the queue's own DLX takes the rejects"
        );
    }

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact_uri("amqp://guest:secret@h:5672/%2f"),
            "amqp://guest:***@h:5672/%2f"
        );
        assert_eq!(redact_uri("amqps://h:5671"), "amqps://h:5671");
        let vars = [("RABBIT_MQ_URI", "ftp://u:hunter2@h")];
        let error = RmqOptions::from_lookup("X", lookup(&vars))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            !error.contains("hunter2") && error.contains("***"),
            "{error}"
        );
        let debug = format!("{:?}", RmqOptions::new("q").uri("amqp://a:hunter2@h/%2f"));
        assert!(!debug.contains("hunter2"), "{debug}");
    }
}
