//! What both raw lapin baselines share: a confirming publisher that sends what rmq-bus sends, and
//! a consumer connection whose deliveries the baseline's own loop handles.

use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, BasicRejectOptions,
    ConfirmSelectOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};

use super::{Round, expert, typical};
use crate::Res;
use crate::admin::declare_on;
use crate::measure::Recorder;
use crate::payload::{OrderEvent, OutgoingPacket, PATTERN, correlation_id, decode};
use crate::workload::System;

/// A channel in confirm mode, publishing to the round's queue.
pub(crate) struct RawPublisher {
    connection: Box<Connection>,
    channel: Channel,
    queue: ShortString,
}

impl RawPublisher {
    pub(super) async fn open(uri: &str, queue: &str) -> Res<Self> {
        let connection = Connection::connect(uri, ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self {
            connection: Box::new(connection),
            channel,
            queue: ShortString::from(queue),
        })
    }

    /// Publishes one event and waits for its confirm.
    pub(super) async fn publish(&self, event: &OrderEvent) -> Result<(), String> {
        let body = serde_json::to_vec(&OutgoingPacket {
            pattern: PATTERN,
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

    pub(super) async fn close(self) {
        let _ = self.channel.close(200, ShortString::from("done")).await;
        let _ = self.connection.close(200, ShortString::from("done")).await;
    }
}

/// A consumer on the round's queue, its deliveries handled by the baseline's task.
pub(crate) struct RawConsumer {
    connection: Box<Connection>,
    channel: Channel,
    task: tokio::task::JoinHandle<Result<(), String>>,
}

impl RawConsumer {
    pub(super) async fn start(round: &Round<'_>) -> Res<Self> {
        let delay = round.scenario.handler_delay();
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
            tokio::spawn(expert::consume(channel.clone(), consumer, recorder, delay))
        } else {
            tokio::spawn(typical::consume(consumer, recorder, delay))
        };
        Ok(Self {
            connection: Box::new(connection),
            channel,
            task,
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
