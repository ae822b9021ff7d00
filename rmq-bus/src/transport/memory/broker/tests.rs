use std::collections::BTreeMap;
use std::pin::pin;
use std::time::Duration;

use futures::FutureExt;
use serde_json::{Value, json};
use tokio::time::{Instant, timeout};

use super::*;

fn no_args() -> BTreeMap<String, Value> {
    BTreeMap::new()
}

fn args(pairs: &[(&str, Value)]) -> BTreeMap<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

fn broker_with(queues: &[&str]) -> MemoryBroker {
    let broker = MemoryBroker::new();
    for queue in queues {
        broker.declare_queue(queue, true, &no_args()).unwrap();
    }
    broker
}

fn send(broker: &MemoryBroker, exchange: &str, key: &str, body: &str) -> PublishOutcome {
    broker
        .publish(
            Sender::Client,
            exchange,
            key,
            body.as_bytes().to_vec(),
            Properties::default(),
        )
        .unwrap()
}

/// The next delivery, failing the test if none comes within a second.
async fn next(consumer: &mut MemoryConsumer) -> MemoryDelivery {
    timeout(Duration::from_secs(1), consumer.next())
        .await
        .expect("a delivery within a second")
        .expect("the consumer still open")
}

/// Whether the consumer has nothing to deliver now. Deliveries are taken from the broker's state
/// when polled, so one poll answers: no wait.
fn nothing_now(consumer: &mut MemoryConsumer) -> bool {
    consumer.next().now_or_never().is_none()
}

/// Waits (bounded, in the runtime's time) until `condition` holds on the broker: for TTLs to run
/// out, which takes time whatever the test does.
async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn text(delivery: &MemoryDelivery) -> &str {
    std::str::from_utf8(&delivery.body).unwrap()
}

#[tokio::test]
async fn round_trip_on_the_default_exchange() {
    let broker = broker_with(&["q"]);
    let properties = Properties {
        correlation_id: Some("c-1".into()),
        headers: BTreeMap::from([("h".to_owned(), json!(1))]),
        ..Properties::default()
    };
    let outcome = broker
        .publish(
            Sender::Service,
            "",
            "q",
            b"hello".to_vec(),
            properties.clone(),
        )
        .unwrap();
    assert_eq!(outcome, PublishOutcome::Routed(1));
    assert_eq!(broker.ready("q"), Some(1));

    let mut consumer = broker.consume("q", 10, false).unwrap();
    let delivery = next(&mut consumer).await;
    assert_eq!(text(&delivery), "hello");
    assert_eq!(
        (delivery.exchange.as_str(), delivery.routing_key.as_str()),
        ("", "q")
    );
    assert_eq!(delivery.delivery_tag, 1);
    assert!(!delivery.redelivered);
    assert_eq!(delivery.properties, properties);
    assert_eq!((broker.ready("q"), broker.unacked("q")), (Some(0), Some(1)));

    delivery.acker.settle(Settlement::Ack).unwrap();
    assert_eq!((broker.ready("q"), broker.unacked("q")), (Some(0), Some(0)));
    assert!(nothing_now(&mut consumer));
}

#[tokio::test]
async fn unroutable_and_unknown_exchange() {
    let broker = broker_with(&["q"]);
    assert_eq!(send(&broker, "", "nobody", "x"), PublishOutcome::Unroutable);
    broker
        .declare_exchange("events", ExchangeKind::Topic)
        .unwrap();
    assert_eq!(
        send(&broker, "events", "order.created", "x"),
        PublishOutcome::Unroutable
    );
    let missing = broker.publish(
        Sender::Service,
        "nope",
        "q",
        Vec::new(),
        Properties::default(),
    );
    assert!(
        matches!(&missing, Err(MemoryError::NotFound(text)) if text.contains("no exchange 'nope'"))
    );
    assert_eq!(broker.ready("q"), Some(0));
    assert!(matches!(
        broker.bind("q", "nope", "k"),
        Err(MemoryError::NotFound(_))
    ));
    assert!(matches!(
        broker.bind("missing", "events", "k"),
        Err(MemoryError::NotFound(_))
    ));
    assert!(matches!(
        broker.consume("missing", 1, false),
        Err(MemoryError::NotFound(_))
    ));
}

#[tokio::test]
async fn topic_direct_and_fanout_routing() {
    let broker = broker_with(&["star", "hash", "paid", "d", "f1", "f2"]);
    broker
        .declare_exchange("topic", ExchangeKind::Topic)
        .unwrap();
    broker.bind("star", "topic", "order.*").unwrap();
    broker.bind("hash", "topic", "order.#").unwrap();
    broker.bind("hash", "topic", "#.paid").unwrap(); // a second match: still one copy
    broker.bind("paid", "topic", "#.paid").unwrap();

    assert_eq!(
        send(&broker, "topic", "order.created", "1"),
        PublishOutcome::Routed(2)
    );
    assert_eq!(
        send(&broker, "topic", "order.eu.paid", "2"),
        PublishOutcome::Routed(2)
    );
    assert_eq!(
        send(&broker, "topic", "order", "3"),
        PublishOutcome::Routed(1)
    );
    assert_eq!(
        send(&broker, "topic", "invoice", "4"),
        PublishOutcome::Unroutable
    );
    assert_eq!(broker.ready("star"), Some(1));
    assert_eq!(broker.ready("hash"), Some(3));
    assert_eq!(broker.ready("paid"), Some(1));

    broker
        .declare_exchange("direct", ExchangeKind::Direct)
        .unwrap();
    broker.bind("d", "direct", "order.*").unwrap();
    assert_eq!(
        send(&broker, "direct", "order.created", "5"),
        PublishOutcome::Unroutable
    );
    assert_eq!(
        send(&broker, "direct", "order.*", "6"),
        PublishOutcome::Routed(1)
    );

    broker
        .declare_exchange("fanout", ExchangeKind::Fanout)
        .unwrap();
    broker.bind("f1", "fanout", "").unwrap();
    broker.bind("f2", "fanout", "ignored").unwrap();
    assert_eq!(
        send(&broker, "fanout", "anything", "7"),
        PublishOutcome::Routed(2)
    );
    let mut f2 = broker.consume("f2", 0, true).unwrap();
    let delivery = next(&mut f2).await;
    assert_eq!(
        (
            delivery.exchange.as_str(),
            delivery.routing_key.as_str(),
            text(&delivery)
        ),
        ("fanout", "anything", "7")
    );
    assert_eq!(broker.ready("f1"), Some(1));

    broker.delete_exchange("fanout");
    assert!(
        broker
            .publish(
                Sender::Service,
                "fanout",
                "",
                Vec::new(),
                Properties::default()
            )
            .is_err()
    );
}

#[tokio::test]
async fn prefetch_window_holds_back_the_third_until_an_ack() {
    let broker = broker_with(&["q"]);
    for body in ["1", "2", "3"] {
        send(&broker, "", "q", body);
    }
    let mut consumer = broker.consume("q", 2, false).unwrap();
    let first = next(&mut consumer).await;
    let second = next(&mut consumer).await;
    assert_eq!((text(&first), text(&second)), ("1", "2"));
    assert!(nothing_now(&mut consumer));
    assert_eq!((broker.ready("q"), broker.unacked("q")), (Some(1), Some(2)));

    first.acker.settle(Settlement::Ack).unwrap();
    let third = next(&mut consumer).await;
    assert_eq!(text(&third), "3");
    assert_eq!(third.delivery_tag, 3);
}

#[tokio::test]
async fn prefetch_wakes_a_waiting_consumer() {
    let broker = broker_with(&["q"]);
    let mut consumer = broker.consume("q", 1, false).unwrap();
    // Polled once: waiting, with nothing to deliver.
    let mut waiting = pin!(consumer.next());
    assert!((&mut waiting).now_or_never().is_none());
    send(&broker, "", "q", "late");
    let delivery = timeout(Duration::from_secs(1), waiting)
        .await
        .expect("woken by the publish")
        .expect("the consumer still open");
    assert_eq!(delivery.body, b"late");
}

#[tokio::test]
async fn round_robin_between_consumers_with_room() {
    let broker = broker_with(&["q"]);
    let mut a = broker.consume("q", 0, false).unwrap();
    let mut b = broker.consume("q", 0, false).unwrap();
    for body in ["1", "2", "3", "4"] {
        send(&broker, "", "q", body);
    }
    let got_a = [
        text(&next(&mut a).await).to_owned(),
        text(&next(&mut a).await).to_owned(),
    ];
    let got_b = [
        text(&next(&mut b).await).to_owned(),
        text(&next(&mut b).await).to_owned(),
    ];
    assert_eq!(got_a, ["1", "3"]);
    assert_eq!(got_b, ["2", "4"]);

    // A consumer with a full window is skipped.
    let broker = broker_with(&["r"]);
    let mut full = broker.consume("r", 1, false).unwrap();
    let mut open = broker.consume("r", 0, false).unwrap();
    for body in ["1", "2", "3"] {
        send(&broker, "", "r", body);
    }
    assert_eq!(text(&next(&mut full).await), "1");
    assert_eq!(text(&next(&mut open).await), "2");
    assert_eq!(text(&next(&mut open).await), "3");
    assert!(nothing_now(&mut full));
}

#[tokio::test]
async fn nack_with_requeue_redelivers_at_the_head() {
    let broker = broker_with(&["q"]);
    send(&broker, "", "q", "a");
    send(&broker, "", "q", "b");
    let mut consumer = broker.consume("q", 1, false).unwrap();
    let first = next(&mut consumer).await;
    assert!(!first.redelivered);
    first
        .acker
        .settle(Settlement::Nack { requeue: true })
        .unwrap();
    let again = next(&mut consumer).await;
    assert_eq!(text(&again), "a");
    assert!(again.redelivered);
    again.acker.settle(Settlement::Ack).unwrap();
    let second = next(&mut consumer).await;
    assert_eq!(text(&second), "b");
    assert!(!second.redelivered);
}

#[tokio::test]
async fn reject_dead_letters_with_death_headers() {
    let broker = broker_with(&["dlq"]);
    broker
        .declare_exchange("dlx", ExchangeKind::Fanout)
        .unwrap();
    broker.bind("dlq", "dlx", "").unwrap();
    broker
        .declare_queue(
            "q",
            true,
            &args(&[("x-dead-letter-exchange", json!("dlx"))]),
        )
        .unwrap();
    let properties = Properties {
        correlation_id: Some("c-9".into()),
        headers: BTreeMap::from([("app".to_owned(), json!("kept"))]),
        ..Properties::default()
    };
    broker
        .publish(Sender::Service, "", "q", b"bad".to_vec(), properties)
        .unwrap();
    broker
        .publish(
            Sender::Service,
            "",
            "q",
            b"worse".to_vec(),
            Properties::default(),
        )
        .unwrap();

    let mut consumer = broker.consume("q", 0, false).unwrap();
    next(&mut consumer)
        .await
        .acker
        .settle(Settlement::Reject)
        .unwrap();
    next(&mut consumer)
        .await
        .acker
        .settle(Settlement::Nack { requeue: false })
        .unwrap();
    assert_eq!((broker.ready("q"), broker.unacked("q")), (Some(0), Some(0)));
    assert_eq!(broker.ready("dlq"), Some(2));

    let mut dead = broker.consume("dlq", 0, false).unwrap();
    let delivery = next(&mut dead).await;
    assert_eq!(text(&delivery), "bad");
    assert_eq!(
        (delivery.exchange.as_str(), delivery.routing_key.as_str()),
        ("dlx", "q")
    );
    assert!(!delivery.redelivered);
    let headers = &delivery.properties.headers;
    assert_eq!(headers["x-first-death-reason"], json!("rejected"));
    assert_eq!(headers["x-first-death-queue"], json!("q"));
    assert_eq!(headers["x-first-death-exchange"], json!(""));
    assert_eq!(headers["x-last-death-reason"], json!("rejected"));
    assert_eq!(headers["app"], json!("kept"));
    assert_eq!(delivery.properties.correlation_id.as_deref(), Some("c-9"));
    let death = &headers["x-death"][0];
    assert_eq!(death["count"], json!(1));
    assert_eq!(death["reason"], json!("rejected"));
    assert_eq!(death["queue"], json!("q"));
    assert_eq!(death["exchange"], json!(""));
    assert_eq!(death["routing-keys"], json!(["q"]));
    assert!(death["time"].is_u64());
    assert_eq!(text(&next(&mut dead).await), "worse");
}

#[tokio::test]
async fn dead_letter_routing_key_overrides_the_message_key() {
    let broker = broker_with(&["parking"]);
    broker
        .declare_queue(
            "q",
            true,
            &args(&[
                ("x-dead-letter-exchange", json!("")),
                ("x-dead-letter-routing-key", json!("parking")),
            ]),
        )
        .unwrap();
    send(&broker, "", "q", "m");
    let mut consumer = broker.consume("q", 0, false).unwrap();
    next(&mut consumer)
        .await
        .acker
        .settle(Settlement::Reject)
        .unwrap();
    let mut parking = broker.consume("parking", 0, true).unwrap();
    let delivery = next(&mut parking).await;
    assert_eq!(
        (delivery.exchange.as_str(), delivery.routing_key.as_str()),
        ("", "parking")
    );
}

#[tokio::test]
async fn reject_without_dead_letter_exchange_drops() {
    let broker = broker_with(&["q"]);
    send(&broker, "", "q", "m");
    let mut consumer = broker.consume("q", 0, false).unwrap();
    next(&mut consumer)
        .await
        .acker
        .settle(Settlement::Reject)
        .unwrap();
    assert_eq!((broker.ready("q"), broker.unacked("q")), (Some(0), Some(0)));
    assert!(nothing_now(&mut consumer));
}

#[tokio::test]
async fn ttl_dead_letters_back_into_the_queue_after_the_delay() {
    let broker = broker_with(&["work"]);
    let delay = "work.retry.100ms";
    broker
        .declare_queue(
            delay,
            true,
            &args(&[
                ("x-message-ttl", json!(100)),
                ("x-dead-letter-exchange", json!("")),
                ("x-dead-letter-routing-key", json!("work")),
            ]),
        )
        .unwrap();
    let mut consumer = broker.consume("work", 10, false).unwrap();

    let start = Instant::now();
    send(&broker, "", delay, "retry me");
    assert_eq!(broker.ready(delay), Some(1));
    let delivery = next(&mut consumer).await;
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(100),
        "delivered after {waited:?}"
    );
    assert!(
        waited < Duration::from_millis(600),
        "delivered after {waited:?}"
    );
    assert_eq!(text(&delivery), "retry me");
    assert_eq!(
        (delivery.exchange.as_str(), delivery.routing_key.as_str()),
        ("", "work")
    );
    let headers = &delivery.properties.headers;
    assert_eq!(headers["x-first-death-reason"], json!("expired"));
    assert_eq!(headers["x-first-death-queue"], json!(delay));
    assert_eq!(headers["x-death"][0]["reason"], json!("expired"));
    assert_eq!(headers["x-death"][0]["routing-keys"], json!([delay]));
    assert_eq!(broker.ready(delay), Some(0));

    // Republished with its headers (as rmq-bus retries do), the death is counted again.
    broker
        .publish(
            Sender::Service,
            "",
            delay,
            delivery.body.clone(),
            delivery.properties.clone(),
        )
        .unwrap();
    delivery.acker.settle(Settlement::Ack).unwrap();
    let again = next(&mut consumer).await;
    assert_eq!(again.properties.headers["x-death"][0]["count"], json!(2));
    assert_eq!(
        again.properties.headers["x-death"].as_array().map(Vec::len),
        Some(1)
    );
}

#[tokio::test]
async fn ttl_without_dead_letter_exchange_drops_and_spares_delivered_messages() {
    let broker = MemoryBroker::new();
    broker
        .declare_queue("q", true, &args(&[("x-message-ttl", json!(30))]))
        .unwrap();
    send(&broker, "", "q", "taken");
    let mut consumer = broker.consume("q", 1, false).unwrap();
    let taken = next(&mut consumer).await;
    send(&broker, "", "q", "expires");
    until("the message expired", || broker.ready("q") == Some(0)).await;
    assert_eq!(broker.unacked("q"), Some(1), "the delivered one stays");
    taken.acker.settle(Settlement::Ack).unwrap();
    assert!(nothing_now(&mut consumer));
}

#[tokio::test]
async fn ttl_dead_letter_cycle_is_broken() {
    let broker = MemoryBroker::new();
    let looping = args(&[
        ("x-message-ttl", json!(10)),
        ("x-dead-letter-exchange", json!("")),
        ("x-dead-letter-routing-key", json!("loop")),
    ]);
    broker.declare_queue("loop", true, &looping).unwrap();
    send(&broker, "", "loop", "m");
    // Dead-lettered back into itself, it would be ready again at once, every 10 ms, for ever.
    until("the looping message was dropped", || {
        broker.ready("loop") == Some(0)
    })
    .await;
}

#[tokio::test]
async fn redeclaration_must_be_equivalent() {
    let broker = MemoryBroker::new();
    let ttl = args(&[("x-message-ttl", json!(100))]);
    broker.declare_queue("q", true, &ttl).unwrap();
    broker.declare_queue("q", true, &ttl).unwrap();

    let other = broker.declare_queue("q", true, &args(&[("x-message-ttl", json!(200))]));
    let Err(MemoryError::PreconditionFailed(text)) = other else {
        panic!("{other:?}")
    };
    assert!(
        text.starts_with("inequivalent arg 'x-message-ttl' for queue 'q' in vhost '/'"),
        "{text}"
    );
    let missing = broker.declare_queue("q", true, &no_args());
    assert!(
        matches!(&missing, Err(MemoryError::PreconditionFailed(t)) if t.contains("received none"))
    );
    let durability = broker.declare_queue("q", false, &ttl);
    assert!(
        matches!(&durability, Err(MemoryError::PreconditionFailed(t)) if t.contains("inequivalent arg 'durable'"))
    );
    // Arguments RabbitMQ does not compare, and an explicit classic type, are equivalent.
    let mut same = ttl.clone();
    same.insert("x-custom".into(), json!(true));
    same.insert("x-queue-type".into(), json!("classic"));
    broker.declare_queue("q", true, &same).unwrap();

    broker.declare_exchange("x", ExchangeKind::Topic).unwrap();
    broker.declare_exchange("x", ExchangeKind::Topic).unwrap();
    let kind = broker.declare_exchange("x", ExchangeKind::Fanout);
    assert!(
        matches!(&kind, Err(MemoryError::PreconditionFailed(t)) if t.contains("inequivalent arg 'type'"))
    );
    assert_eq!(
        kind.unwrap_err().to_string(),
        "PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'x' in vhost '/': received 'fanout' but current is 'topic'"
    );

    assert!(matches!(
        broker.declare_queue("amq.mine", true, &no_args()),
        Err(MemoryError::AccessRefused(_))
    ));
    let bad_ttl = broker.declare_queue("t", true, &args(&[("x-message-ttl", json!(-1))]));
    assert!(matches!(bad_ttl, Err(MemoryError::PreconditionFailed(_))));
    let quorum = broker.declare_queue("qq", false, &args(&[("x-queue-type", json!("quorum"))]));
    assert!(matches!(quorum, Err(MemoryError::PreconditionFailed(_))));
    broker
        .declare_queue("qq", true, &args(&[("x-queue-type", json!("quorum"))]))
        .unwrap();
}

#[tokio::test]
async fn disconnect_requeues_unacked_in_order_and_ends_consumers() {
    let broker = broker_with(&["q"]);
    for body in ["a", "b", "c"] {
        send(&broker, "", "q", body);
    }
    let mut consumer = broker.consume("q", 0, false).unwrap();
    let a = next(&mut consumer).await;
    let b = next(&mut consumer).await;
    // "c" was sent ahead to the consumer and not taken: unacked as well.
    assert_eq!((broker.ready("q"), broker.unacked("q")), (Some(0), Some(3)));
    let c = next(&mut consumer).await;
    // Polled once: waiting for a fourth.
    let mut waiting = pin!(consumer.next());
    assert!((&mut waiting).now_or_never().is_none());

    broker.disconnect();
    let ended = timeout(Duration::from_secs(1), waiting)
        .await
        .expect("the waiting consumer is woken");
    assert!(ended.is_none(), "and ended");
    assert_eq!((broker.ready("q"), broker.unacked("q")), (Some(3), Some(0)));
    assert_eq!(
        a.acker.settle(Settlement::Ack),
        Err(MemoryError::Disconnected)
    );
    assert_eq!(
        b.acker.settle(Settlement::Nack { requeue: true }),
        Err(MemoryError::Disconnected)
    );
    assert_eq!(
        c.acker.settle(Settlement::Reject),
        Err(MemoryError::Disconnected)
    );

    let mut again = broker.consume("q", 0, false).unwrap();
    for body in ["a", "b", "c"] {
        let delivery = next(&mut again).await;
        assert_eq!(text(&delivery), body);
        assert!(delivery.redelivered);
        delivery.acker.settle(Settlement::Ack).unwrap();
    }
    assert_eq!(broker.ready("q"), Some(0));
}

#[tokio::test]
async fn refused_publishes_are_not_stored() {
    let broker = broker_with(&["q"]);
    broker.refuse_publishes(2);
    assert_eq!(send(&broker, "", "q", "1"), PublishOutcome::Refused);
    assert_eq!(send(&broker, "", "q", "2"), PublishOutcome::Refused);
    assert_eq!(broker.ready("q"), Some(0));
    assert_eq!(send(&broker, "", "q", "3"), PublishOutcome::Routed(1));
    assert_eq!(broker.ready("q"), Some(1));
}

#[tokio::test]
async fn direct_reply_to_round_trip() {
    let broker = broker_with(&["rpc"]);
    assert!(matches!(
        broker.consume(REPLY_TO, 0, false),
        Err(MemoryError::PreconditionFailed(t)) if t == "reply consumer cannot acknowledge"
    ));
    let mut replies = broker.consume(REPLY_TO, 0, true).unwrap();
    let reply_to = replies.reply_to().unwrap().to_owned();
    assert!(reply_to.starts_with("amq.rabbitmq.reply-to."), "{reply_to}");
    assert_eq!(replies.queue(), reply_to);

    let request = Properties {
        correlation_id: Some("r-1".into()),
        reply_to: Some(reply_to.clone()),
        ..Properties::default()
    };
    broker
        .publish(Sender::Service, "", "rpc", b"2+2".to_vec(), request)
        .unwrap();

    let mut server = broker.consume("rpc", 1, false).unwrap();
    assert_eq!(server.reply_to(), None);
    let call = next(&mut server).await;
    let answer = Properties {
        correlation_id: call.properties.correlation_id.clone(),
        ..Properties::default()
    };
    let target = call.properties.reply_to.clone().unwrap();
    assert_eq!(
        broker
            .publish(Sender::Service, "", &target, b"4".to_vec(), answer)
            .unwrap(),
        PublishOutcome::Routed(1)
    );
    call.acker.settle(Settlement::Ack).unwrap();

    let reply = next(&mut replies).await;
    assert_eq!(text(&reply), "4");
    assert_eq!(reply.properties.correlation_id.as_deref(), Some("r-1"));
    // Replies are settled on delivery.
    assert!(matches!(
        reply.acker.settle(Settlement::Ack),
        Err(MemoryError::PreconditionFailed(_))
    ));
    assert!(matches!(
        broker.declare_queue(&reply_to, false, &no_args()),
        Err(MemoryError::AccessRefused(_))
    ));

    drop(replies);
    assert_eq!(
        send(&broker, "", &reply_to, "late"),
        PublishOutcome::Unroutable
    );
}

#[tokio::test]
async fn settling_twice_is_an_unknown_delivery_tag() {
    let broker = broker_with(&["q"]);
    send(&broker, "", "q", "m");
    let mut consumer = broker.consume("q", 0, false).unwrap();
    let delivery = next(&mut consumer).await;
    let clone = delivery.acker.clone();
    delivery.acker.settle(Settlement::Ack).unwrap();
    let twice = clone.settle(Settlement::Reject);
    assert_eq!(
        twice,
        Err(MemoryError::PreconditionFailed(
            "unknown delivery tag 1".into()
        ))
    );
    assert_eq!(
        twice.unwrap_err().to_string(),
        "PRECONDITION_FAILED - unknown delivery tag 1"
    );
}

#[tokio::test]
async fn delete_queue_ends_its_consumers() {
    let broker = broker_with(&["q"]);
    broker.declare_exchange("x", ExchangeKind::Fanout).unwrap();
    broker.bind("q", "x", "").unwrap();
    let mut consumer = broker.consume("q", 1, false).unwrap();
    send(&broker, "", "q", "taken");
    send(&broker, "", "q", "waiting");
    let taken = next(&mut consumer).await;
    // Polled once: waiting, its prefetch window full.
    let mut waiting = pin!(consumer.next());
    assert!((&mut waiting).now_or_never().is_none());

    assert_eq!(broker.delete_queue("q"), 1);
    let ended = timeout(Duration::from_secs(1), waiting)
        .await
        .expect("the waiting consumer is woken");
    assert!(ended.is_none(), "and ended");
    assert_eq!(broker.ready("q"), None);
    assert_eq!(send(&broker, "x", "", "m"), PublishOutcome::Unroutable);
    assert_eq!(send(&broker, "", "q", "m"), PublishOutcome::Unroutable);
    // Settling a delivery of a deleted queue is harmless, as on RabbitMQ.
    taken
        .acker
        .settle(Settlement::Nack { requeue: true })
        .unwrap();
    assert_eq!(broker.delete_queue("q"), 0);
}

#[tokio::test]
async fn cancel_returns_what_was_not_taken_and_keeps_unacked() {
    let broker = broker_with(&["q"]);
    for body in ["a", "b"] {
        send(&broker, "", "q", body);
    }
    let mut consumer = broker.consume("q", 0, false).unwrap();
    let a = next(&mut consumer).await;
    consumer.cancel();
    assert!(consumer.next().await.is_none());
    assert_eq!((broker.ready("q"), broker.unacked("q")), (Some(1), Some(1)));
    drop(consumer);
    assert_eq!(broker.unacked("q"), Some(1));
    a.acker.settle(Settlement::Nack { requeue: true }).unwrap();
    assert_eq!((broker.ready("q"), broker.unacked("q")), (Some(2), Some(0)));

    let mut other = broker.consume("q", 0, true).unwrap();
    assert_eq!(text(&next(&mut other).await), "a");
    assert_eq!(text(&next(&mut other).await), "b");
}

#[tokio::test]
async fn named_brokers_are_shared() {
    let name = "memory-tests-named-brokers-are-shared";
    MemoryBroker::named(name)
        .declare_queue("q", true, &no_args())
        .unwrap();
    assert_eq!(
        send(&MemoryBroker::named(name), "", "q", "m"),
        PublishOutcome::Routed(1)
    );
    assert_eq!(MemoryBroker::named(name).ready("q"), Some(1));
    assert_eq!(MemoryBroker::new().ready("q"), None);
}

fn retry_queue(broker: &MemoryBroker, queue: &str, ttl_ms: u64) -> String {
    let name = format!("{queue}.retry.{ttl_ms}ms");
    let arguments = args(&[
        ("x-message-ttl", json!(ttl_ms)),
        ("x-dead-letter-exchange", json!("")),
        ("x-dead-letter-routing-key", json!(queue)),
    ]);
    broker.declare_queue(&name, true, &arguments).unwrap();
    name
}

#[test]
fn ttl_expires_on_the_next_operation_outside_a_runtime() {
    let broker = broker_with(&["work"]);
    let delay = retry_queue(&broker, "work", 10);
    send(&broker, "", &delay, "m");
    // No runtime, so no timer: each look at the broker expires what is due.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while broker.ready(&delay) != Some(0) {
        assert!(std::time::Instant::now() < deadline, "never expired");
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(broker.ready("work"), Some(1));
}

#[test]
fn the_expiry_timer_outlives_the_runtime_that_started_it() {
    let broker = broker_with(&["work"]);
    let delay = retry_queue(&broker, "work", 20);
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    runtime().block_on(async {
        send(&broker, "", &delay, "first");
        let mut consumer = broker.consume("work", 0, true).unwrap();
        assert_eq!(text(&next(&mut consumer).await), "first");
    });
    // That runtime, and its timer task, are gone: the next TTL queue message starts another.
    runtime().block_on(async {
        let mut consumer = broker.consume("work", 0, true).unwrap();
        send(&broker, "", &delay, "second");
        assert_eq!(text(&next(&mut consumer).await), "second");
    });
}
