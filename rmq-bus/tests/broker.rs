//! What only a real RabbitMQ can show: AMQP header types as they reach a handler, connection
//! errors, declarations the broker refuses, and the raw channel escape hatch. Everything both
//! transports can show is in the behaviour suite (`behaviour.rs`).
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{Broker, options, recv, unique};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use rmq_bus::config::Exchange;
use rmq_bus::context::Settlement;
use rmq_bus::{ClientProxy, Error, Microservice, RmqContext, RmqOptions};
use serde_json::json;
use tokio::sync::mpsc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_header_types_reach_the_context_as_json() {
    let broker = Broker::connect().await;
    let queue = unique("props");
    broker.declare(&queue).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let service = Microservice::new(options(&queue).no_assert(true))
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
    headers.insert("big".into(), AMQPValue::LongLongInt(-5_000_000_000));
    headers.insert("flag".into(), AMQPValue::Boolean(true));
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
    assert_eq!(seen.headers.get("big"), Some(&json!(-5_000_000_000_i64)));
    assert_eq!(seen.headers.get("flag"), Some(&json!(true)));
    service.shutdown().await.expect("shutdown");
    assert_eq!(broker.ready(&queue).await, 0);
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_errors_name_the_broker_but_not_the_password() {
    let refused = ClientProxy::new(
        RmqOptions::new("q")
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declarations_the_broker_refuses_say_what_to_do() {
    let broker = Broker::connect().await;
    let queue = unique("mismatch");
    broker.declare(&queue).await; // durable, with x-expires
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

    let (exchange, bound) = (unique("kind-x"), unique("kind-q"));
    broker.forget_exchange_later(&exchange);
    broker.forget_later(&bound);
    let topic = ClientProxy::new(options(&bound).exchange(Exchange::topic(&exchange)));
    topic.connect().await.expect("declares the topic exchange");
    let fanout = ClientProxy::new(options(&bound).exchange(Exchange::fanout(&exchange)));
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
