//! What the fuzz targets in `fuzz/` reach of rmq-bus's internals: the two ways a packet is
//! decoded, and pattern matching and normalisation. Not part of the API (`rmq_bus::__fuzz`).

use serde::de::IgnoredAny;
use serde_json::Value;

use crate::codec::{self, DataError};

/// A packet as the full decoder reads it: routing key, whether the pattern was an object, data.
#[derive(Debug, PartialEq)]
pub struct Decoded {
    /// The normalised routing key.
    pub key: String,
    /// Whether the pattern was an object (`{"cmd": …}`).
    pub object: bool,
    /// The data (`null` when absent).
    pub data: Value,
    /// The request id, if any.
    pub id: Option<String>,
}

/// The full decode the dispatcher falls back to; `Err` with the reason a message is refused.
pub fn decode(body: &[u8]) -> Result<Decoded, String> {
    let packet = codec::decode(body).map_err(|error| error.to_string())?;
    let data = serde_json::from_str(packet.data.get()).map_err(|error| error.to_string())?;
    Ok(Decoded {
        object: serde_json::to_value(&packet.pattern).is_ok_and(|wire| wire.is_object()),
        key: packet.pattern.into_key(),
        data,
        id: packet.id,
    })
}

/// Whether `body` is a packet the dispatcher can route: what must never be acked otherwise.
pub fn is_packet(body: &[u8]) -> bool {
    codec::decode(body).is_ok()
}

/// The fast path: the pattern as the dispatcher reads it without parsing, or `None` when it
/// leaves the body to [`decode`].
pub fn fast_pattern(body: &[u8]) -> Option<&str> {
    codec::event_pattern(body)
}

/// The data as a handler's arguments read it on the fast path (the whole body, in one pass);
/// `Err` with the reason a message is refused.
pub fn fast_data(body: &[u8]) -> Result<Value, String> {
    codec::read_data::<Value>(body).map_err(|error| match error {
        DataError::Packet(error) => error.to_string(),
        DataError::Data(error) => error.to_string(),
    })
}

/// The check a handler that reads no argument makes of the body on the fast path.
pub fn fast_check(body: &[u8]) -> Result<(), String> {
    codec::read_data::<IgnoredAny>(body)
        .map(drop)
        .map_err(|error| match error {
            DataError::Packet(error) => error.to_string(),
            DataError::Data(error) => error.to_string(),
        })
}

/// The routing key of a pattern read off the wire, or `None` if it is no pattern.
pub fn pattern_key(pattern: &Value) -> Option<String> {
    crate::pattern::Pattern::from_json(pattern).map(crate::pattern::Pattern::into_key)
}

/// Topic matching of routing `key` against wildcard `pattern`.
pub fn wildcard_matches(pattern: &str, key: &str) -> bool {
    crate::pattern::wildcard_matches(pattern, key)
}

/// The first of `patterns` (wildcards, distinct) matching `key`, found as the dispatcher does:
/// through a trie of them all.
pub fn first_wildcard_match(patterns: &[&str], key: &str) -> Option<usize> {
    let mut trie = crate::dispatch::wildcards::Wildcards::default();
    for (index, pattern) in patterns.iter().enumerate() {
        trie.insert((*pattern).to_owned(), index).ok()?;
    }
    trie.get(key).map(|(_, index)| *index)
}

/// Whether `key` is a wildcard pattern.
pub fn is_wildcard(key: &str) -> bool {
    crate::pattern::is_wildcard(key)
}
