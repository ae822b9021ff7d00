//! Fault injection against the real broker: connections cut under load, an outage, failover,
//! a broker restart, and publishers blocked by a resource alarm.
//!
//! Every test here takes [`FaultLock`], so that they run one at a time on this machine, whether
//! in threads of one process (`cargo test`) or in processes of their own (cargo-nextest). The
//! tests of [`whole_broker`] fault the whole broker (`rabbitmqctl stop_app`, a memory alarm): any
//! other test using the broker meanwhile sees the fault. `cargo test` runs test binaries one after
//! another, so none does; `.config/nextest.toml` makes nextest run them alone. They need the
//! broker of `RABBIT_MQ_URI` to be local, and fail (not skip) when it is not.
//!
//! The network faults go through [`Proxy`], a TCP proxy in front of the broker of
//! `RABBIT_MQ_URI` that cuts connections or refuses them, and counts what it saw.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod common;
mod faults {
    pub mod lock;
    pub mod node;
    pub mod proxy;
}

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Broker, options, unique};
use faults::lock::FaultLock;
use faults::node::Endpoint;
use faults::proxy::Proxy;
use futures::StreamExt;
use rmq_bus::{ClientProxy, Error, Microservice, Payload, RmqContext};

/// How often each number was handled.
#[derive(Clone)]
struct Tally(Arc<Mutex<HashMap<u64, u32>>>);

impl Tally {
    fn new() -> Self {
        Tally(Arc::default())
    }
    fn record(&self, n: u64) {
        *self.0.lock().expect("lock").entry(n).or_default() += 1;
    }
    /// (distinct numbers handled, handlings in all)
    fn counts(&self) -> (u64, u64) {
        let handled = self.0.lock().expect("lock");
        (
            handled.len() as u64,
            handled.values().map(|&c| u64::from(c)).sum(),
        )
    }
    fn handled(&self, n: u64) -> bool {
        self.0.lock().expect("lock").contains_key(&n)
    }
    /// Waits until `distinct` numbers were handled; fails the test after `within`.
    async fn wait_for(&self, distinct: u64, within: Duration) -> Duration {
        until(
            &format!("{distinct} distinct events are handled"),
            within,
            || self.counts().0 >= distinct,
        )
        .await
    }
}

/// Waits until `condition` holds, polling; returns how long that took. Fails the test, naming
/// `what`, if it does not hold within `within`.
async fn until(what: &str, within: Duration, mut condition: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    loop {
        if condition() {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "timed out after {within:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `future`'s output, or a failed test if it takes longer than `limit`: a fault the library
/// mishandles must fail the test, not hang it (with the broker left faulted).
async fn within<F: std::future::Future>(limit: Duration, what: &str, future: F) -> F::Output {
    tokio::time::timeout(limit, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not return within {limit:?}"))
}

/// Fails the test if `task` has finished: it was to be still waiting. Shows what it returned.
async fn assert_pending<T: std::fmt::Debug>(task: &mut tokio::task::JoinHandle<T>, what: &str) {
    if task.is_finished() {
        let result = task.await;
        panic!("{what}, but it had already returned {result:?}");
    }
}

fn counting_service(options: rmq_bus::RmqOptions, tally: &Tally) -> Microservice {
    let tally = tally.clone();
    Microservice::new(options).on_event("n", move |Payload(n): Payload<u64>, ctx: RmqContext| {
        let tally = tally.clone();
        async move {
            tally.record(n);
            ctx.ack().await
        }
    })
}

/// Emits `range` with 64 in flight, counting the confirmed ones in `confirmed`; returns the errors.
async fn emit_all(
    client: ClientProxy,
    range: std::ops::Range<u64>,
    confirmed: Arc<AtomicU64>,
) -> Vec<Error> {
    futures::stream::iter(range)
        .map(|n| {
            let client = client.clone();
            async move { client.emit("n", &n).await }
        })
        .buffer_unordered(64)
        .filter_map(|result| {
            let confirmed = confirmed.clone();
            async move {
                if result.is_ok() {
                    confirmed.fetch_add(1, Ordering::SeqCst);
                }
                result.err()
            }
        })
        .collect()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_events_survive_connection_cuts() {
    let _lock = FaultLock::acquire().await;
    const N: u64 = 5000;
    const CUTS: u64 = 4;
    const PREFETCH: u16 = 50;
    let broker = Broker::connect().await;
    let proxy = Proxy::start().await;
    let queue = unique("cuts");
    broker.forget_later(&queue);
    let through_proxy = options(&queue).uri(proxy.uri());
    let tally = Tally::new();
    let service = counting_service(through_proxy.clone().prefetch(PREFETCH), &tally)
        .start()
        .await
        .expect("start");
    let client = ClientProxy::new(through_proxy);
    let confirmed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut publisher = tokio::spawn(emit_all(client.clone(), 0..N, confirmed.clone()));

    let mut recoveries = Vec::new();
    let mut cut_links = Vec::new();
    for cut in 1..=CUTS {
        // Each cut in the thick of the traffic: once another fifth of the events is confirmed.
        let due = cut * N / (CUTS + 1);
        until(
            &format!("{due} events are confirmed, for cut {cut}"),
            Duration::from_secs(30),
            || confirmed.load(Ordering::SeqCst) >= due,
        )
        .await;
        assert_pending(
            &mut publisher,
            &format!("cut {cut} was to hit the publisher at work"),
        )
        .await;
        let (handled_then, confirmed_then) = (tally.counts().0, confirmed.load(Ordering::SeqCst));
        let links = proxy.cut();
        assert!(
            links >= 2,
            "cut {cut} closed {links} connection(s): the service's and the client's were to be open"
        );
        cut_links.push(links);
        // Recovered once the service has handled more new events than it could have had in hand
        // at the cut (its prefetch window), and the client has had more confirmed than it had in
        // flight (64): both went on through new connections.
        let recovery = until(
            &format!("the service and the client recover from cut {cut}"),
            Duration::from_secs(10),
            || {
                tally.counts().0 >= handled_then + 2 * u64::from(PREFETCH)
                    && confirmed.load(Ordering::SeqCst) >= confirmed_then + 100
            },
        )
        .await;
        recoveries.push(recovery);
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
        "connection cuts: {N} confirmed events, {CUTS} cuts (connections closed by each: \
         {cut_links:?}), lost {}, duplicated {}, recovery after each cut {recoveries:?}, {:?} in all",
        N - distinct,
        total - distinct,
        started.elapsed()
    );
    assert_eq!(distinct, N, "every confirmed event is handled");
    service.shutdown().await.expect("shutdown");
    client.close().await;
    assert_eq!(broker.ready(&queue).await, 0);
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emits_wait_through_an_outage_then_publish_or_fail_clearly() {
    let _lock = FaultLock::acquire().await;
    let broker = Broker::connect().await;
    let proxy = Proxy::start().await;
    let queue = unique("outage");
    broker.forget_later(&queue);
    let bound = Duration::from_secs(1);
    let client = ClientProxy::new(options(&queue).uri(proxy.uri()).reconnect_timeout(bound));
    client.emit("n", &1).await.expect("before the outage");

    // A short outage: the emit waits and goes through once the broker is reachable again.
    proxy.refuse(true);
    proxy.cut_and_wait().await;
    let started = Instant::now();
    let mut waiting = tokio::spawn({
        let client = client.clone();
        async move { client.emit("n", &2).await }
    });
    // It tried, was refused, and tried again: it waits through the outage.
    until("the emit tries to reconnect twice", bound, || {
        proxy.refused() >= 2
    })
    .await;
    assert_pending(&mut waiting, "the emit was to wait through the outage").await;
    proxy.refuse(false);
    let healed = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the emit goes through within 5 s of the broker coming back")
        .expect("emit task")
        .expect("published after the outage");
    let (waited, after_healing) = (started.elapsed(), healed.elapsed());

    // A long outage: the emit fails after the bound, not before and not much after, with the
    // broker named.
    proxy.refuse(true);
    proxy.cut_and_wait().await;
    let started = Instant::now();
    let failed = within(
        bound + Duration::from_secs(10),
        "an emit during a long outage",
        client.emit("n", &3),
    )
    .await;
    let gave_up = started.elapsed();
    match failed {
        Err(error @ Error::Connect { .. }) => {
            assert!(
                error.to_string().contains(&proxy.port.to_string()),
                "{error}"
            );
        }
        other => panic!("expected Connect after the bound, got {other:?}"),
    }
    assert!(
        gave_up >= bound - Duration::from_millis(100),
        "the emit gave up after {gave_up:?}, before its reconnect_timeout of {bound:?}"
    );
    assert!(
        gave_up < bound + Duration::from_secs(3),
        "the emit gave up after {gave_up:?}, long after its reconnect_timeout of {bound:?}"
    );
    println!(
        "outage: a 'short' emit waited {waited:?} ({after_healing:?} after the broker was back); \
         a 'long' one gave up after {gave_up:?} (bound {bound:?})"
    );
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
    let _lock = FaultLock::acquire().await;
    let broker = Broker::connect().await;
    let proxy = Proxy::start().await;
    let queue = unique("impatient");
    broker.forget_later(&queue);
    let client = ClientProxy::new(
        options(&queue)
            .uri(proxy.uri())
            .reconnect_timeout(Duration::ZERO),
    );
    client.emit("n", &1).await.expect("before the cut");
    // Both ends closed: whether or not lapin has read the end yet, this emit's connection is dead.
    assert_eq!(proxy.cut_and_wait().await, 1, "the client's connection");
    let failed = within(
        Duration::from_secs(10),
        "an emit on a cut connection",
        client.emit("n", &2),
    )
    .await;
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
    let _lock = FaultLock::acquire().await;
    let broker = Broker::connect().await;
    let (first, second) = (Proxy::start().await, Proxy::start().await);
    let queue = unique("failover");
    broker.forget_later(&queue);
    // Port 1 of this machine: a node that does not answer.
    let nodes = format!(
        "{},{},{}",
        Endpoint::from_env().via("127.0.0.1", 1),
        first.uri(),
        second.uri()
    );
    let tally = Tally::new();
    let service = counting_service(options(&queue).uri(&nodes), &tally)
        .start()
        .await
        .expect("start");
    let client = ClientProxy::new(options(&queue).uri(&nodes));
    client
        .emit("n", &1)
        .await
        .expect("through the first reachable node");
    tally.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(second.open(), 0, "nobody uses the second node yet");
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

/// A node that goes silent without closing anything (a dead NAT entry, a frozen VM), and still
/// takes new TCP connections: billing, given it and a healthy node, notices within about two
/// heartbeats, passes over the silent node after the handshake timeout, and every order comes
/// back, all with the default settings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_node_is_noticed_and_passed_over() {
    let _lock = FaultLock::acquire().await;
    const N: u64 = 4000;
    let broker = Broker::connect().await;
    let silent = Proxy::start().await;
    let (billing_queue, orders_queue) = (unique("halfopen-billing"), unique("halfopen-orders"));
    broker.forget_later(&billing_queue);
    broker.forget_later(&orders_queue);
    let both = format!("{},{}", silent.uri(), common::uri());
    // The defaults, which the services below leave alone: the bounds hold for them.
    let (heartbeat, handshake) = (Duration::from_secs(10), Duration::from_secs(5));

    // billing: order_created in, order_processed out, through the first node it reaches.
    let to_orders = ClientProxy::new(options(&orders_queue).uri(&both));
    let slowest_emit = Arc::new(Mutex::new(Duration::ZERO));
    let failed_emits = Arc::new(AtomicU64::new(0));
    let billing = Microservice::new(options(&billing_queue).uri(&both))
        .on_event("order_created", {
            let (slowest, failed) = (slowest_emit.clone(), failed_emits.clone());
            move |Payload(n): Payload<u64>, ctx: RmqContext| {
                let (to_orders, slowest, failed) =
                    (to_orders.clone(), slowest.clone(), failed.clone());
                async move {
                    let started = Instant::now();
                    let emitted = to_orders.emit("order_processed", &n).await;
                    let took = started.elapsed();
                    {
                        let mut slowest = slowest.lock().expect("lock");
                        *slowest = (*slowest).max(took);
                    }
                    if emitted.is_err() {
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                    emitted?;
                    ctx.ack().await
                }
            }
        })
        .start()
        .await
        .expect("start billing");
    // orders: places the orders and sees them come back, on the healthy node only.
    let tally = Tally::new();
    let placing = ClientProxy::new(options(&billing_queue));
    let orders = Microservice::new(options(&orders_queue))
        .on_event("order_processed", {
            let tally = tally.clone();
            move |Payload(n): Payload<u64>, ctx: RmqContext| {
                let tally = tally.clone();
                async move {
                    tally.record(n);
                    ctx.ack().await
                }
            }
        })
        .start()
        .await
        .expect("start orders");
    // Orders are placed at a steady pace, 100 every 100 ms, through the freeze.
    let placed = Arc::new(AtomicU64::new(0));
    let placer = tokio::spawn({
        let (placing, placed) = (placing.clone(), placed.clone());
        async move {
            for batch in 0..N / 100 {
                let errors = emit_all_as(
                    placing.clone(),
                    "order_created",
                    batch * 100..(batch + 1) * 100,
                )
                .await;
                assert!(errors.is_empty(), "placing orders: {errors:?}");
                placed.fetch_add(100, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    tally.wait_for(N / 4, Duration::from_secs(30)).await;
    assert!(
        silent.open() >= 2,
        "billing's consumer and client connections go through the first node"
    );
    // An emit made just as the node goes silent, on a connection through it.
    let probe_queue = unique("halfopen-probe");
    broker.forget_later(&probe_queue);
    let probe = ClientProxy::new(options(&probe_queue).uri(&both));
    probe.connect().await.expect("the probe connects");
    silent.freeze(true);
    let frozen_at = Instant::now();
    let handled_then = tally.counts().0;
    let probe_emit = tokio::spawn({
        let probe = probe.clone();
        async move {
            let started = Instant::now();
            (probe.emit("probe", &0).await, started.elapsed())
        }
    });

    // Noticed: billing tries the first node again (a connection held by the frozen proxy)...
    let noticed = until(
        "billing notices the silent connection and tries to reconnect",
        heartbeat * 3 + Duration::from_secs(5),
        || silent.held().0 >= 1,
    )
    .await;
    // ...gives it up after the handshake timeout, closing the socket, and goes on elsewhere.
    let passed_over = until(
        "billing gives up its attempt on the silent node",
        handshake + Duration::from_secs(5),
        || silent.held().1 >= 1,
    )
    .await;
    let resumed = until(
        "orders come back again after the freeze",
        Duration::from_secs(30),
        || tally.counts().0 > handled_then + 200,
    )
    .await;
    let all_back = tally.wait_for(N, Duration::from_secs(60)).await;
    let since_freeze = frozen_at.elapsed();
    placer.await.expect("placing orders");
    let (probed, probe_took) = within(
        Duration::from_secs(60),
        "the emit made during the freeze",
        probe_emit,
    )
    .await
    .expect("probe task");
    let (distinct, total) = tally.counts();
    let slowest = *slowest_emit.lock().expect("lock");
    println!(
        "silent node: heartbeat {heartbeat:?}, handshake timeout {handshake:?}; noticed \
         {noticed:?} after the freeze, silent node given up {passed_over:?} later, orders \
         flowing again {:?} after the freeze, all {N} back {since_freeze:?} after the freeze \
         ({all_back:?} of waiting); lost {}, duplicated {}, {} emits failed, slowest emit \
         {slowest:?}, an emit made at the freeze returned {probed:?} after {probe_took:?}, \
         attempts held by the silent node {:?}",
        noticed + resumed,
        N - distinct,
        total - distinct,
        failed_emits.load(Ordering::SeqCst),
        silent.held(),
    );
    assert!(
        noticed <= heartbeat * 2 + heartbeat / 2 + Duration::from_secs(2),
        "the silent connection was noticed {noticed:?} after the freeze, later than about two \
         heartbeats ({heartbeat:?} each)"
    );
    assert!(
        passed_over <= handshake + Duration::from_secs(2),
        "the attempt on the silent node was given up {passed_over:?} after it started, its \
         bound is {handshake:?}"
    );
    assert_eq!(distinct, N, "every order comes back");
    assert!(
        since_freeze <= Duration::from_secs(45),
        "every order was back {since_freeze:?} after the freeze; the target is 45 s"
    );
    let bound = rmq_bus::config::DEFAULT_CONFIRM_TIMEOUT + handshake + Duration::from_secs(5);
    assert!(
        slowest <= bound && probe_took <= bound,
        "an emit during the freeze took {slowest:?} (billing) or {probe_took:?} (the probe), past \
         its bounds"
    );
    probed.expect("the emit made at the freeze is published through the healthy node");
    assert_eq!(
        broker.wait_ready(&probe_queue, 1).await,
        1,
        "the probe event is stored"
    );
    probe.close().await;
    billing.shutdown().await.expect("shutdown billing");
    orders.shutdown().await.expect("shutdown orders");
    placing.close().await;
    broker.cleanup().await;
}

/// Emits `pattern` with each of `range`, 64 in flight; returns the errors.
async fn emit_all_as(
    client: ClientProxy,
    pattern: &'static str,
    range: std::ops::Range<u64>,
) -> Vec<Error> {
    futures::stream::iter(range)
        .map(|n| {
            let client = client.clone();
            async move { client.emit(pattern, &n).await }
        })
        .buffer_unordered(64)
        .filter_map(|result| async move { result.err() })
        .collect()
        .await
}

/// Tests that fault the whole broker. `.config/nextest.toml` runs them alone (`whole_broker::`),
/// and they fail at once when the broker is not local.
mod whole_broker {
    use super::*;

    use faults::node::{StoppedBroker, Watermark, connection_states, require_local_broker};
    use tokio::sync::watch;

    /// A service whose handlers count themselves in `entered`, then hold their message until the
    /// test opens `gate`.
    fn gated_service(
        options: rmq_bus::RmqOptions,
        tally: &Tally,
        gate: watch::Receiver<bool>,
        entered: Arc<AtomicU64>,
    ) -> Microservice {
        let tally = tally.clone();
        Microservice::new(options).on_event(
            "n",
            move |Payload(n): Payload<u64>, ctx: RmqContext| {
                let (tally, mut gate, entered) = (tally.clone(), gate.clone(), entered.clone());
                async move {
                    entered.fetch_add(1, Ordering::SeqCst);
                    let _ = gate.wait_for(|open| *open).await;
                    tally.record(n);
                    ctx.ack().await
                }
            },
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_broker_restart_loses_nothing() {
        let _lock = FaultLock::acquire().await;
        require_local_broker("restarts the broker");
        /// Emitted before the broker stops, and held there by the gated handlers.
        const BEFORE: u64 = 300;
        /// Emitted while the broker is down.
        const DURING: u64 = 300;
        const PREFETCH: u16 = 10;
        let marker = BEFORE + DURING;
        let broker = Broker::connect().await;
        // Through a proxy, to see the service and the client try to reconnect during the outage.
        let proxy = Proxy::start().await;
        let queue = unique("restart");
        broker.forget_later(&queue);
        let durable = options(&queue)
            .uri(proxy.uri())
            .reconnect_timeout(Duration::from_secs(30));
        let tally = Tally::new();
        let (gate, gated) = watch::channel(false);
        let entered = Arc::new(AtomicU64::new(0));
        let service = gated_service(
            durable.clone().prefetch(PREFETCH),
            &tally,
            gated,
            entered.clone(),
        )
        .start()
        .await
        .expect("start");
        let client = ClientProxy::new(durable);
        let errors = within(
            Duration::from_secs(30),
            "emitting before the restart",
            emit_all(client.clone(), 0..BEFORE, Arc::default()),
        )
        .await;
        assert!(errors.is_empty(), "{errors:?}");

        // The handlers hold the prefetch window; the rest is ready in the queue when it stops.
        until(
            "the held handlers have the prefetch window",
            Duration::from_secs(10),
            || entered.load(Ordering::SeqCst) == u64::from(PREFETCH),
        )
        .await;
        let expected_ready = (BEFORE - u64::from(PREFETCH)) as u32;
        assert_eq!(
            broker.wait_ready(&queue, expected_ready).await,
            expected_ready,
            "messages are ready in the queue just before the stop"
        );
        assert_eq!(tally.counts(), (0, 0), "the gate held every handler");
        let _ = broker.connection.close(200, "restarting".into()).await;

        let stopped = StoppedBroker::stop().await;
        let stopped_at = Instant::now();
        let (issued, finished) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let during = tokio::spawn(futures::future::join_all((BEFORE..BEFORE + DURING).map(
            |n| {
                let (client, issued, finished) = (client.clone(), issued.clone(), finished.clone());
                async move {
                    issued.fetch_add(1, Ordering::SeqCst);
                    let result = client.emit("n", &n).await;
                    finished.fetch_add(1, Ordering::SeqCst);
                    result
                }
            },
        )));
        until("the emits are made", Duration::from_secs(10), || {
            issued.load(Ordering::SeqCst) == DURING
        })
        .await;
        // Both sides keep trying while the broker is down (each attempt reaches the proxy and
        // finds no broker behind it): a few attempts each, then the broker comes back.
        let attempts = proxy.unreachable();
        until(
            "the service and the client try to reconnect",
            Duration::from_secs(10),
            || proxy.unreachable() >= attempts + 4,
        )
        .await;
        assert_eq!(
            finished.load(Ordering::SeqCst),
            0,
            "no emit returned while the broker was down: they wait for it"
        );
        let start_took = stopped.start().await;
        let outage = stopped_at.elapsed();
        let results = tokio::time::timeout(Duration::from_secs(30), during)
            .await
            .expect("the emits made during the outage return within 30 s of the restart")
            .expect("emits task");
        let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
        assert!(
            failed.is_empty(),
            "{} emits made during the outage failed, first: {:?}",
            failed.len(),
            failed.first()
        );
        let emits_done = stopped_at.elapsed();

        // Open the gate; a marker emitted now, by the same client, must be handled by the same
        // service, as must every event from before and during the outage.
        gate.send(true)
            .expect("the service's handlers watch the gate");
        within(
            Duration::from_secs(30),
            "the marker's emit",
            client.emit("n", &marker),
        )
        .await
        .expect("a marker emitted after the restart");
        let after_restart = tally.wait_for(marker + 1, Duration::from_secs(30)).await;
        assert!(tally.handled(marker), "the marker is handled");
        let (distinct, total) = tally.counts();
        println!(
            "broker restart: {BEFORE} events held before it, {DURING} emitted while it was down \
             (outage {outage:?}, start_app took {start_took:?}), all confirmed; lost {}, \
             duplicated {}, marker and all handled {after_restart:?} after the gate opened \
             (emits were done {emits_done:?} after the stop)",
            marker + 1 - distinct,
            total - distinct,
        );
        assert_eq!(
            distinct,
            marker + 1,
            "every event and the marker are handled"
        );
        service.shutdown().await.expect("shutdown");
        client.close().await;
        let broker = Broker::connect().await;
        broker.forget_later(&queue);
        assert_eq!(broker.ready(&queue).await, 0);
        broker.cleanup().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn blocked_publishers_wait_then_fail_clearly() {
        let _lock = FaultLock::acquire().await;
        require_local_broker("raises a memory alarm");
        let broker = Broker::connect().await;
        let queue = unique("blocked");
        broker.forget_later(&queue);
        let bound = Duration::from_secs(1);
        let client = ClientProxy::new(
            options(&queue)
                .reconnect_timeout(bound)
                .confirm_timeout(Duration::from_secs(2)),
        );
        client.connect().await.expect("connect");
        let alarm = Watermark::alarm().await;
        // The first publish meets the alarm (the broker stops reading); the next ones see the
        // connection blocked and wait, bounded.
        let limit = Duration::from_secs(10);
        let first = within(limit, "the emit meeting the alarm", client.emit("n", &1)).await;
        assert!(
            matches!(
                first,
                Err(Error::Blocked { .. } | Error::ConfirmTimeout { .. })
            ),
            "{first:?}"
        );
        let started = Instant::now();
        let second = within(
            limit,
            "an emit on a blocked connection",
            client.emit("n", &2),
        )
        .await;
        let waited = started.elapsed();
        match &second {
            Err(error @ Error::Blocked { .. }) => {
                assert!(error.to_string().contains("alarm"), "{error}")
            }
            other => panic!("expected Blocked, got {other:?}"),
        }
        assert!(
            waited >= bound - Duration::from_millis(100) && waited < bound + Duration::from_secs(3),
            "a blocked emit waits for its reconnect_timeout ({bound:?}), then fails: it took {waited:?}"
        );
        alarm.clear().await;
        within(limit, "an emit after the alarm", client.emit("n", &3))
            .await
            .expect("publishing works again once the alarm clears");
        client.close().await;
        broker.cleanup().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_blocked_emit_waits_for_the_alarm_to_clear_then_publishes() {
        let _lock = FaultLock::acquire().await;
        require_local_broker("raises a memory alarm");
        let broker = Broker::connect().await;
        let queue = unique("unblocked");
        broker.forget_later(&queue);
        // Bounds far longer than the alarm lasts.
        let client = ClientProxy::new(
            options(&queue)
                .reconnect_timeout(Duration::from_secs(20))
                .confirm_timeout(Duration::from_secs(20)),
        );
        client.connect().await.expect("connect");
        let alarm = Watermark::alarm().await;
        let emit = |n: u64| {
            let client = client.clone();
            tokio::spawn(async move { client.emit("n", &n).await })
        };
        // The first publish meets the alarm, and the broker blocks the connection...
        let started = Instant::now();
        let mut first = emit(1);
        let mut states = Vec::new();
        let blocked = Instant::now();
        while !states.iter().any(|state| state == "blocked") {
            assert!(
                blocked.elapsed() < Duration::from_secs(10),
                "the broker never blocked the client's connection: {states:?}"
            );
            states = connection_states("rmq-bus client").await;
        }
        // ...and an emit made now finds it blocked. Both wait while the alarm lasts (1 s more:
        // that is the scenario), and neither returns.
        let mut second = emit(2);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_pending(
            &mut first,
            "the first emit was to wait while the alarm is on",
        )
        .await;
        assert_pending(&mut second, "an emit on a blocked connection was to wait").await;
        let clearing = Instant::now();
        alarm.clear().await;
        let cleared = Instant::now();
        let (first, second) = tokio::time::timeout(Duration::from_secs(5), async {
            (first.await, second.await)
        })
        .await
        .expect("the blocked emits return within 5 s of the alarm clearing");
        first
            .expect("emit task")
            .expect("the first emit publishes once the alarm clears");
        second
            .expect("emit task")
            .expect("the second emit publishes once the alarm clears");
        println!(
            "memory alarm: two emits waited {:?} in all; they returned {:?} after the watermark \
             was being restored, {:?} after the node reported the alarm gone",
            started.elapsed(),
            clearing.elapsed(),
            cleared.elapsed()
        );
        assert_eq!(
            broker.wait_ready(&queue, 2).await,
            2,
            "both events are in the queue"
        );
        client.close().await;
        broker.cleanup().await;
    }
}
