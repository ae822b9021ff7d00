//! rmq-bus as an application uses it: a typed contract published with `ClientProxy::publish`,
//! and a `Microservice` whose `on_event` handler acks by hand.

use std::sync::Arc;

use rmq_bus::{ClientProxy, Microservice, Payload, RmqContext, RmqOptions};

use crate::measure::{Recorder, handle};
use crate::payload::OrderEvent;
use crate::workload::Scenario;
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

pub(super) async fn start(
    scenario: Scenario,
    uri: &str,
    queue: &str,
    recorder: &Arc<Recorder>,
) -> Res<RunningMicroservice> {
    let delay = scenario.handler_delay();
    let recorder = recorder.clone();
    let running = Microservice::new(
        RmqOptions::new(queue)
            .uri(uri)
            .prefetch(scenario.prefetch()),
    )
    .on_event(
        OrderEvent::pattern(),
        move |Payload(event): Payload<OrderEvent>, ctx: RmqContext| {
            let recorder = recorder.clone();
            async move {
                handle(&recorder, &event, delay).await;
                ctx.ack().await
            }
        },
    )
    .start()
    .await?;
    Ok(running)
}
