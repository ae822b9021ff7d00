//! Retries on the broker: delayed retries wait in TTL queues `<queue>.retry.<ms>ms` with
//! exponential backoff, free their prefetch slot while they wait, end in the dead-letter queue
//! with headers saying why, and work on quorum queues.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rmq_bus::config::RetryPolicy;
use rmq_bus::{ClientProxy, Microservice, Payload, RmqContext};
use serde_json::json;
use tokio::sync::mpsc;

use crate::behaviour::harness::Harness;
use crate::both;
use crate::common::{self, recv};

/// The delivery number of a message, from rmq-bus's attempt header (absent on the first).
fn attempt(ctx: &RmqContext) -> u32 {
    ctx.properties()
        .headers
        .get("x-rmq-bus-attempt")
        .and_then(|v| v.as_u64())
        .map_or(1, |n| n as u32)
}

/// How much later than its delay a retry may come before the test calls it wrong: far more than
/// a broker's TTL expiry takes, far less than a delay of the wrong unit.
const SLACK: Duration = Duration::from_millis(1000);

/// Checks that consecutive `times` are apart by at least `delays`, and not absurdly more.
fn assert_backoff(what: &str, times: &[Instant], delays: &[Duration]) {
    assert_eq!(times.len(), delays.len() + 1, "{what}: attempts");
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    for (gap, delay) in gaps.iter().zip(delays) {
        assert!(
            *gap >= *delay && *gap < *delay + SLACK,
            "{what}: attempts {gaps:?} apart, expected {delays:?} (+ less than {SLACK:?})"
        );
    }
}

both!(
    delayed_retries_back_off_on_the_broker_then_dead_letter,
    |h| {
        let (queue, dlq) = (h.queue("b-retry"), h.queue("b-retry-dlq"));
        let delay_queues = [
            format!("{queue}.retry.100ms"),
            format!("{queue}.retry.200ms"),
        ];
        for delay_queue in &delay_queues {
            h.forget(delay_queue);
        }
        // Every attempt, timestamped: (pattern, attempt, when).
        let attempts = Arc::new(Mutex::new(Vec::<(String, u32, Instant)>::new()));
        let (flaky, doomed) = (attempts.clone(), attempts.clone());
        // 4 attempts: the retries wait 100, 200 and 200 ms.
        let policy =
            RetryPolicy::exponential(4, Duration::from_millis(100), Duration::from_millis(200));
        let service = Microservice::new(h.options(&queue).dead_letter_queue(&dlq))
            .on_event("flaky", move |ctx: RmqContext| {
                let n = attempt(&ctx);
                flaky
                    .lock()
                    .unwrap()
                    .push(("flaky".into(), n, Instant::now()));
                async move {
                    if n < 3 {
                        return Err(format!("flaky failure {n}"));
                    }
                    ctx.ack().await.map_err(|e| e.to_string())
                }
            })
            .on_event("doomed", move |ctx: RmqContext| {
                doomed
                    .lock()
                    .unwrap()
                    .push(("doomed".into(), attempt(&ctx), Instant::now()));
                async { Err::<(), _>("the payment provider refused") }
            })
            .retry(policy)
            .start()
            .await
            .expect("start");
        let client = ClientProxy::new(h.options(&queue));
        client.emit("flaky", &json!({"n": 1})).await.expect("emit");
        client.emit("doomed", &json!({"n": 2})).await.expect("emit");

        assert_eq!(
            h.wait_ready(&dlq, 1).await,
            1,
            "the doomed message ends in the DLQ"
        );
        let dead = h.drain(&dlq).await;
        assert_eq!(dead[0].text(), r#"{"pattern":"doomed","data":{"n":2}}"#);
        assert_eq!(
            dead[0].header("x-rmq-bus-error"),
            Some("handler failed: the payment provider refused")
        );
        assert_eq!(dead[0].header("x-rmq-bus-pattern"), Some("doomed"));
        assert_eq!(dead[0].header("x-rmq-bus-queue"), Some(queue.as_str()));
        assert_eq!(dead[0].header("x-rmq-bus-attempts"), Some("4"));
        assert!(
            dead[0]
                .header("x-rmq-bus-failed-at")
                .is_some_and(|t| t.ends_with('Z')),
            "{dead:?}"
        );
        common::eventually("the flaky handler succeeded", || {
            attempts
                .lock()
                .unwrap()
                .iter()
                .any(|(p, n, _)| p == "flaky" && *n == 3)
        })
        .await;
        // Shutdown waits for the handlers and the acks; anything retried once more would then
        // sit in a delay queue or in the queue.
        service.shutdown().await.expect("shutdown");

        let attempts = attempts.lock().unwrap().clone();
        let of = |pattern: &str| -> (Vec<u32>, Vec<Instant>) {
            attempts
                .iter()
                .filter(|(p, _, _)| p == pattern)
                .map(|(_, n, at)| (*n, *at))
                .unzip()
        };
        let ms = Duration::from_millis;
        let (numbers, times) = of("doomed");
        assert_eq!(numbers, [1, 2, 3, 4], "tried 4 times in all");
        assert_backoff("doomed", &times, &[ms(100), ms(200), ms(200)]);
        let (numbers, times) = of("flaky");
        assert_eq!(numbers, [1, 2, 3], "handled on its third delivery, once");
        assert_backoff("flaky", &times, &[ms(100), ms(200)]);
        for delay_queue in &delay_queues {
            assert!(
                h.exists(delay_queue).await,
                "the retries waited on the broker, in {delay_queue}"
            );
            assert_eq!(h.ready(delay_queue).await, 0, "{delay_queue} is empty");
        }
        assert_eq!(h.ready(&queue).await, 0);
        client.close().await;
    }
);

both!(a_waiting_retry_frees_its_prefetch_slot, |h| {
    let queue = h.queue("b-slot");
    let delay_queue = format!("{queue}.retry.2000ms");
    h.forget(&delay_queue);
    let delay = Duration::from_secs(2);
    let (tx, mut rx) = mpsc::unbounded_channel();
    // Prefetch 1: while the first message held its slot, the second could not be delivered.
    let service = Microservice::new(
        h.options(&queue)
            .prefetch(1)
            .retry(RetryPolicy::exponential(2, delay, delay)),
    )
    .on_event("job", move |Payload(n): Payload<u32>, ctx: RmqContext| {
        let tx = tx.clone();
        let attempt = attempt(&ctx);
        tx.send((n, attempt, Instant::now())).ok();
        async move {
            if n == 1 && attempt == 1 {
                return Err("the first try fails".to_owned());
            }
            ctx.ack().await.map_err(|e| e.to_string())
        }
    })
    .start()
    .await
    .expect("start");
    let client = ClientProxy::new(h.options(&queue));
    client.emit("job", &1).await.expect("emit");
    client.emit("job", &2).await.expect("emit");
    let (n, attempt, failed_at) = recv(&mut rx).await;
    assert_eq!((n, attempt), (1, 1));
    let (n, attempt, second_at) = recv(&mut rx).await;
    assert_eq!(
        (n, attempt),
        (2, 1),
        "the second message is handled while the first waits"
    );
    assert!(
        second_at - failed_at < delay,
        "the second was handled {:?} after the first failed: not while it waited",
        second_at - failed_at
    );
    // The first waits on the broker, in the delay queue.
    assert_eq!(
        h.wait_ready(&delay_queue, 1).await,
        1,
        "the retry waits in {delay_queue}"
    );
    let (n, attempt, retried_at) = recv(&mut rx).await;
    assert_eq!((n, attempt), (1, 2), "then the first is handled again");
    assert!(
        retried_at - failed_at >= delay && retried_at - failed_at < delay + SLACK,
        "retried {:?} after it failed, expected {delay:?}",
        retried_at - failed_at
    );
    service.shutdown().await.expect("shutdown");
    assert_eq!(h.ready(&delay_queue).await, 0);
    assert_eq!(h.ready(&queue).await, 0);
    client.close().await;
});

both!(quorum_queues_take_delayed_retries, |h| {
    let queue = h.queue("b-quorum");
    h.forget(&format!("{queue}.retry.50ms"));
    let declaration = Harness::declaration().quorum();
    let quorum = h.options(&queue).queue_options(declaration.clone());
    let (tx, mut rx) = mpsc::unbounded_channel();
    let service = Microservice::new(quorum.clone().retry(RetryPolicy::exponential(
        2,
        Duration::from_millis(50),
        Duration::from_millis(50),
    )))
    .on_event("once_more", move |ctx: RmqContext| {
        let tx = tx.clone();
        let attempt = attempt(&ctx);
        tx.send(attempt).ok();
        async move {
            if attempt == 1 {
                Err("first delivery fails")
            } else {
                Ok(())
            }
        }
    })
    .start()
    .await
    .expect("a quorum queue on one node");
    h.assert_queue_type(&queue, &declaration, "quorum").await;
    let client = ClientProxy::new(quorum);
    client.emit("once_more", &()).await.expect("emit");
    assert_eq!((recv(&mut rx).await, recv(&mut rx).await), (1, 2));
    service.shutdown().await.expect("shutdown");
    assert_eq!(h.ready(&queue).await, 0);
    client.close().await;
});
