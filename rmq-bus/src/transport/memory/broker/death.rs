//! Dead-lettering as RabbitMQ records it: the death headers, and the rule that breaks cycles.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::state::Stored;

/// Dead-letter reason of a message rejected or nacked without requeue.
pub(super) const REJECTED: &str = "rejected";
/// Dead-letter reason of a message whose queue TTL ran out.
pub(super) const EXPIRED: &str = "expired";

/// Adds a death to the message's headers as RabbitMQ 3.13 does: `x-death` (the entry for the
/// same queue and reason counted up and moved first), `x-first-death-*` once, `x-last-death-*`.
pub(super) fn record_death(message: &mut Stored, queue: &str, reason: &str) {
    let headers = &mut message.properties.headers;
    let mut deaths = match headers.remove("x-death") {
        Some(Value::Array(deaths)) => deaths,
        _ => Vec::new(),
    };
    let same = |death: &Value| {
        death.get("queue").and_then(Value::as_str) == Some(queue)
            && death.get("reason").and_then(Value::as_str) == Some(reason)
    };
    let entry = match deaths.iter().position(same) {
        Some(index) => {
            let mut entry = deaths.remove(index);
            let count = entry.get("count").and_then(Value::as_u64).unwrap_or(0) + 1;
            if let Some(fields) = entry.as_object_mut() {
                fields.insert("count".into(), count.into());
            }
            entry
        }
        None => json!({
            "count": 1,
            "reason": reason,
            "queue": queue,
            "time": SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            "exchange": message.exchange,
            "routing-keys": [message.routing_key],
        }),
    };
    deaths.insert(0, entry);
    headers.insert("x-death".into(), Value::Array(deaths));
    for (field, value) in [
        ("reason", reason),
        ("queue", queue),
        ("exchange", message.exchange.as_str()),
    ] {
        headers
            .entry(format!("x-first-death-{field}"))
            .or_insert_with(|| value.into());
        headers.insert(format!("x-last-death-{field}"), value.into());
    }
}

/// RabbitMQ's cycle rule: dead-lettering into `target` again, with no rejection since it last
/// left it, would loop for ever.
pub(super) fn is_cycle(target: &str, deaths: &[Value]) -> bool {
    let Some(last) = deaths
        .iter()
        .position(|death| death.get("queue").and_then(Value::as_str) == Some(target))
    else {
        return false;
    };
    deaths[..=last]
        .iter()
        .all(|death| death.get("reason").and_then(Value::as_str) != Some(REJECTED))
}
