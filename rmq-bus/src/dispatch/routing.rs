//! Routing a delivery to its handler, or refusing it with a reason: the size bound, the fast
//! path that reads only an event's pattern, the full decode otherwise.

use std::sync::Arc;

use serde_json::value::RawValue;

use super::disposal::Policy;
use super::{Entry, Router};
use crate::codec::{decode, event_pattern};
use crate::delivery::Properties;
use crate::handler::BodyCheck;

/// Why a delivery reaches no handler.
pub(super) struct Refusal {
    pub(super) reason: String,
    /// Its pattern, if it had one.
    pub(super) pattern: Option<String>,
    /// Its request id, when it was a request nobody handles (its sender is told).
    pub(super) request_id: Option<String>,
}

/// A delivery's handler, and what the dispatcher read of its packet.
pub(super) struct Routed<'r> {
    pub(super) entry: &'r Entry,
    /// The normalised pattern.
    pub(super) key: Arc<str>,
    /// The data, when the packet was decoded in full; `None` when only its pattern was read.
    pub(super) data: Option<Box<RawValue>>,
    /// The request id, when the packet is a request.
    pub(super) request_id: Option<String>,
}

/// Finds the handler of `body`. An event (no `reply_to`) in the usual layout is routed by its
/// pattern alone, leaving the handler's arguments to parse the body once; anything else is
/// decoded in full here.
pub(super) fn route<'r>(
    router: &'r Router,
    policy: &Policy,
    body: &[u8],
    properties: &Properties,
) -> std::result::Result<Routed<'r>, Refusal> {
    let refuse = |reason: String| Refusal {
        reason,
        pattern: None,
        request_id: None,
    };
    if body.len() > policy.max_bytes {
        return Err(refuse(format!(
            "message of {} bytes exceeds max_message_bytes = {}",
            body.len(),
            policy.max_bytes
        )));
    }
    // An event in the usual layout, for a handler that checks the body itself, is routed by its
    // pattern alone; its handler's arguments parse the body once.
    if properties.reply_to.is_none()
        && let Some(pattern) = event_pattern(body).filter(|pattern| pattern.len() <= 255)
        && let Some(entry) = router
            .get(pattern)
            .filter(|entry| entry.body_check == BodyCheck::Handler)
    {
        return Ok(Routed {
            entry,
            key: entry.pattern_of(pattern),
            data: None,
            request_id: None,
        });
    }
    let packet = decode(body).map_err(|error| refuse(error.to_string()))?;
    let (key, data, request_id) = (packet.pattern.into_key(), Some(packet.data), packet.id);
    // Routing keys have at most 255 bytes; a longer pattern matches no handler, and refusing it
    // here keeps wildcard matching cheap whatever a message claims.
    if key.len() > 255 {
        return Err(refuse(format!(
            "pattern of {} bytes is longer than the 255 a routing key can have",
            key.len()
        )));
    }
    match router.get(&key) {
        Some(entry) => Ok(Routed {
            entry,
            key: entry.pattern_of(&key),
            data,
            request_id,
        }),
        None => Err(Refusal {
            reason: format!(
                "no handler for pattern {key:?}; this service handles: {}",
                router.handled
            ),
            pattern: Some(key),
            request_id,
        }),
    }
}

/// The patterns a service handles, for a refusal's reason: the first few, then how many more.
/// Written once, so that refusing a message costs the same with 10 000 handlers as with ten.
pub(super) fn handled(keys: &[&str]) -> String {
    const SHOWN: usize = 20;
    match keys.len().checked_sub(SHOWN) {
        Some(more) if more > 0 => format!("{} and {more} more", keys[..SHOWN].join(", ")),
        _ => keys.join(", "),
    }
}

#[cfg(test)]
mod tests {
    use super::handled;

    #[test]
    fn a_refusal_names_the_first_twenty_patterns_and_counts_the_rest() {
        let keys: Vec<String> = (0..25).map(|i| format!("p{i:02}")).collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        assert_eq!(handled(&keys[..2]), "p00, p01");
        let many = handled(&keys);
        assert!(
            many.starts_with("p00, p01,") && many.ends_with("p19 and 5 more"),
            "{many}"
        );
    }
}
