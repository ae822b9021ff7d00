//! One behaviour suite, two transports: each test runs against RabbitMQ and against the
//! in-memory broker, so the in-memory one cannot drift from RabbitMQ's behaviour.
#![allow(unreachable_pub, dead_code, clippy::large_enum_variant)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use lapin::BasicProperties;
use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};
use rmq_bus::RmqOptions;
use rmq_bus::config::QueueOptions;
use rmq_bus::context::Properties;
use rmq_bus::testing::TestBroker;
use serde_json::Value;

use crate::common::{Broker, EXPIRES_MS, amqp_text, expect_exists, unique, wait_until_ready};

/// Where a test runs.
pub enum Harness {
    Rabbit(Broker),
    Memory(TestBroker),
}

/// Runs `$body` (an async block using the harness `$h`) once per transport, as two tests.
#[macro_export]
macro_rules! both {
    ($name:ident, |$h:ident| $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn rabbitmq() {
                let $h = $crate::behaviour::harness::Harness::rabbit().await;
                $body
                $h.cleanup().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn in_memory() {
                let $h = $crate::behaviour::harness::Harness::memory();
                $body
                $h.cleanup().await;
            }
        }
    };
}

/// A message taken from a queue with [`Harness::drain`], the same on both transports.
#[derive(Debug)]
pub struct Drained {
    pub body: Vec<u8>,
    /// Every header, as text (strings as they are, numbers in decimal).
    pub headers: BTreeMap<String, String>,
    pub delivery_mode: Option<u8>,
    pub content_type: Option<String>,
    pub correlation_id: Option<String>,
}

impl Drained {
    /// Header `name`, as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Harness {
    pub async fn rabbit() -> Harness {
        capture_logs();
        Harness::Rabbit(Broker::connect().await)
    }

    pub fn memory() -> Harness {
        capture_logs();
        Harness::Memory(TestBroker::new())
    }

    pub fn is_rabbit(&self) -> bool {
        matches!(self, Harness::Rabbit(_))
    }

    /// A fresh queue name, deleted at cleanup (with the `.dlq` rmq-bus may make for it).
    pub fn queue(&self, prefix: &str) -> String {
        let name = unique(prefix);
        self.forget(&name);
        name
    }

    /// A fresh exchange name, deleted at cleanup.
    pub fn exchange(&self, prefix: &str) -> String {
        let name = unique(prefix);
        if let Harness::Rabbit(broker) = self {
            broker.forget_exchange_later(&name);
        }
        name
    }

    /// Deletes queue `name` at cleanup (a queue rmq-bus makes, such as a retry queue).
    pub fn forget(&self, name: &str) {
        if let Harness::Rabbit(broker) = self {
            broker.forget_later(name);
        }
    }

    /// The declaration every test queue gets (expiring on RabbitMQ if a test leaves it).
    pub fn declaration() -> QueueOptions {
        QueueOptions::default().argument("x-expires", EXPIRES_MS)
    }

    /// The broker URI of this transport.
    pub fn uri(&self) -> String {
        match self {
            Harness::Rabbit(_) => crate::common::uri(),
            Harness::Memory(broker) => broker.uri(),
        }
    }

    /// Options for `queue` on this transport.
    pub fn options(&self, queue: &str) -> RmqOptions {
        RmqOptions::new(queue)
            .uri(self.uri())
            .queue_options(Self::declaration())
    }

    /// Options for `queue` whose rejected messages go to `dlq` (declared here).
    pub async fn options_with_dlx(&self, queue: &str, dlq: &str) -> RmqOptions {
        self.declare(dlq).await;
        self.options(queue)
            .queue_options(Self::declaration().dead_letter("", Some(dlq.to_owned())))
    }

    /// Declares a plain test queue.
    pub async fn declare(&self, queue: &str) {
        match self {
            Harness::Rabbit(broker) => broker.declare(queue).await,
            Harness::Memory(broker) => broker
                .declare_queue(queue, &Self::declaration())
                .expect("declare"),
        }
    }

    /// Declares `queue` as rmq-bus declares the dead-letter queues it makes (durable, no
    /// arguments), so that a test can see that nothing was dead-lettered: the queue exists and
    /// is empty. (On RabbitMQ it expires by the `rmq-bus-tests` policy, see
    /// `common::expire_test_queues`.)
    pub async fn declare_as_rmq_bus(&self, queue: &str) {
        match self {
            Harness::Rabbit(broker) => broker.declare_as_rmq_bus(queue).await,
            Harness::Memory(broker) => broker
                .declare_queue(queue, &QueueOptions::default())
                .expect("declare"),
        }
    }

    /// Puts `body` into `queue` with a correlation id and string headers.
    pub async fn publish(
        &self,
        queue: &str,
        body: &[u8],
        correlation_id: Option<&str>,
        headers: &[(&str, &str)],
    ) {
        match self {
            Harness::Rabbit(broker) => {
                let mut properties = BasicProperties::default();
                if let Some(id) = correlation_id {
                    properties = properties.with_correlation_id(id.into());
                }
                if !headers.is_empty() {
                    let mut table = FieldTable::default();
                    for (key, value) in headers {
                        table.insert((*key).into(), AMQPValue::LongString((*value).into()));
                    }
                    properties = properties.with_headers(table);
                }
                broker.publish_with(queue, body, properties).await;
            }
            Harness::Memory(broker) => {
                let mut properties = Properties::default();
                properties.correlation_id = correlation_id.map(str::to_owned);
                for (key, value) in headers {
                    properties
                        .headers
                        .insert((*key).to_owned(), (*value).into());
                }
                broker
                    .publish_raw(queue, body.to_vec(), properties)
                    .expect("publish");
            }
        }
    }

    /// Puts `body` into `queue`, with no properties.
    pub async fn publish_raw(&self, queue: &str, body: &[u8]) {
        self.publish(queue, body, None, &[]).await;
    }

    /// Messages ready in `queue`, or `None` if there is no such queue.
    pub async fn try_ready(&self, queue: &str) -> Option<u32> {
        match self {
            Harness::Rabbit(broker) => broker.try_ready(queue).await,
            Harness::Memory(broker) => broker.ready(queue).ok().map(|n| n as u32),
        }
    }

    /// Messages ready in `queue` now. A queue that does not exist fails the test: it is not an
    /// empty one.
    pub async fn ready(&self, queue: &str) -> u32 {
        expect_exists(queue, self.try_ready(queue).await)
    }

    /// Whether `queue` exists (on RabbitMQ, a passive declaration).
    pub async fn exists(&self, queue: &str) -> bool {
        self.try_ready(queue).await.is_some()
    }

    /// Messages ready in `queue`, waiting (bounded) until there are `count`; returns the last
    /// count seen. A queue that never exists fails the test: it is not an empty one.
    pub async fn wait_ready(&self, queue: &str, count: u32) -> u32 {
        wait_until_ready(queue, count, || self.try_ready(queue)).await
    }

    /// Takes every message from `queue`. A queue that does not exist fails the test.
    pub async fn drain(&self, queue: &str) -> Vec<Drained> {
        match self {
            Harness::Rabbit(broker) => broker
                .drain(queue)
                .await
                .into_iter()
                .map(|(body, properties)| Drained {
                    body,
                    headers: properties
                        .headers()
                        .as_ref()
                        .map(|table| {
                            table
                                .inner()
                                .iter()
                                .map(|(k, v)| (k.as_str().to_owned(), amqp_text(v)))
                                .collect()
                        })
                        .unwrap_or_default(),
                    delivery_mode: *properties.delivery_mode(),
                    content_type: properties
                        .content_type()
                        .as_ref()
                        .map(|t| t.as_str().to_owned()),
                    correlation_id: properties
                        .correlation_id()
                        .as_ref()
                        .map(|id| id.as_str().to_owned()),
                })
                .collect(),
            Harness::Memory(broker) => broker
                .messages(queue)
                .unwrap_or_else(|error| panic!("queue {queue}: {error}"))
                .into_iter()
                .map(|m| Drained {
                    headers: m
                        .properties
                        .headers
                        .iter()
                        .map(|(k, v)| {
                            let text = match v {
                                Value::String(s) => s.clone(),
                                other => other.to_string(),
                            };
                            (k.clone(), text)
                        })
                        .collect(),
                    delivery_mode: m.properties.delivery_mode,
                    content_type: m.properties.content_type.clone(),
                    correlation_id: m.properties.correlation_id.clone(),
                    body: m.body,
                })
                .collect(),
        }
    }

    /// Checks that `queue`, declared with `declaration`, is of type `expected` on the broker:
    /// declaring it again with another `x-queue-type` (and otherwise the same) must be refused
    /// with the broker saying what the current type is.
    pub async fn assert_queue_type(&self, queue: &str, declaration: &QueueOptions, expected: &str) {
        let other = if expected == "classic" {
            "quorum"
        } else {
            "classic"
        };
        let mut probe = declaration.clone();
        probe
            .arguments
            .insert("x-queue-type".to_owned(), other.into());
        let refusal = match self {
            Harness::Rabbit(broker) => {
                // A channel of its own: the refusal closes it.
                let channel = broker.connection.create_channel().await.expect("channel");
                let mut args = FieldTable::default();
                for (key, value) in &probe.arguments {
                    let value = match value {
                        Value::String(s) => AMQPValue::LongString(s.as_str().into()),
                        Value::Number(n) => {
                            AMQPValue::LongLongInt(n.as_i64().expect("an integer argument"))
                        }
                        other => panic!("argument {key} = {other} not supported here"),
                    };
                    args.insert(key.as_str().into(), value);
                }
                let flags = QueueDeclareOptions {
                    durable: probe.durable,
                    ..Default::default()
                };
                match channel.queue_declare(queue.into(), flags, args).await {
                    Ok(_) => None,
                    Err(error) => Some(error.to_string()),
                }
            }
            Harness::Memory(broker) => broker
                .declare_queue(queue, &probe)
                .err()
                .map(|error| error.to_string()),
        };
        let refusal = refusal.unwrap_or_else(|| {
            panic!("queue {queue} was declared again as {other}: it is not a {expected} queue")
        });
        assert!(
            refusal.contains("inequivalent arg 'x-queue-type'") && refusal.contains(expected),
            "queue {queue} should be a {expected} queue: {refusal}"
        );
    }

    pub async fn cleanup(self) {
        if let Harness::Rabbit(broker) = self {
            broker.cleanup().await;
        }
    }
}

/// The log lines of this test process (rmq-bus's warnings and its delivery spans), for tests of
/// what rmq-bus says it did.
fn log_buffer() -> &'static Arc<Mutex<Vec<u8>>> {
    static BUFFER: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    BUFFER.get_or_init(Arc::default)
}

/// A writer appending to the log buffer.
#[derive(Clone)]
struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Captures rmq-bus's warnings, each with its delivery's span (which names the queue), into
/// the log buffer, once per process.
pub fn capture_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let writer = LogWriter(log_buffer().clone());
        // Warnings only, but the delivery spans (info) too, so that each line names its queue.
        let filter = tracing_subscriber::EnvFilter::new("warn,rmq_bus::dispatch=info");
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        // Another subscriber may be installed already; then nothing is captured, and tests of
        // log lines fail clearly.
        let _ = tracing::subscriber::set_global_default(subscriber);
    });
}

/// The captured log lines that mention `queue` (its deliveries' spans name it).
pub fn logged_for(queue: &str) -> Vec<String> {
    let buffer = log_buffer()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    String::from_utf8_lossy(&buffer)
        .lines()
        .filter(|line| {
            line.contains(&format!("queue={queue} ")) || line.contains(&format!("queue={queue}}}"))
        })
        .map(str::to_owned)
        .collect()
}
