//! [`RmqContext`]: the delivery a handler is working on, and the way to settle it.
//!
//! The context settles through a port that the transport which delivered the message implements,
//! so handlers are the same whichever transport that was. The module also holds the plain data
//! of a delivery: [`DeliveryInfo`], [`Properties`], [`Settlement`] and [`Outcome`].

use std::any::Any;
use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};

use futures::future::BoxFuture;

pub use crate::delivery::{DeliveryInfo, Outcome, Properties, Settlement};
use crate::error::{Error, Result};

/// How the transport that delivered a message settles it: one per consumer, shared by the
/// contexts of its deliveries. Every message takes an ack, so an ack neither allocates nor waits.
/// Each settlement comes with its [`Outcome`], for the transports that record it (the in-memory
/// one, for tests).
pub(crate) trait Settle: Any + Send + Sync {
    /// Acks delivery `tag`; it may only be recorded, for a coalesced ack sent soon after.
    fn ack(&self, tag: u64, outcome: Outcome) -> Result<()>;
    /// Nacks or rejects delivery `tag`: on the wire once the future completes.
    fn refuse(
        &self,
        tag: u64,
        settlement: Settlement,
        outcome: Outcome,
    ) -> BoxFuture<'_, Result<()>>;
}

/// Settles `tag` through `settler`.
async fn send(
    settler: &dyn Settle,
    tag: u64,
    settlement: Settlement,
    outcome: Outcome,
) -> Result<()> {
    match settlement {
        Settlement::Ack => settler.ack(tag, outcome),
        refusal => settler.refuse(tag, refusal, outcome).await,
    }
}

const PENDING: u8 = 0;
/// Settled by the broker on delivery (`AckMode::NoAck`).
const AUTO_ACKED: u8 = 5;

/// The context of one delivery, as NestJS's `@Ctx() context: RmqContext`.
///
/// Clone it freely: all clones settle the same delivery, exactly once. If no clone settles it,
/// rmq-bus does when the handler ends (see [`AckMode`](crate::config::AckMode)); if a clone outlives the
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
    settler: Arc<dyn Settle>,
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
    /// The context of a delivery, made by the transport that received it, which settles it
    /// through `settler`. `auto_acked`: the broker settled it on delivery (`AckMode::NoAck`).
    /// Unsettled when its last clone goes, it is requeued.
    pub(crate) fn new(
        delivery: DeliveryInfo,
        body: Vec<u8>,
        settler: Arc<dyn Settle>,
        auto_acked: bool,
    ) -> Self {
        let state = if auto_acked { AUTO_ACKED } else { PENDING };
        Self {
            inner: Arc::new(Inner {
                pattern: OnceLock::new(),
                delivery,
                body,
                settler,
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
    /// A wildcard handler (`shipment.*`) sees the message's own key (`shipment.delivered`).
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

    /// The port its transport settles it through (the RabbitMQ transport reaches its channel
    /// from here, for [`channel`](Self::channel)).
    pub(crate) fn settler(&self) -> &dyn Settle {
        self.inner.settler.as_ref()
    }

    /// How the message was settled so far, if it was.
    pub fn settlement(&self) -> Option<Settlement> {
        Settlement::from_code(self.inner.state.load(Ordering::Acquire))
    }

    /// Acknowledges the message: processed, remove it from the queue. (With `AckMode::NoAck`
    /// the broker already did; this is then a no-op.)
    pub async fn ack(&self) -> Result<()> {
        // Every message takes one: settled here, without the nested futures of a refusal.
        if !self.claimed(Settlement::Ack)? {
            return Ok(());
        }
        self.settler()
            .ack(self.inner.delivery.delivery_tag, Outcome::Acked)
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
        if !self.claimed(settlement)? {
            return Ok(());
        }
        let tag = self.inner.delivery.delivery_tag;
        send(self.settler(), tag, settlement, Outcome::of(settlement)).await
    }

    /// Claims the delivery for `settlement`: `true` if this call is to send it, `false` for an
    /// ack of a message the broker acked on delivery (`AckMode::NoAck`), which agrees with it, so
    /// that a handler written for manual acks keeps working; a nack or reject cannot be honoured.
    fn claimed(&self, settlement: Settlement) -> Result<bool> {
        let Err(previous) = self.claim(settlement) else {
            return Ok(true);
        };
        if previous == AUTO_ACKED && settlement == Settlement::Ack {
            return Ok(false);
        }
        let previous = Settlement::from_code(previous).unwrap_or(Settlement::Ack);
        Err(Error::AlreadySettled { previous })
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

    /// Settles a delivery taken over with [`take_over`](Self::take_over), for `outcome`.
    pub(crate) async fn settle_taken(
        &self,
        settlement: Settlement,
        outcome: Outcome,
    ) -> Result<()> {
        self.inner.state.store(settlement.code(), Ordering::Release);
        send(
            self.settler(),
            self.inner.delivery.delivery_tag,
            settlement,
            outcome,
        )
        .await
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
        let settler = self.settler.clone();
        let tag = self.delivery.delivery_tag;
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                tracing::debug!(delivery_tag = tag, %settlement, "last context clone dropped unsettled; settling");
                runtime.spawn(async move {
                    let outcome = Outcome::of(settlement);
                    if let Err(error) = send(settler.as_ref(), tag, settlement, outcome).await {
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
