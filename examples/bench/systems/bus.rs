//! rmq-bus as an application uses it: a typed contract published with `ClientProxy::publish`,
//! and a `Microservice` whose `on_event` handler acks by hand.

use std::sync::Arc;

use rmq_bus::{ClientProxy, Microservice, Payload, RmqContext, RmqOptions};

use crate::measure::{Recorder, handle};
use crate::payload::{OrderEvent, OrderProcessed};
use crate::workload::{Scenario, forward_queue};
use crate::{Res, RunningMicroservice};
use rmq_bus::contract::Event;

pub(super) async fn connect(uri: &str, queue: &str) -> Res<ClientProxy> {
    let client = ClientProxy::new(RmqOptions::new(queue).uri(uri));
    client.connect().await?;
    Ok(client)
}

pub(super) async fn emit(client: &ClientProxy, event: &OrderEvent) -> Result<(), String> {
    client
        .publish(event)
        .await
        .map_err(|e| format!("publish: {e}"))
}

/// The microservice of a round and, in S4, the client its handler sends `order_processed` with
/// (a confirmed publish, awaited before the ack, as the billing example does).
pub(super) async fn start(
    scenario: Scenario,
    uri: &str,
    queue: &str,
    recorder: &Arc<Recorder>,
) -> Res<(RunningMicroservice, Option<ClientProxy>)> {
    let delay = scenario.handler_delay();
    let recorder = recorder.clone();
    let forward = match scenario.drains_backlog() {
        true => Some(connect(uri, &forward_queue(queue)).await?),
        false => None,
    };
    let sender = forward.clone();
    let running = Microservice::new(
        RmqOptions::new(queue)
            .uri(uri)
            .prefetch(scenario.prefetch()),
    )
    .on_event(
        OrderEvent::pattern(),
        move |Payload(event): Payload<OrderEvent>, ctx: RmqContext| {
            let (recorder, sender) = (recorder.clone(), sender.clone());
            async move {
                if let Some(client) = &sender
                    && let Err(error) = client.publish(&OrderProcessed(&event)).await
                {
                    recorder.fail(format!("publish order_processed: {error}"));
                }
                handle(&recorder, &event, delay).await;
                ctx.ack().await
            }
        },
    )
    .start()
    .await?;
    Ok((running, forward))
}
