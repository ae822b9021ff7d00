//! The transactional outbox and the idempotent inbox against real PostgreSQL, SQLite and
//! RabbitMQ: each test has a database (or file) of its own and unique queues, removed after.
//!
//! The crash cases (SIGKILL of whole services) are in `examples_e2e.rs`, on the examples.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod common;
mod faults {
    pub mod node;
    pub mod proxy;
}
#[path = "common/db.rs"]
mod db;

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::{Broker, options, recv, reporter, unique};
use db::{Sql, TestPg, TestSqlite};
use faults::proxy::Proxy;
use rmq_bus::config::Exchange;
use rmq_bus::contract::Event;
use rmq_bus::inbox::Inbox;
use rmq_bus::outbox::{Outbox, RelayOptions};
use rmq_bus::store::sqlx;
use rmq_bus::{ClientProxy, Microservice, Payload, RmqContext};
use serde::Serialize;
use serde_json::{Value, json};

/// A relay that only a wake can make publish within a test's patience: it polls once a minute.
fn woken_only() -> RelayOptions {
    RelayOptions::default().poll_interval(Duration::from_secs(60))
}

/// Waits (up to `patience`) until `queue` holds `count` messages, then takes them all.
async fn take(
    broker: &Broker,
    queue: &str,
    count: u32,
    patience: Duration,
) -> Vec<(Value, String)> {
    let started = Instant::now();
    loop {
        let ready = broker.ready(queue).await;
        if ready >= count {
            break;
        }
        assert!(
            started.elapsed() < patience,
            "{queue} holds {ready} of the {count} messages expected after {patience:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    broker
        .drain(queue)
        .await
        .into_iter()
        .map(|(body, properties)| {
            let body: Value = serde_json::from_slice(&body).expect("a JSON packet");
            let id = properties
                .message_id()
                .as_ref()
                .map(|id| id.to_string())
                .expect("every relayed event has a message_id");
            (body, id)
        })
        .collect()
}

#[derive(Event, Serialize)]
#[event(pattern = "order_created")]
struct OrderCreated {
    n: u32,
}

/// Committed events go out in the order written, each with the message id `emit` returned;
/// a rolled-back one never does; the relay wakes on the commit, not on its poll.
async fn relays_committed_events<DB: Sql>(pool: sqlx::Pool<DB>) {
    let broker = Broker::connect().await;
    let queue = unique("outbox-order");
    broker.forget_later(&queue);
    let outbox = Outbox::new(pool.clone());
    let billing = outbox.client(ClientProxy::new(options(&queue)));
    billing.client().connect().await.expect("declare the queue");
    let relay = outbox.relay_with(woken_only());
    // Past its start-up passes: from now on only a wake makes it look.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut ids = Vec::new();
    let mut tx = pool.begin().await.unwrap();
    for n in 0..5 {
        ids.push(
            billing
                .emit(&mut tx, "order_created", &json!({ "n": n }))
                .await
                .unwrap(),
        );
    }
    tx.commit().await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    billing
        .emit(&mut tx, "order_created", &json!({ "n": "rolled back" }))
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    ids.push(
        billing
            .publish(&mut tx, &OrderCreated { n: 5 })
            .await
            .unwrap(),
    );
    tx.commit().await.unwrap();

    let got = take(&broker, &queue, 6, Duration::from_secs(10)).await;
    let numbers: Vec<Value> = got
        .iter()
        .map(|(body, _)| body["data"]["n"].clone())
        .collect();
    assert_eq!(numbers, (0..6).map(Value::from).collect::<Vec<_>>());
    assert!(
        got.iter()
            .all(|(body, _)| body["pattern"] == "order_created")
    );
    let got_ids: Vec<String> = got.into_iter().map(|(_, id)| id).collect();
    assert_eq!(
        got_ids, ids,
        "each event carries the message id emit returned"
    );
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 6, "unique ids");
    let started = Instant::now();
    while DB::count(&pool, "SELECT count(*) FROM rmq_bus_outbox").await != 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "rows left in the outbox"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    relay.shutdown().await;
    assert_eq!(broker.ready(&queue).await, 0, "nothing else was published");
    broker.cleanup().await;
}

#[tokio::test]
async fn relay_publishes_committed_events_in_order_on_postgres() {
    let db = TestPg::create("outbox-order").await;
    relays_committed_events(db.pool(5).await).await;
}

#[tokio::test]
async fn relay_publishes_committed_events_in_order_on_sqlite() {
    let db = TestSqlite::create("outbox-order");
    relays_committed_events(db.pool().await).await;
}

/// A row the broker keeps refusing (unroutable: no queue bound for its key) is retried later,
/// then moved to `rmq_bus_outbox_dead` with the reason; the rows behind it go out meanwhile.
async fn poison_row_is_moved_aside<DB: Sql>(pool: sqlx::Pool<DB>) {
    let broker = Broker::connect().await;
    let (queue, exchange) = (unique("outbox-poison"), unique("outbox-poison-x"));
    broker.forget_later(&queue);
    broker.forget_exchange_later(&exchange);
    let routed = options(&queue).exchange(Exchange::direct(&exchange));
    let (seen, mut saw) = tokio::sync::mpsc::unbounded_channel();
    let consumer = Microservice::new(routed.clone())
        .on_event("good", reporter(seen))
        .start()
        .await
        .unwrap();
    let outbox = Outbox::new(pool.clone());
    let events = outbox.client(ClientProxy::new(routed));
    let relay = outbox.relay_with(woken_only().max_attempts(2));

    let mut tx = pool.begin().await.unwrap();
    events.emit(&mut tx, "good", &1).await.unwrap();
    let poison = events.emit(&mut tx, "nobody_listens", &2).await.unwrap();
    events.emit(&mut tx, "good", &3).await.unwrap();
    tx.commit().await.unwrap();

    assert_eq!(recv(&mut saw).await.data, json!(1));
    assert_eq!(
        recv(&mut saw).await.data,
        json!(3),
        "the row behind the poison one went out"
    );
    // Refused once, tried again 2 s later, refused again: moved aside.
    let started = Instant::now();
    while DB::count(&pool, "SELECT count(*) FROM rmq_bus_outbox_dead").await == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the poison row was never moved aside"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dead = format!(
        "SELECT count(*) FROM rmq_bus_outbox_dead WHERE message_id = '{poison}' \
         AND attempts = 2 AND reason LIKE '%unroutable%'"
    );
    assert_eq!(
        DB::count(&pool, &dead).await,
        1,
        "moved aside after 2 attempts, with why"
    );
    assert_eq!(
        DB::count(&pool, "SELECT count(*) FROM rmq_bus_outbox").await,
        0
    );
    relay.shutdown().await;
    consumer.shutdown().await.unwrap();
    broker.cleanup().await;
}

#[tokio::test]
async fn poison_row_does_not_block_on_postgres() {
    let db = TestPg::create("outbox-poison").await;
    poison_row_is_moved_aside(db.pool(5).await).await;
}

#[tokio::test]
async fn poison_row_does_not_block_on_sqlite() {
    let db = TestSqlite::create("outbox-poison");
    poison_row_is_moved_aside(db.pool().await).await;
}

/// The same delivery twice has its effects once: the second claim of its message id returns
/// `false`. A claim rolled back does not count; consumers are told apart; old claims expire.
async fn inbox_gives_effects_once<DB: Sql>(pool: sqlx::Pool<DB>) {
    let inbox = Inbox::new(pool.clone());
    let claim = |consumer: &'static str, key: &'static str, commit: bool| {
        let (pool, inbox) = (pool.clone(), inbox.clone());
        async move {
            let mut tx = pool.begin().await.unwrap();
            let first = inbox.claim(&mut tx, consumer, key).await.unwrap();
            if commit {
                tx.commit().await.unwrap();
            } else {
                tx.rollback().await.unwrap();
            }
            first
        }
    };
    assert!(claim("billing", "o-1", false).await);
    assert!(
        claim("billing", "o-1", true).await,
        "the rolled-back claim did not count"
    );
    assert!(!claim("billing", "o-1", true).await, "a duplicate");
    assert!(claim("shipping", "o-1", true).await, "another consumer");
    assert_eq!(inbox.expire(Duration::from_secs(3600)).await.unwrap(), 0);
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(inbox.expire(Duration::ZERO).await.unwrap(), 2);
    assert!(claim("billing", "o-1", true).await, "expired, so new again");

    // Over the broker: the same message (same message_id) delivered twice.
    let broker = Broker::connect().await;
    let queue = unique("inbox");
    broker.forget_later(&queue);
    let effects = Arc::new(AtomicU32::new(0));
    let (done, mut handled) = tokio::sync::mpsc::unbounded_channel();
    let handler = {
        let (pool, inbox, effects) = (pool.clone(), inbox.clone(), effects.clone());
        move |Payload(_): Payload<Value>, ctx: RmqContext| {
            let (pool, inbox, effects, done) =
                (pool.clone(), inbox.clone(), effects.clone(), done.clone());
            async move {
                let mut tx = pool.begin().await?;
                let first = inbox.claim_message(&mut tx, "billing", &ctx).await?;
                tx.commit().await?;
                if first {
                    effects.fetch_add(1, Ordering::SeqCst);
                }
                ctx.ack().await?;
                let _ = done.send(first);
                Ok::<(), rmq_bus::Error>(())
            }
        }
    };
    let consumer = Microservice::new(options(&queue))
        .on_event("charge", handler)
        .start()
        .await
        .unwrap();
    let client = ClientProxy::new(options(&queue));
    client.emit_with_id("charge", &1, "m-1").await.unwrap();
    client.emit_with_id("charge", &1, "m-1").await.unwrap();
    client.emit("charge", &2).await.unwrap();
    // Handled concurrently: in any order, one of the two m-1 deliveries is the duplicate.
    let mut firsts = [
        recv(&mut handled).await,
        recv(&mut handled).await,
        recv(&mut handled).await,
    ];
    firsts.sort();
    assert_eq!(firsts, [false, true, true]);
    assert_eq!(
        effects.load(Ordering::SeqCst),
        2,
        "three deliveries, two messages"
    );
    client.close().await;
    consumer.shutdown().await.unwrap();
    broker.cleanup().await;
}

#[tokio::test]
async fn inbox_gives_effects_once_on_postgres() {
    let db = TestPg::create("inbox").await;
    inbox_gives_effects_once(db.pool(5).await).await;
}

#[tokio::test]
async fn inbox_gives_effects_once_on_sqlite() {
    let db = TestSqlite::create("inbox");
    inbox_gives_effects_once(db.pool().await).await;
}

/// While the broker cannot be reached, commits go on, the relay backs off (a handful of
/// connection attempts, not a spin), and it publishes everything once the broker is back.
async fn relay_waits_out_an_outage<DB: Sql>(pool: sqlx::Pool<DB>) {
    let broker = Broker::connect().await;
    let queue = unique("outbox-outage");
    broker.forget_later(&queue);
    let proxy = Proxy::start().await;
    let outbox = Outbox::new(pool.clone());
    let events = outbox.client(ClientProxy::new(options(&queue).uri(proxy.uri())));
    events.client().connect().await.expect("declare the queue");
    let relay = outbox.relay_with(woken_only());
    proxy.refuse(true);
    proxy.cut_and_wait().await;

    let mut ids = Vec::new();
    for n in 0..4 {
        let mut tx = pool.begin().await.unwrap();
        for k in 0..5 {
            ids.push(events.emit(&mut tx, "tick", &(n * 5 + k)).await.unwrap());
        }
        tx.commit()
            .await
            .expect("commits go on while the broker is down");
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(broker.ready(&queue).await, 0);
    let attempts = proxy.refused();
    assert!(
        (1..=10).contains(&attempts),
        "{attempts} connection attempts in 3 s: the relay backs off (100 ms doubling), it does not spin"
    );
    proxy.refuse(false);
    let got = take(&broker, &queue, 20, Duration::from_secs(15)).await;
    let got_ids: Vec<String> = got.into_iter().map(|(_, id)| id).collect();
    assert_eq!(got_ids, ids, "all of them, in order, with their ids");
    relay.shutdown().await;
    broker.cleanup().await;
}

#[tokio::test]
async fn relay_waits_out_a_broker_outage_on_postgres() {
    let db = TestPg::create("outbox-outage").await;
    relay_waits_out_an_outage(db.pool(5).await).await;
}

#[tokio::test]
async fn relay_waits_out_a_broker_outage_on_sqlite() {
    let db = TestSqlite::create("outbox-outage");
    relay_waits_out_an_outage(db.pool().await).await;
}

/// Two relays (two processes' worth: pools and connections of their own) on one PostgreSQL
/// database, while four writers commit: every event is published, none twice.
#[tokio::test]
async fn two_relays_on_one_postgres_database_lose_nothing() {
    let db = TestPg::create("two-relays").await;
    let broker = Broker::connect().await;
    let queue = unique("outbox-two-relays");
    broker.forget_later(&queue);
    let mut outboxes = Vec::new();
    for _ in 0..2 {
        let pool = db.pool(6).await;
        let outbox = Outbox::new(pool.clone());
        let events = outbox.client(ClientProxy::new(options(&queue)));
        events.client().connect().await.unwrap();
        let relay = outbox.relay_with(RelayOptions::default().batch_size(25));
        outboxes.push((pool, events, relay));
    }
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (pool, events, _) = &outboxes[w % 2];
            let (pool, events) = (pool.clone(), events.clone());
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for _ in 0..25 {
                    let mut tx = pool.begin().await.unwrap();
                    for k in 0..10 {
                        ids.push(events.emit(&mut tx, "tick", &(w, k)).await.unwrap());
                    }
                    tx.commit().await.unwrap();
                }
                ids
            })
        })
        .collect();
    let mut ids = BTreeSet::new();
    for writer in writers {
        ids.extend(writer.await.unwrap());
    }
    assert_eq!(ids.len(), 1000);
    let got = take(&broker, &queue, 1000, Duration::from_secs(30)).await;
    // Anything published twice would be here by now too.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let late = broker.drain(&queue).await.len();
    let got: Vec<String> = got.into_iter().map(|(_, id)| id).collect();
    let unique_got: BTreeSet<String> = got.iter().cloned().collect();
    assert_eq!(unique_got, ids, "every event published");
    assert_eq!((got.len(), late), (1000, 0), "none published twice");
    for (pool, _, relay) in outboxes {
        relay.shutdown().await;
        pool.close().await;
    }
    broker.cleanup().await;
}
