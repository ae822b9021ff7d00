//! Shared helpers for tests against the real broker: unique names, a raw lapin connection to
//! observe and poke the broker, and cleanup.
#![allow(dead_code, unreachable_pub)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ExchangeDeleteOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use rmq_bus::RmqOptions;
use rmq_bus::config::QueueOptions;

/// The broker the tests use.
pub fn uri() -> String {
    std::env::var("RABBIT_MQ_URI").unwrap_or_else(|_| rmq_bus::config::DEFAULT_URI.to_owned())
}

/// Queues left behind by a failed test expire by themselves after this long.
pub const EXPIRES_MS: i64 = 120_000;

/// A name no other test (or test run) uses.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "test-{prefix}-{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Options for a fresh test queue that expires if the test leaves it behind.
pub fn options(queue: &str) -> RmqOptions {
    RmqOptions::new(queue)
        .uri(uri())
        .queue_options(QueueOptions::default().argument("x-expires", EXPIRES_MS))
}

/// Options for a test queue whose rejected messages go to `dlq` (through the default exchange).
pub fn options_with_dlq(queue: &str, dlq: &str) -> RmqOptions {
    RmqOptions::new(queue).uri(uri()).queue_options(
        QueueOptions::default()
            .argument("x-expires", EXPIRES_MS)
            .dead_letter("", Some(dlq.to_owned())),
    )
}

/// A raw connection to look at and poke the broker with, behind rmq-bus's back.
pub struct Broker {
    pub connection: Connection,
    pub channel: Channel,
    queues: std::sync::Mutex<Vec<String>>,
    exchanges: std::sync::Mutex<Vec<String>>,
}

impl Broker {
    pub async fn connect() -> Broker {
        let connection = Connection::connect(&uri(), ConnectionProperties::default())
            .await
            .expect("RabbitMQ must run on 127.0.0.1:5672 (see README: rabbitmq-server -detached)");
        let channel = connection.create_channel().await.expect("channel");
        Broker {
            connection,
            channel,
            queues: Default::default(),
            exchanges: Default::default(),
        }
    }

    /// Declares a plain test queue (durable, expiring) and remembers it for cleanup.
    pub async fn declare(&self, queue: &str) {
        let mut args = FieldTable::default();
        args.insert("x-expires".into(), AMQPValue::LongLongInt(EXPIRES_MS));
        self.channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                args,
            )
            .await
            .expect("declare");
        self.forget_later(queue);
    }

    /// Deletes `queue` at cleanup.
    /// Deletes `queue` at cleanup, and the dead-letter queue rmq-bus may have made for it
    /// (deleting a queue that does not exist is fine with RabbitMQ).
    pub fn forget_later(&self, queue: &str) {
        let mut queues = self.queues.lock().expect("lock");
        queues.push(queue.to_owned());
        queues.push(format!("{queue}.dlq"));
    }

    /// Deletes exchange `name` at cleanup.
    pub fn forget_exchange_later(&self, name: &str) {
        self.exchanges.lock().expect("lock").push(name.to_owned());
    }

    /// Publishes raw bytes to `queue` through the default exchange and waits for the confirm.
    pub async fn publish_raw(&self, queue: &str, body: &[u8]) {
        self.publish_with(queue, body, BasicProperties::default())
            .await
    }

    pub async fn publish_with(&self, queue: &str, body: &[u8], properties: BasicProperties) {
        self.channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .expect("publish");
    }

    /// Messages ready in `queue` (not counting unacked ones); the queue must exist.
    pub async fn ready(&self, queue: &str) -> u32 {
        self.try_ready(queue)
            .await
            .unwrap_or_else(|| panic!("queue {queue} does not exist"))
    }

    /// Messages ready in `queue`, or `None` if there is no such queue (yet).
    pub async fn try_ready(&self, queue: &str) -> Option<u32> {
        let channel = self.connection.create_channel().await.expect("channel");
        let declared = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .ok()?;
        let _ = channel.close(200, "ok".into()).await;
        Some(declared.message_count())
    }

    /// Waits (bounded) until `queue` exists and has `count` ready messages; returns the last
    /// count seen. A queue that never exists fails the test: it is not an empty one.
    pub async fn wait_ready(&self, queue: &str, count: u32) -> u32 {
        let mut seen = None;
        for _ in 0..100 {
            seen = self.try_ready(queue).await;
            if seen == Some(count) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        seen.unwrap_or_else(|| panic!("queue {queue} does not exist"))
    }

    /// Takes every message from `queue` (acking them), as (body, properties).
    pub async fn drain(&self, queue: &str) -> Vec<(Vec<u8>, BasicProperties)> {
        let mut out = Vec::new();
        while let Some(message) = self
            .channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic_get")
        {
            out.push((message.delivery.data, message.delivery.properties));
        }
        out
    }

    /// Deletes every queue this test declared or named.
    pub async fn cleanup(&self) {
        let queues = std::mem::take(&mut *self.queues.lock().expect("lock"));
        for queue in queues {
            let _ = self
                .channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        let exchanges = std::mem::take(&mut *self.exchanges.lock().expect("lock"));
        for exchange in exchanges {
            let _ = self
                .channel
                .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await;
        }
        let _ = self.connection.close(200, "done".into()).await;
    }
}

/// The next thing a handler reported, waiting at most 10 s.
pub async fn recv<T>(rx: &mut tokio::sync::mpsc::UnboundedReceiver<T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("timed out waiting for a handler")
        .expect("channel open")
}

/// Waits (bounded) until `condition` holds.
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    for _ in 0..200 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting until {what}");
}
