//! Observability: the metrics rmq-bus records (read from a Prometheus exporter by a real
//! Prometheus parser), its spans continuing a trace across services (feature `opentelemetry`),
//! the health of microservices and clients through a lost connection, and the examples'
//! `/metrics` and `/health` endpoints, with the broker stopped and started again.
//!
//! The metrics tests install a Prometheus recorder for their own thread only
//! (`metrics::set_default_local_recorder`) and run on a current-thread runtime, so tests running
//! beside them in this binary record nothing into theirs.

#![cfg(feature = "metrics")]
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod common;
mod faults {
    pub mod lock;
    pub mod node;
    pub mod proxy;
}
mod telemetry {
    pub mod examples;
    pub mod prometheus;
}
#[path = "common/db.rs"]
mod db;

use std::time::{Duration, Instant};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};
use rmq_bus::config::FailurePolicy;
use rmq_bus::context::Outcome;
use rmq_bus::health::ConnectionState;
use rmq_bus::outbox::Outbox;
use rmq_bus::store::sqlx;
use rmq_bus::testing::TestBroker;
use rmq_bus::{ClientProxy, Microservice, Payload, RmqContext};
use serde_json::{Value, json};
use telemetry::prometheus::{self, Sample, value};

/// OpenTelemetry's advice for messaging durations, as the examples use it.
const BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// A Prometheus recorder with OpenTelemetry's mapping of names (`_total`, `_seconds`).
fn recorder() -> PrometheusRecorder {
    PrometheusBuilder::new()
        .with_recommended_naming(true)
        .set_buckets(&BUCKETS)
        .expect("buckets")
        .build_recorder()
}

const SYSTEM: (&str, &str) = ("messaging_system", "rabbitmq");

#[tokio::test(flavor = "current_thread")]
async fn metrics_count_what_was_sent_handled_and_settled() {
    const N: usize = 25;
    let recorder = recorder();
    let _installed = metrics::set_default_local_recorder(&recorder);
    let broker = TestBroker::new();
    let client = ClientProxy::new(broker.options("BILLING"));
    let service = Microservice::new(
        broker
            .options("BILLING")
            .failure_policy(FailurePolicy::DeadLetter),
    )
    .on_event(
        "order_created",
        |ctx: RmqContext| async move { ctx.ack().await },
    )
    .on_event("explode", |Payload(_): Payload<Value>| async {
        Err::<(), _>("boom")
    })
    .start()
    .await
    .expect("start");
    for n in 0..N {
        client
            .emit("order_created", &json!({ "n": n }))
            .await
            .expect("emit");
    }
    client.emit("explode", &json!({})).await.expect("emit");
    broker
        .publish("BILLING", "nobody_handles_this", &json!({}))
        .expect("publish");
    let mut outcomes = Vec::new();
    for _ in 0..N + 2 {
        outcomes.push(broker.settled("BILLING").await.outcome);
    }
    let acked = outcomes.iter().filter(|o| **o == Outcome::Acked).count();
    assert_eq!(acked, N, "{outcomes:?}");
    let samples = prometheus::parse(&recorder.handle().render());

    let sent = [
        SYSTEM,
        ("messaging_operation_name", "send"),
        ("messaging_operation_type", "send"),
        ("messaging_destination_name", "BILLING"),
        ("messaging_rabbitmq_destination_routing_key", "BILLING"),
    ];
    assert_eq!(
        value(&samples, "messaging_client_sent_messages_total", &sent),
        (N + 1) as f64
    );
    assert_eq!(
        value(
            &samples,
            "messaging_client_operation_duration_seconds_count",
            &sent
        ),
        (N + 1) as f64
    );
    let process = |pattern| {
        [
            SYSTEM,
            ("messaging_operation_name", "process"),
            ("messaging_operation_type", "process"),
            ("messaging_destination_name", "BILLING"),
            ("messaging_rabbitmq_destination_routing_key", "BILLING"),
            ("rmq_bus_pattern", pattern),
        ]
    };
    let created = process("order_created");
    assert_eq!(
        value(
            &samples,
            "messaging_client_consumed_messages_total",
            &created
        ),
        N as f64
    );
    assert_eq!(
        value(
            &samples,
            "messaging_process_duration_seconds_count",
            &created
        ),
        N as f64
    );
    let exploded = process("explode");
    assert_eq!(
        value(
            &samples,
            "messaging_client_consumed_messages_total",
            &exploded
        ),
        1.0
    );
    let mut failed = exploded.to_vec();
    failed.push(("error_type", "handler_error"));
    assert_eq!(
        value(
            &samples,
            "messaging_process_duration_seconds_count",
            &failed
        ),
        1.0
    );
    let unrouted = [
        SYSTEM,
        ("messaging_operation_name", "process"),
        ("messaging_operation_type", "process"),
        ("messaging_destination_name", "BILLING"),
    ];
    assert_eq!(
        value(
            &samples,
            "messaging_client_consumed_messages_total",
            &unrouted
        ),
        1.0,
        "a message no handler takes is consumed too, without a pattern"
    );

    let queue = [SYSTEM, ("messaging_destination_name", "BILLING")];
    let settled = |how: &'static str, reason: Option<&'static str>| {
        let mut labels = queue.to_vec();
        labels.push(("rmq_bus_settlement", how));
        labels.extend(reason.map(|reason| ("rmq_bus_reason", reason)));
        value(&samples, "rmq_bus_consumer_settlements_total", &labels)
    };
    assert_eq!(settled("ack", None), N as f64);
    assert_eq!(settled("dead_letter", Some("handler_error")), 1.0);
    assert_eq!(settled("dead_letter", Some("poison")), 1.0);
    assert_eq!(value(&samples, "rmq_bus_consumer_prefetch", &queue), 250.0);
    assert_eq!(value(&samples, "rmq_bus_consumer_in_flight", &queue), 0.0);
    let role = [SYSTEM, ("rmq_bus_connection_role", "microservice")];
    assert_eq!(value(&samples, "rmq_bus_connections", &role), 1.0);
    assert_no_ids(&samples);

    service.shutdown().await.expect("shutdown");
    let samples = prometheus::parse(&recorder.handle().render());
    assert_eq!(value(&samples, "rmq_bus_connections", &role), 0.0);
}

/// No attribute value looks like an id: a UUID or a long run of hex digits.
fn assert_no_ids(samples: &[Sample]) {
    for sample in samples {
        for (key, value) in &sample.labels {
            let hex = value.chars().filter(char::is_ascii_hexdigit).count();
            assert!(
                value.len() < 32 || hex < 24,
                "{key}={value} on {} looks like an id",
                sample.name
            );
        }
    }
}

/// Health through a lost connection, on RabbitMQ (through a proxy that refuses connections):
/// the microservice reports it, reconnects by itself and counts the reconnect and the outage;
/// the client reports the loss and reconnects on its next call.
#[tokio::test(flavor = "current_thread")]
async fn health_follows_the_connection_and_reconnects_are_counted() {
    let _lock = faults::lock::FaultLock::acquire().await;
    let recorder = recorder();
    let _installed = metrics::set_default_local_recorder(&recorder);
    let broker = common::Broker::connect().await;
    let proxy = faults::proxy::Proxy::start().await;
    let queue = common::unique("health");
    broker.forget_later(&queue);
    let options = common::options(&queue)
        .uri(proxy.uri())
        .reconnect_timeout(Duration::from_secs(10));
    let client = ClientProxy::new(options.clone());
    assert_eq!(client.health().connection, ConnectionState::Idle);
    let service = Microservice::new(options)
        .on_event("n", |ctx: RmqContext| async move { ctx.ack().await })
        .start()
        .await
        .expect("start");
    let health = service.health();
    assert!(health.is_ready(), "{health:?}");
    assert_eq!(health.consumers.len(), 1);
    assert_eq!(health.consumers[0].queue, queue);
    client.emit("n", &1).await.expect("emit");
    assert!(client.health().is_ready(), "{:?}", client.health());

    proxy.refuse(true);
    proxy.cut();
    wait_for("the microservice to report the loss", || {
        !service.health().is_ready()
    })
    .await;
    wait_for("the client to report the loss", || {
        client.health().connection == ConnectionState::Disconnected
    })
    .await;
    let down = service.health();
    assert!(
        matches!(
            down.connection,
            ConnectionState::Disconnected | ConnectionState::Connecting
        ),
        "{down:?}"
    );
    assert!(!down.consumers[0].consuming, "{down:?}");

    proxy.refuse(false);
    wait_for("the microservice to reconnect", || {
        service.health().is_ready()
    })
    .await;
    client.emit("n", &2).await.expect("emit after the outage");
    assert!(client.health().is_ready(), "{:?}", client.health());

    let samples = prometheus::parse(&recorder.handle().render());
    let role = |role| [SYSTEM, ("rmq_bus_connection_role", role)];
    assert_eq!(
        value(
            &samples,
            "rmq_bus_connection_reconnects_total",
            &role("microservice")
        ),
        1.0
    );
    assert_eq!(
        value(
            &samples,
            "rmq_bus_connection_outage_duration_seconds_count",
            &role("microservice")
        ),
        1.0
    );
    assert_eq!(
        value(
            &samples,
            "rmq_bus_connection_reconnects_total",
            &role("client")
        ),
        1.0
    );
    assert_eq!(value(&samples, "rmq_bus_connections", &role("client")), 1.0);
    let queue_labels = [SYSTEM, ("messaging_destination_name", queue.as_str())];
    assert!(
        value(&samples, "rmq_bus_consumer_unacked", &queue_labels) >= 0.0,
        "the prefetch window in use is reported on RabbitMQ"
    );
    service.shutdown().await.expect("shutdown");
    client.close().await;
    assert_eq!(client.health().connection, ConnectionState::Idle);
    broker.cleanup().await;
}

/// The outbox backlog while the broker cannot be reached, through a proxy refusing connections:
/// the relay's gauge shows the rows committed, then falls to 0 once they went out, and the
/// published counter says how many did.
async fn outbox_backlog_follows_the_rows_waiting<DB: db::Sql>(
    pool: sqlx::Pool<DB>,
    database: &str,
) {
    const N: u32 = 7;
    let recorder = recorder();
    let _installed = metrics::set_default_local_recorder(&recorder);
    let broker = common::Broker::connect().await;
    let proxy = faults::proxy::Proxy::start().await;
    let queue = common::unique("outbox-backlog");
    broker.forget_later(&queue);
    ClientProxy::new(common::options(&queue))
        .connect()
        .await
        .expect("declare the queue");
    proxy.refuse(true);
    let outbox = Outbox::new(pool.clone());
    let billing = outbox.client(ClientProxy::new(common::options(&queue).uri(proxy.uri())));
    let mut tx = pool.begin().await.expect("begin");
    for n in 0..N {
        billing
            .emit(&mut tx, "order_created", &json!({ "n": n }))
            .await
            .expect("emit");
    }
    tx.commit().await.expect("commit");
    let relay = outbox.relay();

    let outbox_labels = [SYSTEM, ("db_system_name", database)];
    let metric = |name: &str| {
        let samples = prometheus::parse(&recorder.handle().render());
        prometheus::exactly(&samples, name, &outbox_labels)
            .first()
            .map(|sample| sample.value)
    };
    wait_for("the backlog gauge to show the rows committed", || {
        metric("rmq_bus_outbox_backlog") == Some(f64::from(N))
    })
    .await;
    assert_eq!(
        metric("rmq_bus_outbox_published_total"),
        Some(0.0),
        "nothing went out while the broker was unreachable"
    );
    assert_eq!(broker.ready(&queue).await, 0);

    proxy.refuse(false);
    wait_for("the backlog gauge to fall to 0", || {
        metric("rmq_bus_outbox_backlog") == Some(0.0)
    })
    .await;
    assert_eq!(metric("rmq_bus_outbox_published_total"), Some(f64::from(N)));
    assert_eq!(metric("rmq_bus_outbox_dead_total"), Some(0.0));
    assert_eq!(broker.drain(&queue).await.len(), N as usize);
    relay.shutdown().await;
    pool.close().await;
}

#[tokio::test(flavor = "current_thread")]
async fn outbox_backlog_is_measured_on_postgres() {
    let db = db::TestPg::create("outbox-backlog").await;
    outbox_backlog_follows_the_rows_waiting(db.pool(5).await, "postgresql").await;
}

#[tokio::test(flavor = "current_thread")]
async fn outbox_backlog_is_measured_on_sqlite() {
    let db = db::TestSqlite::create("outbox-backlog");
    outbox_backlog_follows_the_rows_waiting(db.pool().await, "sqlite").await;
}

/// Waits (at most 20 s) until `condition` holds.
async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "waited 20 s for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// With `tracing-opentelemetry`, one trace spans orders → billing → orders: each delivery's
/// span continues its sender's `traceparent`, and each publish sends its own span's context.
#[cfg(feature = "opentelemetry")]
#[tokio::test(flavor = "current_thread")]
async fn one_trace_spans_orders_billing_orders() {
    use opentelemetry::trace::{SpanKind, TracerProvider};
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
    use tracing::Instrument;
    use tracing_subscriber::layer::SubscriberExt;

    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let _installed = tracing::subscriber::set_default(subscriber);

    let broker = TestBroker::new();
    let to_billing = ClientProxy::new(broker.options("BILLING"));
    let to_orders = ClientProxy::new(broker.options("ORDERS"));
    let billing = Microservice::new(broker.options("BILLING"))
        .on_event("order_created", move |ctx: RmqContext| {
            let to_orders = to_orders.clone();
            async move {
                to_orders.emit("order_processed", &json!({})).await?;
                ctx.ack().await
            }
        })
        .start()
        .await
        .expect("start billing");
    let orders = Microservice::new(broker.options("ORDERS"))
        .on_event("order_processed", |ctx: RmqContext| async move {
            ctx.ack().await
        })
        .start()
        .await
        .expect("start orders");
    to_billing
        .emit("order_created", &json!({}))
        .instrument(tracing::info_span!("POST /orders"))
        .await
        .expect("emit");
    assert_eq!(broker.settled("BILLING").await.outcome, Outcome::Acked);
    assert_eq!(broker.settled("ORDERS").await.outcome, Outcome::Acked);
    billing.shutdown().await.expect("shutdown");
    orders.shutdown().await.expect("shutdown");

    let spans = exporter.get_finished_spans().expect("spans");
    let span = |name: &str| {
        spans
            .iter()
            .find(|span| span.name == name)
            .unwrap_or_else(|| {
                let names: Vec<_> = spans.iter().map(|span| span.name.to_string()).collect();
                panic!("no span {name:?} among {names:?}")
            })
    };
    let root = span("POST /orders");
    let chain = [
        (span("send BILLING"), root, SpanKind::Producer),
        (
            span("process BILLING"),
            span("send BILLING"),
            SpanKind::Consumer,
        ),
        (
            span("send ORDERS"),
            span("process BILLING"),
            SpanKind::Producer,
        ),
        (
            span("process ORDERS"),
            span("send ORDERS"),
            SpanKind::Consumer,
        ),
    ];
    for (child, parent, kind) in chain {
        assert_eq!(
            child.span_context.trace_id(),
            root.span_context.trace_id(),
            "{} is in the trace",
            child.name
        );
        assert_eq!(
            child.parent_span_id,
            parent.span_context.span_id(),
            "{}'s parent is {}",
            child.name,
            parent.name
        );
        assert_eq!(child.span_kind, kind, "{}", child.name);
        let system = child
            .attributes
            .iter()
            .find(|attribute| attribute.key.as_str() == "messaging.system")
            .map(|attribute| attribute.value.to_string());
        assert_eq!(system.as_deref(), Some("rabbitmq"), "{}", child.name);
    }
}

/// The examples, against RabbitMQ: after N orders both services' `/metrics` show N sent and N
/// processed, and parse; `/health` is 503 while the broker is stopped and 200 once it is back.
mod whole_broker {
    use super::*;
    use crate::telemetry::examples;

    #[test]
    fn examples_serve_metrics_and_health_through_a_broker_stop() {
        examples::metrics_and_health(&BUCKETS);
    }
}
