//! [`ClientProxy`]: emits events and sends requests, each publish confirmed by the broker.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as SyncMutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionStatus, PublisherConfirm,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Mutex, oneshot};

use crate::amqp;
use crate::codec::{Reply, decode_reply, encode_event, encode_request};
use crate::config::RmqOptions;
use crate::error::{Error, Result};
use crate::pattern::Pattern;
use crate::rpc::NO_HANDLER;
use crate::trace;

/// RabbitMQ's direct reply-to pseudo-queue: replies come straight back on the requesting channel.
const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// Sends messages to one queue (or exchange), as NestJS's `ClientProxy`
/// (`ClientsModule.register` / `RmqModule.register`).
///
/// Cheap to clone: clones share one connection and one confirm-mode channel, opened on first use
/// (or by [`connect`](Self::connect)) and opened again on the next call after the connection was
/// lost. Unless [`RmqOptions::no_assert`] is set, the client declares its queue (or exchange), so
/// events emitted before the consumer first starts wait in the queue instead of being unroutable.
///
/// Every message carries a correlation id: inside a handler, the incoming message's (and its W3C
/// `traceparent`, continued), else a fresh one.
#[derive(Clone)]
pub struct ClientProxy {
    inner: Arc<Inner>,
}

struct Inner {
    options: RmqOptions,
    link: Mutex<Option<Link>>,
    /// Requests waiting for their reply, by correlation id, with the link they were sent on.
    pending: PendingMap,
    links: AtomicU64,
}

struct Link {
    connection: Connection,
    channel: Channel,
    id: u64,
    replies: bool,
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
                link: Mutex::new(None),
                pending: Arc::default(),
                links: AtomicU64::new(0),
            }),
        }
    }

    /// The options this client was made with.
    pub fn options(&self) -> &RmqOptions {
        &self.inner.options
    }

    /// Connects (and declares the queue) now rather than on the first emit, so that
    /// misconfiguration shows at start-up.
    pub async fn connect(&self) -> Result<()> {
        self.channel(false, self.deadline()).await.map(drop)
    }

    /// Emits event `pattern` with `data`, as NestJS's `client.emit(pattern, data)`: the packet
    /// `{"pattern", "data"}` goes to the queue through the default exchange (or to the configured
    /// exchange with the pattern as routing key), persistent unless configured otherwise.
    /// Resolves once the broker has confirmed it; an error means the event is not (known to be)
    /// stored: [`Error::Nacked`], [`Error::Unroutable`], [`Error::ConfirmTimeout`],
    /// [`Error::Disconnected`], [`Error::TooLarge`].
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
        let pattern = pattern.into();
        let body = encode_event(&pattern, data)?;
        let properties = self.properties(None, self.inner.options.is_persistent());
        // Through an outage, publish again on the next connection until the bound: an event
        // the broker did not confirm is never given up silently (a retry may duplicate it).
        let deadline = self.deadline();
        loop {
            match self
                .publish_confirmed(&pattern, &body, properties.clone(), deadline)
                .await
            {
                Err(error) if is_transient(&error) && Instant::now() < deadline => {
                    tracing::warn!(%error, "emit interrupted; publishing again once the broker is back");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                result => return result,
            }
        }
    }

    /// One attempt at publishing an event and having it confirmed.
    async fn publish_confirmed(
        &self,
        pattern: &Pattern,
        body: &[u8],
        properties: BasicProperties,
        deadline: Instant,
    ) -> Result<()> {
        let (channel, status, _) = self.channel(false, deadline).await?;
        wait_unblocked(&status, deadline).await?;
        let confirm = self.publish(&channel, pattern, body, properties).await?;
        let wait = self.inner.options.confirm_wait();
        match tokio::time::timeout(wait, confirm).await {
            Err(_) => Err(Error::ConfirmTimeout {
                queue: self.target(pattern),
                timeout: wait,
            }),
            Ok(confirmation) => self.confirmed(pattern, confirmation),
        }
    }

    /// When the current outage must end for a call to go on.
    fn deadline(&self) -> Instant {
        Instant::now() + self.inner.options.reconnect_wait()
    }

    /// Sends request `pattern` with `data` and waits for the reply, as NestJS's
    /// `client.send(pattern, data)`, within [`DEFAULT_REQUEST_TIMEOUT`](crate::DEFAULT_REQUEST_TIMEOUT).
    ///
    /// The reply comes back through RabbitMQ's direct reply-to. Errors: [`Error::RequestTimeout`],
    /// [`Error::Remote`] (carrying the remote error payload), [`Error::NoHandler`],
    /// [`Error::ReplyLost`] (the connection closed first), [`Error::BadReply`], and the
    /// publishing errors of [`emit`](Self::emit).
    ///
    /// ```no_run
    /// # async fn demo(client: rmq_bus::ClientProxy) -> rmq_bus::Result<()> {
    /// let total: f64 = client.send("sum", &[1.5, 2.5]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn send<T, R>(&self, pattern: impl Into<Pattern>, data: &T) -> Result<R>
    where
        T: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        self.send_timeout(pattern, data, crate::config::DEFAULT_REQUEST_TIMEOUT)
            .await
    }

    /// [`send`](Self::send) with its own timeout.
    pub async fn send_timeout<T, R>(
        &self,
        pattern: impl Into<Pattern>,
        data: &T,
        timeout: Duration,
    ) -> Result<R>
    where
        T: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        let pattern = pattern.into();
        let id = trace::new_id();
        let body = encode_request(&pattern, data, &id)?;
        let deadline = Instant::now() + timeout;
        let (channel, status, link) = self.channel(true, deadline).await?;
        wait_unblocked(&status, deadline).await?;
        let (sender, receiver) = oneshot::channel();
        let pending = Pending::register(&self.inner.pending, &id, link, sender);
        // Requests are transient: one nobody waits for after its timeout need not survive a restart.
        let properties = self
            .properties(Some(&id), false)
            .with_reply_to(ShortString::from(DIRECT_REPLY_TO));
        let wait = async {
            // The reply may come before the confirm; an unroutable or refused request fails at once.
            let confirm = self.publish(&channel, &pattern, &body, properties).await?;
            tokio::pin!(confirm);
            let (mut receiver, mut confirmed) = (receiver, false);
            loop {
                tokio::select! {
                    reply = &mut receiver => {
                        return reply.map_err(|_| Error::ReplyLost { pattern: pattern.key().to_owned() });
                    }
                    confirmation = &mut confirm, if !confirmed => {
                        confirmed = true;
                        self.confirmed(&pattern, confirmation)?;
                    }
                }
            }
        };
        let reply = match tokio::time::timeout(timeout, wait).await {
            Ok(reply) => reply?,
            Err(_) => {
                return Err(Error::RequestTimeout {
                    pattern: pattern.key().to_owned(),
                    timeout,
                });
            }
        };
        drop(pending);
        interpret(pattern.key(), reply)
    }

    /// Closes the connection. Later calls open a new one.
    pub async fn close(&self) {
        if let Some(link) = self.inner.link.lock().await.take() {
            // Waits for outstanding confirms as part of the close handshake.
            let _ = link
                .channel
                .close(200, ShortString::from("client closed"))
                .await;
            let _ = link
                .connection
                .close(200, ShortString::from("client closed"))
                .await;
        }
    }

    /// Where messages go: the exchange's name, or the queue's.
    fn target(&self, pattern: &Pattern) -> String {
        match self.inner.options.exchange_options() {
            Some(exchange) => format!("{} (routing key {})", exchange.name, pattern.key()),
            None => self.inner.options.queue().to_owned(),
        }
    }

    /// Properties of an outgoing message: JSON, delivery mode, and the conversation's
    /// correlation id and traceparent.
    fn properties(&self, request_id: Option<&str>, persistent: bool) -> BasicProperties {
        let current = trace::current();
        let correlation_id = request_id
            .map(str::to_owned)
            .or_else(|| current.as_ref().and_then(|t| t.correlation_id.clone()))
            .unwrap_or_else(trace::new_id);
        let mut properties = BasicProperties::default()
            .with_content_type(ShortString::from("application/json"))
            .with_delivery_mode(if persistent { 2 } else { 1 });
        if let Ok(id) = ShortString::try_new(correlation_id) {
            properties = properties.with_correlation_id(id);
        }
        let traceparent = current
            .and_then(|t| t.traceparent)
            .and_then(|p| trace::child_traceparent(&p));
        if let Some(traceparent) = traceparent {
            let mut headers = FieldTable::default();
            headers.insert(
                ShortString::from("traceparent"),
                AMQPValue::LongString(traceparent.into()),
            );
            properties = properties.with_headers(headers);
        }
        properties
    }

    /// Publishes `body` as mandatory, to the exchange (routing key = pattern) or the queue.
    async fn publish(
        &self,
        channel: &Channel,
        pattern: &Pattern,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<PublisherConfirm> {
        let options = &self.inner.options;
        if body.len() > options.max_bytes() {
            return Err(Error::TooLarge {
                size: body.len(),
                max: options.max_bytes(),
            });
        }
        let (exchange, routing_key) = match options.exchange_options() {
            Some(exchange) => (
                amqp::short("exchange name", &exchange.name)?,
                amqp::short("pattern", pattern.key())?,
            ),
            None => (
                ShortString::from(""),
                amqp::short("queue name", options.queue())?,
            ),
        };
        let publish = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        channel
            .basic_publish(exchange, routing_key, publish, body, properties)
            .await
            .map_err(|e| Error::from_lapin("publishing", e))
    }

    /// Interprets the broker's answer to a publish.
    fn confirmed(
        &self,
        pattern: &Pattern,
        confirmation: lapin::Result<Confirmation>,
    ) -> Result<()> {
        match confirmation {
            Err(error) => Err(Error::from_lapin("waiting for the publish confirm", error)),
            Ok(Confirmation::Ack(Some(returned))) => Err(Error::Unroutable {
                routing_key: returned.delivery.routing_key.as_str().to_owned(),
            }),
            Ok(Confirmation::Nack(_)) => Err(Error::Nacked {
                queue: self.target(pattern),
            }),
            Ok(Confirmation::Ack(None) | Confirmation::NotRequested) => Ok(()),
        }
    }

    /// The live channel, its connection's status and its link id, opening connection, channel
    /// and declarations first when there is none (trying until `deadline`); with `replies`, also
    /// the direct reply-to consumer.
    async fn channel(
        &self,
        replies: bool,
        deadline: Instant,
    ) -> Result<(Channel, ConnectionStatus, u64)> {
        let mut link = self.inner.link.lock().await;
        let alive = link
            .as_ref()
            .is_some_and(|l| l.channel.status().connected() && l.connection.status().connected());
        if !alive {
            if link.is_some() {
                tracing::info!(target = %self.inner.options.queue(), "client connection lost; reconnecting");
            }
            *link = None;
            *link = Some(self.open(deadline).await?);
        }
        let Some(current) = link.as_mut() else {
            return Err(Error::Config("client link vanished while opening".into()));
        };
        if replies && !current.replies {
            self.consume_replies(current).await?;
            current.replies = true;
        }
        Ok((
            current.channel.clone(),
            current.connection.status().clone(),
            current.id,
        ))
    }

    async fn open(&self, deadline: Instant) -> Result<Link> {
        let options = &self.inner.options;
        options.validate()?;
        let patience = deadline.saturating_duration_since(Instant::now());
        let connection = amqp::connect(options, "rmq-bus client", Some(patience)).await?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| Error::from_lapin("opening a channel", e))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| Error::from_lapin("enabling publisher confirms", e))?;
        if !options.is_no_assert() {
            match options.exchange_options() {
                Some(exchange) => amqp::declare_exchange(&channel, exchange).await?,
                None => amqp::declare_queue(&channel, options).await?,
            }
        }
        let id = self.inner.links.fetch_add(1, Ordering::Relaxed);
        Ok(Link {
            connection,
            channel,
            id,
            replies: false,
        })
    }

    /// Starts consuming direct replies on the link's channel (no-ack: the broker refuses acks
    /// there), handing each to the request waiting for its correlation id.
    async fn consume_replies(&self, link: &Link) -> Result<()> {
        let mut consumer = link
            .channel
            .basic_consume(
                ShortString::from(DIRECT_REPLY_TO),
                ShortString::from(""),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| Error::from_lapin("consuming direct replies", e))?;
        let pending = self.inner.pending.clone();
        let link_id = link.id;
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                let Some(id) = delivery
                    .properties
                    .correlation_id()
                    .as_ref()
                    .map(|id| id.as_str().to_owned())
                else {
                    tracing::debug!("reply without correlation id dropped");
                    continue;
                };
                let waiting = pending.lock().map(|mut map| map.remove(&id)).ok().flatten();
                match (waiting, decode_reply(&delivery.data)) {
                    (Some((_, sender)), Ok(reply)) => {
                        let _ = sender.send(reply);
                    }
                    (Some(_), Err(reason)) => {
                        tracing::warn!(correlation_id = %id, %reason, "unreadable reply dropped")
                    }
                    (None, _) => {
                        tracing::debug!(correlation_id = %id, "late or unknown reply dropped")
                    }
                }
            }
            // The link is gone: its waiting requests will get no reply.
            if let Ok(mut map) = pending.lock() {
                map.retain(|_, (link, _)| *link != link_id);
            }
        });
        Ok(())
    }
}

/// Requests waiting for their reply, by correlation id, with the link they were sent on.
type PendingMap = Arc<SyncMutex<HashMap<String, (u64, oneshot::Sender<Reply>)>>>;

/// Errors after which publishing again on a new connection can succeed.
fn is_transient(error: &Error) -> bool {
    matches!(error, Error::Disconnected { .. } | Error::Nacked { .. })
}

/// Waits while the broker blocks publishers (memory or disk alarm), up to `deadline`, so that
/// callers feel the back-pressure instead of the client buffering without bound.
async fn wait_unblocked(status: &ConnectionStatus, deadline: Instant) -> Result<()> {
    let started = Instant::now();
    while status.blocked() {
        if Instant::now() >= deadline {
            return Err(Error::Blocked {
                waited: started.elapsed(),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// A request's place among the pending ones, removed however the request ends.
struct Pending {
    map: PendingMap,
    id: String,
}

impl Pending {
    fn register(map: &PendingMap, id: &str, link: u64, sender: oneshot::Sender<Reply>) -> Self {
        if let Ok(mut pending) = map.lock() {
            pending.insert(id.to_owned(), (link, sender));
        }
        Self {
            map: map.clone(),
            id: id.to_owned(),
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Ok(mut pending) = self.map.lock() {
            pending.remove(&self.id);
        }
    }
}

/// Turns a NestJS reply into the response or the error it carries.
fn interpret<R: DeserializeOwned>(pattern: &str, reply: Reply) -> Result<R> {
    if let Some(error) = reply.err.filter(|e| !e.is_null()) {
        return Err(if error.as_str() == Some(NO_HANDLER) {
            Error::NoHandler {
                pattern: pattern.to_owned(),
            }
        } else {
            Error::Remote {
                pattern: pattern.to_owned(),
                error,
            }
        });
    }
    let raw = reply.response.as_deref().map_or("null", |r| r.get());
    serde_json::from_str(raw).map_err(|e| Error::BadReply {
        pattern: pattern.to_owned(),
        reason: e.to_string(),
    })
}
