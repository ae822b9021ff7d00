//! What both raw lapin baselines share: a confirming publisher that sends what rmq-bus sends, and
//! a consumer connection whose deliveries the baseline's own loop handles.

use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, BasicRejectOptions,
    ConfirmSelectOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};

use std::sync::Arc;

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
        // The same properties as rmq-bus's: JSON, persistent, a correlation id.
        let properties = BasicProperties::default()
            .with_content_type(ShortString::from("application/json"))
            .with_delivery_mode(2)
            .with_correlation_id(ShortString::from(correlation_id()));
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
