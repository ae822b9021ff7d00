//! [`ClientProxy`]: emits events to a queue, each confirmed by the broker.

use std::fmt;
use std::sync::Arc;

use lapin::Confirmation;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Connection};
use serde::Serialize;
use tokio::sync::Mutex;

use crate::amqp;
use crate::codec::encode_event;
use crate::config::RmqOptions;
use crate::error::{Error, Result};
use crate::pattern::Pattern;

/// Sends messages to one queue, as NestJS's `ClientProxy` (`ClientsModule.register` /
/// `RmqModule.register`).
///
/// Cheap to clone: clones share one connection and one confirm-mode channel, opened on first use
/// (or by [`connect`](Self::connect)) and opened again on the next call after the connection was
/// lost. Unless [`RmqOptions::no_assert`] is set, the client declares its queue, so events emitted
/// before the consumer first starts wait in the queue instead of being unroutable.
#[derive(Clone)]
pub struct ClientProxy {
    inner: Arc<Inner>,
}

struct Inner {
    options: RmqOptions,
    link: Mutex<Option<Link>>,
}

struct Link {
    connection: Connection,
    channel: Channel,
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
        self.channel().await.map(drop)
    }

    /// Emits event `pattern` with `data`, as NestJS's `client.emit(pattern, data)`: the packet
    /// `{"pattern", "data"}` goes to the queue through the default exchange, persistent unless
    /// configured otherwise. Resolves once the broker has confirmed it; an error means the event
    /// is not (known to be) stored: [`Error::Nacked`], [`Error::Unroutable`],
    /// [`Error::ConfirmTimeout`], [`Error::Disconnected`], [`Error::TooLarge`].
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
        let options = &self.inner.options;
        let body = encode_event(&pattern.into(), data)?;
        if body.len() > options.max_bytes() {
            return Err(Error::TooLarge {
                size: body.len(),
                max: options.max_bytes(),
            });
        }
        let channel = self.channel().await?;
        let properties = BasicProperties::default()
            .with_content_type(ShortString::from("application/json"))
            .with_delivery_mode(if options.is_persistent() { 2 } else { 1 });
        let publish = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let routing_key = amqp::short("queue name", options.queue())?;
        let confirm = channel
            .basic_publish(
                ShortString::from(""),
                routing_key,
                publish,
                &body,
                properties,
            )
            .await
            .map_err(|e| Error::from_lapin("publishing", e))?;
        let queue = || options.queue().to_owned();
        match tokio::time::timeout(options.confirm_wait(), confirm).await {
            Err(_) => Err(Error::ConfirmTimeout {
                queue: queue(),
                timeout: options.confirm_wait(),
            }),
            Ok(Err(error)) => Err(Error::from_lapin("waiting for the publish confirm", error)),
            Ok(Ok(Confirmation::Ack(Some(_)))) => Err(Error::Unroutable {
                routing_key: queue(),
            }),
            Ok(Ok(Confirmation::Nack(_))) => Err(Error::Nacked { queue: queue() }),
            Ok(Ok(Confirmation::Ack(None) | Confirmation::NotRequested)) => Ok(()),
        }
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

    /// The live channel, opening connection, channel and queue first when there is none.
    async fn channel(&self) -> Result<Channel> {
        let mut link = self.inner.link.lock().await;
        if let Some(current) = link.as_ref() {
            if current.channel.status().connected() && current.connection.status().connected() {
                return Ok(current.channel.clone());
            }
            tracing::info!(
                queue = self.inner.options.queue(),
                "client connection lost; reconnecting"
            );
        }
        *link = None;
        let options = &self.inner.options;
        options.validate()?;
        let connection = amqp::connect(options.broker_uri(), "rmq-bus client").await?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| Error::from_lapin("opening a channel", e))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| Error::from_lapin("enabling publisher confirms", e))?;
        if !options.is_no_assert() {
            amqp::declare_queue(&channel, options).await?;
        }
        *link = Some(Link {
            connection,
            channel: channel.clone(),
        });
        Ok(channel)
    }
}
