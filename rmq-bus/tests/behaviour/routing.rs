//! Routing beyond the default exchange (topic and fanout), object patterns, and interceptors.

use std::sync::{Arc, Mutex};

use rmq_bus::config::Exchange;
use rmq_bus::handler::{HandlerError, HandlerResult, Next};
use rmq_bus::{ClientProxy, Error, Microservice, Pattern, Payload, RpcError};
use serde_json::json;
use tokio::sync::mpsc;

use crate::both;
use crate::common::{recv, reporter};

both!(topic_and_fanout_exchanges_route_by_pattern, |h| {
    let (exchange, fanout) = (h.exchange("b-topic-x"), h.exchange("b-fanout-x"));
    let (queue, sub_a, sub_b) = (h.queue("b-topic"), h.queue("b-sub-a"), h.queue("b-sub-b"));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let topic = Microservice::new(h.options(&queue).exchange(Exchange::topic(&exchange)))
        .on_event("order.*", reporter(tx.clone()))
        .on_event("audit.#", reporter(tx.clone()))
        .queue(h.options(&sub_a).exchange(Exchange::fanout(&fanout)))
        .start()
        .await
        .expect("start");
    let other = Microservice::new(h.options(&sub_b).exchange(Exchange::fanout(&fanout)))
        .on_event("price", reporter(tx.clone()))
        .on_event("order.*", reporter(tx.clone()))
        .on_event("audit.#", reporter(tx))
        .start()
        .await
        .expect("start");
    let client = ClientProxy::new(h.options(&queue).exchange(Exchange::topic(&exchange)));
    client.emit("order.created", &1).await.expect("emit");
    let seen = recv(&mut rx).await;
    assert_eq!(
        (seen.queue.as_str(), seen.pattern.as_str()),
        (queue.as_str(), "order.created"),
        "a wildcard handler sees the concrete key"
    );
    client.emit("audit.a.b", &2).await.expect("emit");
    let seen = recv(&mut rx).await;
    assert_eq!(
        (seen.queue.as_str(), seen.pattern.as_str()),
        (queue.as_str(), "audit.a.b")
    );
    assert!(matches!(
        client.emit("nothing.bound.here", &3).await,
        Err(Error::Unroutable { .. })
    ));
    let publisher = ClientProxy::new(h.options("unused").exchange(Exchange::fanout(&fanout)));
    publisher
        .emit("order.created", &4)
        .await
        .expect("fanout emit");
    let mut copies = vec![recv(&mut rx).await.queue, recv(&mut rx).await.queue];
    copies.sort();
    let mut expected = vec![sub_a.clone(), sub_b.clone()];
    expected.sort();
    assert_eq!(copies, expected, "each subscribing queue gets its own copy");
    topic.shutdown().await.expect("shutdown");
    other.shutdown().await.expect("shutdown");
    for queue in [&queue, &sub_a, &sub_b] {
        assert_eq!(h.ready(queue).await, 0);
    }
    client.close().await;
    publisher.close().await;
});

both!(object_patterns_match_whatever_the_key_order, |h| {
    let queue = h.queue("b-object");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let service = Microservice::new(h.options(&queue))
        .on_message(
            Pattern::from(json!({"cmd": "sum", "v": 1})),
            move |Payload(n): Payload<Vec<i64>>| {
                let tx = tx.clone();
                async move {
                    let sum = n.iter().sum::<i64>();
                    tx.send(sum).ok();
                    Ok::<_, RpcError>(sum)
                }
            },
        )
        .start()
        .await
        .expect("start");
    let client = ClientProxy::new(h.options(&queue));
    let sum: i64 = client
        .send(Pattern::from(json!({"v": 1, "cmd": "sum"})), &[2, 3])
        .await
        .expect("send");
    assert_eq!((sum, recv(&mut rx).await), (5, 5));
    // A NestJS client writes the object as given; the server normalises it.
    h.publish_raw(
        &queue,
        br#"{"pattern":{"v":1,"cmd":"sum"},"data":[4],"id":"raw-1"}"#,
    )
    .await;
    assert_eq!(
        recv(&mut rx).await,
        4,
        "the raw request is routed to the same handler"
    );
    service.shutdown().await.expect("shutdown");
    assert_eq!(
        h.ready(&queue).await,
        0,
        "and acked although it had no reply_to"
    );
    client.close().await;
});

both!(interceptors_wrap_handlers_in_order_and_can_refuse, |h| {
    let (queue, dlq) = (h.queue("b-intercept"), h.queue("b-intercept-dlq"));
    let options = h.options_with_dlx(&queue, &dlq).await;
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (inner_log, outer_log) = (log.clone(), log.clone());
    let service = Microservice::new(options)
        .on_event("guarded", reporter(tx.clone()))
        .intercept(move |next: Next| {
            let log = inner_log.clone();
            async move {
                let denied =
                    next.context().properties().headers.get("role") != Some(&json!("admin"));
                log.lock()
                    .unwrap()
                    .push(format!("auth:{}", next.context().pattern()));
                if denied {
                    return Err(HandlerError::BadInput("not an admin".into()));
                }
                next.run().await
            }
        })
        .on_event("open", reporter(tx))
        .intercept(move |next: Next| {
            let log = outer_log.clone();
            async move {
                log.lock().unwrap().push("timing:before".into());
                let result: HandlerResult = next.run().await;
                log.lock()
                    .unwrap()
                    .push(format!("timing:after ok={}", result.is_ok()));
                result
            }
        })
        .start()
        .await
        .expect("start");
    h.publish(
        &queue,
        br#"{"pattern":"guarded","data":1}"#,
        None,
        &[("role", "admin")],
    )
    .await;
    let seen = recv(&mut rx).await;
    assert_eq!((seen.pattern.as_str(), seen.data), ("guarded", json!(1)));
    h.publish_raw(&queue, br#"{"pattern":"guarded","data":2}"#)
        .await;
    assert_eq!(
        h.wait_ready(&dlq, 1).await,
        1,
        "refused by the interceptor: dead-lettered"
    );
    h.publish_raw(&queue, br#"{"pattern":"open","data":3}"#)
        .await;
    let seen = recv(&mut rx).await;
    assert_eq!(
        (seen.pattern.as_str(), seen.data),
        ("open", json!(3)),
        "the auth interceptor wraps only earlier routes"
    );
    service.shutdown().await.expect("shutdown");
    let log = log.lock().unwrap().clone();
    assert_eq!(
        log,
        [
            "timing:before",
            "auth:guarded",
            "timing:after ok=true",
            "timing:before",
            "auth:guarded",
            "timing:after ok=false",
            "timing:before",
            "timing:after ok=true",
        ]
    );
    assert_eq!(h.ready(&queue).await, 0);
});
