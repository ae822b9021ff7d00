//! Request/reply: values, remote errors in NestJS's shapes, unknown patterns, timeouts, late
//! replies and many concurrent requests over one client.

use std::time::Duration;

use rmq_bus::microservice::RunningMicroservice;
use rmq_bus::{ClientProxy, Error, Microservice, Payload, RmqContext, RpcError};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::behaviour::harness::Harness;
use crate::both;

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Order {
    id: String,
    total: f64,
}

async fn service(h: &Harness, queue: &str) -> RunningMicroservice {
    Microservice::new(h.options(queue))
        .on_message("sum", |Payload(numbers): Payload<Vec<f64>>| async move {
            Ok::<_, RpcError>(numbers.iter().sum::<f64>())
        })
        .on_message("get_order", |Payload(query): Payload<Value>| async move {
            match query["orderId"].as_str() {
                Some("o-1") => Ok(Order {
                    id: "o-1".into(),
                    total: 9.5,
                }),
                _ => Err(RpcError::new("order not found")),
            }
        })
        .on_message("object_error", || async {
            Err::<(), _>(RpcError::object(json!({"code": 42, "reason": "nope"})))
        })
        .on_message("internal", || async {
            Err::<(), _>(Error::Config("database password is hunter2".into()))
        })
        .on_message("slow", |Payload(ms): Payload<u64>| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await; // the work
            Ok::<_, RpcError>(ms)
        })
        .on_message("nothing", || async { Ok::<_, RpcError>(()) })
        .on_message("panics", |Payload(n): Payload<u32>| async move {
            if n > 0 {
                panic!("bug");
            }
            Ok::<_, RpcError>(())
        })
        .on_event("an_event", |ctx: RmqContext| async move { ctx.ack().await })
        .start()
        .await
        .expect("start")
}

both!(values_and_errors_come_back_in_nestjs_shapes, |h| {
    let queue = h.queue("b-rpc");
    let running = service(&h, &queue).await;
    let client = ClientProxy::new(h.options(&queue));

    let total: f64 = client.send("sum", &[1.5, 2.5, 3.0]).await.expect("sum");
    assert_eq!(total, 7.0);
    let order: Order = client
        .send("get_order", &json!({"orderId": "o-1"}))
        .await
        .expect("order");
    assert_eq!(
        order,
        Order {
            id: "o-1".into(),
            total: 9.5
        }
    );

    match client
        .send::<_, Order>("get_order", &json!({"orderId": "nope"}))
        .await
    {
        Err(Error::Remote { pattern, error }) => {
            assert_eq!(pattern, "get_order");
            assert_eq!(error.message(), Some("order not found"));
            assert_eq!(
                error.payload(),
                &json!({"status": "error", "message": "order not found"})
            );
        }
        other => panic!("expected Remote, got {other:?}"),
    }
    match client.send::<_, ()>("object_error", &()).await {
        Err(Error::Remote { error, .. }) => {
            assert_eq!(error.payload(), &json!({"code": 42, "reason": "nope"}))
        }
        other => panic!("expected Remote, got {other:?}"),
    }
    match client.send::<_, ()>("internal", &()).await {
        Err(Error::Remote { error, .. }) => {
            assert_eq!(
                error.payload(),
                &json!({"status": "error", "message": "Internal server error"}),
                "the internal error's text stays inside"
            )
        }
        other => panic!("expected Remote, got {other:?}"),
    }
    match client.send::<_, ()>("panics", &1).await {
        Err(Error::Remote { error, .. }) => {
            assert_eq!(error.message(), Some("Internal server error"))
        }
        other => panic!("expected Remote, got {other:?}"),
    }
    let nothing: () = client.send("nothing", &()).await.expect("unit reply");
    let to_event: Option<Value> = client
        .send("an_event", &())
        .await
        .expect("event handlers answer nothing");
    assert_eq!((nothing, to_event), ((), None));

    match client.send::<_, Value>("no_such_pattern", &()).await {
        Err(error @ Error::NoHandler { .. }) => {
            assert!(error.to_string().contains("no_such_pattern"), "{error}")
        }
        other => panic!("expected NoHandler, got {other:?}"),
    }
    match client.send::<_, String>("sum", &[1.0]).await {
        Err(Error::BadReply { .. }) => {}
        other => panic!("expected BadReply, got {other:?}"),
    }
    match client.send::<_, f64>("sum", &"not numbers").await {
        Err(Error::Remote { error, .. }) => {
            assert!(
                error.message().is_some_and(|m| m.contains("Vec")),
                "{error}"
            )
        }
        other => panic!("expected a bad-input error reply, got {other:?}"),
    }

    running.shutdown().await.expect("shutdown");
    assert_eq!(h.ready(&queue).await, 0, "every request was settled");
    client.close().await;
});

both!(timeouts_and_late_replies_are_safe, |h| {
    let queue = h.queue("b-rpc-timeout");
    let running = service(&h, &queue).await;
    let client = ClientProxy::new(h.options(&queue));
    match client
        .send_timeout::<_, u64>("slow", &600, Duration::from_millis(100))
        .await
    {
        Err(Error::RequestTimeout { pattern, timeout }) => {
            assert_eq!(
                (pattern.as_str(), timeout),
                ("slow", Duration::from_millis(100))
            )
        }
        other => panic!("expected RequestTimeout, got {other:?}"),
    }
    // The late reply to the first request arrives while this one waits; it must not be taken for it.
    let second: u64 = client.send("slow", &800).await.expect("second request");
    assert_eq!(second, 800);
    running.shutdown().await.expect("shutdown");

    // Nobody consumes: the request waits in the queue and the caller times out.
    let idle = h.queue("b-rpc-idle");
    let lonely = ClientProxy::new(h.options(&idle));
    let result = lonely
        .send_timeout::<_, Value>("sum", &[1], Duration::from_millis(300))
        .await;
    assert!(
        matches!(result, Err(Error::RequestTimeout { .. })),
        "{result:?}"
    );
    assert_eq!(h.ready(&idle).await, 1, "the request is still waiting");
    lonely.close().await;
    client.close().await;
});

both!(many_concurrent_requests_share_one_client, |h| {
    let queue = h.queue("b-rpc-many");
    let running = service(&h, &queue).await;
    let client = ClientProxy::new(h.options(&queue));
    let requests = (0..200).map(|i| {
        let client = client.clone();
        async move { client.send::<_, f64>("sum", &[f64::from(i), 0.5]).await }
    });
    let totals = futures::future::join_all(requests).await;
    for (i, total) in totals.into_iter().enumerate() {
        assert_eq!(
            total.expect("reply"),
            i as f64 + 0.5,
            "reply {i} matched to its request"
        );
    }
    running.shutdown().await.expect("shutdown");
    assert_eq!(h.ready(&queue).await, 0);
    client.close().await;
});
