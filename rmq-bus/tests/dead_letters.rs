//! Dead letters, retries and shutdown against the real broker: a corpus of poison messages each
//! dead-lettered with its reason, delayed retries counted in a header, and nothing lost or left
//! unacked when a loaded service shuts down.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Broker, options, unique};
use lapin::BasicProperties;
use lapin::types::AMQPValue;
use rmq_bus::config::RetryPolicy;
use rmq_bus::handler::{HandlerError, Message, Response, Route};
use rmq_bus::{ClientProxy, Microservice, Payload, RmqContext};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Order {
    id: String,
    price: f64,
    quantity: u32,
}

fn header(properties: &BasicProperties, name: &str) -> Option<String> {
    let value = properties.headers().as_ref()?.inner().get(name)?.clone();
    Some(match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        other => format!("{other:?}"),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_corpus_is_dead_lettered_with_reasons_and_the_consumer_serves_on() {
    let broker = Broker::connect().await;
    let (queue, dlq) = (unique("poison"), unique("poison-dlq"));
    broker.forget_later(&queue);
    broker.forget_later(&dlq);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let handled = Arc::new(AtomicUsize::new(0));
    let count = handled.clone();
    // Prefetch 1 and a retry policy: poison must skip the retries and never block the queue.
    let service = Microservice::new(
        options(&queue)
            .prefetch(1)
            .max_message_bytes(4096)
            .dead_letter_queue(&dlq)
            .retry(RetryPolicy::immediate(3)),
    )
    .on_event(
        "order_created",
        move |Payload(order): Payload<Order>, ctx: RmqContext| {
            let (tx, count) = (tx.clone(), count.clone());
            async move {
                count.fetch_add(1, Ordering::SeqCst);
                tx.send(order.id).ok();
                ctx.ack().await
            }
        },
    )
    .start()
    .await
    .expect("start");

    let big = format!(
        r#"{{"pattern":"order_created","data":{{"id":"{}","price":1,"quantity":1}}}}"#,
        "x".repeat(5000)
    );
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let corpus: Vec<(&str, Vec<u8>, &str)> = vec![
        ("plain text", b"hello".to_vec(), "not a JSON packet"),
        ("empty body", Vec::new(), "not a JSON packet"),
        (
            "invalid UTF-8",
            b"\xff\xfe\xfd".to_vec(),
            "not a JSON packet",
        ),
        (
            "truncated JSON",
            br#"{"pattern":"order_created","data":{"id""#.to_vec(),
            "not a JSON packet",
        ),
        ("JSON array", b"[1,2,3]".to_vec(), "not a JSON packet"),
        (
            "JSON string",
            br#""order_created""#.to_vec(),
            "not a JSON packet",
        ),
        ("JSON number", b"42".to_vec(), "not a JSON packet"),
        ("JSON null", b"null".to_vec(), "not a JSON packet"),
        ("deeply nested", deep.into_bytes(), "not a JSON packet"),
        (
            "trailing garbage",
            br#"{"pattern":"order_created","data":{}} trailing"#.to_vec(),
            "not a JSON packet",
        ),
        (
            "no pattern",
            br#"{"data":{"id":"a","price":1,"quantity":1}}"#.to_vec(),
            "no \"pattern\"",
        ),
        (
            "null pattern",
            br#"{"pattern":null,"data":{}}"#.to_vec(),
            "no \"pattern\"",
        ),
        (
            "array pattern",
            br#"{"pattern":["order_created"],"data":{}}"#.to_vec(),
            "not a string",
        ),
        (
            "boolean pattern",
            br#"{"pattern":true,"data":{}}"#.to_vec(),
            "not a string",
        ),
        (
            "unknown pattern",
            br#"{"pattern":"order_deleted","data":{}}"#.to_vec(),
            "no handler for pattern",
        ),
        (
            "unknown object pattern",
            br#"{"pattern":{"cmd":"x"},"data":{}}"#.to_vec(),
            "no handler for pattern",
        ),
        (
            "case-different pattern",
            br#"{"pattern":"Order_Created","data":{}}"#.to_vec(),
            "no handler for pattern",
        ),
        (
            "missing field",
            br#"{"pattern":"order_created","data":{"id":"a","price":1}}"#.to_vec(),
            "missing field",
        ),
        (
            "wrong type",
            br#"{"pattern":"order_created","data":{"id":"a","price":"1","quantity":1}}"#.to_vec(),
            "invalid type",
        ),
        (
            "negative quantity",
            br#"{"pattern":"order_created","data":{"id":"a","price":1,"quantity":-1}}"#.to_vec(),
            "invalid value",
        ),
        (
            "unknown field",
            br#"{"pattern":"order_created","data":{"id":"a","price":1,"quantity":1,"x":0}}"#
                .to_vec(),
            "unknown field",
        ),
        (
            "null data",
            br#"{"pattern":"order_created","data":null}"#.to_vec(),
            "invalid type",
        ),
        (
            "no data",
            br#"{"pattern":"order_created"}"#.to_vec(),
            "invalid type",
        ),
        (
            "over the size limit",
            big.into_bytes(),
            "exceeds max_message_bytes",
        ),
    ];
    assert!(corpus.len() >= 20);
    for (_, body, _) in &corpus {
        broker.publish_raw(&queue, body).await;
    }
    let client = ClientProxy::new(options(&queue).dead_letter_queue(&dlq));
    client
        .emit(
            "order_created",
            &json!({"id": "good", "price": 1.5, "quantity": 2}),
        )
        .await
        .expect("emit");
    let good = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("served after the poison");
    assert_eq!(good.as_deref(), Some("good"));

    assert_eq!(
        broker.wait_ready(&dlq, corpus.len() as u32).await,
        corpus.len() as u32
    );
    let dead = broker.drain(&dlq).await;
    for ((kind, body, reason), (dead_body, properties)) in corpus.iter().zip(&dead) {
        assert_eq!(dead_body, body, "{kind}: dead-lettered untouched, in order");
        let error = header(properties, "x-rmq-bus-error").unwrap_or_default();
        assert!(
            error.contains(reason),
            "{kind}: reason {error:?} should mention {reason:?}"
        );
        assert_eq!(
            header(properties, "x-rmq-bus-queue").as_deref(),
            Some(queue.as_str()),
            "{kind}"
        );
        assert_eq!(
            header(properties, "x-rmq-bus-attempts").as_deref(),
            Some("1"),
            "{kind}: poison is not retried"
        );
        assert!(
            header(properties, "x-rmq-bus-failed-at").is_some_and(|t| t.ends_with('Z')),
            "{kind}"
        );
    }
    assert_eq!(
        handled.load(Ordering::SeqCst),
        1,
        "only the good message reached the handler"
    );
    service.shutdown().await.expect("shutdown");
    assert_eq!(
        broker.ready(&queue).await,
        0,
        "nothing left behind in the queue"
    );
    client.close().await;
    broker.cleanup().await;
}

/// Events are parsed once, by the handler's arguments; a handler that reads no data, or a raw
/// route, still never runs for a body that only starts like a packet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_without_data_never_sees_a_broken_packet() {
    let broker = Broker::connect().await;
    let (queue, dlq) = (unique("nodata"), unique("nodata-dlq"));
    broker.forget_later(&queue);
    broker.forget_later(&dlq);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let raw_tx = tx.clone();
    let service = Microservice::new(options(&queue).prefetch(1).dead_letter_queue(&dlq))
        .on_event("ping", move |ctx: RmqContext| {
            let tx = tx.clone();
            async move {
                tx.send(String::from_utf8_lossy(ctx.body()).into_owned())
                    .ok();
                ctx.ack().await
            }
        })
        // A raw route reads the message itself, and may not read the data at all.
        .route(Route::event("raw", move |message: Message| {
            let tx = raw_tx.clone();
            async move {
                let ctx = message.context().clone();
                tx.send(String::from_utf8_lossy(ctx.body()).into_owned())
                    .ok();
                ctx.ack()
                    .await
                    .map_err(|e| HandlerError::Failed(e.to_string()))?;
                Ok(Response::Nothing)
            }
        }))
        .start()
        .await
        .expect("start");
    let broken: [&[u8]; 4] = [
        br#"{"pattern":"ping","data":{} trailing"#,
        br#"{"pattern":"ping", oops}"#,
        br#"{"pattern":"ping","data":1,"pattern":"ping"}"#,
        br#"{"pattern":"raw","data":{} trailing"#,
    ];
    for body in broken {
        broker.publish_raw(&queue, body).await;
    }
    let good = br#"{"pattern":"ping","data":null}"#;
    broker.publish_raw(&queue, good).await;
    let seen = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("the good one is handled");
    assert_eq!(seen.as_deref().map(str::as_bytes), Some(&good[..]));
    assert_eq!(broker.wait_ready(&dlq, 4).await, 4);
    let dead = broker.drain(&dlq).await;
    let reasons: Vec<String> = dead
        .iter()
        .map(|(_, properties)| header(properties, "x-rmq-bus-error").unwrap_or_default())
        .collect();
    assert!(reasons[0].contains("not a JSON packet"), "{reasons:?}");
    assert!(reasons[1].contains("not a JSON packet"), "{reasons:?}");
    assert!(
        reasons[2].contains("duplicate field `pattern`"),
        "{reasons:?}"
    );
    assert!(reasons[3].contains("not a JSON packet"), "{reasons:?}");
    assert!(
        rx.try_recv().is_err(),
        "no broken packet reached the handler"
    );
    service.shutdown().await.expect("shutdown");
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_retries_then_success_or_the_dead_letter_queue() {
    let broker = Broker::connect().await;
    let (queue, dlq) = (unique("retry"), unique("retry-dlq"));
    broker.forget_later(&queue);
    broker.forget_later(&dlq);
    for delay in ["100ms", "200ms"] {
        broker.forget_later(&format!("{queue}.retry.{delay}"));
    }
    let flaky_calls = Arc::new(AtomicU32::new(0));
    let successes = Arc::new(Mutex::new(Vec::<(u32, Instant)>::new()));
    let doomed_calls = Arc::new(AtomicU32::new(0));
    let (flaky, done, doomed) = (flaky_calls.clone(), successes.clone(), doomed_calls.clone());
    let started = Instant::now();
    let policy =
        RetryPolicy::exponential(4, Duration::from_millis(100), Duration::from_millis(200));
    let service = Microservice::new(options(&queue).dead_letter_queue(&dlq))
        .on_event("flaky", move |ctx: RmqContext| {
            let (flaky, done) = (flaky.clone(), done.clone());
            async move {
                let call = flaky.fetch_add(1, Ordering::SeqCst) + 1;
                if call <= 2 {
                    return Err(format!("flaky failure {call}"));
                }
                let attempt = ctx
                    .properties()
                    .headers
                    .get("x-rmq-bus-attempt")
                    .and_then(|v| v.as_u64())
                    .unwrap_or(1);
                done.lock().unwrap().push((attempt as u32, Instant::now()));
                Ok(())
            }
        })
        .on_event("doomed", move || {
            let doomed = doomed.clone();
            async move {
                doomed.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>("the payment provider refused")
            }
        })
        .retry(policy)
        .start()
        .await
        .expect("start");
    let client = ClientProxy::new(options(&queue));
    client.emit("flaky", &json!({"n": 1})).await.expect("emit");
    client.emit("doomed", &json!({"n": 2})).await.expect("emit");

    assert_eq!(
        broker.wait_ready(&dlq, 1).await,
        1,
        "the doomed message ends in the DLQ"
    );
    let dead = broker.drain(&dlq).await;
    let properties = &dead[0].1;
    assert_eq!(
        header(properties, "x-rmq-bus-error").as_deref(),
        Some("handler failed: the payment provider refused")
    );
    assert_eq!(
        header(properties, "x-rmq-bus-pattern").as_deref(),
        Some("doomed")
    );
    assert_eq!(
        header(properties, "x-rmq-bus-queue").as_deref(),
        Some(queue.as_str())
    );
    assert_eq!(
        header(properties, "x-rmq-bus-attempts").as_deref(),
        Some("4")
    );
    assert_eq!(
        String::from_utf8_lossy(&dead[0].0),
        r#"{"pattern":"doomed","data":{"n":2}}"#
    );
    assert_eq!(
        doomed_calls.load(Ordering::SeqCst),
        4,
        "tried 4 times in all"
    );

    common::eventually("the flaky handler succeeded", || {
        !successes.lock().unwrap().is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let successes = successes.lock().unwrap().clone();
    assert_eq!(successes.len(), 1, "handled successfully exactly once");
    assert_eq!(successes[0].0, 3, "on its third delivery");
    assert_eq!(flaky_calls.load(Ordering::SeqCst), 3);
    let took = successes[0].1 - started;
    assert!(
        took >= Duration::from_millis(300),
        "two delayed retries (100 ms + 200 ms), took {took:?}"
    );
    service.shutdown().await.expect("shutdown");
    assert_eq!(broker.ready(&queue).await, 0);
    client.close().await;
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_under_load_loses_nothing_and_leaves_nothing_unacked() {
    const N: u64 = 2000;
    let broker = Broker::connect().await;
    let queue = unique("drain");
    broker.forget_later(&queue);
    let seen = Arc::new(Mutex::new(HashSet::<u64>::new()));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let service_for = |seen: Arc<Mutex<HashSet<u64>>>, in_flight: Arc<AtomicUsize>| {
        Microservice::new(options(&queue).prefetch(50))
            .drain_timeout(Duration::from_secs(10))
            .on_event("n", move |Payload(n): Payload<u64>, ctx: RmqContext| {
                let (seen, in_flight) = (seen.clone(), in_flight.clone());
                async move {
                    in_flight.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    seen.lock().unwrap().insert(n);
                    let acked = ctx.ack().await;
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    acked
                }
            })
    };
    let client = ClientProxy::new(options(&queue));
    futures::future::try_join_all((0..N).map(|n| {
        let client = client.clone();
        async move { client.emit("n", &n).await }
    }))
    .await
    .expect("all confirmed");
    let first = service_for(seen.clone(), in_flight.clone())
        .start()
        .await
        .expect("start");
    common::eventually("handlers are busy", || {
        in_flight.load(Ordering::SeqCst) > 10
    })
    .await;
    first.shutdown().await.expect("drained within the timeout");
    let handled_before = seen.lock().unwrap().len() as u64;
    let left = broker.ready(&queue).await as u64;
    println!(
        "shutdown under load: {handled_before} handled and acked, {left} back in the queue, of {N}"
    );
    assert!(
        handled_before > 0 && handled_before < N,
        "shut down mid-way"
    );
    assert_eq!(
        handled_before + left,
        N,
        "every message is either handled and acked or back in the queue"
    );

    let second = service_for(seen.clone(), in_flight.clone())
        .start()
        .await
        .expect("restart");
    common::eventually("the rest is handled", || {
        seen.lock().unwrap().len() as u64 == N
    })
    .await;
    second.shutdown().await.expect("shutdown");
    assert_eq!(broker.ready(&queue).await, 0);
    client.close().await;
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_queues_work_on_a_single_node_with_retries() {
    let broker = Broker::connect().await;
    let queue = unique("quorum");
    broker.forget_later(&queue);
    broker.forget_later(&format!("{queue}.retry.50ms"));
    let quorum = options(&queue).queue_options(rmq_bus::config::QueueOptions::default().quorum());
    let (tx, mut rx) = mpsc::unbounded_channel();
    let service = Microservice::new(quorum.clone().retry(RetryPolicy::exponential(
        2,
        Duration::from_millis(50),
        Duration::from_millis(50),
    )))
    .on_event("once_more", move |ctx: RmqContext| {
        let tx = tx.clone();
        async move {
            let attempt = ctx
                .properties()
                .headers
                .get("x-rmq-bus-attempt")
                .and_then(|v| v.as_u64());
            tx.send(attempt).ok();
            if attempt.is_none() {
                Err("first delivery fails")
            } else {
                Ok(())
            }
        }
    })
    .start()
    .await
    .expect("a quorum queue on one node");
    let client = ClientProxy::new(quorum);
    client.emit("once_more", &()).await.expect("emit");
    let within = Duration::from_secs(10);
    let first = tokio::time::timeout(within, rx.recv())
        .await
        .expect("first");
    let retry = tokio::time::timeout(within, rx.recv())
        .await
        .expect("retry");
    assert_eq!((first, retry), (Some(None), Some(Some(2))));
    service.shutdown().await.expect("shutdown");
    assert_eq!(broker.ready(&queue).await, 0);
    client.close().await;
    broker.cleanup().await;
}
