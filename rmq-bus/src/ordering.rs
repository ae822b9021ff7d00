//! Per-key ordering: the key a handler is ordered by, and reading it from a message.
//!
//! A handler declares its key as a path into the event's data (`ordered_by = "orderId"`, dotted
//! for nesting: `"order.id"`). Messages with the same key are then handled one at a time, in
//! delivery order; other keys run concurrently (the lanes live in the dispatcher). Senders put the
//! key in the [`KEY_HEADER`] header too, where a partitioned queue's hashing exchange reads it
//! (see [`RmqOptions::partitions`](crate::RmqOptions::partitions)).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::codec::{self, DataError};

/// The header that carries a message's ordering key: the consistent-hash exchange of a
/// partitioned queue hashes it, so that one key always lands in one partition. rmq-bus senders set
/// it for contracts that name their key ([`Event::ORDERED_BY`](crate::contract::Event::ORDERED_BY))
/// and for [`ClientProxy::emit_keyed`](crate::ClientProxy::emit_keyed); other senders (NestJS) set
/// it themselves.
pub const KEY_HEADER: &str = "x-rmq-bus-key";

/// A path into an event's data: `orderId`, or `order.id` for `{"order": {"id": …}}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct KeyPath {
    path: String,
}

impl KeyPath {
    /// Checks `path`: dot-separated, no empty segment.
    pub(crate) fn parse(path: &str) -> Result<Self, String> {
        if path.is_empty() || path.split('.').any(str::is_empty) {
            return Err(format!(
                "ordering key path {path:?} is not a dotted path into the data such as \"orderId\" or \"order.id\""
            ));
        }
        Ok(Self {
            path: path.to_owned(),
        })
    }

    /// Reads the key of `body`, a packet: a string as it is, a number as written. `Err` says why
    /// there is none (missing, `null`, not a string or number, not a packet).
    pub(crate) fn read(&self, body: &[u8]) -> Result<String, String> {
        let data: &RawValue = codec::read_data(body).map_err(|error| match error {
            DataError::Packet(error) => error.to_string(),
            DataError::Data(error) => format!("data is not JSON: {error}"),
        })?;
        self.read_data(data)
    }

    /// Reads the key of a packet's `data`.
    pub(crate) fn read_data(&self, data: &RawValue) -> Result<String, String> {
        let missing = || format!("ordering key data.{} is missing", self.path);
        let mut value = data;
        for segment in self.path.split('.') {
            let fields: HashMap<Cow<'_, str>, &RawValue> = serde_json::from_str(value.get())
                .map_err(|_| format!("ordering key data.{}: not inside an object", self.path))?;
            value = fields.get(segment).copied().ok_or_else(missing)?;
        }
        match serde_json::from_str::<KeyValue<'_>>(value.get()) {
            Ok(KeyValue::Text(text)) => Ok(text.into_owned()),
            Ok(KeyValue::Number(number)) => Ok(number.to_string()),
            Ok(KeyValue::Null(())) => Err(missing()),
            Err(_) => Err(format!(
                "ordering key data.{} is {}, not a string or a number",
                self.path,
                kind_of(value.get())
            )),
        }
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path)
    }
}

/// What a key may be.
#[derive(Deserialize)]
#[serde(untagged)]
enum KeyValue<'a> {
    #[serde(borrow)]
    Text(Cow<'a, str>),
    Number(serde_json::Number),
    Null(()),
}

/// The JSON kind of `json`, for messages.
fn kind_of(json: &str) -> &'static str {
    match json.trim_start().as_bytes().first() {
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b't' | b'f') => "a boolean",
        _ => "not a key",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(path: &str, body: &str) -> Result<String, String> {
        KeyPath::parse(path)?.read(body.as_bytes())
    }

    #[test]
    fn keys_are_read_from_the_data() {
        let body = r#"{"pattern":"p","data":{"orderId":"o-1","n":7,"order":{"id":"o\"2"}}}"#;
        assert_eq!(key("orderId", body), Ok("o-1".to_owned()));
        assert_eq!(key("n", body), Ok("7".to_owned()));
        assert_eq!(key("order.id", body), Ok("o\"2".to_owned()));
    }

    #[test]
    fn missing_or_unreadable_keys_say_why() {
        let body = r#"{"pattern":"p","data":{"orderId":null,"flag":true,"o":{"x":1},"s":"t"}}"#;
        let reason = key("orderId", body).unwrap_err();
        assert!(reason.contains("data.orderId is missing"), "{reason}");
        assert!(key("other", body).unwrap_err().contains("missing"));
        assert!(key("flag", body).unwrap_err().contains("a boolean"));
        assert!(key("o", body).unwrap_err().contains("an object"));
        assert!(
            key("s.x", body)
                .unwrap_err()
                .contains("not inside an object")
        );
        assert!(key("orderId", "not json").is_err());
        assert!(KeyPath::parse("a..b").is_err());
        assert!(KeyPath::parse("").is_err());
    }
}
