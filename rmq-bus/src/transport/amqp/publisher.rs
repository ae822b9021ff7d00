//! Publishing on RabbitMQ: the confirm of one publish, and what a microservice publishes besides
//! handling (replies, and the copies it republishes for retries and dead letters).

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Confirmation, Connection, PublisherConfirm};

use super::convert::{basic_properties, lapin_error, short};
use super::topology::declare_durable;
use crate::delivery::Properties;
use crate::error::{Error, Result};
use crate::transport::{Publisher, Target};

/// The broker's confirm of one publish: `Ok` once it has the message. A named future rather
/// than a boxed one, as one is made for every publish. A nack is [`Error::Nacked`] with an empty
/// `target`: the caller, which knows where it published, names it.
pub(crate) struct Confirm(pub(super) PublisherConfirm);

impl Future for Confirm {
    type Output = Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        Pin::new(&mut self.get_mut().0).poll(cx).map(|confirmed| {
            confirmed
                .map_err(|error| lapin_error("waiting for the publish confirm", error))
                .and_then(outcome)
        })
    }
}

/// What a confirmation says of a mandatory publish.
fn outcome(confirmation: Confirmation) -> Result<()> {
    match confirmation {
        Confirmation::Ack(Some(returned)) => Err(Error::Unroutable {
            exchange: returned.delivery.exchange.as_str().to_owned(),
            routing_key: returned.delivery.routing_key.as_str().to_owned(),
        }),
        Confirmation::Nack(_) => Err(Error::Nacked {
            target: String::new(),
        }),
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
    }
}

/// A nack names the queue published to.
fn name_target(error: Error, queue: &str) -> Error {
    match error {
        Error::Nacked { .. } => Error::Nacked {
            target: queue.to_owned(),
        },
        other => other,
    }
}

/// Publishes on behalf of a microservice's connection: replies on a channel without confirms
/// (the requester's timeout covers a lost one, and an unawaited confirm would be kept by lapin
/// for the life of the channel), and confirmed copies for retries and the dead-letter queue,
/// whose queues it declares on first use. A channel that died (a refused declaration closes it)
/// is opened again on next use.
pub(super) struct ServerPublisher {
    connection: Arc<Connection>,
    replies: tokio::sync::Mutex<Option<Channel>>,
    confirmed: tokio::sync::Mutex<Option<Channel>>,
    declared: Mutex<HashSet<String>>,
    /// Bound on waiting for a republish to be confirmed.
    confirm_timeout: Duration,
}

impl ServerPublisher {
    pub(super) fn new(connection: Arc<Connection>, confirm_timeout: Duration) -> Self {
        Self {
            connection,
            replies: tokio::sync::Mutex::new(None),
            confirmed: tokio::sync::Mutex::new(None),
            declared: Mutex::default(),
            confirm_timeout,
        }
    }

    /// The channel in `slot`, opened (in confirm mode if `confirms`) when there is none alive.
    async fn channel(
        &self,
        slot: &tokio::sync::Mutex<Option<Channel>>,
        confirms: bool,
    ) -> Result<Channel> {
        let mut slot = slot.lock().await;
        if let Some(channel) = slot.as_ref().filter(|channel| channel.status().connected()) {
            return Ok(channel.clone());
        }
        let channel = self
            .connection
            .create_channel()
            .await
            .map_err(|e| lapin_error("opening the publishing channel", e))?;
        if confirms {
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| lapin_error("enabling publisher confirms", e))?;
            // Declarations were made on the channel that died with them, maybe not at all.
            self.declared
                .lock()
                .map(|mut declared| declared.clear())
                .ok();
        }
        *slot = Some(channel.clone());
        Ok(channel)
    }

    /// Declares `target`'s queue, if it asks for that, unless done before on this channel.
    async fn declare(&self, channel: &Channel, target: &Target) -> Result<()> {
        let Some(arguments) = &target.declare else {
            return Ok(());
        };
        if self
            .declared
            .lock()
            .is_ok_and(|declared| declared.contains(&target.queue))
        {
            return Ok(());
        }
        declare_durable(channel, &target.queue, arguments).await?;
        if let Ok(mut declared) = self.declared.lock() {
            declared.insert(target.queue.clone());
        }
        Ok(())
    }
}

impl Publisher for ServerPublisher {
    fn reply(
        &self,
        reply_to: &str,
        correlation_id: &str,
        body: Vec<u8>,
    ) -> BoxFuture<'_, Result<()>> {
        let target = short("reply_to", reply_to);
        let mut properties = BasicProperties::default();
        if let Ok(id) = ShortString::try_new(correlation_id) {
            properties = properties.with_correlation_id(id);
        }
        async move {
            let channel = self.channel(&self.replies, false).await?;
            channel
                .basic_publish(
                    ShortString::from(""),
                    target?,
                    BasicPublishOptions::default(),
                    &body,
                    properties,
                )
                .await
                .map(drop)
                .map_err(|e| lapin_error("publishing a reply", e))
        }
        .boxed()
    }

    fn republish<'a>(
        &'a self,
        target: Target,
        body: &'a [u8],
        properties: &'a Properties,
    ) -> BoxFuture<'a, Result<()>> {
        async move {
            let channel = self.channel(&self.confirmed, true).await?;
            self.declare(&channel, &target).await?;
            let queue = target.queue;
            let confirm = channel
                .basic_publish(
                    ShortString::from(""),
                    short("queue name", &queue)?,
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    body,
                    basic_properties(properties)?,
                )
                .await
                .map_err(|e| lapin_error("republishing", e))?;
            // Awaited to the end even past the timeout, so lapin keeps no abandoned confirm.
            let mut confirm = tokio::spawn(confirm);
            let confirmation = match tokio::time::timeout(self.confirm_timeout, &mut confirm).await
            {
                Err(_) => {
                    return Err(Error::ConfirmTimeout {
                        target: queue,
                        timeout: self.confirm_timeout,
                    });
                }
                Ok(Err(join)) => {
                    return Err(Error::TaskFailed {
                        task: "republish confirm",
                        reason: join.to_string(),
                    });
                }
                Ok(Ok(confirmation)) => confirmation,
            };
            confirmation
                .map_err(|e| lapin_error("waiting for the republish confirm", e))
                .and_then(outcome)
                .map_err(|error| name_target(error, &queue))
        }
        .boxed()
    }
}
