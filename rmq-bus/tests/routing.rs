//! Routing beyond the default exchange, object patterns, interceptors and correlation, against
//! the real broker.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod common;

use common::recv;

use std::sync::{Arc, Mutex};

use common::{Broker, options, options_with_dlq, unique};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use rmq_bus::handler::{HandlerError, HandlerResult, Next};
use rmq_bus::{ClientProxy, Microservice, Pattern, Payload, RmqContext, RpcError};
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// A handler that reports (pattern, data) and acks.
fn reporter(
    tx: mpsc::UnboundedSender<(String, Value)>,
) -> impl Fn(Payload<Value>, RmqContext) -> futures::future::BoxFuture<'static, rmq_bus::Result<()>>
+ Clone {
    move |Payload(data), ctx| {
        let tx = tx.clone();
        Box::pin(async move {
            tx.send((ctx.pattern().to_owned(), data)).ok();
            ctx.ack().await
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_patterns_match_whatever_the_key_order() {
    let broker = Broker::connect().await;
    let queue = unique("object");
    broker.forget_later(&queue);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let service = Microservice::new(options(&queue))
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
    let client = ClientProxy::new(options(&queue));
    let sum: i64 = client
        .send(Pattern::from(json!({"v": 1, "cmd": "sum"})), &[2, 3])
        .await
        .expect("send");
    assert_eq!((sum, recv(&mut rx).await), (5, 5));
    // A NestJS client writes the object as given; the server normalises it.
    broker
        .publish_with(
            &queue,
            br#"{"pattern":{"v":1,"cmd":"sum"},"data":[4],"id":"raw-1"}"#,
            BasicProperties::default(),
        )
        .await;
    assert_eq!(
        recv(&mut rx).await,
        4,
        "the raw request is routed to the same handler"
    );
    service.shutdown().await.expect("shutdown");
    assert_eq!(
        broker.ready(&queue).await,
        0,
        "and acked although it had no reply_to"
    );
    client.close().await;
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interceptors_wrap_handlers_in_order_and_can_refuse() {
    let broker = Broker::connect().await;
    let (queue, dlq) = (unique("intercept"), unique("intercept-dlq"));
    broker.declare(&dlq).await;
    broker.forget_later(&queue);
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (inner_log, outer_log) = (log.clone(), log.clone());
    let service = Microservice::new(options_with_dlq(&queue, &dlq))
        .on_event("guarded", reporter(tx.clone()))
        .intercept(move |next: Next| {
            let log = inner_log.clone();
            async move {
                let denied =
                    next.context().properties().headers.get("role") != Some(&json!("admin"));
                log.lock()
                    .expect("lock")
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
                log.lock().expect("lock").push("timing:before".into());
                let result: HandlerResult = next.run().await;
                log.lock()
                    .expect("lock")
                    .push(format!("timing:after ok={}", result.is_ok()));
                result
            }
        })
        .start()
        .await
        .expect("start");
    let mut admin = FieldTable::default();
    admin.insert("role".into(), AMQPValue::LongString("admin".into()));
    broker
        .publish_with(
            &queue,
            br#"{"pattern":"guarded","data":1}"#,
            BasicProperties::default().with_headers(admin),
        )
        .await;
    assert_eq!(recv(&mut rx).await, ("guarded".to_owned(), json!(1)));
    broker
        .publish_raw(&queue, br#"{"pattern":"guarded","data":2}"#)
        .await;
    assert_eq!(
        broker.wait_ready(&dlq, 1).await,
        1,
        "refused by the interceptor: dead-lettered"
    );
    broker
        .publish_raw(&queue, br#"{"pattern":"open","data":3}"#)
        .await;
    assert_eq!(
        recv(&mut rx).await,
        ("open".to_owned(), json!(3)),
        "the auth interceptor wraps only earlier routes"
    );
    service.shutdown().await.expect("shutdown");
    let log = log.lock().expect("lock").clone();
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
    broker.cleanup().await;
}
