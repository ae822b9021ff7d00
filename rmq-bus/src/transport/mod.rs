//! Transports: which broker a client or a microservice talks to — RabbitMQ through lapin
//! ([`amqp`]) or the in-memory broker ([`memory`], `memory://name` URIs) — behind the small port
//! this module defines. Everything above it (encoding, routing, settling, retries, replies) is
//! the same for both, and only the code under `transport/` names lapin.
//!
//! The port:
//! - [`Link`]: a client's connection. [`Link::publish`] hands a message to the broker and returns
//!   its [`Confirm`]; [`Link::reply_to`] starts the consumer of replies to requests.
//! - [`Session`]: a microservice's connection. [`Session::consume`] declares a queue and returns
//!   its [`Consumer`].
//! - [`Consumer`]: one queue's deliveries, each an [`Inbound`]: its
//!   [`RmqContext`], which settles through the transport's [`Settle`](crate::context::Settle)
//!   port, and the [`Publisher`] that sends its reply and republishes it for a retry or into a
//!   dead-letter queue.
//!
//! ## The path of one delivery
//!
//! From the socket to the handler and on to the ack, a delivery crosses six files, each once:
//!
//! 1. `transport/amqp/consumer.rs`: lapin hands over the delivery; [`Consumer::next`] records its
//!    tag as outstanding with the channel's ack batcher and wraps it in an [`Inbound`], whose
//!    context holds the delivery behind one pointer.
//! 2. `dispatch/mod.rs`: the queue's consumer loop runs it, up to the prefetch window at once;
//!    `dispatch` reads its pattern (with `codec.rs`), finds the handler and runs it.
//! 3. `codec.rs`: the pattern of the NestJS packet, read without parsing the rest.
//! 4. `handler/mod.rs`: the handler's arguments are extracted (`Payload<T>` reads `data` from
//!    the body in one pass, through `codec.rs` again) and the user's `async fn` runs.
//! 5. `context.rs`: `ctx.ack()` claims the delivery (settled exactly once) and hands the tag to
//!    the transport's settle port.
//! 6. `transport/amqp/acks.rs`: the tag is recorded; the batcher's flusher sends one `basic.ack`
//!    with `multiple` for the contiguous run of settled tags.
//!
//! When the handler returns, `dispatch` settles what it left unsettled by the queue's policy
//! (`dispatch/disposal.rs` republishes for retries and dead letters).

pub(crate) mod amqp;
pub(crate) mod memory;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use serde_json::Value;
use tokio::sync::OnceCell;

use crate::config::{Exchange, ExchangeKind, RmqOptions};
use crate::context::RmqContext;
use crate::delivery::Properties;
use crate::error::Result;

/// The pseudo-queue to consume (without acknowledgements) for direct reply-to.
pub(crate) const REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// A delivery as any transport hands it over: its context (delivery, body, how to settle it) and
/// where to publish on its behalf.
pub(crate) struct Inbound {
    pub(crate) ctx: RmqContext,
    pub(crate) publisher: Arc<dyn Publisher>,
}

/// Where a microservice republishes a delivery: a queue, declared (durable, with `declare`'s
/// arguments) before the first publish when `declare` is set.
pub(crate) struct Target {
    pub(crate) queue: String,
    pub(crate) declare: Option<BTreeMap<String, Value>>,
}

/// Publishes on behalf of a microservice, whichever transport delivered the message.
pub(crate) trait Publisher: Send + Sync + 'static {
    /// Sends a reply `body` to queue `reply_to` with `correlation_id`.
    fn reply(
        &self,
        reply_to: &str,
        correlation_id: &str,
        body: Vec<u8>,
    ) -> BoxFuture<'_, Result<()>>;
    /// Publishes a copy of a delivery to `target` and waits for the broker's confirm.
    fn republish<'a>(
        &'a self,
        target: Target,
        body: &'a [u8],
        properties: &'a Properties,
    ) -> BoxFuture<'a, Result<()>>;
}

/// The keys a queue is bound to its exchange with: each handler pattern, or once for a fanout
/// exchange (which ignores keys).
pub(crate) fn binding_keys<'a>(exchange: &Exchange, patterns: &'a [&'a str]) -> &'a [&'a str] {
    match exchange.kind {
        ExchangeKind::Fanout => &[""],
        // The binding key of a consistent-hash exchange is the queue's weight: all equal.
        ExchangeKind::ConsistentHash => &["1"],
        _ => patterns,
    }
}

/// A JSON message on its way to the broker: where it goes, its body and its properties.
pub(crate) struct Outgoing<'a> {
    /// The exchange (`""`: the default exchange, which routes to the queue named by the key).
    pub(crate) exchange: &'a str,
    pub(crate) routing_key: &'a str,
    pub(crate) body: &'a [u8],
    pub(crate) properties: &'a Properties,
}

/// Called with each reply's correlation id and body.
pub(crate) type OnReply = Arc<dyn Fn(Option<String>, Vec<u8>) + Send + Sync>;

/// A client's connection to its broker.
pub(crate) struct Link {
    kind: LinkKind,
    /// Where replies come back, once the reply consumer runs.
    reply_to: OnceCell<String>,
    /// Publishes not confirmed yet, which `close` waits for.
    in_flight: Arc<InFlight>,
}

/// A count of publishes waiting for their confirm, and a wake-up for when it reaches zero.
#[derive(Default)]
struct InFlight {
    count: std::sync::atomic::AtomicUsize,
    idle: tokio::sync::Notify,
}

/// One publish waiting for its confirm; counted until dropped.
pub(crate) struct InFlightGuard(Arc<InFlight>);

impl InFlightGuard {
    fn new(in_flight: &Arc<InFlight>) -> Self {
        in_flight
            .count
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Self(in_flight.clone())
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self
            .0
            .count
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel)
            == 1
        {
            self.0.idle.notify_waiters();
        }
    }
}

// One per connection, never per message: boxing the large variant buys nothing.
#[allow(clippy::large_enum_variant)]
enum LinkKind {
    Amqp(amqp::Link),
    Memory(memory::Link),
}

impl Link {
    /// Connects (trying until `deadline`) and declares the queue, or the exchange, unless told not to.
    pub(crate) async fn open(options: &RmqOptions, deadline: Instant) -> Result<Link> {
        options.validate()?;
        let kind = match options.memory_broker() {
            Some(name) => LinkKind::Memory(memory::Link::open(name, options)?),
            None => LinkKind::Amqp(amqp::Link::open(options, deadline).await?),
        };
        Ok(Link {
            kind,
            reply_to: OnceCell::new(),
            in_flight: Arc::default(),
        })
    }

    /// Whether the link can still carry messages.
    pub(crate) fn alive(&self) -> bool {
        match &self.kind {
            LinkKind::Amqp(link) => link.alive(),
            LinkKind::Memory(_) => true,
        }
    }

    /// Whether the broker blocks publishers (a memory or disk alarm).
    pub(crate) fn blocked(&self) -> bool {
        match &self.kind {
            LinkKind::Amqp(link) => link.blocked(),
            LinkKind::Memory(_) => false,
        }
    }

    /// Hands a JSON message to the broker, as mandatory; the returned future is its confirm,
    /// counted as in flight (for [`close`](Self::close)) until it completes or is dropped.
    pub(crate) async fn publish(&self, message: Outgoing<'_>) -> Result<Confirm> {
        match &self.kind {
            LinkKind::Amqp(link) => {
                let guard = InFlightGuard::new(&self.in_flight);
                let confirm = link.publish(message).await?;
                Ok(Confirm::Amqp(confirm, Some(guard)))
            }
            LinkKind::Memory(link) => Ok(Confirm::Ready(Some(link.publish(message)))),
        }
    }

    /// Starts the reply consumer on first use, handing each reply to `on_reply` and calling
    /// `on_end` when it stops; returns the address requests name as `reply_to`.
    pub(crate) async fn reply_to(
        &self,
        on_reply: OnReply,
        on_end: impl FnOnce() + Send + 'static,
    ) -> Result<String> {
        self.reply_to
            .get_or_try_init(|| async {
                match &self.kind {
                    LinkKind::Amqp(link) => link.consume_replies(on_reply, on_end).await,
                    LinkKind::Memory(link) => link.consume_replies(on_reply, on_end),
                }
            })
            .await
            .cloned()
    }

    /// Closes the connection once the publishes in flight are confirmed (or `patience` ran
    /// out): closing first would fail their confirms, and their callers would publish them
    /// again on a new connection.
    pub(crate) async fn close(&self, patience: Duration) {
        let LinkKind::Amqp(link) = &self.kind else {
            return;
        };
        let confirmed = async {
            loop {
                let idle = self.in_flight.idle.notified();
                tokio::pin!(idle);
                idle.as_mut().enable();
                if self
                    .in_flight
                    .count
                    .load(std::sync::atomic::Ordering::Acquire)
                    == 0
                {
                    return;
                }
                idle.await;
            }
        };
        if tokio::time::timeout(patience, confirmed).await.is_err() {
            tracing::warn!(
                in_flight = self
                    .in_flight
                    .count
                    .load(std::sync::atomic::Ordering::Acquire),
                "closing with publishes still unconfirmed; their emits see the connection lost"
            );
        }
        link.close().await;
    }
}

/// The broker's confirm of one publish: `Ok` once it has the message. A named future rather
/// than a boxed one, as one is made for every publish. A nack is
/// [`Error::Nacked`](crate::Error::Nacked) with an empty `target`: the caller, which knows where
/// it published, names it.
pub(crate) enum Confirm {
    /// The confirm, and its place among the link's publishes in flight until it arrives.
    Amqp(amqp::Confirm, Option<InFlightGuard>),
    Ready(Option<Result<()>>),
}

impl Confirm {
    /// Lets the confirm arrive in the background, for a caller that stops waiting for it: lapin
    /// keeps an abandoned confirm for the life of the channel, so it is seen through.
    pub(crate) fn detach(self) {
        if let Confirm::Amqp(confirm, guard) = self {
            tokio::spawn(Confirm::Amqp(confirm, guard));
        }
    }
}

impl Future for Confirm {
    type Output = Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        match self.get_mut() {
            Confirm::Amqp(confirm, in_flight) => {
                let confirmed = Pin::new(confirm).poll(cx);
                if confirmed.is_ready() {
                    in_flight.take();
                }
                confirmed
            }
            Confirm::Ready(result) => Poll::Ready(result.take().unwrap_or(Ok(()))),
        }
    }
}

/// A microservice's connection to its broker.
pub(crate) enum Session {
    Amqp(amqp::Session),
    Memory(memory::Session),
}

impl Session {
    /// Connects to the broker of `options` (`patience`: how long to keep trying; `None`, for ever).
    pub(crate) async fn connect(options: &RmqOptions, patience: Option<Duration>) -> Result<Self> {
        Ok(match options.memory_broker() {
            Some(name) => Session::Memory(memory::Session::connect(name)),
            None => Session::Amqp(amqp::Session::connect(options, patience).await?),
        })
    }

    /// Declares the queue of `options` (and its exchange, bound with the handlers' `patterns`)
    /// unless told not to, and starts consuming it.
    pub(crate) async fn consume(
        &self,
        options: &RmqOptions,
        patterns: &[&str],
    ) -> Result<Consumer> {
        Ok(match self {
            Session::Amqp(session) => Consumer::Amqp(session.consume(options, patterns).await?),
            Session::Memory(session) => Consumer::Memory(session.consume(options, patterns)?),
        })
    }

    /// Closes the connection.
    pub(crate) async fn close(self) {
        if let Session::Amqp(session) = self {
            session.close().await;
        }
    }
}

/// One queue's consumer.
// One per consumer, never per message: boxing the large variant buys nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Consumer {
    Amqp(amqp::Consumer),
    Memory(memory::Consumer),
}

impl Consumer {
    /// The next delivery; `Err` with the reason once the consumer has stopped by itself.
    pub(crate) async fn next(&mut self) -> std::result::Result<Inbound, String> {
        match self {
            Consumer::Amqp(consumer) => consumer.next().await,
            Consumer::Memory(consumer) => consumer.next().await,
        }
    }

    /// The queue consumed.
    pub(crate) fn queue(&self) -> &str {
        match self {
            Consumer::Amqp(consumer) => consumer.queue(),
            Consumer::Memory(consumer) => consumer.queue(),
        }
    }

    /// Stops receiving; deliveries already handed out stay to be settled.
    pub(crate) async fn cancel(&self) {
        match self {
            Consumer::Amqp(consumer) => consumer.cancel().await,
            Consumer::Memory(consumer) => consumer.cancel(),
        }
    }

    /// Sends the acks still waiting, then closes: what is left unsettled returns to the queue.
    pub(crate) async fn close(self) {
        match self {
            Consumer::Amqp(consumer) => consumer.close().await,
            Consumer::Memory(consumer) => consumer.cancel(),
        }
    }
}
