//! One behaviour suite, two transports: each test runs against RabbitMQ and against the
//! in-memory broker, so the in-memory one cannot drift from RabbitMQ's behaviour.
#![allow(unreachable_pub, dead_code, clippy::large_enum_variant)]

use std::time::Duration;

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use rmq_bus::RmqOptions;
use rmq_bus::config::QueueOptions;
use rmq_bus::context::Properties;
use rmq_bus::testing::TestBroker;

use crate::common::{Broker, EXPIRES_MS, unique};

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

impl Harness {
    pub async fn rabbit() -> Harness {
        Harness::Rabbit(Broker::connect().await)
    }

    pub fn memory() -> Harness {
        Harness::Memory(TestBroker::new())
    }

    /// A fresh queue name, deleted at cleanup.
    pub fn queue(&self, prefix: &str) -> String {
        let name = unique(prefix);
        if let Harness::Rabbit(broker) = self {
            broker.forget_later(&name);
        }
        name
    }

    /// The declaration every test queue gets (expiring on RabbitMQ if a test leaves it).
    pub fn declaration() -> QueueOptions {
        QueueOptions::default().argument("x-expires", EXPIRES_MS)
    }

    /// Options for `queue` on this transport.
    pub fn options(&self, queue: &str) -> RmqOptions {
        let uri = match self {
            Harness::Rabbit(_) => crate::common::uri(),
            Harness::Memory(broker) => broker.uri(),
        };
        RmqOptions::new(queue)
            .uri(uri)
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

    /// Messages ready in `queue`, waiting (bounded) until there are `count`.
    pub async fn wait_ready(&self, queue: &str, count: u32) -> u32 {
        match self {
            Harness::Rabbit(broker) => broker.wait_ready(queue, count).await,
            Harness::Memory(broker) => {
                let mut seen = None;
                for _ in 0..200 {
                    seen = broker.ready(queue).ok().map(|n| n as u32);
                    if seen == Some(count) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                seen.unwrap_or_else(|| panic!("queue {queue} does not exist"))
            }
        }
    }

    /// Takes every message from `queue`: (body, header named `header` as text).
    pub async fn drain(&self, queue: &str, header: &str) -> Vec<(Vec<u8>, Option<String>)> {
        match self {
            Harness::Rabbit(broker) => broker
                .drain(queue)
                .await
                .into_iter()
                .map(|(body, properties)| {
                    let value = properties
                        .headers()
                        .as_ref()
                        .and_then(|h| h.inner().get(header).cloned());
                    let text = value.map(|v| match v {
                        AMQPValue::LongString(s) => {
                            String::from_utf8_lossy(s.as_bytes()).into_owned()
                        }
                        AMQPValue::ShortString(s) => s.as_str().to_owned(),
                        AMQPValue::LongLongInt(n) => n.to_string(),
                        AMQPValue::LongInt(n) => n.to_string(),
                        other => format!("{other:?}"),
                    });
                    (body, text)
                })
                .collect(),
            Harness::Memory(broker) => broker
                .messages(queue)
                .expect("the queue exists")
                .into_iter()
                .map(|m| {
                    let text = m.properties.headers.get(header).map(|v| match v {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    });
                    (m.body, text)
                })
                .collect(),
        }
    }

    pub async fn cleanup(self) {
        if let Harness::Rabbit(broker) = self {
            broker.cleanup().await;
        }
    }
}
