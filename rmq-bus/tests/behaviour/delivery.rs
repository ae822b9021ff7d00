//! Delivery: a round trip, the packet on the wire, properties and correlation, concurrency,
//! client errors and reconnection.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rmq_bus::context::Settlement;
use rmq_bus::{ClientProxy, Error, Microservice, Payload, RmqContext};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::both;
use crate::common::{self, recv};

both!(emit_reaches_the_handler_and_ack_removes_it, |h| {
    let queue = h.queue("b-roundtrip");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let service = Microservice::new(h.options(&queue))
        .on_event(
            "order_created",
            move |Payload(data): Payload<Value>, ctx: RmqContext| {
                let tx = tx.clone();
                async move {
                    let before = ctx.settlement();
                    ctx.ack().await?;
                    tx.send((
                        data,
                        ctx.pattern().to_owned(),
                        ctx.delivery().clone(),
                        (before, ctx.settlement()),
                    ))
                    .ok();
                    Ok::<_, Error>(())
                }
            },
        )
        .start()
        .await
        .expect("start");
    let client = ClientProxy::new(h.options(&queue));
    let data = json!({"orderPayload": {"orderId": "o-1", "price": 12.5, "buyer": "zoë ✓"}});
    client
        .emit("order_created", &data)
        .await
        .expect("emit confirmed");
    let (received, pattern, delivery, settled) = recv(&mut rx).await;
    assert_eq!(received, data);
    assert_eq!(pattern, "order_created");
    assert_eq!(
        (
            delivery.queue.as_str(),
            delivery.exchange.as_str(),
            delivery.routing_key.as_str(),
            delivery.redelivered
        ),
        (queue.as_str(), "", queue.as_str(), false)
    );
    assert_eq!(
        delivery.properties.delivery_mode,
        Some(2),
        "persistent by default"
    );
    assert_eq!(settled, (None, Some(Settlement::Ack)));
    service.shutdown().await.expect("clean shutdown");
    assert_eq!(h.ready(&queue).await, 0, "the acked message is gone");
    client.close().await;
});

both!(emit_writes_the_nestjs_packet_persistently, |h| {
    let queue = h.queue("b-wire");
    let client = ClientProxy::new(h.options(&queue));
    client
        .emit("order_created", &json!({"orderPayload": {"a": 1}}))
        .await
        .expect("emit");
    assert_eq!(h.wait_ready(&queue, 1).await, 1);
    let messages = h.drain(&queue).await;
    assert_eq!(
        messages[0].text(),
        r#"{"pattern":"order_created","data":{"orderPayload":{"a":1}}}"#
    );
    assert_eq!(messages[0].delivery_mode, Some(2));
    assert_eq!(
        messages[0].content_type.as_deref(),
        Some("application/json")
    );
    assert!(
        messages[0].correlation_id.is_some(),
        "every message carries a correlation id"
    );
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
    assert_eq!(h.ready(&queue).await, 0);
    client.close().await;
});

both!(emits_inside_a_handler_carry_the_correlation_forward, |h| {
    let (first, second) = (h.queue("b-corr-a"), h.queue("b-corr-b"));
    h.declare(&first).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (hop_tx, landed_tx) = (tx.clone(), tx);
    let forward = ClientProxy::new(h.options(&second));
    let hop = Microservice::new(h.options(&first))
        .on_event("hop", move |ctx: RmqContext| {
            let (forward, tx) = (forward.clone(), hop_tx.clone());
            async move {
                tx.send(("hop", ctx.properties().clone())).ok();
                forward.emit("landed", &()).await?;
                ctx.ack().await
            }
        })
        .queue(h.options(&second))
        .on_event("landed", move |ctx: RmqContext| {
            let tx = landed_tx.clone();
            async move {
                tx.send(("landed", ctx.properties().clone())).ok();
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
        &[("traceparent", parent), ("tenant", "acme")],
    )
    .await;
    let (name, incoming) = recv(&mut rx).await;
    assert_eq!(name, "hop");
    assert_eq!(incoming.correlation_id.as_deref(), Some("conv-7"));
    assert_eq!(incoming.headers.get("tenant"), Some(&json!("acme")));
    assert_eq!(incoming.headers.get("traceparent"), Some(&json!(parent)));
    let (name, seen) = recv(&mut rx).await;
    assert_eq!(name, "landed");
    assert_eq!(seen.correlation_id.as_deref(), Some("conv-7"));
    let traceparent = seen
        .headers
        .get("traceparent")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    assert!(
        traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && traceparent != parent,
        "same trace, new parent: {traceparent}"
    );
    hop.shutdown().await.expect("shutdown");
    assert_eq!(h.ready(&first).await + h.ready(&second).await, 0);
});

both!(client_errors_say_what_happened, |h| {
    // No queue by that name (and none declared): the broker returns the message.
    let missing = common::unique("b-missing");
    let unroutable = ClientProxy::new(h.options(&missing).no_assert(true));
    match unroutable.emit("x", &1).await {
        Err(Error::Unroutable {
            exchange,
            routing_key,
        }) => {
            assert_eq!((exchange.as_str(), routing_key), ("", missing.clone()))
        }
        other => panic!("expected Unroutable, got {other:?}"),
    }
    unroutable.close().await;
    assert!(!h.exists(&missing).await, "no_assert declared nothing");

    let queue = h.queue("b-big");
    let big = ClientProxy::new(h.options(&queue).max_message_bytes(10));
    assert!(matches!(
        big.emit("x", &"0123456789").await,
        Err(Error::TooLarge { max: 10, .. })
    ));
    big.close().await;
    assert_eq!(h.ready(&queue).await, 0, "refused before publishing");

    // A queue that must already exist and does not.
    let absent = common::unique("b-absent");
    let started = Microservice::new(h.options(&absent).no_assert(true))
        .on_event("x", || async {})
        .start()
        .await;
    match started {
        Err(error @ Error::Consume { .. }) => {
            let text = error.to_string();
            assert!(
                text.contains(&absent) && text.contains("must already exist"),
                "{text}"
            );
        }
        other => panic!("expected Consume, got {other:?}"),
    }
});

both!(duplicate_patterns_are_refused_at_start, |h| {
    let queue = h.queue("b-dup");
    let result = Microservice::new(h.options(&queue))
        .on_event("a", || async {})
        .on_event("a", || async {})
        .start()
        .await;
    assert!(
        matches!(result, Err(Error::DuplicatePattern(ref p)) if p == "a"),
        "{result:?}"
    );
});

both!(the_client_reconnects_after_close, |h| {
    let queue = h.queue("b-reconnect");
    let client = ClientProxy::new(h.options(&queue));
    client.emit("a", &1).await.expect("first emit");
    client.close().await;
    client
        .emit("a", &2)
        .await
        .expect("emit after close opens a new connection");
    assert_eq!(h.wait_ready(&queue, 2).await, 2);
    client.close().await;
});
