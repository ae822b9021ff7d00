//! A microservice's connection to RabbitMQ and its queue consumers: each consumer has a channel
//! of its own (with its prefetch and its ack batcher), and turns lapin deliveries into
//! [`Inbound`]s whose context settles through that batcher.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Connection};

use super::acks::AckBatcher;
use super::convert::{lapin_error, properties, short};
use super::publisher::ServerPublisher;
use super::topology::{bind_queue, declare_exchange, declare_queue};
use crate::config::{AckMode, RmqOptions};
use crate::context::{RmqContext, Settle};
use crate::delivery::DeliveryInfo;
use crate::error::{Error, Result};
use crate::telemetry::{self, Binding};
use crate::transport::{Inbound, Publisher, binding_keys};

/// A microservice's connection, and the publisher its deliveries share.
pub(crate) struct Session {
    connection: Arc<Connection>,
    publisher: Arc<ServerPublisher>,
}

impl Session {
    /// Connects to the broker of `options` (`patience`: how long to keep trying; `None`, for ever).
    pub(crate) async fn connect(options: &RmqOptions, patience: Option<Duration>) -> Result<Self> {
        let connection = Arc::new(super::connect(options, "rmq-bus microservice", patience).await?);
        let publisher = Arc::new(ServerPublisher::new(
            connection.clone(),
            options.confirm_timeout,
        ));
        Ok(Self {
            connection,
            publisher,
        })
    }

    /// Opens a channel for the queue of `options` with its prefetch, declares the queue (and its
    /// exchange, bound with `patterns`) unless told not to, and starts consuming it.
    pub(crate) async fn consume(
        &self,
        options: &RmqOptions,
        patterns: &[&str],
    ) -> Result<Consumer> {
        let no_ack = options.ack_mode == AckMode::NoAck;
        let queue = options.queue.clone();
        let channel = self
            .connection
            .create_channel()
            .await
            .map_err(|e| lapin_error("opening a channel", e))?;
        channel
            .basic_qos(options.prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| lapin_error("setting the prefetch", e))?;
        if !options.no_assert {
            if let Some(exchange) = &options.exchange {
                declare_exchange(&channel, exchange).await?;
            }
            declare_queue(&channel, &queue, &options.queue_options).await?;
            if let Some(exchange) = &options.exchange {
                bind_queue(&channel, &queue, exchange, binding_keys(exchange, patterns)).await?;
            }
        }
        let consumer = channel
            .basic_consume(
                short("queue name", &queue)?,
                ShortString::from(""),
                BasicConsumeOptions {
                    no_ack,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|source| match lapin_error("consuming", source) {
                Error::Broker { source, .. } => Error::Consume {
                    queue: queue.clone(),
                    source,
                },
                other => other,
            })?;
        let binding = Binding::of(options);
        let acks = AckBatcher::start(
            channel.clone(),
            options.prefetch,
            telemetry::unacked_gauge(&binding),
            telemetry::ack_batch_histogram(&binding),
        );
        Ok(Consumer {
            settler: acks.clone(),
            acks,
            channel,
            consumer,
            publisher: self.publisher.clone(),
            queue,
            no_ack,
        })
    }

    /// Closes the connection.
    pub(crate) async fn close(self) {
        let _ = self
            .connection
            .close(200, ShortString::from("shutdown"))
            .await;
    }
}

/// One queue's consumer.
pub(crate) struct Consumer {
    channel: Channel,
    consumer: lapin::Consumer,
    acks: Arc<AckBatcher>,
    /// The same batcher, as the port every delivery's context settles through.
    settler: Arc<dyn Settle>,
    publisher: Arc<ServerPublisher>,
    queue: String,
    /// The broker acks deliveries itself (`AckMode::NoAck`).
    no_ack: bool,
}

impl Consumer {
    /// The next delivery; `Err` with the reason once the consumer has stopped by itself.
    pub(crate) async fn next(&mut self) -> std::result::Result<Inbound, String> {
        let (consumer, acks, no_ack) = (&mut self.consumer, &self.acks, self.no_ack);
        let next = std::future::poll_fn(|cx| {
            let polled = consumer.poll_next_unpin(cx);
            // No delivery waiting: sparse acks gain nothing by waiting for the timer, which
            // would fire beside the next delivery.
            if polled.is_pending() && !no_ack {
                acks.idle();
            }
            polled
        })
        .await;
        let delivery = match next {
            Some(Ok(delivery)) => delivery,
            Some(Err(error)) => return Err(error.to_string()),
            None if self.channel.status().connected() => {
                return Err("the broker cancelled the consumer (was the queue deleted?)".to_owned());
            }
            None => return Err("its channel closed".to_owned()),
        };
        let info = DeliveryInfo {
            queue: self.queue.clone(),
            exchange: delivery.exchange.into(),
            routing_key: delivery.routing_key.into(),
            delivery_tag: delivery.delivery_tag,
            redelivered: delivery.redelivered,
            properties: properties(&delivery.properties),
        };
        if !self.no_ack {
            self.acks.track(delivery.delivery_tag);
        }
        let ctx = RmqContext::new(info, delivery.data, self.settler.clone(), self.no_ack);
        let publisher: Arc<dyn Publisher> = self.publisher.clone();
        Ok(Inbound { ctx, publisher })
    }

    /// The queue consumed.
    pub(crate) fn queue(&self) -> &str {
        &self.queue
    }

    /// Stops receiving; deliveries already handed out stay to be settled.
    pub(crate) async fn cancel(&self) {
        let _ = self
            .channel
            .basic_cancel(self.consumer.tag(), Default::default())
            .await;
    }

    /// Sends the acks still waiting, then closes: what is left unsettled returns to the queue.
    pub(crate) async fn close(self) {
        if let Err(error) = self.acks.flush().await {
            tracing::warn!(%error, "could not send the last acks; those messages will be redelivered");
        }
        let _ = self.channel.close(200, ShortString::from("shutdown")).await;
    }
}
