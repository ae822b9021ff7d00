//! Fault injection against the real broker: connections cut under load, a broker restart, and
//! publishers blocked by a resource alarm. The tests here run one at a time (they touch the
//! whole broker); cargo runs test binaries one after another, so no other test sees the faults.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod common;
mod faults {
    pub mod proxy;
}

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Broker, options, unique};
use faults::proxy::Proxy;
use futures::StreamExt;
use rmq_bus::{ClientProxy, Error, Microservice, Payload, RmqContext};

/// Serialises the tests of this binary.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How often each number was handled, and when the last one was.
#[derive(Clone)]
struct Tally(Arc<Mutex<(HashMap<u64, u32>, Instant)>>);

impl Tally {
    fn new() -> Self {
        Tally(Arc::new(Mutex::new((HashMap::new(), Instant::now()))))
    }
    fn record(&self, n: u64) {
        let mut inner = self.0.lock().expect("lock");
        *inner.0.entry(n).or_default() += 1;
        inner.1 = Instant::now();
    }
    /// (distinct numbers handled, handlings in all)
    fn counts(&self) -> (u64, u64) {
        let inner = self.0.lock().expect("lock");
        (
            inner.0.len() as u64,
            inner.0.values().map(|&c| u64::from(c)).sum(),
        )
    }
    fn last(&self) -> Instant {
        self.0.lock().expect("lock").1
    }
    async fn wait_for(&self, distinct: u64, within: Duration) {
        let started = Instant::now();
        while self.counts().0 < distinct && started.elapsed() < within {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn counting_service(options: rmq_bus::RmqOptions, tally: &Tally, work: Duration) -> Microservice {
    let tally = tally.clone();
    Microservice::new(options).on_event("n", move |Payload(n): Payload<u64>, ctx: RmqContext| {
        let tally = tally.clone();
        async move {
            if !work.is_zero() {
                tokio::time::sleep(work).await;
            }
            tally.record(n);
            ctx.ack().await
        }
    })
}

/// Emits 0..n with 64 in flight; returns the errors.
async fn emit_all(client: ClientProxy, range: std::ops::Range<u64>) -> Vec<Error> {
    futures::stream::iter(range)
        .map(|n| {
            let client = client.clone();
            async move { client.emit("n", &n).await }
        })
        .buffer_unordered(64)
        .filter_map(|result| async move { result.err() })
        .collect()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_events_survive_connection_cuts() {
    let _serial = SERIAL.lock().await;
    const N: u64 = 5000;
    let broker = Broker::connect().await;
    let proxy = Proxy::start("127.0.0.1:5672").await;
    let queue = unique("cuts");
    broker.forget_later(&queue);
    let through_proxy = options(&queue).uri(proxy.uri());
    let tally = Tally::new();
    let service = counting_service(through_proxy.clone(), &tally, Duration::ZERO)
        .start()
        .await
        .expect("start");
    let client = ClientProxy::new(through_proxy);
    let started = Instant::now();
    let publisher = tokio::spawn(emit_all(client.clone(), 0..N));

    let mut recoveries = Vec::new();
    let mut cut_links = 0;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let cut_at = Instant::now();
        cut_links += proxy.cut();
        // Recovered once a message is handled after the cut (bounded).
        while tally.last() < cut_at
            && cut_at.elapsed() < Duration::from_secs(30)
            && tally.counts().0 < N
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        recoveries.push(tally.last().saturating_duration_since(cut_at));
    }
    let errors = publisher.await.expect("publisher task");
    assert!(
        errors.is_empty(),
        "{} emits failed, first: {:?}",
        errors.len(),
        errors.first()
    );
    tally.wait_for(N, Duration::from_secs(60)).await;
    let (distinct, total) = tally.counts();
    println!(
        "connection cuts: {N} confirmed events, 4 cuts ({cut_links} connections), lost {}, duplicated {}, recovery after each cut {:?}, {:?} in all",
        N - distinct,
        total - distinct,
        recoveries,
        started.elapsed()
    );
    assert_eq!(distinct, N, "every confirmed event is handled");
    service.shutdown().await.expect("shutdown");
    client.close().await;
    assert_eq!(broker.ready(&queue).await, 0);
    broker.cleanup().await;
}

/// Restarts the RabbitMQ application, persistent state kept.
async fn restart_broker() -> Duration {
    tokio::task::spawn_blocking(|| {
        let started = Instant::now();
        for step in ["stop_app", "start_app"] {
            let status = Command::new("rabbitmqctl")
                .arg("-q")
                .arg(step)
                .status()
                .expect("rabbitmqctl runs");
            assert!(status.success(), "rabbitmqctl {step} failed");
        }
        started.elapsed()
    })
    .await
    .expect("restart task")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_loses_nothing() {
    let _serial = SERIAL.lock().await;
    const N: u64 = 600;
    let queue = unique("restart");
    let durable = options(&queue).reconnect_timeout(Duration::from_secs(90));
    let tally = Tally::new();
    // A slow consumer, so that the queue holds messages when the broker stops.
    let service = counting_service(
        durable.clone().prefetch(10),
        &tally,
        Duration::from_millis(10),
    )
    .start()
    .await
    .expect("start");
    let client = ClientProxy::new(durable);
    let errors = emit_all(client.clone(), 0..N / 2).await;
    assert!(errors.is_empty(), "{errors:?}");
    let late = tokio::spawn(emit_all(client.clone(), N / 2..N));
    let took = restart_broker().await;
    let errors = late.await.expect("late emits");
    assert!(
        errors.is_empty(),
        "emits during the restart failed: {errors:?}"
    );
    let started = Instant::now();
    tally.wait_for(N, Duration::from_secs(90)).await;
    let (distinct, total) = tally.counts();
    println!(
        "broker restart: {N} confirmed persistent events, restart took {took:?}, lost {}, duplicated {}, all handled {:?} after the restart",
        N - distinct,
        total - distinct,
        started.elapsed()
    );
    assert_eq!(distinct, N);
    service.shutdown().await.expect("shutdown");
    client.close().await;
    let broker = Broker::connect().await;
    assert_eq!(broker.ready(&queue).await, 0);
    broker.forget_later(&queue);
    broker.cleanup().await;
}

/// Puts the memory watermark back however the test ends.
struct Watermark;

impl Watermark {
    fn set(value: &str) {
        let _ = Command::new("rabbitmqctl")
            .args(["-q", "set_vm_memory_high_watermark", value])
            .status();
    }
}

impl Drop for Watermark {
    fn drop(&mut self) {
        Watermark::set("0.4");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_publishers_wait_then_fail_clearly() {
    let _serial = SERIAL.lock().await;
    let broker = Broker::connect().await;
    let queue = unique("blocked");
    broker.forget_later(&queue);
    let client = ClientProxy::new(
        options(&queue)
            .reconnect_timeout(Duration::from_secs(1))
            .confirm_timeout(Duration::from_secs(2)),
    );
    client.connect().await.expect("connect");
    let guard = Watermark;
    Watermark::set("0.0000001");
    // The first publish meets the alarm (the broker stops reading); the next ones see the
    // connection blocked and wait, bounded.
    let first = client.emit("n", &1).await;
    assert!(
        matches!(
            first,
            Err(Error::Blocked { .. } | Error::ConfirmTimeout { .. })
        ),
        "{first:?}"
    );
    let second = client.emit("n", &2).await;
    match &second {
        Err(error @ Error::Blocked { .. }) => {
            assert!(error.to_string().contains("alarm"), "{error}")
        }
        other => panic!("expected Blocked, got {other:?}"),
    }
    drop(guard);
    tokio::time::sleep(Duration::from_millis(500)).await;
    client
        .emit("n", &3)
        .await
        .expect("publishing works again once the alarm clears");
    client.close().await;
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emits_wait_through_an_outage_then_publish_or_fail_clearly() {
    let _serial = SERIAL.lock().await;
    let broker = Broker::connect().await;
    let proxy = Proxy::start("127.0.0.1:5672").await;
    let queue = unique("outage");
    broker.forget_later(&queue);
    let client = ClientProxy::new(
        options(&queue)
            .uri(proxy.uri())
            .reconnect_timeout(Duration::from_secs(1)),
    );
    client.emit("n", &1).await.expect("before the outage");

    // A short outage: the emit waits and goes through once the broker is reachable again.
    proxy.refuse(true);
    proxy.cut();
    let healer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(400)).await;
        proxy.refuse(false);
        proxy
    });
    let started = Instant::now();
    client
        .emit("n", &2)
        .await
        .expect("published after the outage");
    let waited = started.elapsed();
    let proxy = healer.await.expect("healer");
    assert!(
        waited >= Duration::from_millis(300),
        "it waited for the outage: {waited:?}"
    );

    // A long outage: the emit fails after the bound, with the broker named.
    proxy.refuse(true);
    proxy.cut();
    let started = Instant::now();
    match client.emit("n", &3).await {
        Err(error @ Error::Connect { .. }) => {
            assert!(
                error.to_string().contains(&proxy.port.to_string()),
                "{error}"
            );
            assert!(
                started.elapsed() >= Duration::from_millis(900),
                "{:?}",
                started.elapsed()
            );
        }
        other => panic!("expected Connect after the bound, got {other:?}"),
    }
    assert_eq!(
        broker.wait_ready(&queue, 2).await,
        2,
        "the two confirmed events are in the queue"
    );
    client.close().await;
    broker.cleanup().await;
}

/// An emit that fails on a lost connection drops it even when it may not wait, so that the next
/// emit connects again rather than failing on the dead connection for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_impatient_emit_leaves_a_fresh_connection_to_the_next() {
    let _serial = SERIAL.lock().await;
    let broker = Broker::connect().await;
    let proxy = Proxy::start("127.0.0.1:5672").await;
    let queue = unique("impatient");
    broker.forget_later(&queue);
    let client = ClientProxy::new(
        options(&queue)
            .uri(proxy.uri())
            .reconnect_timeout(Duration::ZERO),
    );
    client.emit("n", &1).await.expect("before the cut");
    proxy.cut();
    // Long enough for lapin to see the connection closed.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let failed = client.emit("n", &2).await;
    assert!(
        matches!(failed, Err(Error::Disconnected { .. })),
        "{failed:?}"
    );
    client
        .emit("n", &3)
        .await
        .expect("the next emit connects again");
    assert_eq!(broker.wait_ready(&queue, 2).await, 2);
    client.close().await;
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_uris_fail_over_to_the_next_node() {
    let _serial = SERIAL.lock().await;
    let broker = Broker::connect().await;
    let (first, second) = (
        Proxy::start("127.0.0.1:5672").await,
        Proxy::start("127.0.0.1:5672").await,
    );
    let queue = unique("failover");
    broker.forget_later(&queue);
    let nodes = format!(
        "amqp://guest:guest@127.0.0.1:1/%2f,{},{}",
        first.uri(),
        second.uri()
    );
    let tally = Tally::new();
    let service = counting_service(options(&queue).uri(&nodes), &tally, Duration::ZERO)
        .start()
        .await
        .expect("start");
    let client = ClientProxy::new(options(&queue).uri(&nodes));
    client
        .emit("n", &1)
        .await
        .expect("through the first reachable node");
    tally.wait_for(1, Duration::from_secs(10)).await;
    // The node in use goes away for good: both sides move to the next one.
    first.refuse(true);
    assert!(
        first.cut() >= 2,
        "service and client were connected through the first node"
    );
    client.emit("n", &2).await.expect("through the second node");
    tally.wait_for(2, Duration::from_secs(20)).await;
    assert_eq!(tally.counts().0, 2);
    assert!(
        second.cut() >= 2,
        "service and client moved to the second node"
    );
    service.shutdown().await.expect("shutdown");
    client.close().await;
    broker.cleanup().await;
}
