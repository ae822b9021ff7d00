//! Dead letters: bad input of every kind dead-lettered with its reason (to a dead-letter queue,
//! or through the queue's own dead-letter exchange), failing and panicking handlers, and the
//! failure policies.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rmq_bus::config::{FailurePolicy, RetryPolicy};
use rmq_bus::handler::{HandlerError, Message, Response, Route};
use rmq_bus::{ClientProxy, Microservice, Payload, RmqContext};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;

use crate::both;
use crate::common::recv;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Order {
    id: String,
    price: f64,
    quantity: u32,
}

/// Bad input of every kind: (what, body, what its dead letter's reason must mention).
fn poison_corpus() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let big = format!(
        r#"{{"pattern":"order_created","data":{{"id":"{}","price":1,"quantity":1}}}}"#,
        "x".repeat(5000)
    );
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    vec![
        ("plain text", b"hello".to_vec(), "not a JSON packet"),
        ("empty body", Vec::new(), "not a JSON packet"),
        (
            "invalid UTF-8",
            b"\xff\xfe\x00binary".to_vec(),
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
            "string data",
            br#"{"pattern":"order_created","data":"just a string"}"#.to_vec(),
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
    ]
}

/// A consumer with prefetch 1 for `order_created` (an [`Order`]): one bad message left unacked
/// would keep the good one behind it from ever arriving. Reports each good order's id.
fn order_consumer(
    options: rmq_bus::RmqOptions,
    handled: Arc<AtomicUsize>,
    tx: mpsc::UnboundedSender<String>,
) -> Microservice {
    Microservice::new(options.prefetch(1).max_message_bytes(4096)).on_event(
        "order_created",
        move |Payload(order): Payload<Order>, ctx: RmqContext| {
            let (tx, handled) = (tx.clone(), handled.clone());
            async move {
                handled.fetch_add(1, Ordering::SeqCst);
                tx.send(order.id).ok();
                ctx.ack().await
            }
        },
    )
}

both!(
    a_poison_corpus_is_dead_lettered_with_reasons_and_the_consumer_serves_on,
    |h| {
        let (queue, dlq) = (h.queue("b-poison"), h.queue("b-poison-dlq"));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let handled = Arc::new(AtomicUsize::new(0));
        // A retry policy too: poison must skip the retries.
        let options = h
            .options(&queue)
            .dead_letter_queue(&dlq)
            .retry(RetryPolicy::immediate(3));
        let service = order_consumer(options, handled.clone(), tx)
            .start()
            .await
            .expect("start");
        let corpus = poison_corpus();
        for (_, body, _) in &corpus {
            h.publish_raw(&queue, body).await;
        }
        let client = ClientProxy::new(h.options(&queue));
        client
            .emit(
                "order_created",
                &json!({"id": "good", "price": 1.5, "quantity": 2}),
            )
            .await
            .expect("emit");
        assert_eq!(recv(&mut rx).await, "good", "served after the poison");
        assert_eq!(
            h.wait_ready(&dlq, corpus.len() as u32).await,
            corpus.len() as u32
        );
        let dead = h.drain(&dlq).await;
        for ((kind, body, reason), dead) in corpus.iter().zip(&dead) {
            assert_eq!(
                &dead.body, body,
                "{kind}: dead-lettered untouched, in order"
            );
            let error = dead.header("x-rmq-bus-error").unwrap_or_default();
            assert!(
                error.contains(reason),
                "{kind}: reason {error:?} should mention {reason:?}"
            );
            assert_eq!(
                dead.header("x-rmq-bus-queue"),
                Some(queue.as_str()),
                "{kind}"
            );
            assert_eq!(
                dead.header("x-rmq-bus-attempts"),
                Some("1"),
                "{kind}: poison is not retried"
            );
            assert!(
                dead.header("x-rmq-bus-failed-at")
                    .is_some_and(|t| t.ends_with('Z')),
                "{kind}"
            );
        }
        assert_eq!(
            handled.load(Ordering::SeqCst),
            1,
            "only the good message reached the handler"
        );
        service.shutdown().await.expect("shutdown");
        assert_eq!(h.ready(&queue).await, 0, "nothing left behind in the queue");
        client.close().await;
    }
);

both!(
    bad_input_goes_through_the_queues_own_dead_letter_exchange,
    |h| {
        // A queue with its own dead-letter exchange and no dead-letter queue of rmq-bus's: bad input
        // is rejected, and the broker dead-letters it untouched.
        let (queue, dlq) = (h.queue("b-bad-dlx"), h.queue("b-bad-dlx-dlq"));
        let options = h.options_with_dlx(&queue, &dlq).await;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let service = order_consumer(options.clone(), Arc::default(), tx)
            .start()
            .await
            .expect("start");
        let bad: Vec<Vec<u8>> = poison_corpus()
            .into_iter()
            .map(|(_, body, _)| body)
            .collect();
        for body in &bad {
            h.publish_raw(&queue, body).await;
        }
        let client = ClientProxy::new(options);
        client
            .emit(
                "order_created",
                &json!({"id": "good", "price": 3.0, "quantity": 1}),
            )
            .await
            .expect("emit");
        assert_eq!(recv(&mut rx).await, "good");
        assert_eq!(h.wait_ready(&dlq, bad.len() as u32).await, bad.len() as u32);
        let dead = h.drain(&dlq).await;
        let bodies: Vec<&Vec<u8>> = dead.iter().map(|d| &d.body).collect();
        assert_eq!(
            bodies,
            bad.iter().collect::<Vec<_>>(),
            "dead-lettered untouched and in order"
        );
        for dead in &dead {
            assert_eq!(dead.header("x-first-death-reason"), Some("rejected"));
        }
        service.shutdown().await.expect("shutdown");
        assert_eq!(h.ready(&queue).await, 0);
        client.close().await;
    }
);

// Events are parsed once, by the handler's arguments; a handler that reads no data, or a raw
// route, still never runs for a body that only starts like a packet.
both!(a_handler_without_data_never_sees_a_broken_packet, |h| {
    let (queue, dlq) = (h.queue("b-nodata"), h.queue("b-nodata-dlq"));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let raw_tx = tx.clone();
    let service = Microservice::new(h.options(&queue).prefetch(1).dead_letter_queue(&dlq))
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
        h.publish_raw(&queue, body).await;
    }
    let good = r#"{"pattern":"ping","data":null}"#;
    h.publish_raw(&queue, good.as_bytes()).await;
    assert_eq!(recv(&mut rx).await, good, "the good one is handled");
    assert_eq!(h.wait_ready(&dlq, 4).await, 4);
    let reasons: Vec<String> = h
        .drain(&dlq)
        .await
        .iter()
        .map(|dead| {
            dead.header("x-rmq-bus-error")
                .unwrap_or_default()
                .to_owned()
        })
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
});

both!(
    failing_and_panicking_handlers_are_requeued_once_then_dead_lettered,
    |h| {
        let (queue, dlq) = (h.queue("b-fail"), h.queue("b-fail-dlq"));
        let options = h.options_with_dlx(&queue, &dlq).await;
        let attempts = Arc::new(Mutex::new(Vec::<(String, bool)>::new()));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (failing, panicking) = (attempts.clone(), attempts.clone());
        let service = Microservice::new(options.clone().prefetch(1))
            .on_event("fails", move |ctx: RmqContext| {
                failing
                    .lock()
                    .unwrap()
                    .push(("fails".into(), ctx.redelivered()));
                async { Err::<(), _>("cannot bill") }
            })
            .on_event(
                "panics",
                move |Payload(n): Payload<u32>, ctx: RmqContext| {
                    panicking
                        .lock()
                        .unwrap()
                        .push(("panics".into(), ctx.redelivered()));
                    async move {
                        if n < 100 {
                            panic!("handler bug {n}");
                        }
                    }
                },
            )
            .on_event("ok", move |Payload(n): Payload<u32>| {
                let tx = tx.clone();
                async move {
                    tx.send(n).ok();
                }
            })
            .start()
            .await
            .expect("start");
        let client = ClientProxy::new(options);
        client.emit("fails", &1).await.expect("emit");
        client.emit("panics", &2).await.expect("emit");
        client.emit("ok", &3).await.expect("emit");
        assert_eq!(
            recv(&mut rx).await,
            3,
            "the consumer survives failures and panics"
        );
        assert_eq!(
            h.wait_ready(&dlq, 2).await,
            2,
            "both end in the DLQ after one requeue"
        );
        let mut attempts = attempts.lock().unwrap().clone();
        attempts.sort();
        assert_eq!(
            attempts,
            [
                ("fails".to_owned(), false),
                ("fails".to_owned(), true),
                ("panics".to_owned(), false),
                ("panics".to_owned(), true),
            ],
            "each runs twice: first delivery, one requeue"
        );
        let dead = h.drain(&dlq).await;
        for dead in &dead {
            assert_eq!(dead.header("x-first-death-reason"), Some("rejected"));
        }
        service.shutdown().await.expect("shutdown");
        assert_eq!(h.ready(&queue).await, 0);
        client.close().await;
    }
);

both!(the_dead_letter_policy_skips_the_requeue, |h| {
    let (queue, dlq) = (h.queue("b-deadletter"), h.queue("b-deadletter-dlq"));
    let options = h
        .options_with_dlx(&queue, &dlq)
        .await
        .failure_policy(FailurePolicy::DeadLetter);
    let attempts = Arc::new(AtomicUsize::new(0));
    let counter = attempts.clone();
    let service = Microservice::new(options.clone())
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
    let client = ClientProxy::new(options);
    client.emit("fails", &()).await.expect("emit");
    assert_eq!(h.wait_ready(&dlq, 1).await, 1);
    service.shutdown().await.expect("shutdown");
    assert_eq!(attempts.load(Ordering::SeqCst), 1, "not requeued first");
    assert_eq!(h.ready(&queue).await, 0);
    client.close().await;
});
