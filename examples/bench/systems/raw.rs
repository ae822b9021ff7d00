//! What both raw lapin baselines share: a confirming publisher that sends what rmq-bus sends, and
//! a consumer connection whose deliveries the baseline's own loop handles.

use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, BasicRejectOptions,
    ConfirmSelectOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};

use std::sync::{Arc, OnceLock};

use super::{Round, Work, expert, typical};
use crate::Res;
use crate::admin::declare_on;
use crate::measure::Recorder;
use crate::payload::{
    OrderEvent, OutgoingPacket, PATTERN, PROCESSED_PATTERN, correlation_id, decode,
};
use crate::workload::{System, forward_queue};

/// A channel in confirm mode, publishing events with one pattern to one queue.
pub(crate) struct RawPublisher {
    connection: Box<Connection>,
    channel: Channel,
    queue: ShortString,
    pattern: &'static str,
}

impl RawPublisher {
    /// A publisher of `order_created` events to `queue`.
    pub(crate) async fn open(uri: &str, queue: &str) -> Res<Self> {
        Self::open_with(uri, queue, PATTERN).await
    }

    /// A publisher of events with `pattern` to `queue`.
    pub(super) async fn open_with(uri: &str, queue: &str, pattern: &'static str) -> Res<Self> {
        let connection = Connection::connect(uri, ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self {
            connection: Box::new(connection),
            channel,
            queue: ShortString::from(queue),
            pattern,
        })
    }

    /// Publishes one event and waits for its confirm.
    pub(crate) async fn publish(&self, event: &OrderEvent) -> Result<(), String> {
        let body = serde_json::to_vec(&OutgoingPacket {
            pattern: self.pattern,
            data: event,
        })
        .map_err(|e| format!("encode: {e}"))?;
        let properties = baseline_properties();
        // mandatory, as rmq-bus publishes: an unroutable event is an error, not lost.
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let confirm = self
            .channel
            .basic_publish(
                ShortString::from(""),
                self.queue.clone(),
                options,
                &body,
                properties,
            )
            .await
            .map_err(|e| format!("basic.publish: {e}"))?;
        match confirm.await {
            Ok(Confirmation::Ack(None)) => Ok(()),
            Ok(other) => Err(format!("publish not confirmed: {other:?}")),
            Err(e) => Err(format!("publish confirm: {e}")),
        }
    }

    pub(crate) async fn close(self) {
        let _ = self.channel.close(200, ShortString::from("done")).await;
        let _ = self.connection.close(200, ShortString::from("done")).await;
    }
}

/// The properties the raw baselines publish with: rmq-bus's (JSON, persistent, a correlation id
/// and a message id), so that the broker does the same work for every system. Without the
/// message id the encoded properties fit in 64 bytes, which RabbitMQ 3.10 handles markedly
/// faster (see the README's performance section); `BASELINE_MESSAGE_ID=0` leaves it out, to
/// measure that.
fn baseline_properties() -> BasicProperties {
    let properties = BasicProperties::default()
        .with_content_type(ShortString::from("application/json"))
        .with_delivery_mode(2)
        .with_correlation_id(ShortString::from(correlation_id()));
    match sends_message_id() {
        true => properties.with_message_id(ShortString::from(correlation_id())),
        false => properties,
    }
}

/// Whether the baselines send a message id: `BASELINE_MESSAGE_ID`, on unless `0`.
pub(crate) fn sends_message_id() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("BASELINE_MESSAGE_ID").map_or(true, |v| v.trim() != "0"))
}

/// A consumer on the round's queue, its deliveries handled by the baseline's task (and, in S4,
/// the publisher its handlers send on with).
pub(crate) struct RawConsumer {
    connection: Box<Connection>,
    channel: Channel,
    task: tokio::task::JoinHandle<Result<(), String>>,
    forward: Option<Arc<RawPublisher>>,
}

impl RawConsumer {
    pub(super) async fn start(round: &Round<'_>) -> Res<Self> {
        let delay = round.scenario.handler_delay();
        let forward = match round.scenario.drains_backlog() {
            true => Some(Arc::new(
                RawPublisher::open_with(round.uri, &forward_queue(round.queue), PROCESSED_PATTERN)
                    .await?,
            )),
            false => None,
        };
        let work = match (&forward, delay) {
            (Some(publisher), _) => Work::Forward(publisher.clone()),
            (None, Some(delay)) => Work::Sleep(delay),
            (None, None) => Work::Inline,
        };
        let connection = Connection::connect(round.uri, ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        channel
            .basic_qos(round.scenario.prefetch(), BasicQosOptions::default())
            .await?;
        // As rmq-bus does (the parent declared it already; this lets a child run alone).
        declare_on(&channel, round.queue).await?;
        let consumer = channel
            .basic_consume(
                ShortString::from(round.queue),
                ShortString::from(""),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let recorder = round.recorder.clone();
        let task = if round.system == System::Expert {
            tokio::spawn(expert::consume(channel.clone(), consumer, recorder, work))
        } else {
            tokio::spawn(typical::consume(consumer, recorder, delay))
        };
        Ok(Self {
            connection: Box::new(connection),
            channel,
            task,
            forward,
        })
    }

    /// Waits for the baseline's task to take its deliveries, then closes.
    pub(super) async fn stop(self) -> Result<(), String> {
        let ended = match self.task.await {
            Ok(ended) => ended,
            Err(join) => Err(format!("consumer task: {join}")),
        };
        let _ = self.channel.close(200, ShortString::from("done")).await;
        let _ = self.connection.close(200, ShortString::from("done")).await;
        if let Some(publisher) = self.forward.and_then(Arc::into_inner) {
            publisher.close().await;
        }
        ended
    }
}

/// The next delivery and its event, decoded as the raw baselines do; a body that is not an
/// event is rejected and fails the round.
pub(super) async fn next_event(
    consumer: &mut lapin::Consumer,
    recorder: &Recorder,
) -> Result<(lapin::message::Delivery, OrderEvent), String> {
    let delivery = match consumer.next().await {
        Some(Ok(delivery)) => delivery,
        Some(Err(error)) => return Err(format!("consumer: {error}")),
        None => return Err("consumer ended early".to_owned()),
    };
    match decode(&delivery.data) {
        Ok(event) => Ok((delivery, event)),
        Err(error) => {
            let _ = delivery.reject(BasicRejectOptions { requeue: false }).await;
            recorder.fail(&error);
            Err(error)
        }
    }
}

#[cfg(test)]
mod tests {
    use lapin::options::BasicGetOptions;

    use super::super::bus;
    use super::*;
    use crate::admin::{close, declare_queue, delete_queue};
    use crate::payload::make_event;

    /// Which properties a message carries, with the length of each text one: what the broker's
    /// work per message depends on.
    fn shape(properties: &BasicProperties) -> Vec<(&'static str, usize)> {
        let text =
            |name, value: &Option<ShortString>| value.as_ref().map(|v| (name, v.as_str().len()));
        [
            text("content_type", properties.content_type()),
            text("content_encoding", properties.content_encoding()),
            properties
                .headers()
                .as_ref()
                .map(|h| ("headers", h.inner().len())),
            properties
                .delivery_mode()
                .map(|mode| ("delivery_mode", usize::from(mode))),
            properties.priority().map(|_| ("priority", 1)),
            text("correlation_id", properties.correlation_id()),
            text("reply_to", properties.reply_to()),
            text("expiration", properties.expiration()),
            text("message_id", properties.message_id()),
            properties.timestamp().map(|_| ("timestamp", 8)),
            text("type", properties.kind()),
            text("user_id", properties.user_id()),
            text("app_id", properties.app_id()),
            text("cluster_id", properties.cluster_id()),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// The properties of the one message waiting in `queue`.
    async fn first_message(uri: &str, queue: &str) -> Res<BasicProperties> {
        let connection = Connection::connect(uri, ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        let got = channel
            .basic_get(ShortString::from(queue), BasicGetOptions { no_ack: true })
            .await?;
        close(connection, channel, "read").await;
        Ok(got
            .ok_or_else(|| format!("no message in {queue}"))?
            .delivery
            .properties)
    }

    /// The baselines' figures only compare with rmq-bus's if the broker does the same work for
    /// their messages: a property more or less (a message id, say) can move S4's rate by a
    /// quarter.
    #[tokio::test]
    async fn the_baselines_send_the_properties_rmq_bus_sends() -> Res<()> {
        let uri = crate::broker_uri();
        let unique = correlation_id();
        let (bus_queue, raw_queue) = (
            format!("test-bench-bus-{unique}"),
            format!("test-bench-raw-{unique}"),
        );
        let sent = async {
            declare_queue(&uri, &bus_queue).await?;
            declare_queue(&uri, &raw_queue).await?;
            let client = bus::connect(&uri, &bus_queue).await?;
            let emitted = bus::emit(&client, &make_event(0, 1)).await;
            client.close().await;
            emitted?;
            let raw = RawPublisher::open(&uri, &raw_queue).await?;
            let published = raw.publish(&make_event(0, 1)).await;
            raw.close().await;
            published?;
            Ok::<_, crate::BoxError>((
                first_message(&uri, &bus_queue).await?,
                first_message(&uri, &raw_queue).await?,
            ))
        }
        .await;
        delete_queue(&uri, &bus_queue).await?;
        delete_queue(&uri, &raw_queue).await?;
        let (bus, raw) = sent?;
        assert_eq!(
            shape(&raw),
            shape(&bus),
            "the raw baselines' properties (left) differ from rmq-bus's (right)"
        );
        Ok(())
    }
}
