//! The NestJS packet format: `{"pattern": …, "data": …}` for events (and `"id"` for requests).
//!
//! Decoding keeps `data` as raw JSON, so the body is parsed once and each handler deserializes
//! exactly the type (or the key) it asks for.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::error::{Error, Result};
use crate::pattern::Pattern;

/// An outgoing event packet.
#[derive(Serialize)]
struct EventPacket<'a, T: ?Sized> {
    pattern: &'a Pattern,
    data: &'a T,
}

/// Encodes an event as NestJS's `ClientProxy.emit` does.
pub(crate) fn encode_event<T: Serialize + ?Sized>(pattern: &Pattern, data: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(&EventPacket { pattern, data }).map_err(Error::Encode)
}

/// A decoded incoming packet.
#[derive(Debug)]
pub(crate) struct Packet {
    pub(crate) pattern: Pattern,
    pub(crate) data: Box<RawValue>,
    /// Present on requests (`send`), absent on events (`emit`).
    #[allow(dead_code)]
    pub(crate) id: Option<String>,
}

#[derive(Deserialize)]
struct WirePacket {
    pattern: Option<serde_json::Value>,
    data: Option<Box<RawValue>>,
    id: Option<serde_json::Value>,
}

/// Why a body is not a packet; each reason is logged when the message is dead-lettered.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum DecodeError {
    NotJson(String),
    NoPattern,
    BadPattern(String),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::NotJson(e) => write!(f, "body is not a JSON packet object ({e})"),
            DecodeError::NoPattern => f.write_str("packet has no \"pattern\" field"),
            DecodeError::BadPattern(p) => {
                write!(f, "packet pattern {p} is not a string, number or object")
            }
        }
    }
}

/// Decodes a NestJS packet. A missing `data` is `null` (Nest's `emit(p, undefined)` omits it).
pub(crate) fn decode(body: &[u8]) -> std::result::Result<Packet, DecodeError> {
    let wire: WirePacket =
        serde_json::from_slice(body).map_err(|e| DecodeError::NotJson(e.to_string()))?;
    let raw_pattern = wire.pattern.ok_or(DecodeError::NoPattern)?;
    let pattern = Pattern::from_json(&raw_pattern)
        .ok_or_else(|| DecodeError::BadPattern(raw_pattern.to_string()))?;
    let data = match wire.data {
        Some(data) => data,
        None => RawValue::from_string("null".to_owned())
            .map_err(|e| DecodeError::NotJson(e.to_string()))?,
    };
    let id = wire.id.map(|id| match id {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    });
    Ok(Packet { pattern, data, id })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn events_encode_as_nest_does() -> Result<()> {
        let body = encode_event(
            &Pattern::from("order_created"),
            &json!({"orderPayload": {"price": 5}}),
        )?;
        assert_eq!(
            String::from_utf8_lossy(&body),
            r#"{"pattern":"order_created","data":{"orderPayload":{"price":5}}}"#
        );
        Ok(())
    }

    #[test]
    fn decodes_events_and_requests() {
        let event = decode(br#"{"pattern":"a","data":{"x":[1,2]}}"#).ok();
        let event = event.as_ref();
        assert_eq!(event.map(|p| p.pattern.key()), Some("a"));
        assert_eq!(event.map(|p| p.data.get()), Some(r#"{"x":[1,2]}"#));
        assert_eq!(event.and_then(|p| p.id.clone()), None);
        let request = decode(br#"{"pattern":{"cmd":"sum"},"data":[1],"id":"abc"}"#).ok();
        assert_eq!(
            request.as_ref().map(|p| p.pattern.key()),
            Some(r#"{"cmd":"sum"}"#)
        );
        assert_eq!(request.and_then(|p| p.id), Some("abc".to_owned()));
    }

    #[test]
    fn missing_data_is_null() {
        assert_eq!(
            decode(br#"{"pattern":"a"}"#).map(|p| p.data.get().to_owned()),
            Ok("null".to_owned())
        );
    }

    #[test]
    fn rejects_what_is_not_a_packet() {
        assert!(matches!(decode(b"not json"), Err(DecodeError::NotJson(_))));
        assert!(matches!(decode(b"[1,2]"), Err(DecodeError::NotJson(_))));
        assert!(matches!(decode(b"\xff\xfe"), Err(DecodeError::NotJson(_))));
        assert_eq!(decode(br#"{"data":1}"#).err(), Some(DecodeError::NoPattern));
        assert!(matches!(
            decode(br#"{"pattern":null,"data":1}"#),
            Err(DecodeError::NoPattern)
        ));
        assert!(matches!(
            decode(br#"{"pattern":[1],"data":1}"#),
            Err(DecodeError::BadPattern(_))
        ));
    }
}
