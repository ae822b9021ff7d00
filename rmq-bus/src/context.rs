//! [`RmqContext`]: the delivery a handler is working on, and the way to settle it.
//!
//! The context knows nothing of lapin beyond an optional channel handle (the escape hatch), so
//! handlers are the same whichever transport delivered their message.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};

use crate::error::{Error, Result};
use crate::transport::Acker;

/// How a delivery was settled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Settlement {
    /// Acknowledged: done with, removed from the queue.
    Ack,
    /// Negatively acknowledged, with or without requeue.
    Nack {
        /// Whether the broker puts the message back in the queue.
        requeue: bool,
    },
    /// Rejected: dead-lettered if the queue has a dead-letter exchange, dropped otherwise.
    Reject,
}

impl fmt::Display for Settlement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Settlement::Ack => "ack",
            Settlement::Nack { requeue: true } => "nack with requeue",
            Settlement::Nack { requeue: false } => "nack without requeue",
            Settlement::Reject => "reject",
        })
    }
}

impl Settlement {
    fn code(self) -> u8 {
        match self {
            Settlement::Ack => 1,
            Settlement::Nack { requeue: true } => 2,
            Settlement::Nack { requeue: false } => 3,
            Settlement::Reject => 4,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Settlement::Ack),
            2 => Some(Settlement::Nack { requeue: true }),
            3 => Some(Settlement::Nack { requeue: false }),
            4 => Some(Settlement::Reject),
            _ => None,
        }
    }
}

const PENDING: u8 = 0;
/// Settled by the broker on delivery (`AckMode::NoAck`).
const AUTO_ACKED: u8 = 5;

/// Message properties, transport-neutral.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct Properties {
    /// `correlation_id`: ties a reply to its request (and a message to its conversation).
    pub correlation_id: Option<String>,
    /// `reply_to`: where a request wants its reply.
    pub reply_to: Option<String>,
    /// `content_type` (NestJS sets none).
    pub content_type: Option<String>,
    /// `message_id`.
    pub message_id: Option<String>,
    /// `delivery_mode`: 2 for persistent, 1 for transient.
    pub delivery_mode: Option<u8>,
    /// `timestamp`, seconds since the Unix epoch.
    pub timestamp: Option<u64>,
    /// `priority`, 0 to 9 on a priority queue.
    pub priority: Option<u8>,
    /// `expiration`: a per-message TTL in milliseconds, as text.
    pub expiration: Option<String>,
    /// `type`: the application's name for the kind of message.
    pub message_type: Option<String>,
    /// `app_id`: the publishing application.
    pub app_id: Option<String>,
    /// Application headers, as JSON values.
    pub headers: BTreeMap<String, serde_json::Value>,
}

/// Where a delivery came from: queue, exchange, routing key, delivery tag, redelivered flag and
/// properties.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct DeliveryInfo {
    /// The queue it was consumed from.
    pub queue: String,
    /// The exchange it was published to (`""` for the default exchange).
    pub exchange: String,
    /// The routing key it was published with.
    pub routing_key: String,
    /// The broker's tag for it on its channel.
    pub delivery_tag: u64,
    /// Whether it was delivered before and not acked (a requeue, or a lost connection).
    pub redelivered: bool,
    /// Its properties and headers.
    pub properties: Properties,
}

/// The context of one delivery, as NestJS's `@Ctx() context: RmqContext`.
///
/// Clone it freely: all clones settle the same delivery, exactly once. If no clone settles it,
/// rmq-bus does when the handler ends (see [`AckMode`](crate::AckMode)); if a clone outlives the
/// handler, the last one dropped settles it. So no message stays unacked for the life of the channel.
#[derive(Clone)]
pub struct RmqContext {
    inner: Arc<Inner>,
}

struct Inner {
    /// Set once the dispatcher has routed the message.
    pattern: OnceLock<Arc<str>>,
    delivery: DeliveryInfo,
    body: Vec<u8>,
    acker: Acker,
    channel: Option<Arc<lapin::Channel>>,
    state: AtomicU8,
    /// What to do if the last clone is dropped unsettled: a requeue, until the dispatcher sets
    /// the settlement of the handler's outcome.
    on_drop: AtomicU8,
}

impl fmt::Debug for RmqContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RmqContext")
            .field("pattern", &self.pattern())
            .field("delivery", &self.inner.delivery)
            .field("settled", &self.settlement())
            .finish_non_exhaustive()
    }
}

impl RmqContext {
    /// The context of a delivery, made by the transport that received it. `auto_acked`: the
    /// broker settled it on delivery (`AckMode::NoAck`). Unsettled when its last clone goes,
    /// it is requeued.
    pub(crate) fn new(
        delivery: DeliveryInfo,
        body: Vec<u8>,
        acker: Acker,
        channel: Option<Arc<lapin::Channel>>,
        auto_acked: bool,
    ) -> Self {
        let state = if auto_acked { AUTO_ACKED } else { PENDING };
        Self {
            inner: Arc::new(Inner {
                pattern: OnceLock::new(),
                delivery,
                body,
                acker,
                channel,
                state: AtomicU8::new(state),
                on_drop: AtomicU8::new(Settlement::Nack { requeue: true }.code()),
            }),
        }
    }

    /// Records the pattern the message was routed by.
    pub(crate) fn set_pattern(&self, pattern: Arc<str>) {
        let _ = self.inner.pattern.set(pattern);
    }

    /// The pattern the message was routed by (normalised, see [`Pattern::key`](crate::Pattern::key)).
    pub fn pattern(&self) -> &str {
        self.inner.pattern.get().map_or("", |pattern| pattern)
    }

    /// The delivery: queue, exchange, routing key, tag, redelivered flag, properties.
    pub fn delivery(&self) -> &DeliveryInfo {
        &self.inner.delivery
    }

    /// The message body as delivered (for a NestJS packet, its JSON text).
    pub fn body(&self) -> &[u8] {
        &self.inner.body
    }

    /// The message properties (shortcut for `delivery().properties`).
    pub fn properties(&self) -> &Properties {
        &self.inner.delivery.properties
    }

    /// Whether the broker delivered this message before.
    pub fn redelivered(&self) -> bool {
        self.inner.delivery.redelivered
    }

    /// The underlying lapin channel, for what rmq-bus does not wrap. `None` on transports other
    /// than RabbitMQ. Never settle a delivery through it (NestJS's
    /// `getChannelRef().ack(msg)`): use [`ack`](Self::ack) and friends, which settle exactly once
    /// and coalesce acks; a raw ack would leave rmq-bus acking a tag the broker no longer knows,
    /// which closes the channel.
    pub fn channel(&self) -> Option<&lapin::Channel> {
        self.inner.channel.as_deref()
    }

    /// How the message was settled so far, if it was.
    pub fn settlement(&self) -> Option<Settlement> {
        Settlement::from_code(self.inner.state.load(Ordering::Acquire))
    }

    /// Acknowledges the message: processed, remove it from the queue. (With `AckMode::NoAck`
    /// the broker already did; this is then a no-op.)
    pub async fn ack(&self) -> Result<()> {
        self.settle(Settlement::Ack).await
    }

    /// Negatively acknowledges the message; with `requeue` the broker delivers it again,
    /// without it the message is dead-lettered (or dropped if the queue has no dead-letter exchange).
    pub async fn nack(&self, requeue: bool) -> Result<()> {
        self.settle(Settlement::Nack { requeue }).await
    }

    /// Rejects the message without requeue: dead-lettered, or dropped without a dead-letter exchange.
    pub async fn reject(&self) -> Result<()> {
        self.settle(Settlement::Reject).await
    }

    async fn settle(&self, settlement: Settlement) -> Result<()> {
        if let Err(previous) = self.claim(settlement) {
            // With `AckMode::NoAck` the broker acked on delivery: an ack agrees with it, so a
            // handler written for manual acks keeps working; a nack or reject cannot be honoured.
            if previous == AUTO_ACKED && settlement == Settlement::Ack {
                return Ok(());
            }
            let previous = Settlement::from_code(previous).unwrap_or(Settlement::Ack);
            return Err(Error::AlreadySettled { previous });
        }
        self.inner.acker.settle(settlement).await
    }

    /// Marks the delivery settled unless it already is; `Err` carries the earlier state.
    fn claim(&self, settlement: Settlement) -> std::result::Result<(), u8> {
        self.inner
            .state
            .compare_exchange(
                PENDING,
                settlement.code(),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .map(|_| ())
    }

    /// Called by the dispatcher when the handler is done. If nobody settled the message and no
    /// clone of the context is left elsewhere, the dispatcher takes it over (`true`) and must
    /// settle it with [`settle_taken`](Self::settle_taken); otherwise the last clone to be
    /// dropped settles it with `fallback`.
    pub(crate) fn take_over(&self, fallback: Settlement) -> bool {
        self.inner.on_drop.store(fallback.code(), Ordering::Release);
        Arc::strong_count(&self.inner) == 1 && self.claim(fallback).is_ok()
    }

    /// Settles a delivery taken over with [`take_over`](Self::take_over).
    pub(crate) async fn settle_taken(&self, settlement: Settlement) -> Result<()> {
        self.inner.state.store(settlement.code(), Ordering::Release);
        self.inner.acker.settle(settlement).await
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let Some(settlement) = Settlement::from_code(self.on_drop.load(Ordering::Acquire)) else {
            return;
        };
        if self
            .state
            .compare_exchange(
                PENDING,
                settlement.code(),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_err()
        {
            return;
        }
        let acker = self.acker.clone();
        let tag = self.delivery.delivery_tag;
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                tracing::debug!(delivery_tag = tag, %settlement, "last context clone dropped unsettled; settling");
                runtime.spawn(async move {
                    if let Err(error) = acker.settle(settlement).await {
                        tracing::warn!(delivery_tag = tag, %error, "could not settle a dropped delivery");
                    }
                });
            }
            Err(_) => {
                tracing::warn!(
                    delivery_tag = tag,
                    "delivery dropped outside a runtime; the broker redelivers it when its channel closes"
                );
            }
        }
    }
}
