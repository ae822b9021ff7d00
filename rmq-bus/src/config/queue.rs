//! How queues and exchanges are declared.

use std::collections::BTreeMap;

/// How a queue is declared. The defaults equal NestJS's (durable, no arguments), so either side,
/// or an operator, may declare the queue first.
///
/// ```
/// use rmq_bus::config::QueueOptions;
/// let options = QueueOptions::default().quorum().argument("x-max-length", 10_000);
/// assert!(options.durable);
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
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
    /// Declares the queue durable (the default) or not.
    pub fn durable(mut self, durable: bool) -> Self {
        self.durable = durable;
        self
    }

    /// Declares the queue exclusive to its connection (deleted when it closes).
    pub fn exclusive(mut self, exclusive: bool) -> Self {
        self.exclusive = exclusive;
        self
    }

    /// Declares the queue auto-deleted when its last consumer goes.
    pub fn auto_delete(mut self, auto_delete: bool) -> Self {
        self.auto_delete = auto_delete;
        self
    }

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
    /// RabbitMQ's consistent-hash exchange (`x-consistent-hash`, a plugin shipped with the
    /// broker), hashing the ordering key header: the exchange of a partitioned queue
    /// ([`RmqOptions::partitions`](crate::RmqOptions::partitions)).
    ConsistentHash,
}

/// An exchange to publish to and bind the queue to, instead of the default exchange.
///
/// With an exchange, clients publish with the pattern as routing key, and a microservice binds its
/// queue with each of its handlers' patterns (once, for a fanout exchange).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Exchange {
    /// Its name.
    pub name: String,
    /// Its kind.
    pub kind: ExchangeKind,
    /// Whether it survives a broker restart (NestJS declares durable exchanges).
    pub durable: bool,
}

impl Exchange {
    /// A durable exchange of `kind`.
    pub fn new(name: impl Into<String>, kind: ExchangeKind) -> Self {
        Self {
            name: name.into(),
            kind,
            durable: true,
        }
    }

    /// A durable topic exchange.
    pub fn topic(name: impl Into<String>) -> Self {
        Self::new(name, ExchangeKind::Topic)
    }

    /// A durable direct exchange.
    pub fn direct(name: impl Into<String>) -> Self {
        Self::new(name, ExchangeKind::Direct)
    }

    /// A durable fanout exchange.
    pub fn fanout(name: impl Into<String>) -> Self {
        Self::new(name, ExchangeKind::Fanout)
    }

    /// Declares it durable (the default) or not.
    pub fn durable(mut self, durable: bool) -> Self {
        self.durable = durable;
        self
    }
}
