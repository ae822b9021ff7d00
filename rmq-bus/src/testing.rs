//! Testing without a broker: [`TestBroker`] is an in-memory broker with RabbitMQ's semantics
//! (queues, exchanges, prefetch, acks, requeue, dead-lettering, TTL, direct reply-to) behind the
//! same API. Point [`RmqOptions`] at it and controllers, clients and microservices run unchanged.
//!
//! ```
//! use rmq_bus::testing::TestBroker;
//! use rmq_bus::{Microservice, Payload, RmqContext, Settlement};
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

use futures::FutureExt;
use serde::Serialize;

use crate::codec::encode_event;
use crate::config::{MEMORY_SCHEME, QueueOptions, RmqOptions};
use crate::context::Properties;
use crate::error::{Error, Result};
use crate::memory::MemoryBroker;
use crate::pattern::Pattern;

pub use crate::memory::Settled;

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
        let packet = crate::codec::decode(&self.body).ok()?;
        let data = serde_json::from_str(packet.data.get()).ok()?;
        Some((packet.pattern.key().to_owned(), data))
    }
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
    pub fn publish<T: Serialize + ?Sized>(
        &self,
        queue: &str,
        pattern: impl Into<Pattern>,
        data: &T,
    ) -> Result<()> {
        let body = encode_event(&pattern.into(), data)?;
        self.publish_raw(queue, body, Properties::default())
    }

    /// Puts any body into `queue`, through the default exchange.
    pub fn publish_raw(
        &self,
        queue: &str,
        body: impl Into<Vec<u8>>,
        properties: Properties,
    ) -> Result<()> {
        let outcome = self.broker.publish("", queue, body.into(), properties);
        crate::transport::memory_publish_result(outcome, queue)
    }

    /// Waits until a consumer settles a delivery from `queue`, and says which and how. Each
    /// settlement (since this `TestBroker` was made) is reported once, in order. It waits for
    /// ever: wrap it in `tokio::time::timeout` when a test may see none.
    pub async fn settled(&self, queue: &str) -> Settled {
        self.broker.next_settled(queue).await
    }

    /// Takes every message waiting in `queue`: what was emitted there.
    pub fn messages(&self, queue: &str) -> Vec<Received> {
        let Ok(mut consumer) = self.broker.consume(queue, 0, true) else {
            return Vec::new();
        };
        let mut taken = Vec::new();
        while let Some(Some(delivery)) = consumer.next().now_or_never() {
            taken.push(Received {
                body: delivery.body,
                properties: delivery.properties,
            });
        }
        taken
    }

    /// Messages waiting in `queue` (0 if there is no such queue).
    pub fn ready(&self, queue: &str) -> usize {
        self.broker.ready(queue).unwrap_or(0)
    }

    /// Messages of `queue` delivered and not settled yet.
    pub fn unacked(&self, queue: &str) -> usize {
        self.broker.unacked(queue).unwrap_or(0)
    }

    /// Simulates a lost connection: consumers end, their unsettled messages return to their
    /// queues marked redelivered, and microservices reconnect as they would to RabbitMQ.
    pub fn disconnect(&self) {
        self.broker.disconnect();
    }

    /// Makes the broker refuse (nack) the next `count` publishes.
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
