//! Which broker a client or a microservice talks to: RabbitMQ through lapin, or the in-memory
//! broker (`memory://name`), behind one small surface. Everything above this module (encoding,
//! routing, settling, retries, replies) is the same for both.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{Confirmation, Connection, PublisherConfirm};
use tokio::sync::OnceCell;

use crate::acks::AckBatcher;
use crate::amqp::{self, ServerPublisher};
use crate::codec;
use crate::config::{AckMode, RmqOptions};
use crate::context::{DeliveryInfo, Properties, RmqContext, Settlement};
use crate::dispatch::{Inbound, Publisher, Router, Target};
use crate::error::{Error, Result};
use crate::memory::{self, MemoryAcker, MemoryBroker, MemoryConsumer, MemoryError, PublishOutcome};

/// The broker's confirm of one publish: `Ok` once it has the message. A named future rather
/// than a boxed one, as one is made for every publish. A nack is [`Error::Nacked`] with an empty
/// `queue`: the caller, which knows where it published, names it.
pub(crate) enum Confirm {
    Amqp(PublisherConfirm),
    Done(Option<Result<()>>),
}

impl Future for Confirm {
    type Output = Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        match self.get_mut() {
            Confirm::Amqp(confirm) => Pin::new(confirm).poll(cx).map(|confirmed| match confirmed {
                Err(error) => Err(Error::from_lapin("waiting for the publish confirm", error)),
                Ok(Confirmation::Ack(Some(returned))) => Err(Error::Unroutable {
                    routing_key: returned.delivery.routing_key.as_str().to_owned(),
                }),
                Ok(Confirmation::Nack(_)) => Err(Error::Nacked {
                    queue: String::new(),
                }),
                Ok(Confirmation::Ack(None) | Confirmation::NotRequested) => Ok(()),
            }),
            Confirm::Done(result) => Poll::Ready(result.take().unwrap_or(Ok(()))),
        }
    }
}

/// Called with each reply's correlation id and body.
pub(crate) type OnReply = Arc<dyn Fn(Option<String>, Vec<u8>) + Send + Sync>;

/// A client's connection to its broker.
pub(crate) struct Link {
    kind: LinkKind,
    /// Where replies come back, once the reply consumer runs.
    reply_to: OnceCell<String>,
}

// One per connection or consumer, never per message: boxing the large variant buys nothing.
#[allow(clippy::large_enum_variant)]
enum LinkKind {
    Amqp {
        connection: Connection,
        channel: lapin::Channel,
    },
    Memory(MemoryBroker),
}

impl Link {
    /// Connects (trying until `deadline`) and declares the queue, or the exchange, unless told not to.
    pub(crate) async fn open(options: &RmqOptions, deadline: Instant) -> Result<Link> {
        options.validate()?;
        let kind = match options.memory_broker() {
            Some(name) => {
                let broker = MemoryBroker::named(name);
                if !options.is_no_assert() {
                    match options.exchange_options() {
                        Some(_) => declare_memory_exchange(&broker, options)?,
                        None => declare_memory_queue(&broker, options)?,
                    }
                }
                LinkKind::Memory(broker)
            }
            None => {
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
                LinkKind::Amqp {
                    connection,
                    channel,
                }
            }
        };
        Ok(Link {
            kind,
            reply_to: OnceCell::new(),
        })
    }

    /// Whether the link can still carry messages.
    pub(crate) fn alive(&self) -> bool {
        match &self.kind {
            LinkKind::Amqp {
                connection,
                channel,
            } => channel.status().connected() && connection.status().connected(),
            LinkKind::Memory(_) => true,
        }
    }

    /// Whether the broker blocks publishers (a memory or disk alarm).
    pub(crate) fn blocked(&self) -> bool {
        match &self.kind {
            LinkKind::Amqp { connection, .. } => connection.status().blocked(),
            LinkKind::Memory(_) => false,
        }
    }

    /// Hands a JSON message to the broker, as mandatory; the returned future is its confirm.
    pub(crate) async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: &Properties,
    ) -> Result<Confirm> {
        match &self.kind {
            LinkKind::Amqp { channel, .. } => {
                let publish = BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                };
                let confirm = channel
                    .basic_publish(
                        amqp::short("exchange name", exchange)?,
                        amqp::short("routing key", routing_key)?,
                        publish,
                        body,
                        amqp::basic_properties(properties)?
                            .with_content_type(ShortString::from(codec::CONTENT_TYPE)),
                    )
                    .await
                    .map_err(|e| Error::from_lapin("publishing", e))?;
                Ok(Confirm::Amqp(confirm))
            }
            LinkKind::Memory(broker) => {
                let properties = Properties {
                    content_type: Some(codec::CONTENT_TYPE.to_owned()),
                    ..properties.clone()
                };
                let outcome = broker.publish(exchange, routing_key, body.to_vec(), properties);
                let result = memory_publish_result(outcome, routing_key);
                Ok(Confirm::Done(Some(result)))
            }
        }
    }

    /// Starts the direct reply-to consumer on first use, handing each reply to `on_reply` and
    /// calling `on_end` when it stops; returns the address requests name as `reply_to`.
    pub(crate) async fn reply_to(
        &self,
        on_reply: OnReply,
        on_end: impl FnOnce() + Send + 'static,
    ) -> Result<String> {
        self.reply_to
            .get_or_try_init(|| async {
                match &self.kind {
                    LinkKind::Amqp { channel, .. } => {
                        let mut consumer = channel
                            .basic_consume(
                                ShortString::from(memory::REPLY_TO),
                                ShortString::from(""),
                                BasicConsumeOptions {
                                    no_ack: true,
                                    ..BasicConsumeOptions::default()
                                },
                                FieldTable::default(),
                            )
                            .await
                            .map_err(|e| Error::from_lapin("consuming direct replies", e))?;
                        tokio::spawn(async move {
                            while let Some(Ok(delivery)) = consumer.next().await {
                                let id = delivery
                                    .properties
                                    .correlation_id()
                                    .as_ref()
                                    .map(|id| id.as_str().to_owned());
                                on_reply(id, delivery.data);
                            }
                            on_end();
                        });
                        Ok(memory::REPLY_TO.to_owned())
                    }
                    LinkKind::Memory(broker) => {
                        let mut consumer = broker
                            .consume(memory::REPLY_TO, 0, true)
                            .map_err(|e| memory_error("consuming direct replies", e))?;
                        let address = consumer.reply_to().unwrap_or(memory::REPLY_TO).to_owned();
                        tokio::spawn(async move {
                            while let Some(delivery) = consumer.next().await {
                                on_reply(delivery.properties.correlation_id, delivery.body);
                            }
                            on_end();
                        });
                        Ok(address)
                    }
                }
            })
            .await
            .cloned()
    }

    /// Closes the connection; on RabbitMQ, after outstanding confirms.
    pub(crate) async fn close(&self) {
        if let LinkKind::Amqp {
            connection,
            channel,
        } = &self.kind
        {
            let _ = channel.close(200, ShortString::from("client closed")).await;
            let _ = connection
                .close(200, ShortString::from("client closed"))
                .await;
        }
    }
}

pub(crate) fn memory_publish_result(
    outcome: std::result::Result<PublishOutcome, MemoryError>,
    routing_key: &str,
) -> Result<()> {
    match outcome {
        Ok(PublishOutcome::Routed(_)) => Ok(()),
        Ok(PublishOutcome::Unroutable) => Err(Error::Unroutable {
            routing_key: routing_key.to_owned(),
        }),
        Ok(PublishOutcome::Refused) => Err(Error::Nacked {
            queue: routing_key.to_owned(),
        }),
        Err(error) => Err(memory_error("publishing", error)),
    }
}

/// A refusal of the in-memory broker as the error RabbitMQ's would give.
fn memory_error(operation: &'static str, error: MemoryError) -> Error {
    match error {
        MemoryError::Disconnected => Error::Disconnected {
            context: operation,
            source: Box::new(error),
        },
        other => Error::Broker {
            operation,
            source: Box::new(other),
        },
    }
}

/// Declares the exchange of `options`, if any, on the in-memory broker.
fn declare_memory_exchange(broker: &MemoryBroker, options: &RmqOptions) -> Result<()> {
    if let Some(exchange) = options.exchange_options() {
        broker
            .declare_exchange(&exchange.name, exchange.kind)
            .map_err(|error| Error::DeclareExchange {
                exchange: exchange.name.clone(),
                source: Box::new(error),
            })?;
    }
    Ok(())
}

/// Declares the queue of `options` on the in-memory broker.
fn declare_memory_queue(broker: &MemoryBroker, options: &RmqOptions) -> Result<()> {
    let declaration = options.queue_declaration();
    broker
        .declare_queue(options.queue(), declaration.durable, &declaration.arguments)
        .map_err(|error| Error::Declare {
            queue: options.queue().to_owned(),
            source: Box::new(error),
        })
}

/// A microservice's connection to its broker.
// One per connection or consumer, never per message: boxing the large variant buys nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Session {
    Amqp {
        connection: Arc<Connection>,
        publisher: Arc<ServerPublisher>,
    },
    Memory {
        broker: MemoryBroker,
        publisher: Arc<MemoryPublisher>,
    },
}

impl Session {
    /// Connects to the broker of `options` (`patience`: how long to keep trying; `None`, for ever).
    pub(crate) async fn connect(
        options: &RmqOptions,
        patience: Option<std::time::Duration>,
    ) -> Result<Self> {
        if let Some(name) = options.memory_broker() {
            let broker = MemoryBroker::named(name);
            let publisher = Arc::new(MemoryPublisher(broker.clone()));
            return Ok(Session::Memory { broker, publisher });
        }
        let connection = Arc::new(amqp::connect(options, "rmq-bus microservice", patience).await?);
        let publisher = Arc::new(ServerPublisher::new(
            connection.clone(),
            options.confirm_wait(),
        ));
        Ok(Session::Amqp {
            connection,
            publisher,
        })
    }

    /// Declares the queue of `options` (and its exchange and bindings) unless told not to, and
    /// starts consuming it.
    pub(crate) async fn consume(&self, options: &RmqOptions, router: &Router) -> Result<Source> {
        let no_ack = options.ack() == AckMode::NoAck;
        let queue = options.queue().to_owned();
        match self {
            Session::Amqp {
                connection,
                publisher,
            } => {
                let channel = connection
                    .create_channel()
                    .await
                    .map_err(|e| Error::from_lapin("opening a channel", e))?;
                channel
                    .basic_qos(options.prefetch_count(), BasicQosOptions::default())
                    .await
                    .map_err(|e| Error::from_lapin("setting the prefetch", e))?;
                if !options.is_no_assert() {
                    if let Some(exchange) = options.exchange_options() {
                        amqp::declare_exchange(&channel, exchange).await?;
                    }
                    amqp::declare_queue(&channel, options).await?;
                    amqp::bind_queue(&channel, options, &router.keys()).await?;
                }
                let consumer = channel
                    .basic_consume(
                        amqp::short("queue name", &queue)?,
                        ShortString::from(""),
                        BasicConsumeOptions {
                            no_ack,
                            ..BasicConsumeOptions::default()
                        },
                        FieldTable::default(),
                    )
                    .await
                    .map_err(|source| match Error::from_lapin("consuming", source) {
                        Error::Broker { source, .. } => Error::Consume {
                            queue: queue.clone(),
                            source,
                        },
                        other => other,
                    })?;
                let acks = AckBatcher::start(channel.clone(), options.prefetch_count());
                let channel = Arc::new(channel);
                Ok(Source::Amqp {
                    channel,
                    consumer,
                    publisher: publisher.clone(),
                    acks,
                    queue,
                    no_ack,
                })
            }
            Session::Memory { broker, publisher } => {
                if !options.is_no_assert() {
                    declare_memory_exchange(broker, options)?;
                    declare_memory_queue(broker, options)?;
                    if let Some(exchange) = options.exchange_options() {
                        let keys = match exchange.kind {
                            crate::config::ExchangeKind::Fanout => vec![""],
                            _ => router.keys(),
                        };
                        for key in keys {
                            broker.bind(&queue, &exchange.name, key).map_err(|e| {
                                memory_error("binding the queue to its exchange", e)
                            })?;
                        }
                    }
                }
                let consumer = broker
                    .consume(&queue, options.prefetch_count(), no_ack)
                    .map_err(|error| Error::Consume {
                        queue: queue.clone(),
                        source: Box::new(error),
                    })?;
                Ok(Source::Memory {
                    consumer,
                    publisher: publisher.clone(),
                    queue,
                    no_ack,
                })
            }
        }
    }

    /// Closes the connection.
    pub(crate) async fn close(self) {
        if let Session::Amqp { connection, .. } = self {
            let _ = connection.close(200, ShortString::from("shutdown")).await;
        }
    }
}

/// One queue's consumer.
// One per connection or consumer, never per message: boxing the large variant buys nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Source {
    Amqp {
        /// Shared with every delivery's context (the escape hatch), so not cloned per message.
        channel: Arc<lapin::Channel>,
        consumer: lapin::Consumer,
        publisher: Arc<ServerPublisher>,
        acks: Arc<AckBatcher>,
        queue: String,
        /// The broker acks deliveries itself (`AckMode::NoAck`).
        no_ack: bool,
    },
    Memory {
        consumer: MemoryConsumer,
        publisher: Arc<MemoryPublisher>,
        queue: String,
        /// The broker acks deliveries itself (`AckMode::NoAck`).
        no_ack: bool,
    },
}

impl Source {
    /// The next delivery; `Err` with the reason once the consumer has stopped by itself.
    pub(crate) async fn next(&mut self) -> std::result::Result<Inbound, String> {
        match self {
            Source::Amqp { channel, consumer, publisher, acks, queue, no_ack } => match consumer.next().await {
                Some(Ok(delivery)) => Ok(amqp::inbound(delivery, queue, channel, publisher, acks, !*no_ack)),
                Some(Err(error)) => Err(error.to_string()),
                None if channel.status().connected() => {
                    Err("the broker cancelled the consumer (was the queue deleted?)".to_owned())
                }
                None => Err("its channel closed".to_owned()),
            },
            Source::Memory { consumer, publisher, queue, no_ack } => match consumer.next().await {
                Some(delivery) => {
                    let info = DeliveryInfo {
                        queue: queue.clone(),
                        exchange: delivery.exchange,
                        routing_key: delivery.routing_key,
                        delivery_tag: delivery.delivery_tag,
                        redelivered: delivery.redelivered,
                        properties: delivery.properties,
                    };
                    let acker = Acker::Memory(delivery.acker);
                    Ok(Inbound {
                        ctx: RmqContext::new(info, delivery.body, acker, None, *no_ack),
                        publisher: publisher.clone(),
                    })
                }
                None => Err("the in-memory broker ended the consumer (disconnect, or the queue was deleted)".to_owned()),
            },
        }
    }

    /// The queue consumed.
    pub(crate) fn queue(&self) -> &str {
        match self {
            Source::Amqp { queue, .. } | Source::Memory { queue, .. } => queue,
        }
    }

    /// Stops receiving; deliveries already handed out stay to be settled.
    pub(crate) async fn cancel(&self) {
        match self {
            Source::Amqp {
                channel, consumer, ..
            } => {
                let _ = channel
                    .basic_cancel(consumer.tag(), Default::default())
                    .await;
            }
            Source::Memory { consumer, .. } => consumer.cancel(),
        }
    }

    /// Sends the acks still waiting, then closes: what is left unsettled returns to the queue.
    pub(crate) async fn close(self) {
        match self {
            Source::Amqp { channel, acks, .. } => {
                if let Err(error) = acks.flush().await {
                    tracing::warn!(%error, "could not send the last acks; those messages will be redelivered");
                }
                let _ = channel.close(200, ShortString::from("shutdown")).await;
            }
            Source::Memory { consumer, .. } => consumer.cancel(),
        }
    }
}

/// Settles one delivery through the transport that delivered it. A plain enum rather than a
/// trait object: it is made for every delivery, and an ack is settled without allocating.
#[derive(Clone)]
pub(crate) enum Acker {
    /// Through the consumer channel's ack batcher.
    Amqp { batcher: Arc<AckBatcher>, tag: u64 },
    /// Through the in-memory broker.
    Memory(MemoryAcker),
}

impl Acker {
    /// Settles the delivery. An ack is queued for the next coalesced `basic.ack`; a nack or
    /// reject is on the wire when this returns.
    pub(crate) async fn settle(&self, settlement: Settlement) -> Result<()> {
        match self {
            Acker::Amqp { batcher, tag } if settlement == Settlement::Ack => batcher.ack(*tag),
            // Boxed: lapin's frame futures are large, and every handler awaiting an ack
            // would carry one.
            Acker::Amqp { batcher, tag } => Box::pin(batcher.refuse(*tag, settlement)).await,
            Acker::Memory(acker) => acker.settle(settlement).map_err(|error| match error {
                MemoryError::Disconnected => Error::ChannelClosed {
                    attempted: settlement,
                },
                MemoryError::PreconditionFailed(_) => Error::AlreadySettled {
                    previous: settlement,
                },
                other => memory_error("settling", other),
            }),
        }
    }
}

/// Replies and republishes on the in-memory broker.
pub(crate) struct MemoryPublisher(MemoryBroker);

impl Publisher for MemoryPublisher {
    fn reply(
        &self,
        reply_to: &str,
        correlation_id: &str,
        body: Vec<u8>,
    ) -> BoxFuture<'_, Result<()>> {
        let properties = Properties {
            correlation_id: Some(correlation_id.to_owned()),
            ..Properties::default()
        };
        let result =
            memory_publish_result(self.0.publish("", reply_to, body, properties), reply_to);
        futures::future::ready(result).boxed()
    }

    fn republish<'a>(
        &'a self,
        target: Target,
        body: &'a [u8],
        properties: &'a Properties,
    ) -> BoxFuture<'a, Result<()>> {
        let broker = &self.0;
        let declared = match &target {
            Target::Queue(queue) => Ok(queue.clone()),
            Target::DeadLetter(queue) => broker
                .declare_queue(queue, true, &Default::default())
                .map(|()| queue.clone()),
            Target::Delayed { queue, delay } => {
                let name = crate::retry::delay_queue(queue, *delay);
                let arguments = crate::retry::delay_queue_arguments(queue, *delay);
                broker.declare_queue(&name, true, &arguments).map(|()| name)
            }
        };
        let result = declared
            .map_err(|error| Error::Declare {
                queue: "a retry or dead-letter queue".into(),
                source: Box::new(error),
            })
            .and_then(|queue| {
                memory_publish_result(
                    broker.publish("", &queue, body.to_vec(), properties.clone()),
                    &queue,
                )
            });
        futures::future::ready(result).boxed()
    }
}
