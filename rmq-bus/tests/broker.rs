//! Behaviour against the real broker: round trip, settlement, concurrency, bad input, failures.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod common;

use common::recv;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Broker, options, options_with_dlq, unique};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use rmq_bus::config::{AckMode, FailurePolicy};
use rmq_bus::context::Settlement;
use rmq_bus::{ClientProxy, Error, Microservice, Payload, RmqContext};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

#[derive(Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
struct Order {
    order_id: String,
    price: f64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emit_reaches_the_handler_and_ack_removes_the_message() {
    let broker = Broker::connect().await;
    let queue = unique("roundtrip");
    broker.forget_later(&queue);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let service = Microservice::new(options(&queue))
        .on_event(
            "order_created",
            move |Payload(data): Payload<Value>, ctx: RmqContext| {
                let tx = tx.clone();
                async move {
                    let delivery = ctx.delivery().clone();
                    ctx.ack().await?;
                    tx.send((data, ctx.pattern().to_owned(), delivery, ctx.settlement()))
                        .ok();
                    Ok::<_, Error>(())
                }
            },
        )
        .start()
        .await
        .expect("start");

    let client = ClientProxy::new(options(&queue));
    let data = json!({"orderPayload": {"orderId": "o-1", "price": 12.5, "buyer": "zoë ✓"}});
    client
        .emit("order_created", &data)
        .await
        .expect("emit confirmed");

    let (received, pattern, delivery, settled) = recv(&mut rx).await;
    assert_eq!(received, data);
    assert_eq!(pattern, "order_created");
    assert_eq!(delivery.queue, queue);
    assert_eq!(delivery.routing_key, queue);
    assert_eq!(delivery.exchange, "");
    assert!(!delivery.redelivered);
    assert_eq!(
        delivery.properties.delivery_mode,
        Some(2),
        "persistent by default"
    );
    assert_eq!(settled, Some(Settlement::Ack));

    service.shutdown().await.expect("clean shutdown");
    assert_eq!(broker.ready(&queue).await, 0, "acked message must be gone");
    client.close().await;
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emit_writes_the_nestjs_packet() {
    let broker = Broker::connect().await;
    let queue = unique("wire");
    broker.forget_later(&queue);
    let client = ClientProxy::new(options(&queue));
    client
        .emit("order_created", &json!({"orderPayload": {"a": 1}}))
        .await
        .expect("emit");
    assert_eq!(broker.wait_ready(&queue, 1).await, 1);
    let messages = broker.drain(&queue).await;
    let (body, properties) = &messages[0];
    assert_eq!(
        String::from_utf8_lossy(body),
        r#"{"pattern":"order_created","data":{"orderPayload":{"a":1}}}"#
    );
    assert_eq!(*properties.delivery_mode(), Some(2));
    client.close().await;
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_dead_lettered_and_the_consumer_keeps_serving() {
    let broker = Broker::connect().await;
    let (queue, dlq) = (unique("bad"), unique("bad-dlq"));
    broker.declare(&dlq).await;
    broker.forget_later(&queue);
    let (tx, mut rx) = mpsc::unbounded_channel();
    // A prefetch of 1: if any bad message stayed unacked, the good one behind it would never arrive.
    let service = Microservice::new(
        options_with_dlq(&queue, &dlq)
            .prefetch(1)
            .max_message_bytes(1024),
    )
    .on_event(
        "order_created",
        move |order: Payload<Order>, ctx: RmqContext| {
            let tx = tx.clone();
            async move {
                ctx.ack().await?;
                tx.send(order.0).ok();
                Ok::<_, Error>(())
            }
        },
    )
    .start()
    .await
    .expect("start");
    let oversize = format!(
        r#"{{"pattern":"order_created","data":"{}"}}"#,
        "x".repeat(2000)
    );
    let bad: Vec<&[u8]> = vec![
        b"not json at all",
        b"\xff\xfe\x00binary",
        b"",
        b"[1,2,3]",
        br#"{"data":{"orderId":"a","price":1}}"#,
        br#"{"pattern":null,"data":{}}"#,
        br#"{"pattern":["x"],"data":{}}"#,
        br#"{"pattern":"no_such_pattern","data":{}}"#,
        br#"{"pattern":"order_created","data":{"orderId":"a"}}"#,
        br#"{"pattern":"order_created","data":{"orderId":"a","price":"ten"}}"#,
        br#"{"pattern":"order_created","data":"just a string"}"#,
        br#"{"pattern":"order_created"}"#,
        oversize.as_bytes(),
    ];
    let client = ClientProxy::new(options_with_dlq(&queue, &dlq));
    client.connect().await.expect("connect");
    for body in &bad {
        broker.publish_raw(&queue, body).await;
    }
    client
        .emit("order_created", &json!({"orderId": "good", "price": 3.0}))
        .await
        .expect("emit");
    assert_eq!(
        recv(&mut rx).await,
        Order {
            order_id: "good".into(),
            price: 3.0
        }
    );
    assert_eq!(
        broker.wait_ready(&dlq, bad.len() as u32).await,
        bad.len() as u32,
        "every bad message is dead-lettered"
    );
    let dead: Vec<Vec<u8>> = broker
        .drain(&dlq)
        .await
        .into_iter()
        .map(|(body, _)| body)
        .collect();
    let expected: Vec<Vec<u8>> = bad.iter().map(|b| b.to_vec()).collect();
    assert_eq!(dead, expected, "dead-lettered untouched and in order");
    assert_eq!(broker.ready(&queue).await, 0);
    service.shutdown().await.expect("shutdown");
    client.close().await;
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_and_panicking_handlers_are_requeued_once_then_dead_lettered() {
    let broker = Broker::connect().await;
    let (queue, dlq) = (unique("fail"), unique("fail-dlq"));
    broker.declare(&dlq).await;
    broker.forget_later(&queue);
    let attempts = Arc::new(AtomicUsize::new(0));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let counter = attempts.clone();
    let service = Microservice::new(options_with_dlq(&queue, &dlq).prefetch(1))
        .on_event("fails", move |ctx: RmqContext| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(format!("cannot bill (redelivered: {})", ctx.redelivered()))
            }
        })
        .on_event("panics", |Payload(n): Payload<u32>| async move {
            if n < 100 {
                panic!("handler bug {n}");
            }
        })
        .on_event("ok", move |Payload(n): Payload<u32>| {
            let tx = tx.clone();
            async move {
                tx.send(n).ok();
            }
        })
        .start()
        .await
        .expect("start");
    let client = ClientProxy::new(options_with_dlq(&queue, &dlq));
    client.emit("fails", &1).await.expect("emit");
    client.emit("panics", &2).await.expect("emit");
    client.emit("ok", &3).await.expect("emit");
    assert_eq!(
        recv(&mut rx).await,
        3,
        "the consumer survives failures and panics"
    );
    assert_eq!(
        broker.wait_ready(&dlq, 2).await,
        2,
        "both end in the DLQ after one requeue"
    );
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        2,
        "a failing handler runs twice: first delivery, one requeue"
    );
    assert_eq!(broker.ready(&queue).await, 0);
    service.shutdown().await.expect("shutdown");
    client.close().await;
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_policy_skips_the_requeue() {
    let broker = Broker::connect().await;
    let (queue, dlq) = (unique("deadletter"), unique("deadletter-dlq"));
    broker.declare(&dlq).await;
    broker.forget_later(&queue);
    let attempts = Arc::new(AtomicUsize::new(0));
    let counter = attempts.clone();
    let service =
        Microservice::new(options_with_dlq(&queue, &dlq).failure_policy(FailurePolicy::DeadLetter))
            .on_event("fails", move || {
                let counter = counter.clone();
                async move {
                    counter.fetch_add(1, Ordering::SeqCst);
                    Err::<(), _>("always")
                }
            })
            .start()
            .await
            .expect("start");
    let client = ClientProxy::new(options_with_dlq(&queue, &dlq));
    client.emit("fails", &()).await.expect("emit");
    assert_eq!(broker.wait_ready(&dlq, 1).await, 1);
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
    service.shutdown().await.expect("shutdown");
    client.close().await;
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_kept_past_the_handler_settles_it_later() {
    let broker = Broker::connect().await;
    let queue = unique("deferred");
    broker.forget_later(&queue);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let service = Microservice::new(options(&queue))
        .on_event("later", move |ctx: RmqContext| {
            let tx = tx.clone();
            async move {
                // Hand the context to another task; the handler returns before it is settled.
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let redelivered = ctx.redelivered();
                    let result = if redelivered {
                        ctx.ack().await
                    } else {
                        ctx.nack(true).await
                    };
                    tx.send((redelivered, result.is_ok())).ok();
                });
            }
        })
        .start()
        .await
        .expect("start");
    let client = ClientProxy::new(options(&queue));
    client.emit("later", &()).await.expect("emit");
    assert_eq!(
        recv(&mut rx).await,
        (false, true),
        "deferred nack was not pre-empted by an automatic ack"
    );
    assert_eq!(recv(&mut rx).await, (true, true));
    service.shutdown().await.expect("shutdown");
    assert_eq!(broker.ready(&queue).await, 0);
    client.close().await;
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_ack_mode_and_after_handler_mode() {
    let broker = Broker::connect().await;
    let (queue_a, queue_b) = (unique("noack"), unique("after"));
    broker.forget_later(&queue_a);
    broker.forget_later(&queue_b);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let service = Microservice::new(options(&queue_a).ack_mode(AckMode::NoAck))
        .queue(options(&queue_b).ack_mode(AckMode::AfterHandler))
        .on_event("hello", move |ctx: RmqContext| {
            let tx = tx.clone();
            async move {
                let ack = ctx.ack().await;
                tx.send((ctx.delivery().queue.clone(), ack.is_ok())).ok();
            }
        })
        .start()
        .await
        .expect("start");
    ClientProxy::new(options(&queue_a))
        .emit("hello", &())
        .await
        .expect("emit a");
    let (queue, acked) = recv(&mut rx).await;
    assert_eq!(
        (queue.as_str(), acked),
        (queue_a.as_str(), true),
        "NoAck: the broker already acked it, and an ack agrees"
    );
    ClientProxy::new(options(&queue_b))
        .emit("hello", &())
        .await
        .expect("emit b");
    let (queue, acked) = recv(&mut rx).await;
    assert_eq!(
        (queue.as_str(), acked),
        (queue_b.as_str(), true),
        "AfterHandler still lets the handler settle"
    );
    service.shutdown().await.expect("shutdown");
    assert_eq!(
        broker.ready(&queue_a).await + broker.ready(&queue_b).await,
        0
    );
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_and_properties_reach_the_context() {
    let broker = Broker::connect().await;
    let queue = unique("props");
    broker.declare(&queue).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut options = options(&queue);
    options = options.no_assert(true);
    let service = Microservice::new(options)
        .on_event("p", move |ctx: RmqContext| {
            let tx = tx.clone();
            async move {
                tx.send(ctx.properties().clone()).ok();
            }
        })
        .start()
        .await
        .expect("start");
    let mut headers = FieldTable::default();
    headers.insert("tenant".into(), AMQPValue::LongString("acme".into()));
    headers.insert("attempt".into(), AMQPValue::LongInt(3));
    let properties = BasicProperties::default()
        .with_correlation_id("c-42".into())
        .with_headers(headers);
    broker
        .publish_with(&queue, br#"{"pattern":"p","data":null}"#, properties)
        .await;
    let seen = recv(&mut rx).await;
    assert_eq!(seen.correlation_id.as_deref(), Some("c-42"));
    assert_eq!(seen.headers.get("tenant"), Some(&json!("acme")));
    assert_eq!(seen.headers.get("attempt"), Some(&json!(3)));
    service.shutdown().await.expect("shutdown");
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_say_what_happened() {
    let broker = Broker::connect().await;
    let missing = unique("missing");
    let unroutable = ClientProxy::new(options(&missing).no_assert(true));
    match unroutable.emit("x", &1).await {
        Err(Error::Unroutable {
            exchange,
            routing_key,
        }) => {
            assert_eq!((exchange.as_str(), routing_key), ("", missing))
        }
        other => panic!("expected Unroutable, got {other:?}"),
    }
    unroutable.close().await;

    let refused = ClientProxy::new(
        rmq_bus::RmqOptions::new("q")
            .uri("amqp://guest:s3cret@127.0.0.1:1/%2f")
            .reconnect_timeout(Duration::from_millis(300)),
    );
    match refused.emit("x", &1).await {
        Err(error @ Error::Connect { .. }) => {
            let text = error.to_string();
            assert!(
                text.contains("127.0.0.1:1") && !text.contains("s3cret"),
                "{text}"
            );
        }
        other => panic!("expected Connect, got {other:?}"),
    }

    let queue = unique("mismatch");
    broker.declare(&queue).await; // durable with x-expires
    let mismatched = ClientProxy::new(options(&queue).durable(false));
    match mismatched.connect().await {
        Err(error @ Error::Declare { .. }) => {
            let text = error.to_string();
            assert!(
                text.contains(&queue) && text.contains("no_assert"),
                "{text}"
            );
        }
        other => panic!("expected Declare, got {other:?}"),
    }
    let service = Microservice::new(options(&queue).durable(false))
        .start()
        .await;
    assert!(matches!(service, Err(Error::Declare { .. })), "{service:?}");

    let big = ClientProxy::new(options(&queue).max_message_bytes(10));
    assert!(matches!(
        big.emit("x", &"0123456789").await,
        Err(Error::TooLarge { max: 10, .. })
    ));
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_patterns_are_refused_at_start() {
    let queue = unique("dup");
    let result = Microservice::new(options(&queue))
        .on_event("a", || async {})
        .on_event("a", || async {})
        .start()
        .await;
    assert!(
        matches!(result, Err(Error::DuplicatePattern(ref p)) if p == "a"),
        "{result:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_reconnects_after_its_connection_is_closed() {
    let broker = Broker::connect().await;
    let queue = unique("reconnect");
    broker.forget_later(&queue);
    let client = ClientProxy::new(options(&queue));
    client.emit("a", &1).await.expect("first emit");
    client.close().await;
    client
        .emit("a", &2)
        .await
        .expect("emit after close opens a new connection");
    assert_eq!(broker.wait_ready(&queue, 2).await, 2);
    client.close().await;
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settling_after_the_channel_died_is_an_error_and_the_consumer_recovers() {
    let broker = Broker::connect().await;
    let queue = unique("dead-channel");
    broker.forget_later(&queue);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let service = Microservice::new(options(&queue))
        .on_event("x", move |ctx: RmqContext| {
            let tx = tx.clone();
            async move {
                // The escape hatch reaches the raw channel; closing it kills the delivery's channel.
                if let Some(channel) = ctx.channel().filter(|_| !ctx.redelivered()) {
                    let _ = channel.close(200, "test closes it".into()).await;
                }
                tx.send((ctx.redelivered(), ctx.ack().await)).ok();
            }
        })
        .start()
        .await
        .expect("start");
    let client = ClientProxy::new(options(&queue));
    client.emit("x", &()).await.expect("emit");
    match recv(&mut rx).await {
        (
            false,
            Err(
                error @ Error::ChannelClosed {
                    attempted: Settlement::Ack,
                },
            ),
        ) => {
            assert!(error.to_string().contains("delivered again"), "{error}")
        }
        other => panic!("expected ChannelClosed, got {other:?}"),
    }
    let (redelivered, acked) = recv(&mut rx).await;
    assert!(
        redelivered && acked.is_ok(),
        "the consumer came back and got the message again"
    );
    service
        .shutdown()
        .await
        .expect("clean shutdown after recovery");
    assert_eq!(broker.ready(&queue).await, 0);
    client.close().await;
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_and_exchange_errors_say_what_to_do() {
    let broker = Broker::connect().await;
    let missing = unique("absent");
    let started = Microservice::new(options(&missing).no_assert(true))
        .on_event("x", || async {})
        .start()
        .await;
    match started {
        Err(error @ Error::Consume { .. }) => {
            let text = error.to_string();
            assert!(
                text.contains(&missing) && text.contains("must already exist"),
                "{text}"
            );
        }
        other => panic!("expected Consume, got {other:?}"),
    }

    let (exchange, queue) = (unique("kind-x"), unique("kind-q"));
    broker.forget_exchange_later(&exchange);
    broker.forget_later(&queue);
    let topic =
        ClientProxy::new(options(&queue).exchange(rmq_bus::config::Exchange::topic(&exchange)));
    topic.connect().await.expect("declares the topic exchange");
    let fanout =
        ClientProxy::new(options(&queue).exchange(rmq_bus::config::Exchange::fanout(&exchange)));
    match fanout.connect().await {
        Err(error @ Error::DeclareExchange { .. }) => {
            let text = error.to_string();
            assert!(
                text.contains(&exchange) && text.contains("another kind"),
                "{text}"
            );
        }
        other => panic!("expected DeclareExchange, got {other:?}"),
    }
    topic.close().await;
    broker.cleanup().await;
}
