//! What only the in-memory transport offers: test helpers and injected faults, used as a user
//! would use them to test their own controllers and failure paths.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use rmq_bus::config::{Exchange, RetryPolicy};
use rmq_bus::context::Outcome;
use rmq_bus::context::Settlement;
use rmq_bus::testing::TestBroker;
use rmq_bus::{
    ClientProxy, Error, Microservice, Payload, RmqContext, RmqOptions, RpcError, controller,
    event_pattern,
};
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
    assert_eq!(
        (settled.settlement, settled.outcome),
        (Settlement::Ack, Outcome::Acked)
    );

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
    match broker.settled("BILLING").await.outcome {
        Outcome::DeadLettered { queue, reason } => {
            assert_eq!(queue, "BILLING.dlq");
            assert!(reason.contains("data.orderPayload is not a"), "{reason}");
        }
        other => panic!("expected a dead letter, got {other:?}"),
    }
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

/// A handler whose first `failures` calls fail, then succeed; it reports each attempt.
fn flaky(
    failures: usize,
) -> impl Fn(RmqContext) -> futures::future::BoxFuture<'static, Result<(), String>> + Clone {
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    move |_ctx: RmqContext| {
        let call = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Box::pin(async move {
            if call < failures {
                Err(format!("failure {}", call + 1))
            } else {
                Ok(())
            }
        })
    }
}

#[tokio::test]
async fn settled_tells_a_retry_from_a_success_and_a_dead_letter() {
    let broker = TestBroker::new();
    let retry = RetryPolicy::exponential(3, Duration::from_millis(20), Duration::from_millis(40));
    let running = Microservice::new(broker.options("SHIPPING").retry(retry))
        .on_event("flaky", flaky(1))
        .on_event("doomed", flaky(usize::MAX))
        .start()
        .await
        .expect("start");

    broker.publish("SHIPPING", "flaky", &1).expect("publish");
    let first = broker.settled("SHIPPING").await;
    assert_eq!(
        (first.settlement, first.outcome),
        (
            Settlement::Ack,
            Outcome::Retried {
                attempt: 2,
                delay: Duration::from_millis(20)
            }
        ),
        "a failure moved to the delay queue is acked, and says so"
    );
    let retried = broker.settled("SHIPPING").await;
    assert_eq!(retried.outcome, Outcome::Acked, "the retry succeeded");
    assert_eq!(
        retried.properties.headers.get("x-rmq-bus-attempt"),
        Some(&json!(2))
    );

    broker.publish("SHIPPING", "doomed", &2).expect("publish");
    let mut outcomes = Vec::new();
    for _ in 0..3 {
        outcomes.push(broker.settled("SHIPPING").await.outcome);
    }
    assert_eq!(
        outcomes[..2],
        [
            Outcome::Retried {
                attempt: 2,
                delay: Duration::from_millis(20)
            },
            Outcome::Retried {
                attempt: 3,
                delay: Duration::from_millis(40)
            }
        ]
    );
    assert_eq!(
        outcomes[2],
        Outcome::DeadLettered {
            queue: "SHIPPING.dlq".to_owned(),
            reason: "handler failed: failure 3".to_owned()
        }
    );
    assert_eq!(broker.messages("SHIPPING.dlq").expect("the DLQ").len(), 1);
    running.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn settled_reports_requeues_and_rejects() {
    let broker = TestBroker::new();
    let running = Microservice::new(broker.options("JOBS").reject_dead_letters())
        .on_event("requeue", |ctx: RmqContext| async move {
            if ctx.redelivered() {
                ctx.ack().await
            } else {
                ctx.nack(true).await
            }
        })
        .on_event(
            "reject",
            |ctx: RmqContext| async move { ctx.reject().await },
        )
        .start()
        .await
        .expect("start");
    broker.publish("JOBS", "requeue", &()).expect("publish");
    assert_eq!(broker.settled("JOBS").await.outcome, Outcome::Requeued);
    assert_eq!(broker.settled("JOBS").await.outcome, Outcome::Acked);
    broker.publish("JOBS", "reject", &()).expect("publish");
    assert_eq!(
        broker.settled("JOBS").await.outcome,
        Outcome::Rejected { reason: None }
    );
    broker.publish("JOBS", "unknown", &()).expect("publish");
    match broker.settled("JOBS").await.outcome {
        Outcome::Rejected {
            reason: Some(reason),
        } => {
            assert!(reason.contains("no handler for pattern"), "{reason}")
        }
        other => panic!("expected a rejection with its reason, got {other:?}"),
    }
    assert!(
        broker
            .settled_within("JOBS", Duration::from_millis(50))
            .await
            .is_none(),
        "nothing else was settled, and the wait is bounded"
    );
    running.shutdown().await.expect("shutdown");
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
struct Shipment {
    order_id: String,
    carrier: String,
}

#[tokio::test]
async fn exchange_publishers_subscribers_and_typed_packets() {
    let broker = TestBroker::new();
    let carriers = Exchange::topic("carriers");
    // A publisher of the exchange needs no queue of its own.
    let publisher = ClientProxy::new(RmqOptions::for_exchange(carriers.clone()).uri(broker.uri()));
    match publisher.emit("shipment.delivered", &json!({})).await {
        Err(error @ Error::Unroutable { .. }) => {
            let text = error.to_string();
            assert!(
                text.contains("\"carriers\"") && text.contains("shipment.delivered"),
                "names the exchange and key: {text}"
            );
        }
        other => panic!("expected Unroutable, nobody is bound yet: {other:?}"),
    }
    let consumer = Microservice::new(RmqOptions::for_exchange(carriers.clone()).uri(broker.uri()))
        .start()
        .await;
    assert!(
        matches!(&consumer, Err(Error::Config(text)) if text.contains("publishes only")),
        "a microservice needs a queue: {consumer:?}"
    );

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let tracking = Microservice::new(broker.options("TRACKING").exchange(carriers))
        .on_event(
            "shipment.*",
            move |Payload(shipment): Payload<Shipment>, ctx: RmqContext| {
                let tx = tx.clone();
                async move {
                    tx.send((ctx.pattern().to_owned(), shipment)).ok();
                }
            },
        )
        .start()
        .await
        .expect("start");
    broker
        .publish_to(
            "carriers",
            "shipment.delayed",
            &json!({"orderId": "o-1", "carrier": "DHL"}),
        )
        .expect("publish to the exchange");
    let (pattern, shipment) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("handled")
        .expect("open");
    assert_eq!(
        pattern, "shipment.delayed",
        "the wildcard handler sees the key"
    );
    assert_eq!(shipment.carrier, "DHL");
    assert_eq!(broker.settled("TRACKING").await.outcome, Outcome::Acked);
    publisher
        .emit(
            "shipment.delivered",
            &json!({"orderId": "o-2", "carrier": "UPS"}),
        )
        .await
        .expect("routed now");
    let settled = broker.settled("TRACKING").await;
    assert_eq!(
        settled.packet_as::<Shipment>(),
        Some((
            "shipment.delivered".to_owned(),
            Shipment {
                order_id: "o-2".to_owned(),
                carrier: "UPS".to_owned()
            }
        ))
    );
    tracking.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn merged_microservices_keep_their_handlers_to_their_own_queues() {
    let broker = TestBroker::new();
    let carriers = Exchange::topic("carriers");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let updates = Microservice::new(broker.options("SHIPPING_CARRIERS").exchange(carriers))
        .on_event("shipment.*", move |ctx: RmqContext| {
            let tx = tx.clone();
            async move {
                tx.send(ctx.pattern().to_owned()).ok();
            }
        });
    let running = Microservice::new(broker.options("SHIPPING"))
        .on_message("get_shipment", |Payload(id): Payload<String>| async move {
            Ok::<_, RpcError>(format!("shipment {id}"))
        })
        .merge(updates)
        .start()
        .await
        .expect("start");
    // The command stays off the exchange: only the merged microservice's pattern is bound.
    assert!(matches!(
        broker.publish_to("carriers", "get_shipment", &"s-1"),
        Err(Error::Unroutable { .. })
    ));
    broker
        .publish_to("carriers", "shipment.delivered", &json!({}))
        .expect("bound");
    let seen = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("handled")
        .expect("open");
    assert_eq!(seen, "shipment.delivered");
    assert_eq!(
        broker.settled("SHIPPING_CARRIERS").await.outcome,
        Outcome::Acked
    );
    let client = ClientProxy::new(broker.options("SHIPPING"));
    let answer: String = client.send("get_shipment", &"s-1").await.expect("reply");
    assert_eq!(answer, "shipment s-1");
    // A command sent to the carriers' queue finds no handler there.
    broker
        .publish("SHIPPING_CARRIERS", "get_shipment", &"s-2")
        .expect("publish");
    match broker.settled("SHIPPING_CARRIERS").await.outcome {
        Outcome::DeadLettered { reason, .. } => {
            assert!(reason.contains("no handler for pattern"), "{reason}")
        }
        other => panic!("expected a dead letter, got {other:?}"),
    }
    running.shutdown().await.expect("shutdown");

    let twice = Microservice::new(broker.options("Q"))
        .merge(Microservice::new(broker.options("Q")))
        .start()
        .await;
    assert!(
        matches!(&twice, Err(Error::Config(text)) if text.contains("consumed twice")),
        "{twice:?}"
    );
}

#[tokio::test]
async fn a_retry_or_interceptor_before_any_handler_is_refused() {
    let broker = TestBroker::new();
    let early_retry = Microservice::new(broker.options("Q"))
        .retry(RetryPolicy::immediate(3))
        .on_event("x", || async {})
        .start()
        .await;
    assert!(
        matches!(&early_retry, Err(Error::Config(text)) if text.contains("Microservice::retry")),
        "{early_retry:?}"
    );
    let early_interceptor = Microservice::new(broker.options("Q"))
        .intercept(|next: rmq_bus::handler::Next| next.run())
        .on_event("x", || async {})
        .start()
        .await;
    assert!(
        matches!(&early_interceptor, Err(Error::Config(text)) if text.contains("Microservice::intercept")),
        "{early_interceptor:?}"
    );
    let in_order = Microservice::new(broker.options("Q"))
        .on_event("x", || async {})
        .retry(RetryPolicy::immediate(3))
        .start()
        .await
        .expect("after a handler, a retry policy is fine");
    in_order.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_missing_queue_is_an_error_not_an_empty_one() {
    let broker = TestBroker::new();
    for error in [
        broker.messages("NEVER_DECLARED").err(),
        broker.ready("NEVER_DECLARED").err(),
        broker.unacked("NEVER_DECLARED").err(),
    ] {
        let text = error.map(|e| e.to_string()).unwrap_or_default();
        assert!(text.contains("no queue 'NEVER_DECLARED'"), "{text:?}");
    }
    broker
        .declare_queue("DECLARED", &Default::default())
        .expect("declare");
    assert!(broker.messages("DECLARED").expect("exists").is_empty());
    assert_eq!(broker.ready("DECLARED").expect("exists"), 0);
}

mod contracts {
    use rmq_bus::contract::{Event, Request};
    use serde::{Deserialize, Serialize};

    /// An order was placed.
    #[derive(Event, Serialize, Deserialize, Debug, PartialEq)]
    #[event(pattern = "order_created")]
    #[serde(rename_all = "camelCase")]
    pub(crate) struct OrderCreated {
        pub(crate) order_id: String,
        pub(crate) price: f64,
    }

    #[derive(Request, Serialize, Deserialize)]
    #[request(pattern(cmd = "sum", v = 1), reply = i64)]
    pub(crate) struct Sum(pub(crate) Vec<i64>);

    #[derive(Request, Serialize, Deserialize)]
    #[request(pattern = "get_total", reply = f64)]
    #[serde(rename_all = "camelCase")]
    pub(crate) struct GetTotal {
        pub(crate) order_id: String,
    }
}

use contracts::{GetTotal, OrderCreated, Sum};
use rmq_bus::{RpcError as Rpc, message_pattern};

struct Ledger {
    seen: tokio::sync::mpsc::UnboundedSender<OrderCreated>,
}

#[controller]
impl Ledger {
    /// Typed: the pattern is OrderCreated's.
    #[event_pattern]
    async fn record(
        &self,
        #[payload] order: OrderCreated,
        #[ctx] ctx: RmqContext,
    ) -> rmq_bus::Result<()> {
        self.seen.send(order).ok();
        ctx.ack().await
    }

    /// Typed request: the pattern and the reply type are GetTotal's.
    #[message_pattern]
    async fn total(&self, #[payload] query: GetTotal) -> Result<f64, Rpc> {
        Ok(if query.order_id == "o-1" { 12.5 } else { 0.0 })
    }
}

/// A free typed request handler with an object pattern; naming the same pattern is allowed.
#[message_pattern(cmd = "sum", v = 1)]
async fn sum(#[payload] numbers: Sum) -> Result<i64, Rpc> {
    Ok(numbers.0.iter().sum())
}

#[tokio::test]
async fn typed_contracts_route_publish_and_request_without_naming_patterns() {
    let broker = TestBroker::new();
    let (seen, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let running = Microservice::new(broker.options("LEDGER"))
        .controller(Ledger { seen })
        .handler::<sum>()
        .start()
        .await
        .expect("start");
    let client = ClientProxy::new(broker.options("LEDGER"));
    let order = OrderCreated {
        order_id: "o-1".into(),
        price: 12.5,
    };
    client.publish(&order).await.expect("typed publish");
    let received = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("handled")
        .expect("open");
    assert_eq!(received, order);
    let settled = broker.settled("LEDGER").await;
    assert_eq!(
        settled.packet(),
        Some((
            "order_created".to_owned(),
            json!({"orderId": "o-1", "price": 12.5})
        )),
        "the wire is NestJS's packet, as with emit"
    );
    let total: f64 = client
        .request(&GetTotal {
            order_id: "o-1".into(),
        })
        .await
        .expect("typed request");
    assert_eq!(total, 12.5);
    let sum: i64 = client
        .request(&Sum(vec![1, 2, 3]))
        .await
        .expect("object-pattern request");
    assert_eq!(sum, 6);
    // An untyped NestJS-style sender reaches the same handler.
    let untyped: i64 = client
        .send(
            rmq_bus::Pattern::from(json!({"v": 1, "cmd": "sum"})),
            &[4, 5],
        )
        .await
        .expect("untyped request");
    assert_eq!(untyped, 9);
    running.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn refusals_hit_emits_not_the_retries_rmq_bus_republishes() {
    let broker = TestBroker::new();
    let events = ClientProxy::new(broker.options("EVENTS"));
    events.connect().await.expect("declares EVENTS");
    let retry = RetryPolicy::exponential(3, Duration::from_millis(10), Duration::from_millis(10));
    let running = Microservice::new(broker.options("JOBS").retry(retry))
        .on_event("job", move |ctx: RmqContext| {
            let events = events.clone();
            async move {
                events.emit("done", &()).await?;
                ctx.ack().await
            }
        })
        .start()
        .await
        .expect("start");
    broker.refuse_publishes(3); // every attempt's emit
    broker.publish("JOBS", "job", &()).expect("publish");
    let mut outcomes = Vec::new();
    for _ in 0..3 {
        outcomes.push(broker.settled("JOBS").await.outcome);
    }
    assert!(
        matches!(
            &outcomes[..],
            [
                Outcome::Retried { attempt: 2, .. },
                Outcome::Retried { attempt: 3, .. },
                Outcome::DeadLettered { .. }
            ]
        ),
        "each emit is refused, the retries are not: {outcomes:?}"
    );
    assert!(broker.messages("EVENTS").expect("EVENTS").is_empty());
    running.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_handler_returning_bad_input_dead_letters_at_once() {
    let broker = TestBroker::new();
    let running = Microservice::new(broker.options("JOBS"))
        .on_event("job", || async {
            Err::<(), _>(rmq_bus::handler::HandlerError::BadInput(
                "no such customer".into(),
            ))
        })
        .start()
        .await
        .expect("start");
    broker.publish("JOBS", "job", &()).expect("publish");
    match broker.settled("JOBS").await.outcome {
        Outcome::DeadLettered { reason, .. } => {
            assert!(reason.contains("no such customer"), "{reason}");
            assert!(!reason.contains("handler failed"), "{reason}");
        }
        other => panic!("bad input is dead-lettered at once, not retried: {other:?}"),
    }
    running.shutdown().await.expect("shutdown");
}
