//! Guarantees the README makes that no other test pins down, each on the real broker: handlers
//! bounded by the prefetch window (at most, not only at least), exact patterns winning over
//! wildcards, the last context clone's `Drop` settling a message, `.reject_dead_letters()`,
//! `Error::ReplyLost`, `ClientProxy::close` waiting for outstanding confirms, the drain timeout
//! running out, a publisher nack failing `emit` at once, and a slow handler not starving the window.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Broker, EXPIRES_MS, eventually, options, recv, unique, uri};
use futures::future::BoxFuture;
use lapin::types::{AMQPValue, FieldTable};
use rmq_bus::config::{Exchange, QueueOptions};
use rmq_bus::microservice::RunningMicroservice;
use rmq_bus::{ClientProxy, Error, Microservice, RmqContext, RmqOptions};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tracing::instrument::WithSubscriber;

/// `(ready, unacked)` of `queue` as the broker counts them now, or `None` if there is no such
/// queue. Asked of `rabbitmqctl`: a passive declare does not count unacked messages.
async fn queue_counts(queue: &str) -> Option<(u64, u64)> {
    let output = tokio::process::Command::new("rabbitmqctl")
        .args([
            "-q",
            "list_queues",
            "--no-table-headers",
            "name",
            "messages_ready",
            "messages_unacknowledged",
        ])
        .output()
        .await
        .expect("run rabbitmqctl (the broker runs as this user)");
    assert!(
        output.status.success(),
        "rabbitmqctl list_queues failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| {
            let mut fields = line.split('\t');
            (fields.next() == Some(queue)).then(|| {
                let mut count = || fields.next().and_then(|n| n.trim().parse().ok());
                (count().expect("messages_ready"), count().expect("unacked"))
            })
        })
}

/// Waits (bounded, 10 s) until the broker counts `(ready, unacked)` in `queue`; fails with the
/// last counts seen.
async fn wait_counts(queue: &str, expected: (u64, u64), what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = queue_counts(queue).await;
        if seen == Some(expected) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: queue {queue} has (ready, unacked) = {seen:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One `x-death` entry of a dead-lettered message: (queue, reason, count).
type Death = (String, String, i64);

/// The `x-death` entries of a dead-lettered message.
fn x_death(properties: &lapin::BasicProperties) -> Vec<Death> {
    let text = |value: Option<&AMQPValue>| match value {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        Some(AMQPValue::ShortString(s)) => s.as_str().to_owned(),
        other => format!("{other:?}"),
    };
    let Some(AMQPValue::FieldArray(deaths)) = properties
        .headers()
        .as_ref()
        .and_then(|headers| headers.inner().get("x-death").cloned())
    else {
        return Vec::new();
    };
    deaths
        .as_slice()
        .iter()
        .filter_map(|death| match death {
            AMQPValue::FieldTable(table) => {
                let table = table.inner();
                let count = match table.get("count") {
                    Some(AMQPValue::LongLongInt(n)) => *n,
                    Some(AMQPValue::LongInt(n)) => i64::from(*n),
                    _ => -1,
                };
                Some((text(table.get("queue")), text(table.get("reason")), count))
            }
            _ => None,
        })
        .collect()
}

/// A handler gate: closed until the test opens it.
fn gate() -> (watch::Sender<bool>, watch::Receiver<bool>) {
    watch::channel(false)
}

async fn pass(gate: &mut watch::Receiver<bool>) {
    let _ = gate.wait_for(|open| *open).await;
}

/// A raw connection to the broker and a fresh queue it deletes at cleanup: how most tests here
/// begin.
async fn broker_with_queue(prefix: &str) -> (Broker, String) {
    let broker = Broker::connect().await;
    let queue = unique(prefix);
    broker.forget_later(&queue);
    (broker, queue)
}

/// Shuts `service` down and checks that it left nothing in `queue` (`why` says what that shows):
/// how most tests here end.
async fn shut_down_leaving_queue_empty(
    service: RunningMicroservice,
    broker: &Broker,
    queue: &str,
    why: &str,
) {
    service.shutdown().await.expect("shutdown");
    assert_eq!(broker.ready(queue).await, 0, "{why}");
}

// ---------------------------------------------------------------------------------------------
// Concurrency is bounded by the prefetch window.

/// A slow handler never starves the window: the acks held back behind it go out one by one at
/// the acker's timer, so with `prefetch(4)` twenty quick messages are all handled and acked while
/// the first still runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_handler_does_not_hold_back_the_acks_of_the_quick_ones() {
    const N: usize = 21;
    let (broker, queue) = broker_with_queue("slow-first").await;
    let client = ClientProxy::new(options(&queue));
    for n in 0..N {
        client.emit("job", &n).await.expect("emit");
    }
    let finished = Arc::new(AtomicUsize::new(0));
    let (open, closed) = gate();
    let done = finished.clone();
    let service = Microservice::new(options(&queue).prefetch(4))
        .on_event("job", move |n: rmq_bus::Payload<usize>, ctx: RmqContext| {
            let (finished, mut gate) = (done.clone(), closed.clone());
            async move {
                if n.0 == 0 {
                    pass(&mut gate).await;
                }
                finished.fetch_add(1, Ordering::SeqCst);
                ctx.ack().await
            }
        })
        .start()
        .await
        .expect("start");
    eventually("the twenty quick messages are handled", || {
        finished.load(Ordering::SeqCst) == N - 1
    })
    .await;
    // Acked too: only the slow one is unacked, nothing is ready.
    wait_counts(&queue, (0, 1), "the quick ones acked behind the slow one").await;
    open.send(true).expect("open the gate");
    eventually("the slow one finishes", || {
        finished.load(Ordering::SeqCst) == N
    })
    .await;
    shut_down_leaving_queue_empty(service, &broker, &queue, "all acked").await;
    client.close().await;
    broker.cleanup().await;
}

/// "Handlers run concurrently up to the prefetch window": with `prefetch(3)` and ten messages
/// whose handlers block, exactly three run, and no more, even though each acks its message
/// first (so the broker's own prefetch limit no longer holds the others back: only rmq-bus's
/// consumer loop does). Once the gate opens, all ten finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_prefetch_handlers_run_at_once() {
    const PREFETCH: u16 = 3;
    const N: usize = 10;
    let (broker, queue) = broker_with_queue("at-most").await;
    let client = ClientProxy::new(options(&queue));
    for n in 0..N {
        client.emit("job", &n).await.expect("emit");
    }

    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let (open, closed) = gate();
    let (r, m, f) = (running.clone(), most.clone(), finished.clone());
    let service = Microservice::new(options(&queue).prefetch(PREFETCH))
        .on_event("job", move |ctx: RmqContext| {
            let (running, most, finished, mut gate) =
                (r.clone(), m.clone(), f.clone(), closed.clone());
            async move {
                // Settled first: the broker may now deliver more than the prefetch.
                ctx.ack().await?;
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                pass(&mut gate).await;
                running.fetch_sub(1, Ordering::SeqCst);
                finished.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Error>(())
            }
        })
        .start()
        .await
        .expect("start");

    let prefetch = usize::from(PREFETCH);
    eventually("prefetch handlers run", || {
        running.load(Ordering::SeqCst) >= prefetch
    })
    .await;
    // Their acks let the broker hand over three more, which must wait in the client. Once at
    // least 6 of the 10 left the queue, they are there to be run, and must not be.
    let left_in_queue = (N - 2 * prefetch) as u32;
    let deadline = Instant::now() + Duration::from_secs(10);
    while broker.ready(&queue).await > left_in_queue {
        assert!(
            Instant::now() < deadline,
            "the broker never delivered twice the prefetch"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // What does not happen can only be watched for a while.
    for _ in 0..20 {
        assert!(
            most.load(Ordering::SeqCst) <= prefetch,
            "{} handlers ran at once with prefetch {PREFETCH}",
            most.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        broker.ready(&queue).await,
        left_in_queue,
        "the broker holds back what exceeds the three running and the three waiting"
    );
    assert_eq!(finished.load(Ordering::SeqCst), 0);

    open.send(true).expect("open the gate");
    eventually("all ten finish", || finished.load(Ordering::SeqCst) == N).await;
    assert_eq!(most.load(Ordering::SeqCst), prefetch);
    shut_down_leaving_queue_empty(service, &broker, &queue, "all acked").await;
    client.close().await;
    broker.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// Routing: exact patterns win over wildcards.

/// Which handler took an event: its label, the pattern it matched and the routing key.
type Taken = (&'static str, String, String);

/// A handler that reports what it took as `label`, then acks: the exact and the wildcard handler
/// differ only in their label.
fn reporting_as(
    label: &'static str,
    tx: mpsc::UnboundedSender<Taken>,
) -> impl Fn(RmqContext) -> BoxFuture<'static, rmq_bus::Result<()>> + Clone + Send + Sync + 'static
{
    move |ctx: RmqContext| {
        let tx = tx.clone();
        Box::pin(async move {
            let key = ctx.delivery().routing_key.clone();
            tx.send((label, ctx.pattern().to_owned(), key)).ok();
            ctx.ack().await
        })
    }
}

/// "Exact patterns win over wildcards", whatever the registration order; a wildcard handler sees
/// the concrete routing key in `ctx.pattern()`. Each event is handled once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_patterns_win_over_wildcards() {
    let (broker, queue) = broker_with_queue("exact").await;
    let exchange = unique("exact-x");
    broker.forget_exchange_later(&exchange);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (wild, exact) = (tx.clone(), tx);
    let service = Microservice::new(options(&queue).exchange(Exchange::topic(&exchange)))
        // The wildcard first: registration order must not decide.
        .on_event("order.*", reporting_as("wildcard", wild))
        .on_event("order.created", reporting_as("exact", exact))
        .start()
        .await
        .expect("start");
    let client = ClientProxy::new(RmqOptions::for_exchange(Exchange::topic(&exchange)).uri(uri()));

    client
        .emit("order.created", &json!({}))
        .await
        .expect("emit");
    assert_eq!(
        recv(&mut rx).await,
        (
            "exact",
            "order.created".to_owned(),
            "order.created".to_owned()
        )
    );
    client.emit("order.paid", &json!({})).await.expect("emit");
    assert_eq!(
        recv(&mut rx).await,
        ("wildcard", "order.paid".to_owned(), "order.paid".to_owned()),
        "the wildcard handler sees the concrete key"
    );

    shut_down_leaving_queue_empty(service, &broker, &queue, "both events acked").await;
    assert!(
        rx.try_recv().is_err(),
        "each event is handled once, by one handler"
    );
    client.close().await;
    broker.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// The last context clone's Drop settles the message.

/// A service whose `keep` handler hands a clone of its context to the test (another task, which
/// outlives the handler) and then succeeds or fails; `probe` reports that it ran. The consumer
/// runs its handlers on one task, so once a probe sent after `keep` started has run, `keep`'s
/// handler has returned and the dispatcher has left its message to the clone.
async fn keeper(
    options: RmqOptions,
    fail: bool,
) -> (
    RunningMicroservice,
    mpsc::UnboundedReceiver<RmqContext>,
    mpsc::UnboundedReceiver<()>,
) {
    let (kept, kept_rx) = mpsc::unbounded_channel();
    let (probed, probe_rx) = mpsc::unbounded_channel();
    let service = Microservice::new(options)
        .on_event("keep", move |ctx: RmqContext| {
            let kept = kept.clone();
            async move {
                kept.send(ctx.clone()).ok();
                if fail {
                    Err("failed, with a clone of the context elsewhere")
                } else {
                    Ok(())
                }
            }
        })
        .on_event("probe", move |ctx: RmqContext| {
            let probed = probed.clone();
            async move {
                probed.send(()).ok();
                ctx.ack().await
            }
        })
        .start()
        .await
        .expect("start");
    (service, kept_rx, probe_rx)
}

/// Waits until the handler that sent the last context kept has returned (see [`keeper`]), and
/// checks that its message is still unacked: the step every clone test takes before dropping.
async fn handler_returned_leaving_message_unacked(
    client: &ClientProxy,
    probes: &mut mpsc::UnboundedReceiver<()>,
    queue: &str,
) {
    client.emit("probe", &()).await.expect("emit probe");
    recv(probes).await;
    wait_counts(queue, (0, 1), "while a clone lives, its message is unacked").await;
}

/// A handler returns `Ok` without settling but a clone of its context lives on: the message
/// stays unacked (nothing settles it behind the clone's back), and when the last clone drops
/// unsettled, it is acked (the fallback of a successful handler).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_clone_dropped_acks_for_a_successful_handler() {
    let (broker, queue) = broker_with_queue("drop-ok").await;
    let (service, mut kept, mut probes) = keeper(options(&queue), false).await;
    let client = ClientProxy::new(options(&queue));

    client.emit("keep", &json!({"n": 1})).await.expect("emit");
    let ctx = recv(&mut kept).await;
    handler_returned_leaving_message_unacked(&client, &mut probes, &queue).await;
    assert_eq!(ctx.settlement(), None, "nobody settled it yet");

    drop(ctx);
    wait_counts(&queue, (0, 0), "the last clone dropped acks its message").await;
    shut_down_leaving_queue_empty(
        service,
        &broker,
        &queue,
        "acked, not returned to the queue at shutdown",
    )
    .await;
    assert!(kept.try_recv().is_err(), "delivered once");
    client.close().await;
    broker.cleanup().await;
}

/// A handler fails without settling and a clone of its context lives on: dropping the last clone
/// settles the message by the failure policy's fallback: the first time a requeue (it comes back
/// redelivered), the second time a reject (to the queue's dead-letter exchange).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_clone_dropped_requeues_then_rejects_for_a_failing_handler() {
    let (broker, queue) = broker_with_queue("drop-fail").await;
    let dead = unique("drop-fail-dead");
    broker.declare(&dead).await;
    let (service, mut kept, mut probes) =
        keeper(common::options_with_dlq(&queue, &dead), true).await;
    let client = ClientProxy::new(common::options_with_dlq(&queue, &dead));

    client.emit("keep", &json!({"n": 2})).await.expect("emit");
    let first = recv(&mut kept).await;
    assert!(!first.redelivered());
    handler_returned_leaving_message_unacked(&client, &mut probes, &queue).await;
    drop(first);

    let second = recv(&mut kept).await;
    assert!(
        second.redelivered(),
        "dropping the clone of a failed first delivery requeues it"
    );
    handler_returned_leaving_message_unacked(&client, &mut probes, &queue).await;
    assert_eq!(broker.ready(&dead).await, 0);
    drop(second);

    assert_eq!(broker.wait_ready(&dead, 1).await, 1, "rejected to the DLX");
    let dead_letters = broker.drain(&dead).await;
    let (body, properties) = &dead_letters[0];
    assert_eq!(
        String::from_utf8_lossy(body),
        r#"{"pattern":"keep","data":{"n":2}}"#
    );
    assert_eq!(
        x_death(properties),
        vec![(queue.clone(), "rejected".to_owned(), 1)]
    );
    wait_counts(&queue, (0, 0), "nothing left behind").await;
    shut_down_leaving_queue_empty(service, &broker, &queue, "nothing returned at shutdown").await;
    assert!(kept.try_recv().is_err(), "delivered twice, no more");
    client.close().await;
    broker.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// .reject_dead_letters()

/// With `.reject_dead_letters()` rmq-bus rejects what it would dead-letter, as NestJS does, and
/// RabbitMQ routes it through the queue's dead-letter exchange, with `x-death`. The queue here
/// was declared elsewhere with its DLX (rmq-bus does not declare it, `no_assert`, so it does not
/// know about the DLX): without `.reject_dead_letters()` rmq-bus would publish to `<queue>.dlq`.
/// Bad input and a handler that fails twice both end in the DLX queue, and no `<queue>.dlq`
/// is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_dead_letters_hands_them_to_the_queues_dead_letter_exchange() {
    let broker = Broker::connect().await;
    let (queue, dead) = (unique("reject-dl"), unique("reject-dl-dead"));
    broker.declare(&dead).await;
    let mut arguments = FieldTable::default();
    arguments.insert("x-expires".into(), AMQPValue::LongLongInt(EXPIRES_MS));
    arguments.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("".into()),
    );
    arguments.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(dead.as_str().into()),
    );
    broker.declare_with(&queue, arguments).await;

    let service = Microservice::new(
        RmqOptions::new(&queue)
            .uri(uri())
            .no_assert(true)
            .reject_dead_letters(),
    )
    .on_event("fails", || async { Err::<(), _>("always fails") })
    .start()
    .await
    .expect("start");

    broker.publish_raw(&queue, b"not json").await;
    broker
        .publish_raw(&queue, br#"{"pattern":"unknown","data":1}"#)
        .await;
    broker
        .publish_raw(&queue, br#"{"pattern":"fails","data":2}"#)
        .await;
    assert_eq!(
        broker.wait_ready(&dead, 3).await,
        3,
        "the two bad messages and the failing one are rejected to the queue's DLX"
    );
    let mut bodies: Vec<(String, Vec<Death>)> = broker
        .drain(&dead)
        .await
        .iter()
        .map(|(body, properties)| {
            (
                String::from_utf8_lossy(body).into_owned(),
                x_death(properties),
            )
        })
        .collect();
    bodies.sort();
    let rejected = vec![(queue.clone(), "rejected".to_owned(), 1)];
    assert_eq!(
        bodies,
        vec![
            ("not json".to_owned(), rejected.clone()),
            (
                r#"{"pattern":"fails","data":2}"#.to_owned(),
                rejected.clone()
            ),
            (r#"{"pattern":"unknown","data":1}"#.to_owned(), rejected),
        ]
    );
    assert_eq!(
        broker.try_ready(&format!("{queue}.dlq")).await,
        None,
        "rmq-bus published no dead letter of its own: there is no {queue}.dlq"
    );
    shut_down_leaving_queue_empty(service, &broker, &queue, "all rejected, none left").await;
    broker.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// Error::ReplyLost

/// A `send` waiting for its reply when the client's connection closes fails at once with
/// `Error::ReplyLost`, not after its timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_connection_closes_fails_with_reply_lost() {
    let (broker, queue) = broker_with_queue("reply-lost").await;
    let (started, mut starts) = mpsc::unbounded_channel();
    let (open, closed) = gate();
    let service = Microservice::new(options(&queue))
        .on_message("slow", move || {
            let (started, mut gate) = (started.clone(), closed.clone());
            async move {
                started.send(()).ok();
                pass(&mut gate).await;
                Ok::<_, rmq_bus::RpcError>("too late")
            }
        })
        .start()
        .await
        .expect("start");
    let client = ClientProxy::new(options(&queue));
    let request = {
        let client = client.clone();
        tokio::spawn(async move {
            let sent = Instant::now();
            let reply = client
                .send_timeout::<_, String>("slow", &(), Duration::from_secs(20))
                .await;
            (reply, sent.elapsed())
        })
    };
    recv(&mut starts).await;
    let closing = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), client.close())
        .await
        .expect("close ends");
    let (reply, _) = tokio::time::timeout(Duration::from_secs(5), request)
        .await
        .expect("send must end soon after its connection closed")
        .expect("join");
    match reply {
        Err(Error::ReplyLost { pattern }) => assert_eq!(pattern, "slow"),
        other => panic!("expected Error::ReplyLost, got {other:?}"),
    }
    assert!(
        closing.elapsed() < Duration::from_secs(3),
        "ReplyLost took {:?}",
        closing.elapsed()
    );

    open.send(true).expect("open the gate");
    shut_down_leaving_queue_empty(
        service,
        &broker,
        &queue,
        "the request was answered and acked",
    )
    .await;
    broker.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// ClientProxy::close waits for outstanding confirms.

/// "Closes the connection, after outstanding confirms". The client talks to the broker through a
/// proxy that holds what the client sends, so the test knows when every emit is published and
/// waiting for its confirm: then `close` is called, and the proxy lets everything through. A
/// `close` that waits for the confirms sends nothing until they came; one that does not has its
/// `channel.close` reach the broker right behind the publishes, before the broker confirmed them.
/// Every emit must succeed on the connection it was published on: none interrupted and published
/// again (`emit` logs a warning when it does), and the queue holds exactly one copy of each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_waits_for_outstanding_confirms() {
    const N: usize = 300;
    let (broker, queue) = broker_with_queue("close").await;
    let proxy = HoldingProxy::start().await;
    let client = ClientProxy::new(options(&queue).uri(proxy.uri()));
    client.connect().await.expect("connect");

    proxy.hold();
    let before = proxy.received();
    // What the emits log, whichever thread polls them.
    let log = Log::default();
    let emits: Vec<_> = (0..N)
        .map(|n| {
            let client = client.clone();
            let emit = async move { client.emit("n", &json!({"n": n, "pad": pad(n)})).await };
            tokio::spawn(emit.with_subscriber(log.subscriber()))
        })
        .collect();
    // Every body is longer than its padding: once that much is held, every emit is published.
    let published = before + N * pad(0).len();
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy.received() < published {
        assert!(
            Instant::now() < deadline,
            "the emits were not published: {} of {published} bytes",
            proxy.received()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let all_published = proxy.received();
    let closing = tokio::spawn({
        let client = client.clone();
        async move {
            let started = Instant::now();
            client.close().await;
            started.elapsed()
        }
    });
    // A close that does not wait sends its channel.close now; one that waits sends nothing until
    // the confirms came, which only a while can show.
    let deadline = Instant::now() + Duration::from_millis(300);
    while proxy.received() == all_published && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let sent_at_close = proxy.received() - all_published;
    proxy.release();
    let closed_after = tokio::time::timeout(Duration::from_secs(10), closing)
        .await
        .expect("close ends within 10 s")
        .expect("join");

    let ended = tokio::time::timeout(Duration::from_secs(20), futures::future::join_all(emits))
        .await
        .expect("every emit ends within 20 s of close");
    let failed: Vec<String> = ended
        .into_iter()
        .enumerate()
        .filter_map(|(n, emitted)| match emitted.expect("join") {
            Ok(()) => None,
            Err(error) => Some(format!("{n}: {error}")),
        })
        .collect();
    assert!(failed.is_empty(), "emits failed: {failed:?}");
    let interrupted = log.text().matches("emit interrupted").count();
    // The queue settles at N if each emit is stored once; a duplicate or a loss shows below.
    let stored = broker.wait_ready(&queue, N as u32).await;
    let mut copies = vec![0_u32; N];
    for (body, _) in broker.drain(&queue).await {
        let packet: Value = serde_json::from_slice(&body).expect("JSON");
        let n = packet["data"]["n"].as_u64().expect("a number");
        copies[usize::try_from(n).expect("small")] += 1;
    }
    let lost: Vec<usize> = (0..N).filter(|&n| copies[n] == 0).collect();
    let twice: Vec<usize> = (0..N).filter(|&n| copies[n] > 1).collect();
    assert!(
        interrupted == 0 && lost.is_empty() && twice.is_empty(),
        "{N} emits published and waiting for their confirms when close was called; {sent_at_close} \
         bytes more came from the client before the proxy let them through (a channel.close is \
         32), close took {closed_after:?}; {interrupted} emits were interrupted and published \
         again; the queue holds {stored}: published more than once {}: {twice:?}; confirmed yet \
         not stored {}: {lost:?}",
        twice.len(),
        lost.len()
    );
    proxy.stop();
    broker.cleanup().await;
}

/// A TCP proxy to the broker that can hold what clients send (reading it all, so that the client
/// is never blocked) and let it through later; it counts the bytes it received from clients.
struct HoldingProxy {
    port: u16,
    held: watch::Sender<bool>,
    received: Arc<AtomicUsize>,
    tasks: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl HoldingProxy {
    async fn start() -> HoldingProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let port = listener.local_addr().expect("address").port();
        let (held, holding) = watch::channel(false);
        let received = Arc::new(AtomicUsize::new(0));
        let tasks: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let (counted, links) = (received.clone(), tasks.clone());
        let upstream = broker_address();
        let acceptor = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let server = tokio::net::TcpStream::connect(&upstream)
                    .await
                    .expect("connect to the broker");
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let (chunks, mut to_send) = mpsc::unbounded_channel::<Vec<u8>>();
                let counted = counted.clone();
                let reader = tokio::spawn(async move {
                    use tokio::io::AsyncReadExt;
                    let mut buffer = vec![0; 64 * 1024];
                    while let Ok(n @ 1..) = client_read.read(&mut buffer).await {
                        counted.fetch_add(n, Ordering::SeqCst);
                        if chunks.send(buffer[..n].to_vec()).is_err() {
                            break;
                        }
                    }
                });
                let mut holding = holding.clone();
                let writer = tokio::spawn(async move {
                    use tokio::io::AsyncWriteExt;
                    while let Some(chunk) = to_send.recv().await {
                        let _ = holding.wait_for(|held| !*held).await;
                        if server_write.write_all(&chunk).await.is_err() {
                            break;
                        }
                    }
                    let _ = server_write.shutdown().await;
                });
                let back = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                });
                links.lock().expect("lock").extend([reader, writer, back]);
            }
        });
        tasks.lock().expect("lock").push(acceptor);
        HoldingProxy {
            port,
            held,
            received,
            tasks,
        }
    }

    /// The broker URI, through the proxy.
    fn uri(&self) -> String {
        let uri = uri();
        let first = uri.split(',').next().unwrap_or_default().trim();
        let (scheme, rest) = first.split_once("://").expect("a URI");
        let (userinfo, host_and_tail) = rest.rsplit_once('@').map_or(("", rest), |(u, h)| (u, h));
        let tail = host_and_tail
            .find(['/', '?'])
            .map_or("", |at| &host_and_tail[at..]);
        let at = if userinfo.is_empty() { "" } else { "@" };
        format!("{scheme}://{userinfo}{at}127.0.0.1:{}{tail}", self.port)
    }

    fn hold(&self) {
        self.held.send_replace(true);
    }

    fn release(&self) {
        self.held.send_replace(false);
    }

    /// Bytes received from clients so far.
    fn received(&self) -> usize {
        self.received.load(Ordering::SeqCst)
    }

    fn stop(&self) {
        for task in self.tasks.lock().expect("lock").drain(..) {
            task.abort();
        }
    }
}

/// `host:port` of the broker of [`uri`] (the first, if several), for the proxy to connect to.
fn broker_address() -> String {
    let uri = uri();
    let first = uri.split(',').next().unwrap_or_default().trim();
    let (scheme, rest) = first.split_once("://").expect("a URI");
    assert_eq!(
        scheme, "amqp",
        "the proxy of this test forwards plain AMQP, not {scheme}"
    );
    let host_and_tail = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let host = host_and_tail
        .find(['/', '?'])
        .map_or(host_and_tail, |at| &host_and_tail[..at]);
    if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:5672")
    }
}

/// Log lines, captured by the subscriber of the futures given [`Log::subscriber`].
#[derive(Clone, Default)]
struct Log(Arc<std::sync::Mutex<Vec<u8>>>);

impl Log {
    /// A subscriber writing warnings and errors here.
    fn subscriber(&self) -> tracing::Dispatch {
        let log = self.clone();
        tracing::Dispatch::new(
            tracing_subscriber::fmt()
                .with_max_level(tracing::Level::WARN)
                .with_ansi(false)
                .with_writer(move || log.clone())
                .finish(),
        )
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("lock")).into_owned()
    }
}

impl std::io::Write for Log {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Padding, so that a body is known to be longer than this.
fn pad(n: usize) -> String {
    format!("{n:08}").repeat(500)
}

// ---------------------------------------------------------------------------------------------
// The drain timeout runs out.

/// `shutdown` waits for in-flight handlers only up to the drain timeout: with two handlers that
/// would run far longer, it returns `Error::DrainTimeout(2)` soon after, and both messages are
/// back in the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_timeout_runs_out_and_returns_the_messages() {
    let (broker, queue) = broker_with_queue("drain").await;
    let (started, mut starts) = mpsc::unbounded_channel();
    let service = Microservice::new(options(&queue))
        .on_event("slow", move |ctx: RmqContext| {
            let started = started.clone();
            async move {
                started.send(()).ok();
                tokio::time::sleep(Duration::from_secs(60)).await;
                ctx.ack().await
            }
        })
        .drain_timeout(Duration::from_millis(200))
        .start()
        .await
        .expect("start");
    let client = ClientProxy::new(options(&queue));
    client.emit("slow", &1).await.expect("emit");
    client.emit("slow", &2).await.expect("emit");
    recv(&mut starts).await;
    recv(&mut starts).await;

    let stopping = Instant::now();
    let stopped = tokio::time::timeout(Duration::from_secs(10), service.shutdown())
        .await
        .expect("shutdown ends within the drain timeout, not the handlers' time");
    let took = stopping.elapsed();
    match stopped {
        Err(Error::DrainTimeout(2)) => {}
        other => panic!("expected Error::DrainTimeout(2), got {other:?}"),
    }
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_secs(3),
        "shutdown took {took:?} with a drain timeout of 200 ms"
    );
    assert_eq!(
        broker.wait_ready(&queue, 2).await,
        2,
        "the unfinished messages are back in the queue"
    );
    client.close().await;
    broker.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// A publisher nack fails emit at once.

/// A queue full with `x-overflow: reject-publish` makes the broker nack a publish: `emit` fails
/// with `Error::Nacked` naming the queue, at once rather than after the reconnect timeout
/// (a nack is not retried), and the queue holds only what it took.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_nack_fails_emit_at_once_naming_the_queue() {
    let (broker, queue) = broker_with_queue("nacked").await;
    let full_at_one = QueueOptions::default()
        .argument("x-expires", EXPIRES_MS)
        .argument("x-max-length", 1)
        .argument("x-overflow", "reject-publish");
    let client = ClientProxy::new(
        RmqOptions::new(&queue)
            .uri(uri())
            .queue_options(full_at_one)
            .reconnect_timeout(Duration::from_secs(10)),
    );
    client.emit("first", &1).await.expect("the first fits");
    let emitting = Instant::now();
    let refused = client.emit("second", &2).await;
    let took = emitting.elapsed();
    match &refused {
        Err(error @ Error::Nacked { target }) => {
            assert!(target.contains(&queue), "{target}");
            let text = error.to_string();
            assert!(
                text.contains(&queue) && text.contains("nack"),
                "the error names the queue and says what happened: {text}"
            );
        }
        other => panic!("expected Error::Nacked, got {other:?}"),
    }
    assert!(
        took < Duration::from_secs(2),
        "a nack fails emit at once, not after retrying: it took {took:?}"
    );
    assert_eq!(broker.ready(&queue).await, 1, "only the first was stored");
    let stored = broker.drain(&queue).await;
    assert_eq!(
        String::from_utf8_lossy(&stored[0].0),
        r#"{"pattern":"first","data":1}"#
    );
    client.close().await;
    broker.cleanup().await;
}
