//! The RabbitMQ side of rmq-bus: connecting, declaring, and turning lapin deliveries into
//! transport-neutral ones. Everything lapin-specific that the dispatcher must not see lives here.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use lapin::options::{
    BasicAckOptions, BasicNackOptions, BasicPublishOptions, BasicRejectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind as LapinKind,
};
use serde_json::Value;

use crate::config::{Exchange, ExchangeKind, RmqOptions, redact_uri};
use crate::context::{Acker, DeliveryInfo, Properties, Settlement};
use crate::dispatch::{Inbound, Replier};
use crate::error::{Error, Result};

/// Opens a connection named `name` (shown in the management UI and `rabbitmqctl list_connections`).
pub(crate) async fn connect(uri: &str, name: &str) -> Result<Connection> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect(uri, properties)
        .await
        .map_err(|source| Error::Connect {
            uri: redact_uri(uri),
            source,
        })
}

/// A string as an AMQP short string, which has at most 255 bytes.
pub(crate) fn short(what: &str, value: &str) -> Result<ShortString> {
    ShortString::try_new(value)
        .map_err(|_| Error::Config(format!("{what} {value:?} is longer than 255 bytes")))
}

/// Declares the queue of `options` as configured.
pub(crate) async fn declare_queue(channel: &Channel, options: &RmqOptions) -> Result<()> {
    let declaration = options.queue_declaration();
    let flags = QueueDeclareOptions {
        durable: declaration.durable,
        exclusive: declaration.exclusive,
        auto_delete: declaration.auto_delete,
        ..QueueDeclareOptions::default()
    };
    let arguments = field_table(&declaration.arguments)?;
    channel
        .queue_declare(short("queue name", options.queue())?, flags, arguments)
        .await
        .map(drop)
        .map_err(|source| Error::Declare {
            queue: options.queue().to_owned(),
            source,
        })
}

/// Declares `exchange`.
pub(crate) async fn declare_exchange(channel: &Channel, exchange: &Exchange) -> Result<()> {
    let kind = match exchange.kind {
        ExchangeKind::Topic => LapinKind::Topic,
        ExchangeKind::Direct => LapinKind::Direct,
        ExchangeKind::Fanout => LapinKind::Fanout,
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
            FieldTable::default(),
        )
        .await
        .map_err(|source| Error::Declare {
            queue: format!("exchange {}", exchange.name),
            source,
        })
}

/// Binds the queue of `options` to its exchange: once for fanout, else once per key.
pub(crate) async fn bind_queue(
    channel: &Channel,
    options: &RmqOptions,
    keys: &[&str],
) -> Result<()> {
    let Some(exchange) = options.exchange_options() else {
        return Ok(());
    };
    let keys = if exchange.kind == ExchangeKind::Fanout {
        &[""][..]
    } else {
        keys
    };
    for key in keys {
        channel
            .queue_bind(
                short("queue name", options.queue())?,
                short("exchange name", &exchange.name)?,
                short("pattern", key)?,
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| Error::from_lapin("binding the queue to its exchange", e))?;
    }
    Ok(())
}

/// Converts JSON arguments to an AMQP table: integers as signed 64-bit, floats as doubles,
/// strings as long strings, objects as tables.
pub(crate) fn field_table(arguments: &BTreeMap<String, Value>) -> Result<FieldTable> {
    let mut table = FieldTable::default();
    for (key, value) in arguments {
        table.insert(short("argument name", key)?, to_amqp(value)?);
    }
    Ok(table)
}

fn to_amqp(value: &Value) -> Result<AMQPValue> {
    Ok(match value {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => AMQPValue::LongLongInt(i),
            (None, Some(f)) => AMQPValue::Double(f),
            _ => {
                return Err(Error::Config(format!(
                    "argument value {n} does not fit an AMQP number"
                )));
            }
        },
        Value::String(s) => AMQPValue::LongString(s.as_str().into()),
        Value::Array(items) => AMQPValue::FieldArray(
            items
                .iter()
                .map(to_amqp)
                .collect::<Result<Vec<_>>>()?
                .into(),
        ),
        Value::Object(map) => {
            let mut table = FieldTable::default();
            for (key, value) in map {
                table.insert(short("argument name", key)?, to_amqp(value)?);
            }
            AMQPValue::FieldTable(table)
        }
    })
}

fn to_json(value: &AMQPValue) -> Value {
    match value {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(n) => (*n).into(),
        AMQPValue::ShortShortUInt(n) => (*n).into(),
        AMQPValue::ShortInt(n) => (*n).into(),
        AMQPValue::ShortUInt(n) => (*n).into(),
        AMQPValue::LongInt(n) => (*n).into(),
        AMQPValue::LongUInt(n) => (*n).into(),
        AMQPValue::LongLongInt(n) => (*n).into(),
        AMQPValue::Float(f) => (*f).into(),
        AMQPValue::Double(f) => (*f).into(),
        AMQPValue::Timestamp(t) => (*t).into(),
        AMQPValue::ShortString(s) => s.as_str().into(),
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned().into(),
        AMQPValue::ByteArray(bytes) => {
            Value::Array(bytes.as_slice().iter().map(|b| (*b).into()).collect())
        }
        AMQPValue::FieldArray(items) => {
            Value::Array(items.as_slice().iter().map(to_json).collect())
        }
        AMQPValue::FieldTable(table) => table_to_json(table),
        AMQPValue::DecimalValue(d) => {
            let scaled = f64::from(d.value) / 10f64.powi(i32::from(d.scale));
            scaled.into()
        }
        AMQPValue::Void => Value::Null,
    }
}

fn table_to_json(table: &FieldTable) -> Value {
    Value::Object(
        table
            .inner()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), to_json(v)))
            .collect(),
    )
}

fn properties(properties: &BasicProperties) -> Properties {
    let text = |s: &Option<ShortString>| s.as_ref().map(|s| s.as_str().to_owned());
    Properties {
        correlation_id: text(properties.correlation_id()),
        reply_to: text(properties.reply_to()),
        content_type: text(properties.content_type()),
        message_id: text(properties.message_id()),
        delivery_mode: *properties.delivery_mode(),
        timestamp: *properties.timestamp(),
        headers: properties
            .headers()
            .as_ref()
            .map(table_entries)
            .unwrap_or_default(),
    }
}

fn table_entries(table: &FieldTable) -> BTreeMap<String, Value> {
    table
        .inner()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), to_json(v)))
        .collect()
}

/// Settles through lapin's single-use acker.
struct LapinAcker(lapin::Acker);

impl Acker for LapinAcker {
    fn settle(&self, settlement: Settlement) -> BoxFuture<'static, Result<()>> {
        let acker = self.0.clone();
        async move {
            let sent = match settlement {
                Settlement::Ack => acker.ack(BasicAckOptions::default()).await,
                Settlement::Nack { requeue } => {
                    acker
                        .nack(BasicNackOptions {
                            requeue,
                            ..BasicNackOptions::default()
                        })
                        .await
                }
                Settlement::Reject => acker.reject(BasicRejectOptions { requeue: false }).await,
            };
            match sent {
                Ok(true) => Ok(()),
                // lapin answers false when the acker is poisoned by a closed channel.
                Ok(false) | Err(_) => Err(Error::ChannelClosed {
                    attempted: settlement,
                }),
            }
        }
        .boxed()
    }
}

/// Publishes replies on the channel the request came in on (no confirms: the requester's
/// timeout covers a lost reply).
pub(crate) struct ChannelReplier(pub(crate) Channel);

impl Replier for ChannelReplier {
    fn reply(
        &self,
        reply_to: &str,
        correlation_id: &str,
        body: Vec<u8>,
    ) -> BoxFuture<'static, Result<()>> {
        let channel = self.0.clone();
        let target = short("reply_to", reply_to);
        let mut properties = BasicProperties::default();
        if let Ok(id) = ShortString::try_new(correlation_id) {
            properties = properties.with_correlation_id(id);
        }
        async move {
            channel
                .basic_publish(
                    ShortString::from(""),
                    target?,
                    BasicPublishOptions::default(),
                    &body,
                    properties,
                )
                .await
                .map(drop)
                .map_err(|e| Error::from_lapin("publishing a reply", e))
        }
        .boxed()
    }
}

/// Turns a lapin delivery from `queue` into a transport-neutral one.
pub(crate) fn inbound(
    delivery: lapin::message::Delivery,
    queue: &str,
    channel: &Channel,
    replier: &Arc<ChannelReplier>,
) -> Inbound {
    let info = DeliveryInfo {
        queue: queue.to_owned(),
        exchange: delivery.exchange.as_str().to_owned(),
        routing_key: delivery.routing_key.as_str().to_owned(),
        delivery_tag: delivery.delivery_tag,
        redelivered: delivery.redelivered,
        properties: properties(&delivery.properties),
    };
    Inbound {
        info,
        body: delivery.data,
        acker: Arc::new(LapinAcker(delivery.acker)),
        replier: replier.clone(),
        channel: Some(channel.clone()),
    }
}
