//! Per-key ordering on the real broker: strict per-key order under load with keys overlapping in
//! time, a failure in the middle of a key's sequence retried in place while other keys go on, a
//! stuck key parked out of the window, a missing key dead-lettered with its reason, and two
//! instances on a partitioned queue with one stopped mid-run.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Broker, header, options, unique};
use lapin::BasicProperties;
use rmq_bus::config::RetryPolicy;
use rmq_bus::contract::Event;
use rmq_bus::{ClientProxy, Microservice, Payload, RmqContext};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// What the handlers of one test saw, checked as they run.
#[derive(Default)]
struct Tracker {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The last sequence number handled successfully, per key.
    last: HashMap<String, i64>,
    /// Keys with a handler running now.
    running: HashSet<String>,
    /// The most keys seen running at once.
    most_running: usize,
    /// Order broken, or a key run twice at once.
    violations: Vec<String>,
    handled: usize,
    /// (key, seq, attempt) in the order handlers started.
    started: Vec<(String, i64)>,
    /// Per key: when its last event was handled.
    finished_at: HashMap<String, Instant>,
    /// Which instance handled events, from which queue.
    by_instance: HashMap<&'static str, HashSet<String>>,
}

impl Tracker {
    /// A handler of `key`'s event `seq` starts: it must be the next of its key, alone.
    fn start(&self, key: &str, seq: i64) {
        let mut state = self.state.lock().unwrap();
        let expected = state.last.get(key).map_or(0, |last| last + 1);
        if seq != expected {
            let violation = format!("key {key}: event {seq} started, expected {expected}");
            state.violations.push(violation);
        }
        if !state.running.insert(key.to_owned()) {
            state
                .violations
                .push(format!("key {key}: two events at once ({seq})"));
        }
        state.most_running = state.most_running.max(state.running.len());
        state.started.push((key.to_owned(), seq));
    }

    /// It ended: `ok` if it succeeded.
    fn end(&self, key: &str, seq: i64, ok: bool) {
        let mut state = self.state.lock().unwrap();
        state.running.remove(key);
        if ok {
            state.last.insert(key.to_owned(), seq);
            state.handled += 1;
            state.finished_at.insert(key.to_owned(), Instant::now());
        }
    }

    fn handled(&self) -> usize {
        self.state.lock().unwrap().handled
    }

    /// Waits until `count` events were handled, failing after `patience`.
    async fn wait_handled(&self, count: usize, patience: Duration) {
        let deadline = Instant::now() + patience;
        while self.handled() < count {
            assert!(
                Instant::now() < deadline,
                "only {} of {count} events handled in {patience:?}",
                self.handled()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn assert_in_order(&self) {
        let state = self.state.lock().unwrap();
        let shown: Vec<_> = state.violations.iter().take(5).collect();
        assert!(
            state.violations.is_empty(),
            "{} order violations, first: {shown:?}",
            state.violations.len()
        );
    }
}

/// An order update: its key and its place in the order's sequence.
#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(pattern = "order_updated", ordered_by = "orderId")]
#[serde(rename_all = "camelCase")]
struct OrderUpdated {
    order_id: String,
    seq: i64,
}

/// A pseudo-random delay of 0 to `max_ms` ms, the same for the same event.
fn delay_of(key: &str, seq: i64, max_ms: u64) -> Duration {
    let mut hash = key
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64 ^ seq as u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    hash ^= hash >> 29;
    Duration::from_micros(hash % (max_ms * 1000 + 1))
}

/// A handler that checks order, sleeps `max_ms` at most and acks.
fn ordered_handler(
    tracker: Arc<Tracker>,
    max_ms: u64,
) -> impl Fn(
    Payload<OrderUpdated>,
    RmqContext,
) -> futures::future::BoxFuture<'static, rmq_bus::Result<()>>
+ Clone
+ Send
+ Sync
+ 'static {
    move |Payload(update): Payload<OrderUpdated>, ctx: RmqContext| {
        let tracker = tracker.clone();
        Box::pin(async move {
            tracker.start(&update.order_id, update.seq);
            tokio::time::sleep(delay_of(&update.order_id, update.seq, max_ms)).await;
            tracker.end(&update.order_id, update.seq, true);
            ctx.ack().await
        })
    }
}

/// Publishes raw event packets, in order, without waiting for each (one channel keeps order).
async fn publish_updates(
    broker: &Broker,
    queue: &str,
    events: impl Iterator<Item = (String, i64)>,
) {
    for (key, seq) in events {
        let body = json!({"pattern": "order_updated", "data": {"orderId": key, "seq": seq}});
        broker
            .publish_with(
                queue,
                body.to_string().as_bytes(),
                BasicProperties::default(),
            )
            .await;
    }
}

/// How many events the load test sends: `ORDERING_EVENTS`, by default the 20000.
fn load_size() -> usize {
    std::env::var("ORDERING_EVENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_is_handled_in_order_under_load_while_keys_overlap() {
    let broker = Broker::connect().await;
    let queue = unique("ordered-load");
    broker.forget_later(&queue);
    let tracker = Arc::new(Tracker::default());
    let service = || {
        let handler = ordered_handler(tracker.clone(), 5);
        Microservice::new(options(&queue)).on_ordered_event("order_updated", "orderId", handler)
    };
    // The events are published first (the queue declared by a first start), so that the window
    // always holds several events of a key: were the consumer to keep up with the publisher,
    // order would hold by timing alone.
    service()
        .start()
        .await
        .expect("declare")
        .shutdown()
        .await
        .expect("stop");
    // Keys drawn at random, so that a key's events are sometimes next to each other and sometimes
    // far apart; each key's own sequence counts up.
    let (events, keys) = (load_size(), 200);
    let mut counts: HashMap<String, i64> = HashMap::new();
    let updates: Vec<(String, i64)> = (0..events)
        .map(|i| {
            let draw = delay_of("key", i as i64, 1_000).as_micros() as usize;
            let key = format!("o-{}", draw % keys);
            let seq = counts.entry(key.clone()).or_default();
            *seq += 1;
            (key, *seq - 1)
        })
        .collect();
    publish_updates(&broker, &queue, updates.into_iter()).await;
    let started = Instant::now();
    let running = service().start().await.expect("start");
    tracker.wait_handled(events, Duration::from_secs(120)).await;
    let elapsed = started.elapsed();
    running.shutdown().await.expect("shutdown");

    tracker.assert_in_order();
    {
        let state = tracker.state.lock().unwrap();
        assert_eq!(state.last.len(), keys);
        for (key, count) in &counts {
            assert_eq!(
                state.last[key],
                count - 1,
                "{key} handled to its last event"
            );
        }
        // Keys overlap: many ran at once (with prefetch 250 and 200 keys, far more than a few).
        assert!(
            state.most_running >= 20,
            "keys did not overlap: at most {} ran at once",
            state.most_running
        );
        eprintln!(
            "{events} events over {keys} keys in {elapsed:?}; up to {} keys at once",
            state.most_running
        );
    }
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_mid_sequence_holds_its_key_only() {
    let broker = Broker::connect().await;
    let queue = unique("ordered-failure");
    broker.forget_later(&queue);
    broker.forget_later(&format!("{queue}.retry.300ms"));
    broker.forget_later(&format!("{queue}.retry.600ms"));
    let tracker = Arc::new(Tracker::default());
    let failures = Arc::new(Mutex::new(0_u32));
    let recovered_at = Arc::new(Mutex::new(None::<Instant>));
    let handler = {
        let (tracker, failures, recovered_at) =
            (tracker.clone(), failures.clone(), recovered_at.clone());
        move |Payload(update): Payload<OrderUpdated>, ctx: RmqContext| {
            let (tracker, failures, recovered_at) =
                (tracker.clone(), failures.clone(), recovered_at.clone());
            async move {
                tracker.start(&update.order_id, update.seq);
                tokio::time::sleep(Duration::from_millis(2)).await;
                if update.order_id == "stuck" && update.seq == 5 {
                    let mut failed = failures.lock().unwrap();
                    if *failed < 2 {
                        *failed += 1;
                        tracker.end(&update.order_id, update.seq, false);
                        return Err(rmq_bus::Error::Config("the database is away".into()));
                    }
                    *recovered_at.lock().unwrap() = Some(Instant::now());
                }
                tracker.end(&update.order_id, update.seq, true);
                ctx.ack().await
            }
        }
    };
    let retry = RetryPolicy::exponential(3, Duration::from_millis(300), Duration::from_secs(5));
    let running = Microservice::new(options(&queue).retry(retry))
        .on_ordered_event("order_updated", "orderId", handler)
        .start()
        .await
        .expect("start");

    // stuck's 10 events interleaved with 10 other keys' 10 events each.
    let keys: Vec<String> = std::iter::once("stuck".to_owned())
        .chain((0..10).map(|k| format!("k-{k}")))
        .collect();
    let events = (0..10).flat_map(|seq| keys.iter().map(move |key| (key.clone(), seq)));
    publish_updates(&broker, &queue, events).await;
    tracker
        .wait_handled(keys.len() * 10, Duration::from_secs(30))
        .await;
    running.shutdown().await.expect("shutdown");

    tracker.assert_in_order();
    assert_eq!(*failures.lock().unwrap(), 2, "event 5 failed twice");
    {
        let state = tracker.state.lock().unwrap();
        let stuck: Vec<i64> = state
            .started
            .iter()
            .filter(|(key, _)| key == "stuck")
            .map(|(_, seq)| *seq)
            .collect();
        assert_eq!(
            stuck,
            [0, 1, 2, 3, 4, 5, 5, 5, 6, 7, 8, 9],
            "stuck's later events waited for its retries"
        );
        // The other keys went on meanwhile: all done before stuck's event 5 succeeded (after its
        // 300 ms and 600 ms retry delays).
        let recovered = recovered_at.lock().unwrap().expect("event 5 succeeded");
        for key in keys.iter().filter(|key| *key != "stuck") {
            assert!(
                state.finished_at[key] < recovered,
                "{key} was held up by stuck's retries"
            );
        }
    }
    let dead = broker.try_ready(&format!("{queue}.dlq")).await;
    assert_eq!(dead.unwrap_or(0), 0, "nothing dead-lettered");
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_key_is_parked_out_of_the_window_in_order() {
    let broker = Broker::connect().await;
    let queue = unique("ordered-park");
    broker.forget_later(&queue);
    broker.forget_later(&format!("{queue}.retry.1000ms"));
    let tracker = Arc::new(Tracker::default());
    let (release, released) = tokio::sync::watch::channel(false);
    let handler = {
        let tracker = tracker.clone();
        move |Payload(update): Payload<OrderUpdated>, ctx: RmqContext| {
            let (tracker, mut released) = (tracker.clone(), released.clone());
            async move {
                tracker.start(&update.order_id, update.seq);
                if update.order_id == "stuck" && update.seq == 0 {
                    let _ = released.wait_for(|released| *released).await;
                }
                tracker.end(&update.order_id, update.seq, true);
                ctx.ack().await
            }
        }
    };
    // A window of 20 of which one key may hold 1 running + 3 waiting.
    let running = Microservice::new(options(&queue).prefetch(20).max_waiting_per_key(3))
        .on_ordered_event("order_updated", "orderId", handler)
        .start()
        .await
        .expect("start");

    // 30 of stuck's events first, then 100 of 10 other keys: without parking, stuck's would fill
    // the window of 20 and the others would wait for the release.
    publish_updates(
        &broker,
        &queue,
        (0..30).map(|seq| ("stuck".to_owned(), seq)),
    )
    .await;
    let others = (0..10).flat_map(|seq| (0..10).map(move |k| (format!("k-{k}"), seq)));
    publish_updates(&broker, &queue, others).await;
    tracker.wait_handled(100, Duration::from_secs(20)).await;
    assert_eq!(
        tracker.state.lock().unwrap().last.get("stuck"),
        None,
        "stuck is still held"
    );
    release.send(true).unwrap();
    tracker.wait_handled(130, Duration::from_secs(30)).await;
    running.shutdown().await.expect("shutdown");
    tracker.assert_in_order();
    assert_eq!(tracker.state.lock().unwrap().last.get("stuck"), Some(&29));
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_without_its_key_is_dead_lettered_with_the_reason() {
    let broker = Broker::connect().await;
    let queue = unique("ordered-nokey");
    broker.forget_later(&queue);
    let tracker = Arc::new(Tracker::default());
    let running = Microservice::new(options(&queue))
        .on_ordered_event(
            "order_updated",
            "order.id",
            move |Payload(data): Payload<Value>, ctx: RmqContext| {
                let tracker = tracker.clone();
                async move {
                    let key = data["order"]["id"].as_str().unwrap_or_default().to_owned();
                    tracker.start(&key, 0);
                    tracker.end(&key, 0, true);
                    ctx.ack().await
                }
            },
        )
        .start()
        .await
        .expect("start");

    for data in [
        json!({"seq": 1}),
        json!({"order": {"id": {"nested": true}}}),
        json!({"order": {"id": "o-1"}}),
    ] {
        let body = json!({"pattern": "order_updated", "data": data}).to_string();
        broker.publish_raw(&queue, body.as_bytes()).await;
    }
    let dlq = format!("{queue}.dlq");
    broker.wait_ready(&dlq, 2).await;
    running.shutdown().await.expect("shutdown");
    let dead = broker.drain(&dlq).await;
    let reasons: Vec<String> = dead
        .iter()
        .map(|(_, properties)| header(properties, "x-rmq-bus-error").expect("a reason"))
        .collect();
    assert!(
        reasons[0].contains("ordering key data.order.id is missing"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].contains("is an object, not a string or a number"),
        "{reasons:?}"
    );
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_partitions_and_the_survivor_takes_over_in_order() {
    let broker = Broker::connect().await;
    let queue = unique("ordered-partitions");
    let partitions = 4_u16;
    for partition in 0..partitions {
        broker.forget_later(&format!("{queue}.{partition}"));
    }
    broker.forget_exchange_later(&queue);
    let tracker = Arc::new(Tracker::default());
    let instance = |name: &'static str| {
        let tracker = tracker.clone();
        // A small window, so that the backlog is not all taken by whoever comes first.
        let partitioned = options(&queue).partitions(partitions).prefetch(10);
        Microservice::new(partitioned.max_waiting_per_key(10)).on_ordered_event(
            "order_updated",
            "orderId",
            move |Payload(update): Payload<OrderUpdated>, ctx: RmqContext| {
                let tracker = tracker.clone();
                async move {
                    tracker.start(&update.order_id, update.seq);
                    tokio::time::sleep(delay_of(&update.order_id, update.seq, 5)).await;
                    {
                        let mut state = tracker.state.lock().unwrap();
                        let queues = state.by_instance.entry(name).or_default();
                        queues.insert(ctx.delivery().queue.clone());
                    }
                    tracker.end(&update.order_id, update.seq, true);
                    ctx.ack().await
                }
            },
        )
    };
    // Typed publishes: the contract names its key, so the client sends it for the exchange. A
    // backlog first, so that every partition holds several events of a key at once.
    let client = ClientProxy::new(options(&queue).partitions(partitions));
    let (events, keys, backlog) = (3000_usize, 60_usize, 1000_usize);
    let update = |i: usize| OrderUpdated {
        order_id: format!("o-{}", i % keys),
        seq: (i / keys) as i64,
    };
    // The partitions exist once a microservice declared them.
    let setup = instance("setup")
        .start()
        .await
        .expect("declare the partitions");
    setup.shutdown().await.expect("shutdown setup");
    for i in 0..backlog {
        client.publish(&update(i)).await.expect("publish");
    }
    // First started, first active on every partition; the second waits as standby.
    let (first, second) = tokio::join!(instance("first").start(), async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        instance("second").start().await
    });
    let (first, second) = (first.expect("start first"), second.expect("start second"));
    let publisher = {
        let client = client.clone();
        tokio::spawn(async move {
            for i in backlog..events {
                let update = OrderUpdated {
                    order_id: format!("o-{}", i % keys),
                    seq: (i / keys) as i64,
                };
                client.publish(&update).await.expect("publish");
            }
        })
    };
    tracker
        .wait_handled(events / 4, Duration::from_secs(60))
        .await;
    first.shutdown().await.expect("first stops, draining");
    publisher.await.expect("publisher");
    tracker.wait_handled(events, Duration::from_secs(60)).await;
    second.shutdown().await.expect("shutdown second");
    client.close().await;

    tracker.assert_in_order();
    {
        let state = tracker.state.lock().unwrap();
        assert_eq!(state.handled, events, "nothing lost, nothing twice");
        let all: HashSet<String> = (0..partitions).map(|p| format!("{queue}.{p}")).collect();
        assert_eq!(
            state.by_instance.get("second"),
            Some(&all),
            "every partition moved to the survivor"
        );
        assert!(
            state.by_instance.contains_key("first"),
            "the first handled some first"
        );
    }
    broker.cleanup().await;
}

#[test]
fn contracts_name_their_ordering_key() {
    assert_eq!(OrderUpdated::ORDERED_BY, Some("orderId"));
}

/// The in-memory transport keeps order the same way, and reports a parked event's outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_test_broker_keeps_order_and_reports_parked_events() {
    use rmq_bus::context::Outcome;
    use rmq_bus::testing::TestBroker;

    let broker = TestBroker::new();
    let tracker = Arc::new(Tracker::default());
    let (release, released) = tokio::sync::watch::channel(false);
    let handler = {
        let tracker = tracker.clone();
        move |Payload(update): Payload<OrderUpdated>, ctx: RmqContext| {
            let (tracker, mut released) = (tracker.clone(), released.clone());
            async move {
                tracker.start(&update.order_id, update.seq);
                if update.seq == 0 {
                    let _ = released.wait_for(|released| *released).await;
                }
                tracker.end(&update.order_id, update.seq, true);
                ctx.ack().await
            }
        }
    };
    let running = Microservice::new(broker.options("ORDERS").max_waiting_per_key(1))
        .on_ordered_event("order_updated", "orderId", handler)
        .start()
        .await
        .expect("start");
    for seq in 0..4 {
        let update = json!({"orderId": "o-1", "seq": seq});
        broker
            .publish("ORDERS", "order_updated", &update)
            .expect("publish");
    }
    // 0 runs (held), 1 waits, 2 and 3 are parked.
    for _ in 0..2 {
        let settled = broker.settled("ORDERS").await;
        assert!(
            matches!(settled.outcome, Outcome::Parked { .. }),
            "{:?}",
            settled.outcome
        );
    }
    release.send(true).unwrap();
    tracker.wait_handled(4, Duration::from_secs(10)).await;
    running.shutdown().await.expect("shutdown");
    tracker.assert_in_order();
}
