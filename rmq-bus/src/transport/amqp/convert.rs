//! Between rmq-bus's plain data and lapin's: properties, header and argument tables, short
//! strings, and lapin's errors as [`Error`]s.

use std::collections::BTreeMap;

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use serde_json::Value;

use crate::delivery::Properties;
use crate::error::{Error, Result};

/// A string as an AMQP short string, which has at most 255 bytes.
pub(super) fn short(what: &'static str, value: &str) -> Result<ShortString> {
    ShortString::try_new(value).map_err(|_| Error::TooLong {
        what,
        value: value.to_owned(),
    })
}

/// Classifies a lapin error: connection and channel losses become [`Error::Disconnected`].
pub(super) fn lapin_error(operation: &'static str, source: lapin::Error) -> Error {
    use lapin::ErrorKind as K;
    let lost = matches!(
        source.kind(),
        K::InvalidChannelState(..)
            | K::InvalidConnectionState(..)
            | K::IOError(_)
            | K::MissingHeartbeatError
    );
    if lost {
        Error::Disconnected {
            context: operation,
            source: Box::new(source),
        }
    } else {
        Error::Broker {
            operation,
            source: Box::new(source),
        }
    }
}

/// Converts JSON arguments to an AMQP table: integers as signed 64-bit, floats as doubles,
/// strings as long strings, objects as tables.
pub(super) fn field_table(arguments: &BTreeMap<String, Value>) -> Result<FieldTable> {
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

/// AMQP properties as rmq-bus's.
pub(super) fn properties(properties: &BasicProperties) -> Properties {
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

/// Neutral properties back to AMQP ones, for republishing a delivery.
pub(super) fn basic_properties(properties: &Properties) -> Result<BasicProperties> {
    let mut out = BasicProperties::default();
    let text = |what: &'static str, value: &Option<String>| {
        value.as_deref().map(|v| short(what, v)).transpose()
    };
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
        out = out.with_headers(field_table(&properties.headers)?);
    }
    Ok(out)
}
