//! A client's connection to RabbitMQ: one confirm-mode channel for its publishes, and the direct
//! reply-to consumer of its requests.

use std::time::Instant;

use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Connection};

use super::convert::{basic_properties, lapin_error, short};
use super::publisher::Confirm;
use super::topology::{declare_exchange, declare_queue};
use crate::codec;
use crate::config::RmqOptions;
use crate::error::Result;
use crate::transport::{OnReply, Outgoing, REPLY_TO};

/// A client's connection and its publishing channel.
pub(crate) struct Link {
    connection: Connection,
    channel: Channel,
}

impl Link {
    /// Connects (trying until `deadline`), enables publisher confirms, and declares the queue,
    /// or the exchange, unless told not to.
    pub(crate) async fn open(options: &RmqOptions, deadline: Instant) -> Result<Self> {
        let patience = deadline.saturating_duration_since(Instant::now());
        let connection = super::connect(options, "rmq-bus client", Some(patience)).await?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| lapin_error("opening a channel", e))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| lapin_error("enabling publisher confirms", e))?;
        if !options.no_assert {
            match &options.exchange {
                Some(exchange) => declare_exchange(&channel, exchange).await?,
                None => declare_queue(&channel, &options.queue, &options.queue_options).await?,
            }
        }
        Ok(Self {
            connection,
            channel,
        })
    }

    /// Whether the link can still carry messages.
    pub(crate) fn alive(&self) -> bool {
        self.channel.status().connected() && self.connection.status().connected()
    }

    /// Whether the broker blocks publishers (a memory or disk alarm).
    pub(crate) fn blocked(&self) -> bool {
        self.connection.status().blocked()
    }

    /// Publishes `message` as mandatory, with the JSON content type; the returned future is its
    /// confirm.
    pub(crate) async fn publish(&self, message: Outgoing<'_>) -> Result<Confirm> {
        let publish = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let confirm = self
            .channel
            .basic_publish(
                short("exchange name", message.exchange)?,
                short("routing key", message.routing_key)?,
                publish,
                message.body,
                basic_properties(message.properties)?
                    .with_content_type(ShortString::from(codec::CONTENT_TYPE)),
            )
            .await
            .map_err(|e| lapin_error("publishing", e))?;
        Ok(Confirm(confirm))
    }

    /// Starts the direct reply-to consumer, handing each reply to `on_reply` and calling `on_end`
    /// when it stops; returns the address requests name as `reply_to`.
    pub(crate) async fn consume_replies(
        &self,
        on_reply: OnReply,
        on_end: impl FnOnce() + Send + 'static,
    ) -> Result<String> {
        let mut consumer = self
            .channel
            .basic_consume(
                ShortString::from(REPLY_TO),
                ShortString::from(""),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| lapin_error("consuming direct replies", e))?;
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
        Ok(REPLY_TO.to_owned())
    }

    /// Closes the connection, after outstanding confirms.
    pub(crate) async fn close(&self) {
        let _ = self
            .channel
            .close(200, ShortString::from("client closed"))
            .await;
        let _ = self
            .connection
            .close(200, ShortString::from("client closed"))
            .await;
    }
}
