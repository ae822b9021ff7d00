//! Declaring queues and exchanges and binding them, with errors that name what was refused.

use std::collections::BTreeMap;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, ExchangeKind as LapinKind};
use serde_json::Value;

use super::convert::{field_table, lapin_error, short};
use crate::config::{Exchange, ExchangeKind, QueueOptions};
use crate::error::{Error, Result};

/// Declares `queue` as `declaration` says.
pub(super) async fn declare_queue(
    channel: &Channel,
    queue: &str,
    declaration: &QueueOptions,
) -> Result<()> {
    let flags = QueueDeclareOptions {
        durable: declaration.durable,
        exclusive: declaration.exclusive,
        auto_delete: declaration.auto_delete,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(
            short("queue name", queue)?,
            flags,
            field_table(&declaration.arguments)?,
        )
        .await
        .map(drop)
        .map_err(|source| Error::Declare {
            queue: queue.to_owned(),
            source: Box::new(source),
        })
}

/// Declares a durable queue with `arguments` (the retry and dead-letter queues rmq-bus makes).
pub(super) async fn declare_durable(
    channel: &Channel,
    queue: &str,
    arguments: &BTreeMap<String, Value>,
) -> Result<()> {
    let declaration = QueueOptions {
        arguments: arguments.clone(),
        ..QueueOptions::default()
    };
    declare_queue(channel, queue, &declaration).await
}

/// Declares `exchange`.
pub(super) async fn declare_exchange(channel: &Channel, exchange: &Exchange) -> Result<()> {
    let kind = match exchange.kind {
        ExchangeKind::Topic => LapinKind::Topic,
        ExchangeKind::Direct => LapinKind::Direct,
        ExchangeKind::Fanout => LapinKind::Fanout,
        ExchangeKind::ConsistentHash => LapinKind::Custom("x-consistent-hash".into()),
    };
    let arguments = match exchange.kind {
        ExchangeKind::ConsistentHash => field_table(&BTreeMap::from([(
            "hash-header".to_owned(),
            Value::from(crate::ordering::KEY_HEADER),
        )]))?,
        _ => FieldTable::default(),
    };
    let flags = ExchangeDeclareOptions {
        durable: exchange.durable,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            short("exchange name", &exchange.name)?,
            kind,
            flags,
            arguments,
        )
        .await
        .map_err(|source| match exchange.kind {
            // The usual cause: the plugin is off (RabbitMQ answers "unknown exchange type").
            ExchangeKind::ConsistentHash => Error::Config(format!(
                "cannot declare the consistent-hash exchange {:?} of a partitioned queue: {source}; it needs RabbitMQ's plugin: rabbitmq-plugins enable rabbitmq_consistent_hash_exchange",
                exchange.name
            )),
            _ => Error::DeclareExchange {
                exchange: exchange.name.clone(),
                source: Box::new(source),
            },
        })
}

/// Binds `queue` to `exchange` with each of `keys`.
pub(super) async fn bind_queue(
    channel: &Channel,
    queue: &str,
    exchange: &Exchange,
    keys: &[&str],
) -> Result<()> {
    for key in keys {
        channel
            .queue_bind(
                short("queue name", queue)?,
                short("exchange name", &exchange.name)?,
                short("binding key", key)?,
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| lapin_error("binding the queue to its exchange", e))?;
    }
    Ok(())
}
