//! The in-memory transport: `memory://name` URIs run clients and microservices on an in-process
//! [`broker`] with RabbitMQ's semantics, with the same errors RabbitMQ's transport gives.

mod broker;

use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;

pub use broker::Settled;
pub(crate) use broker::{MemoryBroker, MemoryError, PublishOutcome, Sender};

use crate::codec;
use crate::config::RmqOptions;
use crate::context::{RmqContext, Settle};
use crate::delivery::{DeliveryInfo, Outcome, Properties, Settlement};
use crate::error::{Error, Result};
use crate::transport::{Inbound, OnReply, Outgoing, Publisher, REPLY_TO, Target, binding_keys};

/// A client's connection to an in-memory broker.
pub(crate) struct Link(MemoryBroker);

impl Link {
    /// Finds broker `name` and declares the queue, or the exchange, unless told not to.
    pub(crate) fn open(name: &str, options: &RmqOptions) -> Result<Self> {
        let broker = MemoryBroker::named(name);
        if !options.no_assert {
            match &options.exchange {
                Some(_) => declare_exchange(&broker, options)?,
                None => declare_queue(&broker, options)?,
            }
        }
        Ok(Self(broker))
    }

    /// Publishes `message` with the JSON content type; the result is what a confirm would say.
    pub(crate) fn publish(&self, message: Outgoing<'_>) -> Result<()> {
        let Outgoing {
            exchange,
            routing_key,
            body,
            properties,
        } = message;
        let properties = Properties {
            content_type: Some(codec::CONTENT_TYPE.to_owned()),
            ..properties.clone()
        };
        let outcome = self.0.publish(
            Sender::Client,
            exchange,
            routing_key,
            body.to_vec(),
            properties,
        );
        publish_result(outcome, exchange, routing_key)
    }

    /// Starts the direct reply-to consumer (see [`crate::transport::Link::reply_to`]).
    pub(crate) fn consume_replies(
        &self,
        on_reply: OnReply,
        on_end: impl FnOnce() + Send + 'static,
    ) -> Result<String> {
        let mut consumer = self
            .0
            .consume(REPLY_TO, 0, true)
            .map_err(|e| memory_error("consuming direct replies", e))?;
        let address = consumer.reply_to().unwrap_or(REPLY_TO).to_owned();
        tokio::spawn(async move {
            while let Some(delivery) = consumer.next().await {
                on_reply(delivery.properties.correlation_id, delivery.body);
            }
            on_end();
        });
        Ok(address)
    }
}

/// A microservice's connection to an in-memory broker.
pub(crate) struct Session {
    broker: MemoryBroker,
    publisher: Arc<MemoryPublisher>,
}

impl Session {
    /// Finds broker `name`.
    pub(crate) fn connect(name: &str) -> Self {
        let broker = MemoryBroker::named(name);
        let publisher = Arc::new(MemoryPublisher(broker.clone()));
        Self { broker, publisher }
    }

    /// Declares the queue of `options` (and its exchange, bound with `patterns`) unless told
    /// not to, and starts consuming it.
    pub(crate) fn consume(&self, options: &RmqOptions, patterns: &[&str]) -> Result<Consumer> {
        let broker = &self.broker;
        let queue = options.queue.clone();
        if !options.no_assert {
            declare_exchange(broker, options)?;
            declare_queue(broker, options)?;
            if let Some(exchange) = &options.exchange {
                for key in binding_keys(exchange, patterns) {
                    broker
                        .bind(&queue, &exchange.name, key)
                        .map_err(|e| memory_error("binding the queue to its exchange", e))?;
                }
            }
        }
        let no_ack = options.ack_mode == crate::config::AckMode::NoAck;
        let consumer = broker
            .consume(&queue, options.prefetch, no_ack)
            .map_err(|error| Error::Consume {
                queue: queue.clone(),
                source: Box::new(error),
            })?;
        let (id, epoch) = consumer.settle_key();
        let settler: Arc<dyn Settle> = Arc::new(MemorySettle {
            broker: broker.clone(),
            consumer: id,
            epoch,
        });
        Ok(Consumer {
            consumer,
            settler,
            publisher: self.publisher.clone(),
            queue,
            no_ack,
        })
    }
}

/// One queue's consumer on an in-memory broker.
pub(crate) struct Consumer {
    consumer: broker::MemoryConsumer,
    settler: Arc<dyn Settle>,
    publisher: Arc<MemoryPublisher>,
    queue: String,
    /// The broker acks deliveries itself (`AckMode::NoAck`).
    no_ack: bool,
}

impl Consumer {
    /// The next delivery; `Err` with the reason once the consumer has stopped by itself.
    pub(crate) async fn next(&mut self) -> std::result::Result<Inbound, String> {
        let Some(delivery) = self.consumer.next().await else {
            return Err(
                "the in-memory broker ended the consumer (disconnect, or the queue was deleted)"
                    .to_owned(),
            );
        };
        let info = DeliveryInfo {
            queue: self.queue.clone(),
            exchange: delivery.exchange,
            routing_key: delivery.routing_key,
            delivery_tag: delivery.delivery_tag,
            redelivered: delivery.redelivered,
            properties: delivery.properties,
        };
        let ctx = RmqContext::new(info, delivery.body, self.settler.clone(), self.no_ack);
        let publisher: Arc<dyn Publisher> = self.publisher.clone();
        Ok(Inbound { ctx, publisher })
    }

    /// The queue consumed.
    pub(crate) fn queue(&self) -> &str {
        &self.queue
    }

    /// Stops receiving; deliveries already handed out stay to be settled.
    pub(crate) fn cancel(&self) {
        self.consumer.cancel();
    }
}

/// Settles the deliveries of one in-memory consumer.
struct MemorySettle {
    broker: MemoryBroker,
    consumer: u64,
    epoch: u64,
}

impl MemorySettle {
    fn settle(&self, tag: u64, settlement: Settlement, outcome: Outcome) -> Result<()> {
        self.broker
            .settle(self.consumer, self.epoch, tag, settlement, outcome)
            .map_err(|error| match error {
                MemoryError::Disconnected => Error::ChannelClosed {
                    attempted: settlement,
                },
                MemoryError::PreconditionFailed(_) => Error::AlreadySettled {
                    previous: settlement,
                },
                other => memory_error("settling", other),
            })
    }
}

impl Settle for MemorySettle {
    fn ack(&self, tag: u64, outcome: Outcome) -> Result<()> {
        self.settle(tag, Settlement::Ack, outcome)
    }

    fn refuse(
        &self,
        tag: u64,
        settlement: Settlement,
        outcome: Outcome,
    ) -> BoxFuture<'_, Result<()>> {
        futures::future::ready(self.settle(tag, settlement, outcome)).boxed()
    }
}

/// Replies and republishes on the in-memory broker.
struct MemoryPublisher(MemoryBroker);

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
        let result = publish_result(
            self.0
                .publish(Sender::Service, "", reply_to, body, properties),
            "",
            reply_to,
        );
        futures::future::ready(result).boxed()
    }

    fn republish<'a>(
        &'a self,
        target: Target,
        body: &'a [u8],
        properties: &'a Properties,
    ) -> BoxFuture<'a, Result<()>> {
        let broker = &self.0;
        let declared = match &target.declare {
            None => Ok(()),
            Some(arguments) => broker
                .declare_queue(&target.queue, true, arguments)
                .map_err(|error| Error::Declare {
                    queue: target.queue.clone(),
                    source: Box::new(error),
                }),
        };
        let result = declared.and_then(|()| {
            let outcome = broker.publish(
                Sender::Service,
                "",
                &target.queue,
                body.to_vec(),
                properties.clone(),
            );
            publish_result(outcome, "", &target.queue)
        });
        futures::future::ready(result).boxed()
    }
}

/// What a publish to the in-memory broker comes to, as RabbitMQ's confirm would say it.
pub(crate) fn publish_result(
    outcome: std::result::Result<PublishOutcome, MemoryError>,
    exchange: &str,
    routing_key: &str,
) -> Result<()> {
    let target = || match exchange {
        "" => format!("queue {routing_key:?}"),
        _ => format!("exchange {exchange:?} (routing key {routing_key:?})"),
    };
    match outcome {
        Ok(PublishOutcome::Routed(_)) => Ok(()),
        Ok(PublishOutcome::Unroutable) => Err(Error::Unroutable {
            exchange: exchange.to_owned(),
            routing_key: routing_key.to_owned(),
        }),
        Ok(PublishOutcome::Refused) => Err(Error::Nacked { target: target() }),
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

/// Declares the exchange of `options`, if any.
fn declare_exchange(broker: &MemoryBroker, options: &RmqOptions) -> Result<()> {
    if let Some(exchange) = &options.exchange {
        broker
            .declare_exchange(&exchange.name, exchange.kind)
            .map_err(|error| Error::DeclareExchange {
                exchange: exchange.name.clone(),
                source: Box::new(error),
            })?;
    }
    Ok(())
}

/// Declares the queue of `options`.
fn declare_queue(broker: &MemoryBroker, options: &RmqOptions) -> Result<()> {
    let declaration = &options.queue_options;
    broker
        .declare_queue(&options.queue, declaration.durable, &declaration.arguments)
        .map_err(|error| Error::Declare {
            queue: options.queue.clone(),
            source: Box::new(error),
        })
}
