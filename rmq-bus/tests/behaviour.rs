//! The behaviour suite, run twice: against RabbitMQ and against the in-memory transport
//! (`rmq_bus::testing`). Where the two could differ, RabbitMQ is the reference.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod common;

use common::recv;
mod behaviour {
    pub mod harness;
}

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rmq_bus::config::{Exchange, RetryPolicy};
use rmq_bus::context::Settlement;
use rmq_bus::{ClientProxy, Error, Microservice, Payload, RmqContext, RpcError};
use serde_json::{Value, json};
use tokio::sync::mpsc;

both!(emit_reaches_the_handler_and_ack_removes_it, |h| {
    let queue = h.queue("b-roundtrip");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let service = Microservice::new(h.options(&queue))
        .on_event(
            "order_created",
            move |Payload(data): Payload<Value>, ctx: RmqContext| {
                let tx = tx.clone();
                async move {
                    ctx.ack().await?;
                    tx.send((data, ctx.delivery().clone())).ok();
                    Ok::<_, Error>(())
                }
            },
        )
        .start()
        .await
        .expect("start");
    let client = ClientProxy::new(h.options(&queue));
    let data = json!({"orderPayload": {"id": "o-1", "buyer": "zoë ✓"}});
    client.emit("order_created", &data).await.expect("emit");
    let (received, delivery) = recv(&mut rx).await;
    assert_eq!(received, data);
    assert_eq!(
        (
            delivery.queue.as_str(),
            delivery.routing_key.as_str(),
            delivery.redelivered
        ),
        (queue.as_str(), queue.as_str(), false)
    );
    assert_eq!(delivery.properties.delivery_mode, Some(2));
    service.shutdown().await.expect("shutdown");
    assert_eq!(h.wait_ready(&queue, 0).await, 0);
    client.close().await;
});

both!(nack_with_requeue_redelivers_with_the_flag, |h| {
    let queue = h.queue("b-nack");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let service = Microservice::new(h.options(&queue))
        .on_event("job", move |ctx: RmqContext| {
            let tx = tx.clone();
            async move {
                let redelivered = ctx.redelivered();
                tx.send(redelivered).ok();
                if redelivered {
                    ctx.ack().await
                } else {
                    ctx.nack(true).await
                }
            }
        })
        .start()
        .await
        .expect("start");
    let client = ClientProxy::new(h.options(&queue));
    client.emit("job", &1).await.expect("emit");
    assert_eq!((recv(&mut rx).await, recv(&mut rx).await), (false, true));
    service.shutdown().await.expect("shutdown");
    client.close().await;
});

both!(reject_dead_letters_through_the_queues_dlx, |h| {
    let (queue, dlq) = (h.queue("b-reject"), h.queue("b-reject-dlq"));
    let options = h.options_with_dlx(&queue, &dlq).await;
    let service = Microservice::new(options.clone())
        .on_event("job", |ctx: RmqContext| async move { ctx.reject().await })
        .start()
        .await
        .expect("start");
    let client = ClientProxy::new(options);
    client.emit("job", &json!({"n": 7})).await.expect("emit");
    assert_eq!(h.wait_ready(&dlq, 1).await, 1);
    let dead = h.drain(&dlq, "x-first-death-reason").await;
    assert_eq!(
        String::from_utf8_lossy(&dead[0].0),
        r#"{"pattern":"job","data":{"n":7}}"#
    );
    assert_eq!(dead[0].1.as_deref(), Some("rejected"));
    service.shutdown().await.expect("shutdown");
    client.close().await;
});

both!(handlers_run_concurrently_within_the_prefetch_window, |h| {
    const N: usize = 6;
    let queue = h.queue("b-concurrent");
    let barrier = Arc::new(tokio::sync::Barrier::new(N));
    let done = Arc::new(AtomicUsize::new(0));
    let (gate, finished) = (barrier.clone(), done.clone());
    let service = Microservice::new(h.options(&queue).prefetch(N as u16))
        .on_event("slow", move |ctx: RmqContext| {
            let (gate, finished) = (gate.clone(), finished.clone());
            async move {
                // One at a time, the barrier would never open.
                gate.wait().await;
                finished.fetch_add(1, Ordering::SeqCst);
                ctx.ack().await
            }
        })
        .start()
        .await
        .expect("start");
    let client = ClientProxy::new(h.options(&queue));
    for i in 0..N {
        client.emit("slow", &i).await.expect("emit");
    }
    common::eventually("all handlers met at the barrier", || {
        done.load(Ordering::SeqCst) == N
    })
    .await;
    service.shutdown().await.expect("shutdown");
    client.close().await;
});

both!(
    bad_input_is_dead_lettered_with_its_reason_and_the_consumer_serves_on,
    |h| {
        let (queue, dlq) = (h.queue("b-bad"), h.queue("b-bad-dlq"));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let service = Microservice::new(
            h.options(&queue)
                .prefetch(1)
                .max_message_bytes(512)
                .dead_letter_queue(&dlq),
        )
        .on_event(
            "order_created",
            move |Payload(n): Payload<u32>, ctx: RmqContext| {
                let tx = tx.clone();
                async move {
                    tx.send(n).ok();
                    ctx.ack().await
                }
            },
        )
        .start()
        .await
        .expect("start");
        let big = format!(
            r#"{{"pattern":"order_created","data":"{}"}}"#,
            "x".repeat(600)
        );
        let bad: Vec<(&[u8], &str)> = vec![
            (b"not json", "not a JSON packet"),
            (b"[1,2,3]", "not a JSON packet"),
            (br#"{"data":1}"#, "no \"pattern\""),
            (br#"{"pattern":"nope","data":1}"#, "no handler for pattern"),
            (
                br#"{"pattern":"order_created","data":"one"}"#,
                "invalid type",
            ),
            (big.as_bytes(), "exceeds max_message_bytes"),
        ];
        for (body, _) in &bad {
            h.publish(&queue, body, None, &[]).await;
        }
        h.publish(
            &queue,
            br#"{"pattern":"order_created","data":5}"#,
            None,
            &[],
        )
        .await;
        assert_eq!(recv(&mut rx).await, 5);
        assert_eq!(h.wait_ready(&dlq, bad.len() as u32).await, bad.len() as u32);
        let dead = h.drain(&dlq, "x-rmq-bus-error").await;
        for ((body, reason), (dead_body, error)) in bad.iter().zip(&dead) {
            assert_eq!(dead_body.as_slice(), *body);
            assert!(
                error.as_deref().unwrap_or("").contains(reason),
                "{error:?} should mention {reason}"
            );
        }
        service.shutdown().await.expect("shutdown");
    }
);

both!(failing_handlers_are_requeued_once_then_dead_lettered, |h| {
    let (queue, dlq) = (h.queue("b-fail"), h.queue("b-fail-dlq"));
    let options = h.options_with_dlx(&queue, &dlq).await;
    let attempts = Arc::new(AtomicUsize::new(0));
    let counter = attempts.clone();
    let service = Microservice::new(options.clone())
        .on_event("fails", move || {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>("cannot")
            }
        })
        .start()
        .await
        .expect("start");
    let client = ClientProxy::new(options);
    client.emit("fails", &()).await.expect("emit");
    assert_eq!(h.wait_ready(&dlq, 1).await, 1);
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    service.shutdown().await.expect("shutdown");
    client.close().await;
});

both!(
    delayed_retries_end_in_the_dead_letter_queue_with_headers,
    |h| {
        let (queue, dlq) = (h.queue("b-retry"), h.queue("b-retry-dlq"));
        let delay_queue = format!("{queue}.retry.50ms");
        if let behaviour::harness::Harness::Rabbit(broker) = &h {
            broker.forget_later(&delay_queue);
        }
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = calls.clone();
        let service = Microservice::new(h.options(&queue).dead_letter_queue(&dlq).retry(
            RetryPolicy::exponential(3, Duration::from_millis(50), Duration::from_millis(50)),
        ))
        .on_event("doomed", move || {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>("provider down")
            }
        })
        .start()
        .await
        .expect("start");
        let client = ClientProxy::new(h.options(&queue));
        client.emit("doomed", &1).await.expect("emit");
        assert_eq!(h.wait_ready(&dlq, 1).await, 1);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        let attempts = h.drain(&dlq, "x-rmq-bus-attempts").await;
        assert_eq!(attempts[0].1.as_deref(), Some("3"));
        service.shutdown().await.expect("shutdown");
        client.close().await;
    }
);

both!(
    request_reply_answers_values_errors_and_unknown_patterns,
    |h| {
        let queue = h.queue("b-rpc");
        let service = Microservice::new(h.options(&queue))
            .on_message("sum", |Payload(n): Payload<Vec<i64>>| async move {
                Ok::<_, RpcError>(n.iter().sum::<i64>())
            })
            .on_message("fail", || async { Err::<(), _>(RpcError::new("boom")) })
            .on_message("slow", || async {
                tokio::time::sleep(Duration::from_millis(500)).await;
                Ok::<_, RpcError>(1)
            })
            .start()
            .await
            .expect("start");
        let client = ClientProxy::new(h.options(&queue));
        let sum: i64 = client.send("sum", &[1, 2, 3]).await.expect("sum");
        assert_eq!(sum, 6);
        match client.send::<_, ()>("fail", &()).await {
            Err(Error::Remote { error, .. }) => {
                assert_eq!(error.message(), Some("boom"))
            }
            other => panic!("expected Remote, got {other:?}"),
        }
        assert!(matches!(
            client.send::<_, ()>("nope", &()).await,
            Err(Error::NoHandler { .. })
        ));
        let late = client
            .send_timeout::<_, i64>("slow", &(), Duration::from_millis(100))
            .await;
        assert!(
            matches!(late, Err(Error::RequestTimeout { .. })),
            "{late:?}"
        );
        let concurrent = futures::future::join_all((0..50).map(|i| {
            let client = client.clone();
            async move { client.send::<_, i64>("sum", &[i, 1]).await }
        }))
        .await;
        for (i, total) in concurrent.into_iter().enumerate() {
            assert_eq!(total.expect("reply"), i as i64 + 1);
        }
        service.shutdown().await.expect("shutdown");
        client.close().await;
    }
);

both!(topic_and_fanout_exchanges_route_by_pattern, |h| {
    let (exchange, fanout) = (common::unique("b-topic-x"), common::unique("b-fanout-x"));
    if let behaviour::harness::Harness::Rabbit(broker) = &h {
        broker.forget_exchange_later(&exchange);
        broker.forget_exchange_later(&fanout);
    }
    let (queue, sub_a, sub_b) = (h.queue("b-topic"), h.queue("b-sub-a"), h.queue("b-sub-b"));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let report = |tx: mpsc::UnboundedSender<(String, String)>| {
        move |ctx: RmqContext| {
            let tx = tx.clone();
            async move {
                tx.send((ctx.delivery().queue.clone(), ctx.pattern().to_owned()))
                    .ok();
                ctx.ack().await
            }
        }
    };
    let topic = Microservice::new(h.options(&queue).exchange(Exchange::topic(&exchange)))
        .on_event("order.*", report(tx.clone()))
        .on_event("audit.#", report(tx.clone()))
        .queue(h.options(&sub_a).exchange(Exchange::fanout(&fanout)))
        .start()
        .await
        .expect("start");
    let other = Microservice::new(h.options(&sub_b).exchange(Exchange::fanout(&fanout)))
        .on_event("price", report(tx.clone()))
        .on_event("order.*", report(tx.clone()))
        .on_event("audit.#", report(tx))
        .start()
        .await
        .expect("start");
    let client = ClientProxy::new(h.options(&queue).exchange(Exchange::topic(&exchange)));
    client.emit("order.created", &1).await.expect("emit");
    assert_eq!(
        recv(&mut rx).await,
        (queue.clone(), "order.created".to_owned())
    );
    client.emit("audit.a.b", &2).await.expect("emit");
    assert_eq!(recv(&mut rx).await, (queue.clone(), "audit.a.b".to_owned()));
    assert!(matches!(
        client.emit("nothing.bound.here", &3).await,
        Err(Error::Unroutable { .. })
    ));
    let publisher = ClientProxy::new(h.options("unused").exchange(Exchange::fanout(&fanout)));
    publisher
        .emit("order.created", &4)
        .await
        .expect("fanout emit");
    let mut copies = vec![recv(&mut rx).await.0, recv(&mut rx).await.0];
    copies.sort();
    let mut expected = vec![sub_a.clone(), sub_b.clone()];
    expected.sort();
    assert_eq!(copies, expected, "each subscribing queue gets its own copy");
    topic.shutdown().await.expect("shutdown");
    other.shutdown().await.expect("shutdown");
    client.close().await;
    publisher.close().await;
});

both!(emits_inside_a_handler_carry_the_correlation_forward, |h| {
    let (first, second) = (h.queue("b-corr-a"), h.queue("b-corr-b"));
    h.declare(&first).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let forward = ClientProxy::new(h.options(&second));
    let hop = Microservice::new(h.options(&first))
        .on_event("hop", move |ctx: RmqContext| {
            let forward = forward.clone();
            async move {
                forward.emit("landed", &()).await?;
                ctx.ack().await
            }
        })
        .queue(h.options(&second))
        .on_event("landed", move |ctx: RmqContext| {
            let tx = tx.clone();
            async move {
                tx.send(ctx.properties().clone()).ok();
                ctx.ack().await
            }
        })
        .start()
        .await
        .expect("start");
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    h.publish(
        &first,
        br#"{"pattern":"hop","data":null}"#,
        Some("conv-7"),
        &[("traceparent", parent)],
    )
    .await;
    let seen = recv(&mut rx).await;
    assert_eq!(seen.correlation_id.as_deref(), Some("conv-7"));
    let traceparent = seen
        .headers
        .get("traceparent")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    assert!(
        traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && traceparent != parent,
        "{traceparent}"
    );
    hop.shutdown().await.expect("shutdown");
});

both!(
    settling_twice_is_an_error_and_unsettled_success_is_acked,
    |h| {
        let queue = h.queue("b-twice");
        let (tx, mut rx) = mpsc::unbounded_channel();
        let service = Microservice::new(h.options(&queue))
            .on_event("twice", move |ctx: RmqContext| {
                let tx = tx.clone();
                async move {
                    let first = ctx.ack().await.is_ok();
                    let second = ctx.reject().await;
                    tx.send((
                        first,
                        matches!(
                            second,
                            Err(Error::AlreadySettled {
                                previous: Settlement::Ack
                            })
                        ),
                    ))
                    .ok();
                }
            })
            .on_event("forgets", || async {})
            .start()
            .await
            .expect("start");
        let client = ClientProxy::new(h.options(&queue));
        client.emit("twice", &()).await.expect("emit");
        assert_eq!(recv(&mut rx).await, (true, true));
        client.emit("forgets", &()).await.expect("emit");
        tokio::time::sleep(Duration::from_millis(200)).await;
        service.shutdown().await.expect("shutdown");
        assert_eq!(
            h.wait_ready(&queue, 0).await,
            0,
            "the forgotten message was acked, not returned"
        );
        client.close().await;
    }
);
