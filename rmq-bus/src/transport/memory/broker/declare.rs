//! Declarations checked as RabbitMQ checks them: queue arguments, equivalence on redeclaration,
//! reserved names, and the texts of its errors.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use super::MemoryError;
use crate::config::ExchangeKind;

/// Queue arguments RabbitMQ compares when a queue is declared again; others are not compared.
const EQUIVALENCE_ARGS: &[&str] = &[
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-expires",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-message-ttl",
    "x-overflow",
    "x-queue-type",
    "x-single-active-consumer",
];

/// What a queue's arguments make it do.
pub(super) struct QueueSettings {
    /// `x-message-ttl`.
    pub(super) ttl: Option<Duration>,
    /// `x-dead-letter-exchange`, and `x-dead-letter-routing-key` (`None`: the message's own).
    pub(super) dead_letter: Option<(String, Option<String>)>,
}

/// Reads and checks the arguments RabbitMQ acts on; others are accepted and ignored.
pub(super) fn settings(
    name: &str,
    durable: bool,
    arguments: &BTreeMap<String, Value>,
) -> Result<QueueSettings, MemoryError> {
    let invalid = |key: &str, value: &Value, expected: &str| {
        MemoryError::PreconditionFailed(format!(
            "invalid arg '{key}' for queue '{name}' in vhost '/': {value} is not {expected}"
        ))
    };
    let text = |key: &str| match arguments.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(invalid(key, other, "a string")),
    };
    let millis = |key: &str, least: u64| match arguments.get(key) {
        None => Ok(None),
        Some(value) => match value.as_u64() {
            Some(ms) if ms >= least => Ok(Some(Duration::from_millis(ms))),
            _ => Err(invalid(
                key,
                value,
                if least == 0 {
                    "a non-negative integer"
                } else {
                    "a positive integer"
                },
            )),
        },
    };
    let ttl = millis("x-message-ttl", 0)?;
    millis("x-expires", 1)?;
    let exchange = text("x-dead-letter-exchange")?;
    let key = text("x-dead-letter-routing-key")?;
    if key.is_some() && exchange.is_none() {
        return Err(MemoryError::PreconditionFailed(format!(
            "invalid arg 'x-dead-letter-routing-key' for queue '{name}' in vhost '/': {{routing_key_but_no_dlx_defined}}"
        )));
    }
    match text("x-queue-type")?.as_deref() {
        None | Some("classic") => {}
        Some("quorum") if durable => {}
        Some("quorum") => {
            return Err(MemoryError::PreconditionFailed(format!(
                "invalid property 'non-durable' for queue '{name}' in vhost '/'"
            )));
        }
        Some(other) => {
            return Err(MemoryError::PreconditionFailed(format!(
                "invalid arg 'x-queue-type' for queue '{name}' in vhost '/': '{other}' is not supported by the in-memory broker"
            )));
        }
    }
    Ok(QueueSettings {
        ttl,
        dead_letter: exchange.map(|exchange| (exchange, key)),
    })
}

/// Checks a declaration against the existing queue's, with RabbitMQ's messages.
pub(super) fn equivalent(
    name: &str,
    (durable, arguments): (bool, &BTreeMap<String, Value>),
    (current_durable, current_arguments): (bool, &BTreeMap<String, Value>),
) -> Result<(), MemoryError> {
    if current_durable != durable {
        return Err(MemoryError::PreconditionFailed(format!(
            "inequivalent arg 'durable' for queue '{name}' in vhost '/': received '{durable}' but current is '{}'",
            current_durable
        )));
    }
    let classic = Value::from("classic");
    let get = |args: &BTreeMap<String, Value>, key: &str| match args.get(key) {
        None if key == "x-queue-type" => Some(classic.clone()),
        value => value.cloned(),
    };
    for key in EQUIVALENCE_ARGS {
        let (received, current) = (get(arguments, key), get(current_arguments, key));
        if received != current {
            return Err(MemoryError::PreconditionFailed(format!(
                "inequivalent arg '{key}' for queue '{name}' in vhost '/': received {} but current is {}",
                describe(received.as_ref()),
                describe(current.as_ref())
            )));
        }
    }
    Ok(())
}

/// An argument value as RabbitMQ describes it in errors.
fn describe(value: Option<&Value>) -> String {
    let Some(value) = value else {
        return "none".into();
    };
    let kind = match value {
        Value::Number(n) if n.is_f64() => "double",
        Value::Number(_) => "long",
        Value::String(_) => "longstr",
        Value::Bool(_) => "bool",
        Value::Array(_) => "array",
        Value::Object(_) => "table",
        Value::Null => "void",
    };
    match value {
        Value::String(s) => format!("the value '{s}' of type '{kind}'"),
        other => format!("the value '{other}' of type '{kind}'"),
    }
}

pub(super) fn kind_name(kind: ExchangeKind) -> &'static str {
    match kind {
        ExchangeKind::Topic => "topic",
        ExchangeKind::Direct => "direct",
        ExchangeKind::Fanout => "fanout",
        ExchangeKind::ConsistentHash => "x-consistent-hash",
    }
}

pub(super) fn no_queue(name: &str) -> MemoryError {
    MemoryError::NotFound(format!("no queue '{name}' in vhost '/'"))
}

pub(super) fn no_exchange(name: &str) -> MemoryError {
    MemoryError::NotFound(format!("no exchange '{name}' in vhost '/'"))
}

pub(super) fn reserved(what: &str, name: &str) -> MemoryError {
    MemoryError::AccessRefused(format!(
        "{what} name '{name}' contains reserved prefix 'amq.*'"
    ))
}

pub(super) fn default_exchange() -> MemoryError {
    MemoryError::AccessRefused("operation not permitted on the default exchange".into())
}
