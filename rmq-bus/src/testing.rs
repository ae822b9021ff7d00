//! Testing without a broker: [`TestBroker`] is an in-memory broker with RabbitMQ's semantics
//! (queues, exchanges, prefetch, acks, requeue, dead-lettering, TTL, direct reply-to) behind the
//! same API. Point [`RmqOptions`] at it and controllers, clients and microservices run unchanged.
//!
//! ```
//! use rmq_bus::testing::TestBroker;
//! use rmq_bus::context::Settlement;
//! use rmq_bus::{Microservice, Payload, RmqContext};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> rmq_bus::Result<()> {
//! let broker = TestBroker::new();
//! let running = Microservice::new(broker.options("BILLING"))
//!     .on_event("order_created", |Payload(order): Payload<serde_json::Value>, ctx: RmqContext| async move {
//!         ctx.ack().await
//!     })
//!     .start()
//!     .await?;
//! broker.publish("BILLING", "order_created", &serde_json::json!({"orderPayload": {"price": 5}}))?;
//! assert_eq!(broker.settled("BILLING").await.settlement, Settlement::Ack);
//! running.shutdown().await
//! # }
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::FutureExt;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec::encode_event;
use crate::config::uri::MEMORY_SCHEME;
use crate::config::{QueueOptions, RmqOptions};
use crate::delivery::Properties;
use crate::error::{Error, Result};
use crate::pattern::Pattern;
use crate::transport::memory::{MemoryBroker, MemoryError, Sender, publish_result};

pub use crate::transport::memory::Settled;

/// How long [`TestBroker::settled`] waits before it fails the test.
pub const SETTLED_TIMEOUT: Duration = Duration::from_secs(10);

/// An in-memory broker for tests; clones share it.
#[derive(Clone, Debug)]
pub struct TestBroker {
    broker: MemoryBroker,
    name: String,
}

/// A message taken from a queue with [`TestBroker::messages`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Received {
    /// Its body.
    pub body: Vec<u8>,
    /// Its properties and headers.
    pub properties: Properties,
}

impl Received {
    /// The NestJS packet in the body: its pattern (normalised) and data, if it is one.
    pub fn packet(&self) -> Option<(String, serde_json::Value)> {
        packet_as(&self.body)
    }

    /// The packet's pattern and its data as `T`; `None` if the body is not a packet or its data
    /// does not fit `T`.
    pub fn packet_as<T: DeserializeOwned>(&self) -> Option<(String, T)> {
        packet_as(&self.body)
    }
}

impl Settled {
    /// The NestJS packet in the body: its pattern (normalised) and data, if it is one.
    pub fn packet(&self) -> Option<(String, serde_json::Value)> {
        packet_as(&self.body)
    }

    /// The packet's pattern and its data as `T`; `None` if the body is not a packet or its data
    /// does not fit `T`.
    pub fn packet_as<T: DeserializeOwned>(&self) -> Option<(String, T)> {
        packet_as(&self.body)
    }
}

/// The pattern and data of the packet in `body`.
fn packet_as<T: DeserializeOwned>(body: &[u8]) -> Option<(String, T)> {
    let packet = crate::codec::decode(body).ok()?;
    let data = serde_json::from_str(packet.data.get()).ok()?;
    Some((packet.pattern.into_key(), data))
}

impl Default for TestBroker {
    fn default() -> Self {
        Self::new()
    }
}

impl TestBroker {
    /// A broker of its own, under a name no other test uses.
    pub fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        Self::named(&format!(
            "test-broker-{}",
            NEXT.fetch_add(1, Ordering::Relaxed)
        ))
    }

    /// The process-wide broker called `name`: `memory://name` URIs reach it.
    pub fn named(name: &str) -> Self {
        let broker = MemoryBroker::named(name);
        broker.record_settlements();
        Self {
            broker,
            name: name.to_owned(),
        }
    }

    /// Its URI, `memory://name`.
    pub fn uri(&self) -> String {
        format!("{MEMORY_SCHEME}{}", self.name)
    }

    /// Options for `queue` on this broker.
    pub fn options(&self, queue: &str) -> RmqOptions {
        RmqOptions::new(queue).uri(self.uri())
    }

    /// Declares `queue` as `options` say.
    pub fn declare_queue(&self, queue: &str, options: &QueueOptions) -> Result<()> {
        self.broker
            .declare_queue(queue, options.durable, &options.arguments)
            .map_err(|error| Error::Declare {
                queue: queue.to_owned(),
                source: Box::new(error),
            })
    }

    /// Puts a NestJS event packet `{"pattern", "data"}` into `queue`, as a NestJS service would.
    /// Refusals injected with [`refuse_publishes`](Self::refuse_publishes) do not apply to it:
    /// they are meant for the code under test.
    pub fn publish<T: Serialize + ?Sized>(
        &self,
        queue: &str,
        pattern: impl Into<Pattern>,
        data: &T,
    ) -> Result<()> {
        let body = encode_event(&pattern.into(), data)?;
        self.publish_raw(queue, body, Properties::default())
    }

    /// Publishes a NestJS event packet to `exchange` with `routing_key`, as a NestJS service
    /// (or a carrier's system) publishing to a topic exchange would. The pattern is the routing
    /// key, as rmq-bus's own clients publish.
    pub fn publish_to<T: Serialize + ?Sized>(
        &self,
        exchange: &str,
        routing_key: &str,
        data: &T,
    ) -> Result<()> {
        let body = encode_event(&Pattern::from(routing_key), data)?;
        let outcome = self.broker.publish(
            Sender::Test,
            exchange,
            routing_key,
            body,
            Properties::default(),
        );
        publish_result(outcome, exchange, routing_key)
    }

    /// Puts any body into `queue`, through the default exchange.
    pub fn publish_raw(
        &self,
        queue: &str,
        body: impl Into<Vec<u8>>,
        properties: Properties,
    ) -> Result<()> {
        let outcome = self
            .broker
            .publish(Sender::Test, "", queue, body.into(), properties);
        publish_result(outcome, "", queue)
    }

    /// Waits until a consumer settles a delivery from `queue`, and says which, how and why
    /// ([`Settled::outcome`], a [`context::Outcome`](crate::context::Outcome): acked, retried,
    /// dead-lettered, requeued or rejected). Each settlement (since this `TestBroker` was made)
    /// is reported once, in order, requests included (a request is settled once answered).
    ///
    /// # Panics
    ///
    /// When none comes within [`SETTLED_TIMEOUT`]: it is an assertion, for tests. Use
    /// [`settled_within`](Self::settled_within) to wait otherwise.
    #[allow(clippy::panic)] // a test helper: failing the test is its job
    pub async fn settled(&self, queue: &str) -> Settled {
        match self.settled_within(queue, SETTLED_TIMEOUT).await {
            Some(settled) => settled,
            None => panic!(
                "no delivery from queue {queue:?} was settled within {SETTLED_TIMEOUT:?}: is a microservice consuming it, and did anything reach it?"
            ),
        }
    }

    /// [`settled`](Self::settled), waiting at most `timeout`: `None` if no settlement came.
    pub async fn settled_within(&self, queue: &str, timeout: Duration) -> Option<Settled> {
        tokio::time::timeout(timeout, self.broker.next_settled(queue))
            .await
            .ok()
    }

    /// Takes every message waiting in `queue`: what was emitted there. A queue that does not
    /// exist is an error, not an empty list, so that a test cannot pass by looking at the wrong
    /// queue.
    pub fn messages(&self, queue: &str) -> Result<Vec<Received>> {
        let mut consumer = self
            .broker
            .consume(queue, 0, true)
            .map_err(|_| missing(queue))?;
        let mut taken = Vec::new();
        while let Some(Some(delivery)) = consumer.next().now_or_never() {
            taken.push(Received {
                body: delivery.body,
                properties: delivery.properties,
            });
        }
        Ok(taken)
    }

    /// Messages waiting in `queue`; an error if there is no such queue.
    pub fn ready(&self, queue: &str) -> Result<usize> {
        self.broker.ready(queue).ok_or_else(|| missing(queue))
    }

    /// Messages of `queue` delivered and not settled yet; an error if there is no such queue.
    pub fn unacked(&self, queue: &str) -> Result<usize> {
        self.broker.unacked(queue).ok_or_else(|| missing(queue))
    }

    /// Simulates a lost connection: consumers end, their unsettled messages return to their
    /// queues marked redelivered, and microservices reconnect as they would to RabbitMQ.
    pub fn disconnect(&self) {
        self.broker.disconnect();
    }

    /// Makes the broker refuse (nack) the next `count` publishes of clients: the next `count`
    /// `emit`s (and `send`s) fail with [`Error::Nacked`]. Microservices' replies and the copies
    /// rmq-bus republishes for retries and dead letters are not refused, nor are the test's own
    /// [`publish`](Self::publish)es.
    pub fn refuse_publishes(&self, count: usize) {
        self.broker.refuse_publishes(count);
    }

    /// Deletes exchange `name` and its bindings: publishes to it then fail, as on RabbitMQ.
    pub fn delete_exchange(&self, name: &str) {
        self.broker.delete_exchange(name);
    }

    /// Deletes `queue`; its consumers end.
    pub fn delete_queue(&self, queue: &str) {
        self.broker.delete_queue(queue);
    }
}

/// The error of looking at queue `queue` when it does not exist, as RabbitMQ words it.
fn missing(queue: &str) -> Error {
    Error::Broker {
        operation: "reading a queue",
        source: Box::new(MemoryError::NotFound(format!(
            "no queue '{queue}' in vhost '/'"
        ))),
    }
}
