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
                router.keys().join(", ")
            ),
            pattern: Some(key),
            request_id,
        }),
    }
}
