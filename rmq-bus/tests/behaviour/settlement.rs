//! Settlement: settling by hand, the three ack modes (each with a handler that leaves its
//! message to the mode), a context kept past its handler, and shutdown under load.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmq_bus::config::AckMode;
use rmq_bus::context::Settlement;
use rmq_bus::{ClientProxy, Error, Microservice, Payload, RmqContext};
use serde_json::json;
use tokio::sync::mpsc;

use crate::behaviour::harness::logged_for;
use crate::both;
use crate::common::{self, recv};

/// What rmq-bus logs when it acks for a handler that returned `Ok` without settling.
const ACKED_FOR_THE_HANDLER: &str = "returned Ok without settling its message";

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
    assert_eq!(h.ready(&queue).await, 0);
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
    let dead = h.drain(&dlq).await;
    assert_eq!(dead[0].text(), r#"{"pattern":"job","data":{"n":7}}"#);
    assert_eq!(dead[0].header("x-first-death-reason"), Some("rejected"));
    assert_eq!(dead[0].header("x-first-death-queue"), Some(queue.as_str()));
    service.shutdown().await.expect("shutdown");
    assert_eq!(h.ready(&queue).await, 0);
    client.close().await;
});

both!(settling_twice_is_an_error, |h| {
    let queue = h.queue("b-twice");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let service = Microservice::new(h.options(&queue))
        .on_event("twice", move |ctx: RmqContext| {
            let tx = tx.clone();
            async move {
                let first = ctx.ack().await;
                let second = ctx.reject().await;
                let third = ctx.ack().await;
                tx.send((first.is_ok(), second, third)).ok();
            }
        })
        .start()
        .await
        .expect("start");
    let client = ClientProxy::new(h.options(&queue));
    client.emit("twice", &()).await.expect("emit");
    let (first, second, third) = recv(&mut rx).await;
    assert!(first);
    assert!(
        matches!(
            second,
            Err(Error::AlreadySettled {
                previous: Settlement::Ack
            })
        ),
        "{second:?}"
    );
    assert!(
        matches!(
            third,
            Err(Error::AlreadySettled {
                previous: Settlement::Ack
            })
        ),
        "{third:?}"
    );
    service.shutdown().await.expect("shutdown");
    assert_eq!(h.ready(&queue).await, 0, "acked once, not rejected");
    client.close().await;
});

/// Two messages the handler leaves unsettled, and one it acks by hand. With prefetch 1 each
/// message comes only once the one before it was settled, so the second shows that the first was.
/// Returns what the handlers saw, in order: (n, redelivered, the hand ack's result).
async fn leave_two_ack_one(
    h: &crate::behaviour::harness::Harness,
    queue: &str,
    mode: AckMode,
) -> Vec<(u32, bool, Option<bool>)> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let by_hand = tx.clone();
    let service = Microservice::new(h.options(queue).prefetch(1).ack_mode(mode))
        .on_event("leave", move |Payload(n): Payload<u32>, ctx: RmqContext| {
            let tx = tx.clone();
            async move {
                tx.send((n, ctx.redelivered(), None)).ok();
            }
        })
        .on_event(
            "settle",
            move |Payload(n): Payload<u32>, ctx: RmqContext| {
                let tx = by_hand.clone();
                async move {
                    let acked = ctx.ack().await;
                    tx.send((n, ctx.redelivered(), Some(acked.is_ok()))).ok();
                }
            },
        )
        .start()
        .await
        .expect("start");
    let client = ClientProxy::new(h.options(queue));
    client.emit("leave", &1).await.expect("emit");
    client.emit("leave", &2).await.expect("emit");
    client.emit("settle", &3).await.expect("emit");
    let mut seen = vec![
        recv(&mut rx).await,
        recv(&mut rx).await,
        recv(&mut rx).await,
    ];
    // Shutdown waits for the handlers and flushes the acks; whatever is still unsettled then
    // goes back to the queue. Anything delivered again meanwhile is in the list too.
    service.shutdown().await.expect("shutdown");
    client.close().await;
    while let Ok(again) = rx.try_recv() {
        seen.push(again);
    }
    seen
}

both!(
    manual_acks_what_a_handler_leaves_unsettled_with_a_warning,
    |h| {
        let queue = h.queue("b-manual");
        let dlq = format!("{queue}.dlq");
        h.declare_as_rmq_bus(&dlq).await;
        let seen = leave_two_ack_one(&h, &queue, AckMode::Manual).await;
        assert_eq!(
            seen,
            [(1, false, None), (2, false, None), (3, false, Some(true))]
        );
        assert_eq!(h.ready(&queue).await, 0, "acked, not returned to the queue");
        assert_eq!(h.ready(&dlq).await, 0, "acked, not dead-lettered");
        let warnings: Vec<String> = logged_for(&queue)
            .into_iter()
            .filter(|line| line.contains(ACKED_FOR_THE_HANDLER))
            .collect();
        assert_eq!(
            warnings.len(),
            2,
            "AckMode::Manual warns for each message it acks for the handler: {warnings:#?}"
        );
    }
);

both!(after_handler_acks_what_the_handler_leaves_unsettled, |h| {
    let queue = h.queue("b-after");
    let dlq = format!("{queue}.dlq");
    h.declare_as_rmq_bus(&dlq).await;
    let seen = leave_two_ack_one(&h, &queue, AckMode::AfterHandler).await;
    assert_eq!(
        seen,
        [(1, false, None), (2, false, None), (3, false, Some(true))],
        "the handler may still settle by hand"
    );
    assert_eq!(h.ready(&queue).await, 0, "acked, not returned to the queue");
    assert_eq!(h.ready(&dlq).await, 0, "acked, not dead-lettered");
    let lines = logged_for(&queue);
    assert!(
        !lines
            .iter()
            .any(|line| line.contains(ACKED_FOR_THE_HANDLER)),
        "acking is AfterHandler's job, not worth a warning: {lines:#?}"
    );
    assert!(
        !lines.iter().any(|line| line.contains("could not settle")),
        "the hand-acked message was not acked again: {lines:#?}"
    );
});

both!(no_ack_neither_redelivers_nor_dead_letters, |h| {
    let queue = h.queue("b-noack");
    let dlq = format!("{queue}.dlq");
    h.declare_as_rmq_bus(&dlq).await;
    let calls = Arc::new(Mutex::new(Vec::<(String, bool)>::new()));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let record = |calls: &Arc<Mutex<Vec<(String, bool)>>>, ctx: &RmqContext| {
        calls
            .lock()
            .unwrap()
            .push((ctx.pattern().to_owned(), ctx.redelivered()));
    };
    let (failing, panicking, fine) = (calls.clone(), calls.clone(), calls.clone());
    let service = Microservice::new(h.options(&queue).ack_mode(AckMode::NoAck))
        .on_event("fails", move |ctx: RmqContext| {
            record(&failing, &ctx);
            async { Err::<(), _>("cannot") }
        })
        .on_event(
            "panics",
            move |Payload(n): Payload<u32>, ctx: RmqContext| {
                record(&panicking, &ctx);
                async move {
                    if n > 0 {
                        panic!("handler bug {n}");
                    }
                }
            },
        )
        .on_event("ok", move |ctx: RmqContext| {
            record(&fine, &ctx);
            let tx = tx.clone();
            async move {
                // The broker acked on delivery: a hand ack agrees with it.
                tx.send(ctx.ack().await.is_ok()).ok();
            }
        })
        .start()
        .await
        .expect("start");
    let client = ClientProxy::new(h.options(&queue));
    client.emit("fails", &1).await.expect("emit");
    client.emit("panics", &2).await.expect("emit");
    h.publish_raw(&queue, b"not json").await;
    client.emit("ok", &3).await.expect("emit");
    assert!(recv(&mut rx).await, "a hand ack is fine with NoAck");
    // Shutdown waits for the handlers and what rmq-bus does after them.
    service.shutdown().await.expect("shutdown");
    client.close().await;
    let mut calls = calls.lock().unwrap().clone();
    calls.sort();
    assert_eq!(
        calls,
        [
            ("fails".to_owned(), false),
            ("ok".to_owned(), false),
            ("panics".to_owned(), false),
        ],
        "each handled once, none delivered again"
    );
    assert_eq!(h.ready(&queue).await, 0, "nothing requeued");
    assert_eq!(
        h.ready(&dlq).await,
        0,
        "nothing dead-lettered: the broker already took every message"
    );
});

both!(a_context_kept_past_the_handler_settles_it_later, |h| {
    let queue = h.queue("b-deferred");
    let (kept_tx, mut kept) = mpsc::unbounded_channel::<RmqContext>();
    let (probe_tx, mut probed) = mpsc::unbounded_channel();
    let service = Microservice::new(h.options(&queue))
        .on_event("later", move |ctx: RmqContext| {
            let kept_tx = kept_tx.clone();
            // Hands its context to the test and returns at once, leaving it unsettled.
            async move {
                kept_tx.send(ctx).ok();
            }
        })
        .on_event("probe", move |ctx: RmqContext| {
            let probe_tx = probe_tx.clone();
            async move {
                probe_tx.send(()).ok();
                ctx.ack().await
            }
        })
        .start()
        .await
        .expect("start");
    let client = ClientProxy::new(h.options(&queue));
    client.emit("later", &()).await.expect("emit");
    let first = recv(&mut kept).await;
    // The handlers of one queue run on one task, and the "later" handler returned in the poll
    // that handed its context over, where rmq-bus then decided what to do with the message: once
    // a message emitted after that has been handled, that decision is made.
    client.emit("probe", &()).await.expect("emit");
    recv(&mut probed).await;
    assert!(!first.redelivered());
    assert_eq!(
        first.settlement(),
        None,
        "not settled for the handler while a clone of its context lives"
    );
    first
        .nack(true)
        .await
        .expect("the deferred nack is the first settlement");
    let again = recv(&mut kept).await;
    assert!(again.redelivered(), "the nack requeued it");
    again.ack().await.expect("deferred ack");
    service.shutdown().await.expect("shutdown");
    assert_eq!(h.ready(&queue).await, 0);
    client.close().await;
});

both!(
    shutdown_under_load_loses_nothing_and_leaves_nothing_unacked,
    |h| {
        const N: u64 = 2000;
        let queue = h.queue("b-drain");
        let seen = Arc::new(Mutex::new(HashSet::<u64>::new()));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let service_for = |seen: Arc<Mutex<HashSet<u64>>>, in_flight: Arc<AtomicUsize>| {
            Microservice::new(h.options(&queue).prefetch(50))
                .drain_timeout(Duration::from_secs(10))
                .on_event("n", move |Payload(n): Payload<u64>, ctx: RmqContext| {
                    let (seen, in_flight) = (seen.clone(), in_flight.clone());
                    async move {
                        in_flight.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(20)).await; // the work
                        seen.lock().unwrap().insert(n);
                        let acked = ctx.ack().await;
                        in_flight.fetch_sub(1, Ordering::SeqCst);
                        acked
                    }
                })
        };
        let client = ClientProxy::new(h.options(&queue));
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
        let left = u64::from(h.ready(&queue).await);
        assert!(
            handled_before > 0 && handled_before < N,
            "shut down mid-way: {handled_before} handled"
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
        assert_eq!(h.ready(&queue).await, 0);
        client.close().await;
    }
);
