//! Shared helpers for tests against the real broker: unique names, a raw lapin connection to
//! observe and poke the broker, cleanup, and the handlers and waits the tests share.
#![allow(dead_code, unreachable_pub)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ExchangeDeleteOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use rmq_bus::config::QueueOptions;
use rmq_bus::context::Settlement;
use rmq_bus::{Payload, RmqContext, RmqOptions};
use serde_json::Value;

/// The broker the tests use.
pub fn uri() -> String {
    std::env::var("RABBIT_MQ_URI").unwrap_or_else(|_| rmq_bus::config::DEFAULT_URI.to_owned())
}

/// Queues left behind by a failed test expire by themselves after this long.
pub const EXPIRES_MS: i64 = 120_000;

/// How long the waits below wait for a state before they fail the test.
pub const WAIT: Duration = Duration::from_secs(10);

/// A name no other test (or test run) uses. It starts with `test-`, so the `rmq-bus-tests`
/// policy (see [`expire_test_queues`]) makes the queue expire when a failed test leaves it.
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

/// Name of the broker policy that makes unused test queues expire.
pub const POLICY: &str = "rmq-bus-tests";

/// Makes every queue whose name starts with `test-` expire after [`EXPIRES_MS`] unused, with a
/// broker policy (`rabbitmqctl set_policy`): the dead-letter and retry queues rmq-bus declares
/// itself (`<queue>.dlq`, `<queue>.retry.<ms>ms`, without arguments, so a test cannot declare
/// them with `x-expires` first) then go away too when a failed test leaves them.
///
/// Once per process at most, and once per machine in practice (`rabbitmqctl` takes most of a
/// second, and nextest runs every test in a process of its own): a marker file in the temporary
/// directory records that it was tried (delete it to try again). Best effort: skipped when
/// `RMQ_BUS_TEST_POLICY` is set (`scripts/test.sh` may set the policy once for the whole run),
/// when the broker is not on this machine (`rabbitmqctl` acts on the local node only), or when
/// `rabbitmqctl` cannot run.
pub fn expire_test_queues() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let marker = std::env::temp_dir().join(format!("{POLICY}-policy-tried"));
        if std::env::var_os("RMQ_BUS_TEST_POLICY").is_some() || marker.exists() {
            return;
        }
        let uri = uri();
        let local = [
            "@127.0.0.1",
            "@localhost",
            "amqp://127.0.0.1",
            "amqp://localhost",
        ]
        .iter()
        .any(|host| uri.contains(host));
        if !local {
            return;
        }
        let definition = format!(r#"{{"expires":{EXPIRES_MS}}}"#);
        let set = std::process::Command::new("rabbitmqctl")
            .args(["-q", "set_policy", "--apply-to", "queues", POLICY, "^test-"])
            .arg(&definition)
            .output();
        let outcome = match set {
            Ok(output) if output.status.success() => format!("set: ^test- {definition}"),
            Ok(output) => format!(
                "not set (test queues will not expire): {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ),
            Err(error) => format!("not set: cannot run rabbitmqctl ({error})"),
        };
        if !outcome.starts_with("set") {
            eprintln!("note: the {POLICY} policy is {outcome}");
        }
        // Tried once per machine, whatever came of it: a failure would only fail again.
        let _ = std::fs::write(&marker, format!("{POLICY} policy {outcome}\n"));
    });
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
        expire_test_queues();
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
        self.declare_with(queue, args).await;
    }

    /// Declares `queue` as rmq-bus declares the queues it makes itself (durable, no arguments),
    /// so that a test can look at a dead-letter queue nothing was sent to: an empty queue, not a
    /// missing one. It expires by the `rmq-bus-tests` policy; deleted at cleanup.
    pub async fn declare_as_rmq_bus(&self, queue: &str) {
        self.declare_with(queue, FieldTable::default()).await;
    }

    /// Declares `queue` durable with `args` (for a test that needs arguments of its own, such as a
    /// dead-letter exchange) and remembers it for cleanup.
    pub async fn declare_with(&self, queue: &str, args: FieldTable) {
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

    /// Messages ready in `queue` (not counting unacked ones). A queue that does not exist fails
    /// the test: it is not an empty one.
    pub async fn ready(&self, queue: &str) -> u32 {
        expect_exists(queue, self.try_ready(queue).await)
    }

    /// Whether `queue` exists (a passive declaration).
    pub async fn exists(&self, queue: &str) -> bool {
        self.try_ready(queue).await.is_some()
    }

    /// Messages ready in `queue`, or `None` if there is no such queue (yet).
    pub async fn try_ready(&self, queue: &str) -> Option<u32> {
        // A channel of its own: a passive declaration of a missing queue closes its channel.
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

    /// Waits (bounded by [`WAIT`]) until `queue` exists and has `count` ready messages; returns
    /// the last count seen. A queue that never exists fails the test: it is not an empty one.
    pub async fn wait_ready(&self, queue: &str, count: u32) -> u32 {
        wait_until_ready(queue, count, || self.try_ready(queue)).await
    }

    /// Takes every message from `queue` (acking them), as (body, properties). A queue that does
    /// not exist fails the test.
    pub async fn drain(&self, queue: &str) -> Vec<(Vec<u8>, BasicProperties)> {
        // Checked first: a basic.get on a missing queue would close the shared channel.
        self.ready(queue).await;
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

/// `seen`, the ready count of `queue`, which must exist: a missing queue fails the test, for it is
/// not an empty one. Shared by [`Broker`] and the behaviour harness.
pub fn expect_exists(queue: &str, seen: Option<u32>) -> u32 {
    seen.unwrap_or_else(|| panic!("queue {queue} does not exist"))
}

/// Waits (bounded by [`WAIT`]) until `try_ready` counts `count` ready messages in `queue`; returns
/// the last count seen. Shared by [`Broker`] and the behaviour harness, which count differently.
pub async fn wait_until_ready<F: Future<Output = Option<u32>>>(
    queue: &str,
    count: u32,
    mut try_ready: impl FnMut() -> F,
) -> u32 {
    let deadline = Instant::now() + WAIT;
    loop {
        let seen = try_ready().await;
        if seen == Some(count) || Instant::now() >= deadline {
            return expect_exists(queue, seen);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Header `name` of `properties` as text (strings as they are, numbers in decimal).
pub fn header(properties: &BasicProperties, name: &str) -> Option<String> {
    let value = properties.headers().as_ref()?.inner().get(name)?.clone();
    Some(amqp_text(&value))
}

/// An AMQP field value as text: strings as they are, numbers in decimal.
pub fn amqp_text(value: &AMQPValue) -> String {
    match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::Boolean(b) => b.to_string(),
        other => format!("{other:?}"),
    }
}

/// The next thing a handler reported, waiting at most [`WAIT`].
pub async fn recv<T>(rx: &mut tokio::sync::mpsc::UnboundedReceiver<T>) -> T {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("timed out waiting for a handler")
        .expect("channel open")
}

/// Waits (bounded by [`WAIT`]) until `condition` holds.
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What a [`reporter`] handler saw of one message.
#[derive(Debug)]
pub struct Seen {
    pub pattern: String,
    pub data: Value,
    pub queue: String,
    pub redelivered: bool,
    pub settlement: Option<Settlement>,
    pub content_type: Option<String>,
    pub delivery_mode: Option<u8>,
}

/// A handler that acks its message, then reports what it saw.
pub fn reporter(
    tx: tokio::sync::mpsc::UnboundedSender<Seen>,
) -> impl Fn(Payload<Value>, RmqContext) -> BoxFuture<'static, rmq_bus::Result<()>>
+ Clone
+ Send
+ Sync
+ 'static {
    move |Payload(data): Payload<Value>, ctx: RmqContext| {
        let tx = tx.clone();
        Box::pin(async move {
            ctx.ack().await?;
            let delivery = ctx.delivery();
            tx.send(Seen {
                pattern: ctx.pattern().to_owned(),
                data,
                queue: delivery.queue.clone(),
                redelivered: delivery.redelivered,
                settlement: ctx.settlement(),
                content_type: delivery.properties.content_type.clone(),
                delivery_mode: delivery.properties.delivery_mode,
            })
            .ok();
            Ok(())
        })
    }
}
