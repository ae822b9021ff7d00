//! The RabbitMQ side of rmq-bus: connecting, declaring, and turning lapin deliveries into
//! transport-neutral ones. Everything lapin-specific that the dispatcher must not see lives here.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties,
    ExchangeKind as LapinKind,
};
use serde_json::Value;

use crate::acks::AckBatcher;
use crate::config::{Exchange, ExchangeKind, RmqOptions, redact_uri};
use crate::context::{DeliveryInfo, Properties, RmqContext};
use crate::dispatch::{Inbound, Publisher, Target};
use crate::error::{Error, Result};

/// Opens a connection named `name` (shown in the management UI and `rabbitmqctl list_connections`).
/// Connects to the first of the broker URIs of `options` that answers, trying them all again
/// with a growing pause (up to 5 s) until `patience` runs out (`None`: for ever).
pub(crate) async fn connect(
    options: &RmqOptions,
    name: &str,
    patience: Option<Duration>,
) -> Result<Connection> {
    let deadline = patience.map(|patience| Instant::now() + patience);
    let mut pause = Duration::from_millis(100);
    loop {
        let mut failure = None;
        for uri in options.broker_uris() {
            let properties = ConnectionProperties::default().with_connection_name(name.into());
            match connect_one(uri, properties).await {
                Ok(connection) => {
                    tracing::info!(uri = %redact_uri(uri), connection = name, "connected to RabbitMQ");
                    return Ok(connection);
                }
                Err(source) => {
                    failure = Some(Error::Connect {
                        uri: redact_uri(uri),
                        source: Box::new(source),
                    })
                }
            }
        }
        let error = failure.unwrap_or_else(|| Error::Config("no broker URI configured".into()));
        // The last attempt is made at the deadline, so callers wait for the whole bound.
        let wait = match deadline {
            Some(deadline) if Instant::now() >= deadline => return Err(error),
            Some(deadline) => pause.min(deadline.saturating_duration_since(Instant::now())),
            None => pause,
        };
        tracing::warn!(%error, retry_in = ?wait, "RabbitMQ unreachable; retrying");
        tokio::time::sleep(wait).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// The frame size asked for unless the URI says otherwise (`?frame_max=`). lapin keeps send and
/// receive buffers of 32 frames per connection, resident: RabbitMQ's default of 128 KiB costs
/// 8 MiB a connection, 16 KiB costs 1 MiB, with no measurable loss for messages of a few KiB.
const DEFAULT_FRAME_MAX: u32 = 16 * 1024;

async fn connect_one(uri: &str, properties: ConnectionProperties) -> lapin::Result<Connection> {
    match uri.parse::<lapin::uri::AMQPUri>() {
        Ok(mut parsed) => {
            parsed.query.frame_max.get_or_insert(DEFAULT_FRAME_MAX);
            Connection::connect_uri(parsed, properties).await
        }
        // Let lapin say what is wrong with it.
        Err(_) => Connection::connect(uri, properties).await,
    }
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
            source: Box::new(source),
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
        .map_err(|source| Error::DeclareExchange {
            exchange: exchange.name.clone(),
            source: Box::new(source),
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
        priority: *properties.priority(),
        expiration: text(properties.expiration()),
        message_type: text(properties.kind()),
        app_id: text(properties.app_id()),
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

/// Publishes on behalf of a microservice's connection: replies on a channel without confirms
/// (the requester's timeout covers a lost one, and an unawaited confirm would be kept by lapin
/// for the life of the channel), and confirmed copies for retries and the dead-letter queue,
/// whose queues it declares on first use. A channel that died (a refused declaration closes it)
/// is opened again on next use.
pub(crate) struct ServerPublisher {
    connection: Arc<Connection>,
    replies: tokio::sync::Mutex<Option<Channel>>,
    confirmed: tokio::sync::Mutex<Option<Channel>>,
    declared: Mutex<HashSet<String>>,
    /// Bound on waiting for a republish to be confirmed.
    confirm_timeout: Duration,
}

impl ServerPublisher {
    pub(crate) fn new(connection: Arc<Connection>, confirm_timeout: Duration) -> Self {
        Self {
            connection,
            replies: tokio::sync::Mutex::new(None),
            confirmed: tokio::sync::Mutex::new(None),
            declared: Mutex::default(),
            confirm_timeout,
        }
    }

    /// The channel in `slot`, opened (in confirm mode if `confirms`) when there is none alive.
    async fn channel(
        &self,
        slot: &tokio::sync::Mutex<Option<Channel>>,
        confirms: bool,
    ) -> Result<Channel> {
        let mut slot = slot.lock().await;
        if let Some(channel) = slot.as_ref().filter(|channel| channel.status().connected()) {
            return Ok(channel.clone());
        }
        let channel = self
            .connection
            .create_channel()
            .await
            .map_err(|e| Error::from_lapin("opening the publishing channel", e))?;
        if confirms {
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| Error::from_lapin("enabling publisher confirms", e))?;
            // Declarations were made on the channel that died with them, maybe not at all.
            self.declared
                .lock()
                .map(|mut declared| declared.clear())
                .ok();
        }
        *slot = Some(channel.clone());
        Ok(channel)
    }

    /// Declares `target`'s queue unless done before; returns its name.
    async fn declare(&self, channel: &Channel, target: &Target) -> Result<String> {
        let (name, arguments) = match target {
            Target::Queue(queue) => return Ok(queue.clone()),
            Target::DeadLetter(queue) => (queue.clone(), BTreeMap::new()),
            Target::Delayed { queue, delay } => {
                let arguments = crate::retry::delay_queue_arguments(queue, *delay);
                (crate::retry::delay_queue(queue, *delay), arguments)
            }
        };
        if self
            .declared
            .lock()
            .is_ok_and(|declared| declared.contains(&name))
        {
            return Ok(name);
        }
        let flags = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .queue_declare(short("queue name", &name)?, flags, field_table(&arguments)?)
            .await
            .map_err(|source| Error::Declare {
                queue: name.clone(),
                source: Box::new(source),
            })?;
        if let Ok(mut declared) = self.declared.lock() {
            declared.insert(name.clone());
        }
        Ok(name)
    }
}

impl Publisher for ServerPublisher {
    fn reply(
        &self,
        reply_to: &str,
        correlation_id: &str,
        body: Vec<u8>,
    ) -> BoxFuture<'_, Result<()>> {
        let target = short("reply_to", reply_to);
        let mut properties = BasicProperties::default();
        if let Ok(id) = ShortString::try_new(correlation_id) {
            properties = properties.with_correlation_id(id);
        }
        async move {
            let channel = self.channel(&self.replies, false).await?;
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

    fn republish<'a>(
        &'a self,
        target: Target,
        body: &'a [u8],
        properties: &'a Properties,
    ) -> BoxFuture<'a, Result<()>> {
        async move {
            let channel = self.channel(&self.confirmed, true).await?;
            let queue = self.declare(&channel, &target).await?;
            let confirm = channel
                .basic_publish(
                    ShortString::from(""),
                    short("queue name", &queue)?,
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    body,
                    basic_properties(properties)?,
                )
                .await
                .map_err(|e| Error::from_lapin("republishing", e))?;
            // Awaited to the end even past the timeout, so lapin keeps no abandoned confirm.
            let mut confirm = tokio::spawn(confirm);
            let confirmation = match tokio::time::timeout(self.confirm_timeout, &mut confirm).await
            {
                Err(_) => {
                    return Err(Error::ConfirmTimeout {
                        queue,
                        timeout: self.confirm_timeout,
                    });
                }
                Ok(Err(join)) => return Err(Error::Config(format!("confirm task failed: {join}"))),
                Ok(Ok(confirmation)) => confirmation,
            };
            match confirmation
                .map_err(|e| Error::from_lapin("waiting for the republish confirm", e))?
            {
                Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
                Confirmation::Ack(Some(_)) => Err(Error::Unroutable { routing_key: queue }),
                Confirmation::Nack(_) => Err(Error::Nacked { queue }),
            }
        }
        .boxed()
    }
}

/// Neutral properties back to AMQP ones, for republishing a delivery.
pub(crate) fn basic_properties(properties: &Properties) -> Result<BasicProperties> {
    let mut out = BasicProperties::default();
    let text =
        |what: &str, value: &Option<String>| value.as_deref().map(|v| short(what, v)).transpose();
    if let Some(v) = text("content_type", &properties.content_type)? {
        out = out.with_content_type(v);
    }
    if let Some(v) = text("correlation_id", &properties.correlation_id)? {
        out = out.with_correlation_id(v);
    }
    if let Some(v) = text("reply_to", &properties.reply_to)? {
        out = out.with_reply_to(v);
    }
    if let Some(v) = text("message_id", &properties.message_id)? {
        out = out.with_message_id(v);
    }
    if let Some(mode) = properties.delivery_mode {
        out = out.with_delivery_mode(mode);
    }
    if let Some(timestamp) = properties.timestamp {
        out = out.with_timestamp(timestamp);
    }
    if let Some(priority) = properties.priority {
        out = out.with_priority(priority);
    }
    if let Some(v) = text("expiration", &properties.expiration)? {
        out = out.with_expiration(v);
    }
    if let Some(v) = text("type", &properties.message_type)? {
        out = out.with_type(v);
    }
    if let Some(v) = text("app_id", &properties.app_id)? {
        out = out.with_app_id(v);
    }
    if !properties.headers.is_empty() {
        let headers: BTreeMap<String, Value> = properties.headers.clone();
        out = out.with_headers(field_table(&headers)?);
    }
    Ok(out)
}

/// Turns a lapin delivery from `queue` into a transport-neutral one.
pub(crate) fn inbound(
    delivery: lapin::message::Delivery,
    queue: &str,
    channel: &Arc<Channel>,
    publisher: &Arc<ServerPublisher>,
    acks: &Arc<AckBatcher>,
    track: bool,
) -> Inbound {
    let info = DeliveryInfo {
        queue: queue.to_owned(),
        exchange: delivery.exchange.into(),
        routing_key: delivery.routing_key.into(),
        delivery_tag: delivery.delivery_tag,
        redelivered: delivery.redelivered,
        properties: properties(&delivery.properties),
    };
    let acker = acks.acker(delivery.delivery_tag, track);
    let ctx = RmqContext::new(info, delivery.data, acker, Some(channel.clone()), !track);
    Inbound {
        ctx,
        publisher: publisher.clone(),
    }
}
