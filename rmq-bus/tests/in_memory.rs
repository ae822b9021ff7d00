//! What only the in-memory transport offers: test helpers and injected faults, used as a user
//! would use them to test their own controllers and failure paths.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use rmq_bus::context::Settlement;
use rmq_bus::testing::TestBroker;
use rmq_bus::{ClientProxy, Error, Microservice, RmqContext, controller, event_pattern};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Notify;

#[derive(Deserialize)]
struct Order {
    price: f64,
}

/// The billing controller of the examples, in miniature.
struct Billing {
    orders: ClientProxy,
}

#[controller]
impl Billing {
    #[event_pattern("order_created")]
    async fn bill(
        &self,
        #[payload("orderPayload")] order: Order,
        #[ctx] ctx: RmqContext,
    ) -> rmq_bus::Result<()> {
        let status = if order.price > 10_000.0 {
            "CANCELED_FRAUD"
        } else {
            "PROCESSED"
        };
        self.orders
            .emit("order_processed", &json!({"order": {"status": status}}))
            .await?;
        ctx.ack().await
    }
}

#[tokio::test]
async fn a_controller_is_tested_without_a_broker() {
    let broker = TestBroker::new();
    let orders = ClientProxy::new(broker.options("ORDERS"));
    let running = Microservice::new(broker.options("BILLING"))
        .controller(Billing { orders })
        .start()
        .await
        .expect("start");

    broker
        .publish(
            "BILLING",
            "order_created",
            &json!({"orderPayload": {"price": 50000}}),
        )
        .expect("publish");
    let settled = broker.settled("BILLING").await;
    assert_eq!(settled.settlement, Settlement::Ack);

    // What was emitted where: one order_processed in ORDERS.
    let emitted = broker.messages("ORDERS").expect("ORDERS exists");
    assert_eq!(emitted.len(), 1);
    let (pattern, data) = emitted[0].packet().expect("a NestJS packet");
    assert_eq!(
        (pattern.as_str(), data),
        (
            "order_processed",
            json!({"order": {"status": "CANCELED_FRAUD"}})
        )
    );

    // Bad input goes to the default dead-letter queue with its reason; the original is acked.
    broker
        .publish(
            "BILLING",
            "order_created",
            &json!({"orderPayload": {"price": "free"}}),
        )
        .expect("publish");
    assert_eq!(broker.settled("BILLING").await.settlement, Settlement::Ack);
    let dead = broker.messages("BILLING.dlq").expect("the DLQ exists");
    assert_eq!(dead.len(), 1);
    let reason = dead[0]
        .properties
        .headers
        .get("x-rmq-bus-error")
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    assert!(reason.contains("data.orderPayload is not a"), "{reason}");
    running.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_lost_connection_redelivers_unacked_messages_and_the_service_recovers() {
    let broker = TestBroker::new();
    let gate = Arc::new(Notify::new());
    let started = Arc::new(Notify::new());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (held, running_now) = (gate.clone(), started.clone());
    let running = Microservice::new(broker.options("JOBS"))
        .on_event("job", move |ctx: RmqContext| {
            let (held, running_now, tx) = (held.clone(), running_now.clone(), tx.clone());
            async move {
                if !ctx.redelivered() {
                    // Still working when the connection drops.
                    running_now.notify_one();
                    held.notified().await;
                }
                tx.send((ctx.redelivered(), ctx.ack().await)).ok();
            }
        })
        .start()
        .await
        .expect("start");
    broker.publish("JOBS", "job", &1).expect("publish");
    tokio::time::timeout(Duration::from_secs(5), started.notified())
        .await
        .expect("the handler runs");
    assert_eq!(
        broker.unacked("JOBS").expect("JOBS exists"),
        1,
        "the handler holds the message"
    );
    broker.disconnect();
    gate.notify_one();
    let mut results = Vec::new();
    for _ in 0..2 {
        let result = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        results.push(result.expect("a handler finished").expect("open"));
    }
    results.sort_by_key(|(redelivered, _)| *redelivered);
    assert!(
        matches!(results[0], (false, Err(Error::ChannelClosed { .. }))),
        "the old delivery cannot be acked after the loss: {:?}",
        results[0]
    );
    assert!(
        matches!(results[1], (true, Ok(()))),
        "redelivered, flagged, and handled by the recovered consumer"
    );
    running.shutdown().await.expect("shutdown");
    assert_eq!(
        broker.ready("JOBS").expect("JOBS exists") + broker.unacked("JOBS").expect("JOBS exists"),
        0
    );
}

#[tokio::test]
async fn refused_publishes_surface_as_errors_at_once() {
    let broker = TestBroker::new();
    let client = ClientProxy::new(
        broker
            .options("Q")
            .reconnect_timeout(Duration::from_secs(30)),
    );
    client.connect().await.expect("connect");
    broker.refuse_publishes(1);
    let started = std::time::Instant::now();
    match client.emit("x", &1).await {
        Err(error @ Error::Nacked { .. }) => {
            assert!(error.to_string().contains("queue \"Q\""), "{error}")
        }
        other => panic!("expected Nacked, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "a nack is not retried until the reconnect timeout: {:?}",
        started.elapsed()
    );
    client
        .emit("x", &2)
        .await
        .expect("the next emit is accepted");
    // The test's own publishes are never refused.
    broker.refuse_publishes(1);
    broker
        .publish("Q", "x", &3)
        .expect("setup publishes are not refused");
    let left: Vec<_> = broker
        .messages("Q")
        .expect("Q exists")
        .iter()
        .filter_map(|m| m.packet().map(|(_, data)| data))
        .collect();
    assert_eq!(left, [json!(2), json!(3)]);
    assert!(matches!(
        client.emit("x", &4).await,
        Err(Error::Nacked { .. })
    ));
}

#[tokio::test]
async fn a_deleted_exchange_refuses_publishes() {
    let broker = TestBroker::new();
    let client = ClientProxy::new(
        broker
            .options("Q")
            .exchange(rmq_bus::config::Exchange::fanout("prices"))
            .reconnect_timeout(Duration::from_millis(100)),
    );
    client.connect().await.expect("declares the exchange");
    broker.delete_exchange("prices");
    assert!(matches!(
        client.emit("x", &1).await,
        Err(Error::Broker { .. })
    ));
}
