//! Interoperability with a real NestJS 11 service (`interop/nestjs`, installed by
//! `scripts/test.sh`): events both ways, string and object patterns, every JSON kind, and both
//! sides acking what they consume.
// Test code: a failed expectation is a failed test.
#![allow(clippy::expect_used, clippy::panic)]

mod common;
mod nest;

use common::{Broker, options, recv, reporter, unique, uri};
use nest::NestApp;
use rmq_bus::context::Settlement;
use rmq_bus::{ClientProxy, Error, Microservice, Pattern, Payload, RmqOptions};
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// Data of every JSON kind. Top-level `null` is missing: NestJS's `emit` refuses it ("The invalid
/// data or message pattern (undefined/null)"). Numbers stay within what JavaScript keeps exact,
/// and no float is integral (JavaScript writes `3.0` as `3`).
fn payloads() -> Vec<Value> {
    vec![
        json!({
            "text": "zoë ✓ 日本語 🚀",
            "orders": [
                {"id": 1, "lines": [{"sku": "a", "qty": 2, "price": 9.99}], "note": null},
                {"id": 2, "lines": [], "meta": {"gift": true, "tags": ["x", "ÿ"], "rush": false}},
            ],
            "ints": [0, -1, 42, 9_007_199_254_740_991_i64, -9_007_199_254_740_991_i64],
            "floats": [1.5, -0.25, 1234.5678, 1e-7, 6.02e23],
            "none": null,
            "yes": true,
            "no": false,
            "empty": {},
            "emptyList": [],
            "escapes": "quote \" backslash \\ newline \n tab \t nul \u{0}",
        }),
        json!([1, "two", {"three": [3.5, null]}, null, false]),
        json!("zoë ✓ 日本語 🚀"),
        json!(""),
        json!(12345),
        json!(-2.5),
        json!(0),
        json!(true),
        json!(false),
        json!({}),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nestjs_emit_reaches_rmq_bus_handlers_intact() {
    let broker = Broker::connect().await;
    let (queue, nest_queue) = (unique("nest-to-rust"), unique("nest-own"));
    broker.forget_later(&queue);
    broker.forget_later(&nest_queue);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let service = Microservice::new(options(&queue))
        .on_event("nest_to_rust", reporter(tx.clone()))
        .on_event(
            // Nest writes this pattern as {"v":1,"cmd":"object_event"}: key order must not matter.
            Pattern::from(json!({"cmd": "object_event", "v": 1})),
            reporter(tx),
        )
        .start()
        .await
        .expect("start");
    let nest = NestApp::start(&nest_queue).await;

    for data in payloads() {
        nest.emit(&queue, json!("nest_to_rust"), &data).await;
        let seen = recv(&mut rx).await;
        assert_eq!(
            seen.data, data,
            "payload changed between NestJS and rmq-bus"
        );
        assert_eq!(seen.pattern, "nest_to_rust");
        assert_eq!(seen.settlement, Some(Settlement::Ack));
        assert_eq!(seen.content_type, None, "NestJS sets no content type");
        assert_eq!(
            seen.delivery_mode,
            Some(1),
            "NestJS emits transient by default"
        );
    }

    let data = json!({"order": [{"id": 7, "name": "zoë ✓ 日本語 🚀"}], "total": 12.75});
    nest.emit(&queue, json!({"v": 1, "cmd": "object_event"}), &data)
        .await;
    let seen = recv(&mut rx).await;
    assert_eq!(seen.data, data);
    assert_eq!(seen.pattern, r#"{"cmd":"object_event","v":1}"#);
    assert_eq!(seen.settlement, Some(Settlement::Ack));

    nest.shutdown().await;
    service.shutdown().await.expect("clean shutdown");
    // Closing the consumer's channel would have returned anything unacked to the queue.
    assert_eq!(broker.ready(&queue).await, 0, "rmq-bus must have acked");
    assert!(
        rx.try_recv().is_err(),
        "every event must be handled exactly once"
    );
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rmq_bus_emit_reaches_nestjs_handlers_intact() {
    let broker = Broker::connect().await;
    let queue = unique("rust-to-nest");
    broker.forget_later(&queue);
    let nest = NestApp::start(&queue).await;
    let client = ClientProxy::new(options(&queue));

    for data in payloads().into_iter().chain([Value::Null]) {
        client
            .emit("rust_to_nest", &data)
            .await
            .expect("emit confirmed");
        let event = nest.next_event().await;
        assert_eq!(event["event"], "received", "{event}");
        assert_eq!(event["pattern"], "rust_to_nest", "{event}");
        assert_eq!(
            event["data"], data,
            "payload changed between rmq-bus and NestJS"
        );
        assert_eq!(event["properties"]["contentType"], "application/json");
        assert_eq!(event["properties"]["deliveryMode"], 2, "persistent");
        assert_eq!(event["properties"]["redelivered"], false);
    }

    let data = json!({"nested": {"list": [{"a": null}, {"b": [true, 1.25]}]}});
    client
        .emit(Pattern::from(json!({"v": 1, "cmd": "object_event"})), &data)
        .await
        .expect("emit confirmed");
    let event = nest.next_event().await;
    assert_eq!(event["event"], "received", "{event}");
    assert_eq!(event["pattern"], json!({"cmd": "object_event", "v": 1}));
    assert_eq!(event["data"], data);

    // An event no Nest handler knows is nacked without requeue by Nest: nothing is printed.
    client
        .emit("nobody_listens", &json!(1))
        .await
        .expect("emit confirmed");
    client
        .emit("rust_to_nest", &json!("after"))
        .await
        .expect("emit confirmed");
    let event = nest.next_event().await;
    assert_eq!(event["data"], "after", "{event}");

    client.close().await;
    // Stopping Nest closes its channel, which would return anything it left unacked.
    nest.shutdown().await;
    assert_eq!(broker.ready(&queue).await, 0, "NestJS must have acked");
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_queue_declarations_agree_with_nestjs() {
    let broker = Broker::connect().await;
    let (nest_first, rust_first) = (unique("decl-nest-first"), unique("decl-rust-first"));
    broker.forget_later(&nest_first);
    broker.forget_later(&rust_first);
    let plain = |queue: &str| RmqOptions::new(queue).uri(uri());

    // Nest's server declares its queue first ({durable: true}); rmq-bus's defaults must match.
    let nest = NestApp::start_with(&nest_first, None).await;
    let client = ClientProxy::new(plain(&nest_first));
    client.connect().await.expect("same declaration as NestJS");
    client
        .emit("rust_to_nest", &json!("hi"))
        .await
        .expect("emit");
    assert_eq!(nest.next_event().await["data"], "hi");

    // rmq-bus declares first; Nest's client declares the same queue before emitting.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let service = Microservice::new(plain(&rust_first))
        .on_event("nest_to_rust", reporter(tx))
        .start()
        .await
        .expect("start");
    nest.emit(&rust_first, json!("nest_to_rust"), &json!("hello"))
        .await;
    assert_eq!(recv(&mut rx).await.data, "hello");

    client.close().await;
    nest.shutdown().await;
    service.shutdown().await.expect("clean shutdown");
    assert_eq!(broker.ready(&nest_first).await, 0);
    assert_eq!(broker.ready(&rust_first).await, 0);
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nestjs_send_gets_rmq_bus_replies_values_errors_and_no_handler() {
    let broker = Broker::connect().await;
    let (rust_queue, nest_queue) = (unique("nest-send"), unique("nest-send-own"));
    broker.forget_later(&rust_queue);
    broker.forget_later(&nest_queue);
    let service = Microservice::new(options(&rust_queue))
        .on_message("get_order", |Payload(query): Payload<Value>| async move {
            match query["orderId"].as_str() {
                Some(id) => {
                    Ok(json!({"orderId": id, "buyer": "zoë ✓ 日本語", "lines": [{"qty": 2}]}))
                }
                None => Err(rmq_bus::RpcError::new("order not found")),
            }
        })
        .on_message(
            Pattern::from(json!({"cmd": "sum"})),
            |Payload(n): Payload<Vec<f64>>| async move {
                Ok::<_, rmq_bus::RpcError>(n.iter().sum::<f64>())
            },
        )
        .on_message("object_error", || async {
            Err::<(), _>(rmq_bus::RpcError::object(
                json!({"code": 42, "reason": "nope"}),
            ))
        })
        .start()
        .await
        .expect("start");
    let nest = NestApp::start(&nest_queue).await;

    let reply = nest
        .send(
            &rust_queue,
            json!("get_order"),
            &json!({"orderId": "o-1"}),
            5000,
        )
        .await;
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(
        reply["response"],
        json!({"orderId": "o-1", "buyer": "zoë ✓ 日本語", "lines": [{"qty": 2}]})
    );

    let reply = nest
        .send(
            &rust_queue,
            json!({"cmd": "sum"}),
            &json!([1.5, 2.25]),
            5000,
        )
        .await;
    assert_eq!(reply["response"], json!(3.75), "{reply}");

    let reply = nest
        .send(&rust_queue, json!("get_order"), &json!({}), 5000)
        .await;
    assert_eq!(reply["ok"], false, "{reply}");
    assert_eq!(
        reply["error"],
        json!({"status": "error", "message": "order not found"})
    );

    let reply = nest
        .send(&rust_queue, json!("object_error"), &json!({}), 5000)
        .await;
    assert_eq!(
        reply["error"],
        json!({"code": 42, "reason": "nope"}),
        "{reply}"
    );

    let reply = nest
        .send(&rust_queue, json!("no_such_pattern"), &json!({}), 5000)
        .await;
    assert_eq!(reply["ok"], false, "{reply}");
    assert_eq!(
        reply["error"],
        "There is no matching message handler defined in the remote service."
    );

    nest.shutdown().await;
    service.shutdown().await.expect("shutdown");
    assert_eq!(
        broker.ready(&rust_queue).await,
        0,
        "every request was settled"
    );
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rmq_bus_send_gets_nestjs_replies_values_and_errors() {
    let broker = Broker::connect().await;
    let queue = unique("rust-send");
    broker.forget_later(&queue);
    let nest = NestApp::start(&queue).await;
    let client = ClientProxy::new(options(&queue));

    let sum: f64 = client.send("sum", &[1, 2, 3]).await.expect("sum");
    assert_eq!(sum, 6.0);
    let data = json!({"text": "zoë ✓ 日本語 🚀", "nested": [{"a": null}, {"b": [true, 1.25]}]});
    let echoed: Value = client
        .send(Pattern::from(json!({"cmd": "echo"})), &data)
        .await
        .expect("echo");
    assert_eq!(echoed, data);
    let expectations = [
        ("fail_text", json!({"status": "error", "message": "boom"})),
        ("fail_object", json!({"code": 42, "reason": "nope"})),
        (
            "fail_plain",
            json!({"status": "error", "message": "Internal server error"}),
        ),
    ];
    for (pattern, expected) in expectations {
        match client.send::<_, Value>(pattern, &json!({})).await {
            Err(Error::Remote { error, .. }) => assert_eq!(error.payload(), &expected, "{pattern}"),
            other => panic!("{pattern}: expected Remote, got {other:?}"),
        }
    }
    match client.send::<_, Value>("no_such_pattern", &json!({})).await {
        Err(Error::NoHandler { pattern }) => assert_eq!(pattern, "no_such_pattern"),
        other => panic!("expected NoHandler, got {other:?}"),
    }
    client.close().await;
    nest.shutdown().await;
    assert_eq!(broker.ready(&queue).await, 0, "NestJS acked every request");
    broker.cleanup().await;
}
