//! [`ClientProxy`]: emits events and sends requests, each publish confirmed by the broker.

#[cfg(feature = "asyncapi")]
mod asyncapi;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod batch;
mod pending;
mod request;

#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub(crate) use self::batch::Prepared;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::Mutex;
use tracing::Instrument;

use self::pending::PendingMap;
use crate::codec::encode_event;
use crate::config::{ExchangeKind, RmqOptions};
use crate::contract::Event;
use crate::correlation;
use crate::delivery::Properties;
use crate::error::{Error, Result};
use crate::health::{ConnectionState, Health};
use crate::ordering::{KEY_HEADER, KeyPath};
use crate::pattern::Pattern;
use crate::telemetry::{self, Role, SendMetrics, Started};
use crate::transport::{Confirm, Link, Outgoing};

/// Sends messages to one queue (or exchange), as NestJS's `ClientProxy`
/// (`ClientsModule.register` / `RmqModule.register`).
///
/// Cheap to clone: clones share one connection and one confirm-mode channel, opened on first use
/// (or by [`connect`](Self::connect)) and opened again on the next call after the connection was
/// lost. Unless [`RmqOptions::no_assert`] is set, the client declares its queue (or exchange), so
/// events emitted before the consumer first starts wait in the queue instead of being unroutable.
///
/// Every message carries a correlation id: inside a handler, the incoming message's (and its W3C
/// `traceparent`, continued), else a fresh one. Every event carries a unique `message_id`, which
/// consumers deduplicate redeliveries by.
#[derive(Clone)]
pub struct ClientProxy {
    inner: Arc<Inner>,
}

struct Inner {
    options: RmqOptions,
    /// The live link and its id: read on every call, so a plain read lock, not an async mutex.
    link: RwLock<Option<(Arc<Link>, u64)>>,
    /// Held while a link opens, so that concurrent calls open one, not one each.
    opening: Mutex<()>,
    /// Requests waiting for their reply.
    pending: PendingMap,
    links: AtomicU64,
    /// Whether a link was lost and none opened since, for [`ClientProxy::health`].
    lost: AtomicBool,
    sent: SendMetrics,
    /// The contracts it declares it sends, for AsyncAPI documents; never read when sending.
    #[cfg(feature = "asyncapi")]
    sends: std::sync::Mutex<Vec<crate::contract::check::Described>>,
}

impl fmt::Debug for ClientProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientProxy")
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

impl ClientProxy {
    /// A client for the queue and broker of `options`. Nothing connects until the first call.
    pub fn new(options: RmqOptions) -> Self {
        Self {
            inner: Arc::new(Inner {
                options,
                link: RwLock::new(None),
                opening: Mutex::new(()),
                pending: Arc::default(),
                links: AtomicU64::new(0),
                lost: AtomicBool::new(false),
                sent: SendMetrics::default(),
                #[cfg(feature = "asyncapi")]
                sends: std::sync::Mutex::default(),
            }),
        }
    }

    /// Its connection: [`Idle`](ConnectionState::Idle) before the first call (and after
    /// [`close`](Self::close)), [`Connected`](ConnectionState::Connected), or
    /// [`Disconnected`](ConnectionState::Disconnected) once the connection was lost (the next
    /// call connects again). A client has no consumers.
    pub fn health(&self) -> Health {
        let connection = match self.current_link() {
            Some((link, _)) if link.alive() => ConnectionState::Connected,
            Some(_) => ConnectionState::Disconnected,
            None if self.inner.lost.load(Ordering::Acquire) => ConnectionState::Disconnected,
            None => ConnectionState::Idle,
        };
        Health {
            connection,
            consumers: Vec::new(),
        }
    }

    /// Connects (and declares the queue) now rather than on the first emit, so that
    /// misconfiguration shows at start-up.
    pub async fn connect(&self) -> Result<()> {
        self.link(self.deadline()).await.map(drop)
    }

    /// Emits event `pattern` with `data`, as NestJS's `client.emit(pattern, data)`: the packet
    /// `{"pattern", "data"}` goes to the queue through the default exchange (or to the configured
    /// exchange with the pattern as routing key), persistent unless configured otherwise.
    ///
    /// The event carries a fresh unique `message_id` (UUID-shaped), by which consumers
    /// recognise a redelivery of it.
    ///
    /// Resolves once the broker has confirmed it. Through an outage it waits (up to
    /// [`reconnect_timeout`](RmqOptions::reconnect_timeout)) and publishes on the next connection,
    /// so an event may be duplicated but is never dropped silently. An error means the event is
    /// not known to be stored: [`Error::Unroutable`], [`Error::Connect`], [`Error::Blocked`],
    /// [`Error::TooLarge`], and [`Error::Nacked`] when the broker refused it (a queue full with
    /// `x-overflow: reject-publish`, say), which is not retried: the broker will not take it now,
    /// and retrying at once would only hold the caller; after [`Error::ConfirmTimeout`] it may or
    /// may not be stored.
    ///
    /// ```no_run
    /// # async fn demo(client: rmq_bus::ClientProxy) -> rmq_bus::Result<()> {
    /// client.emit("order_created", &serde_json::json!({"orderPayload": {"price": 10}})).await?;
    /// # Ok(()) }
    /// ```
    pub async fn emit<T: Serialize + ?Sized>(
        &self,
        pattern: impl Into<Pattern>,
        data: &T,
    ) -> Result<()> {
        self.emit_with_id(pattern, data, correlation::new_id())
            .await
    }

    /// [`emit`](Self::emit) with a message id of the caller's choosing, the AMQP `message_id`
    /// that consumers deduplicate by (as `rmq_bus::inbox::Inbox` does). Publishing the
    /// same event again with the same id lets them see it is the same event; `emit` gives each
    /// event a fresh unique id.
    pub async fn emit_with_id<T: Serialize + ?Sized>(
        &self,
        pattern: impl Into<Pattern>,
        data: &T,
        message_id: impl Into<String>,
    ) -> Result<()> {
        let pattern = pattern.into();
        let body = encode_event(&pattern, data)?;
        self.emit_body(pattern, body, None, message_id.into()).await
    }

    /// Emits event `pattern` with its ordering `key` in the [`KEY_HEADER`] header, as
    /// [`emit`](Self::emit) does otherwise: a [partitioned](RmqOptions::partitions) queue's
    /// exchange hashes it, so that every event of one key goes to one partition, in order. The
    /// handler reads its key from the data: `key` should be the same value.
    ///
    /// ```no_run
    /// # async fn demo(client: rmq_bus::ClientProxy) -> rmq_bus::Result<()> {
    /// let update = serde_json::json!({"orderId": "o-1", "status": "PAID"});
    /// client.emit_keyed("order_updated", "o-1", &update).await?;
    /// # Ok(()) }
    /// ```
    pub async fn emit_keyed<T: Serialize + ?Sized>(
        &self,
        pattern: impl Into<Pattern>,
        key: &str,
        data: &T,
    ) -> Result<()> {
        let pattern = pattern.into();
        let body = encode_event(&pattern, data)?;
        let message_id = correlation::new_id();
        self.emit_body(pattern, body, Some(key.to_owned()), message_id)
            .await
    }

    /// Emits an encoded event, with its ordering key if it has one.
    async fn emit_body(
        &self,
        pattern: Pattern,
        body: Vec<u8>,
        key: Option<String>,
        message_id: String,
    ) -> Result<()> {
        let (exchange, routing_key) = self.address(&pattern);
        let span = telemetry::trace::publish_span(exchange, routing_key, pattern.key());
        let sent = self.inner.sent.to(exchange, routing_key);
        // One clock reading for both the outage bound and the publish's duration.
        let now = Instant::now();
        let deadline = now + self.inner.options.reconnect_timeout;
        let emitted = self.emit_encoded(&pattern, &body, key, message_id, deadline);
        // Without a subscriber for it, the span is not entered on every poll.
        let result = if span.is_disabled() {
            emitted.await
        } else {
            emitted.instrument(span.clone()).await
        };
        sent.published(Started::at(now), result.as_ref().err());
        if let Err(error) = &result {
            span.record("error.type", telemetry::error_type(error));
        }
        result
    }

    /// [`emit`](Self::emit) of an encoded event until `deadline`, inside its publish span (which
    /// the outgoing `traceparent` names as the parent, with the feature `opentelemetry`).
    async fn emit_encoded(
        &self,
        pattern: &Pattern,
        body: &[u8],
        key: Option<String>,
        message_id: String,
        deadline: Instant,
    ) -> Result<()> {
        let mut properties = self.properties(None, self.inner.options.persistent);
        properties.message_id = Some(message_id);
        if let Some(key) = key {
            properties.headers.insert(KEY_HEADER.to_owned(), key.into());
        }
        loop {
            match self
                .publish_confirmed(pattern, body, &properties, deadline)
                .await
            {
                Err(error) if is_transient(&error) => {
                    if !self.interrupted(&error, deadline) {
                        return Err(error);
                    }
                    Box::pin(tokio::time::sleep(Duration::from_millis(50))).await;
                }
                result => return result,
            }
        }
    }

    /// An emit lost its connection: `true` if it is to publish again (after a pause), `false`
    /// once `deadline` has passed. Out of line, as are the other failure paths of an emit, so
    /// that the code each emit runs through stays short.
    #[cold]
    #[inline(never)]
    fn interrupted(&self, error: &Error, deadline: Instant) -> bool {
        // Whether or not it retries, the next call must not get a dead link again.
        self.forget_dead_link();
        if Instant::now() >= deadline {
            return false;
        }
        tracing::warn!(%error, "emit interrupted; publishing again once the broker is back");
        true
    }

    /// One attempt at publishing an event and having it confirmed.
    async fn publish_confirmed(
        &self,
        pattern: &Pattern,
        body: &[u8],
        properties: &Properties,
        deadline: Instant,
    ) -> Result<()> {
        // The link as it stands, unchecked: a dead one fails the publish at once, and the caller
        // then drops it (`forget_dead_link`). Checking it first would cost locks on every emit.
        let (link, _) = match self.current_link() {
            Some(current) => current,
            None => Box::pin(self.link(deadline)).await?,
        };
        if link.blocked() {
            Box::pin(wait_unblocked(&link, deadline)).await?;
        }
        // One timer, `confirm_timeout`, bounds both steps: handing the message over, which stalls
        // if the broker blocks the connection after the check above (nothing is written while
        // blocked), and the confirm. One per emit, as before there was a handover to bound.
        let timer = tokio::time::sleep(self.inner.options.confirm_timeout);
        tokio::pin!(timer);
        let publish = self.publish_on(&link, pattern, body, properties);
        let mut confirm = tokio::select! {
            biased;
            published = publish => published?,
            () = &mut timer => return Err(self.not_handed_over(&link, pattern)),
        };
        tokio::select! {
            biased;
            confirmation = &mut confirm => confirmation.map_err(|error| self.name_nack(error, pattern)),
            () = &mut timer => Err(self.unconfirmed(confirm, pattern)),
        }
    }

    /// The error of a publish the broker did not take within `confirm_timeout`: blocked, or
    /// silent.
    #[cold]
    #[inline(never)]
    fn not_handed_over(&self, link: &Link, pattern: &Pattern) -> Error {
        match link.blocked() {
            true => Error::Blocked {
                waited: self.inner.options.confirm_timeout,
            },
            false => self.confirm_timeout(pattern),
        }
    }

    /// The error of a publish not confirmed within `confirm_timeout`, whose `confirm` is let
    /// arrive in the background.
    #[cold]
    #[inline(never)]
    fn unconfirmed(&self, confirm: Confirm, pattern: &Pattern) -> Error {
        confirm.detach();
        self.confirm_timeout(pattern)
    }

    /// The error of a publish not confirmed within `confirm_timeout`.
    fn confirm_timeout(&self, pattern: &Pattern) -> Error {
        Error::ConfirmTimeout {
            target: self.target(pattern),
            timeout: self.inner.options.confirm_timeout,
        }
    }

    /// When the current outage must end for a call to go on.
    fn deadline(&self) -> Instant {
        Instant::now() + self.inner.options.reconnect_timeout
    }

    /// Emits a typed event: [`emit`](Self::emit) with the pattern of `event`'s type.
    ///
    /// ```no_run
    /// # use rmq_bus::contract::Event;
    /// # #[derive(Event, serde::Serialize)] #[event(pattern = "order_created")] struct OrderCreated { price: f64 }
    /// # async fn demo(client: rmq_bus::ClientProxy) -> rmq_bus::Result<()> {
    /// client.publish(&OrderCreated { price: 10.0 }).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// A contract that names its ordering key ([`Event::ORDERED_BY`]) has it read from the
    /// event and sent in the [`KEY_HEADER`] header, as [`emit_keyed`](Self::emit_keyed) does; an
    /// event without it is refused ([`Error::OrderingKey`]).
    pub async fn publish<E: Event + Serialize>(&self, event: &E) -> Result<()> {
        let pattern = E::pattern();
        let body = encode_event(&pattern, event)?;
        let key = match E::ORDERED_BY {
            Some(path) => Some(
                KeyPath::parse(path)
                    .and_then(|path| path.read(&body))
                    .map_err(|reason| Error::OrderingKey {
                        pattern: pattern.key().to_owned(),
                        reason,
                    })?,
            ),
            None => None,
        };
        self.emit_body(pattern, body, key, correlation::new_id())
            .await
    }

    /// Closes the connection once the broker has confirmed the emits in flight (at most
    /// [`confirm_timeout`](RmqOptions::confirm_timeout)), so that none is cut off and published
    /// again. Later calls open a new connection.
    pub async fn close(&self) {
        let current = self
            .inner
            .link
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some((link, _)) = current {
            telemetry::disconnected(Role::Client);
            link.close(self.inner.options.confirm_timeout).await;
        }
        self.inner.lost.store(false, Ordering::Release);
    }

    /// Where messages go: the exchange and routing key, or the queue.
    fn target(&self, pattern: &Pattern) -> String {
        match &self.inner.options.exchange {
            Some(exchange) => format!(
                "exchange {:?} (routing key {:?})",
                exchange.name,
                pattern.key()
            ),
            None => format!("queue {:?}", self.inner.options.queue),
        }
    }

    /// A nack names where the message went, which only the client knows.
    #[cold]
    #[inline(never)]
    fn name_nack(&self, error: Error, pattern: &Pattern) -> Error {
        match error {
            Error::Nacked { .. } => Error::Nacked {
                target: self.target(pattern),
            },
            other => other,
        }
    }

    /// Properties of an outgoing message: delivery mode, and the conversation's correlation id
    /// and traceparent (the link adds the JSON content type).
    fn properties(&self, request_id: Option<&str>, persistent: bool) -> Properties {
        // The current span's context when OpenTelemetry traces it (feature `opentelemetry`),
        // else the incoming message's trace.
        let (correlation_id, traceparent) =
            correlation::outgoing(request_id, telemetry::trace::current_traceparent());
        let mut properties = Properties {
            delivery_mode: Some(if persistent { 2 } else { 1 }),
            correlation_id: Some(correlation_id),
            ..Properties::default()
        };
        if let Some(traceparent) = traceparent {
            properties
                .headers
                .insert("traceparent".to_owned(), traceparent.into());
        }
        properties
    }

    /// Publishes `body` on `link` to the exchange (routing key = pattern) or the queue.
    async fn publish_on(
        &self,
        link: &Link,
        pattern: &Pattern,
        body: &[u8],
        properties: &Properties,
    ) -> Result<Confirm> {
        let options = &self.inner.options;
        if body.len() > options.max_message_bytes {
            return Err(Error::TooLarge {
                size: body.len(),
                max: options.max_message_bytes,
            });
        }
        let (exchange, routing_key) = match &options.exchange {
            // The exchange hashes the key header; the routing key carries it too, for brokers
            // (the in-memory one) that hash routing keys. Without a key, events spread.
            Some(exchange) if exchange.kind == ExchangeKind::ConsistentHash => {
                let key = properties
                    .headers
                    .get(KEY_HEADER)
                    .and_then(|key| key.as_str());
                let key = key.or(properties.correlation_id.as_deref()).unwrap_or("");
                // A routing key has at most 255 bytes; RabbitMQ hashes the header anyway.
                let key = if key.len() > 255 { "" } else { key };
                (exchange.name.as_str(), key)
            }
            _ => self.address(pattern),
        };
        link.publish(Outgoing {
            exchange,
            routing_key,
            body,
            properties,
        })
        .await
    }

    /// The exchange and routing key of a message of `pattern`: the pattern through the
    /// configured exchange, or the queue's name through the default exchange. (A consistent-hash
    /// exchange is sent the ordering key instead, in [`publish_on`](Self::publish_on); metrics and
    /// spans keep the pattern, never a key.)
    fn address<'a>(&'a self, pattern: &'a Pattern) -> (&'a str, &'a str) {
        let options = &self.inner.options;
        match &options.exchange {
            Some(exchange) => (exchange.name.as_str(), pattern.key()),
            None => ("", options.queue.as_str()),
        }
    }

    /// The queue, or the exchange, this client publishes to, for logs.
    fn describe(&self) -> &str {
        let options = &self.inner.options;
        options
            .exchange
            .as_ref()
            .map_or(&options.queue, |exchange| &exchange.name)
    }

    /// The live link and its id, opening one (trying until `deadline`) when there is none.
    async fn link(&self, deadline: Instant) -> Result<(Arc<Link>, u64)> {
        if let Some(live) = self.live_link() {
            return Ok(live);
        }
        let _opening = self.inner.opening.lock().await;
        if let Some(live) = self.live_link() {
            return Ok(live);
        }
        let lost = self
            .inner
            .link
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if lost.is_some() {
            telemetry::disconnected(Role::Client);
            self.inner.lost.store(true, Ordering::Release);
            tracing::info!(target = %self.describe(), "client connection lost; reconnecting");
        }
        let link = Arc::new(Link::open(&self.inner.options, deadline).await?);
        telemetry::connected(Role::Client);
        if self.inner.lost.swap(false, Ordering::AcqRel) {
            telemetry::reconnected(Role::Client, None);
        }
        let id = self.inner.links.fetch_add(1, Ordering::Relaxed);
        *self
            .inner
            .link
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some((link.clone(), id));
        Ok((link, id))
    }

    /// The current link, alive or not.
    fn current_link(&self) -> Option<(Arc<Link>, u64)> {
        let current = self
            .inner
            .link
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        current.as_ref().map(|(link, id)| (link.clone(), *id))
    }

    fn live_link(&self) -> Option<(Arc<Link>, u64)> {
        self.current_link().filter(|(link, _)| link.alive())
    }

    /// Drops the current link if it died, so that the next call opens a new one.
    fn forget_dead_link(&self) {
        let mut current = self
            .inner
            .link
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if current.as_ref().is_some_and(|(link, _)| !link.alive()) {
            *current = None;
            telemetry::disconnected(Role::Client);
            self.inner.lost.store(true, Ordering::Release);
            tracing::info!(target = %self.describe(), "client connection lost; reconnecting");
        }
    }
}

/// Errors after which publishing again on a new connection can succeed: a lost connection. A
/// broker's nack is not one: it refused the message, and would refuse it again now.
fn is_transient(error: &Error) -> bool {
    matches!(error, Error::Disconnected { .. })
}

/// Waits while the broker blocks publishers (memory or disk alarm), up to `deadline`, so that
/// callers feel the back-pressure instead of the client buffering without bound.
async fn wait_unblocked(link: &Link, deadline: Instant) -> Result<()> {
    let started = Instant::now();
    while link.blocked() {
        if Instant::now() >= deadline {
            return Err(Error::Blocked {
                waited: started.elapsed(),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
