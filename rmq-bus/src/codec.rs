//! The NestJS packet format: `{"pattern": …, "data": …}` for events (and `"id"` for requests).
//!
//! An event is parsed once: the dispatcher reads only its pattern ([`event_pattern`]), and the
//! handler's arguments read the body whole, `data` straight into the type they ask for
//! ([`read_data`]). Anything else (requests, object patterns, unusual layouts) is decoded in full
//! first ([`decode`]), with `data` kept as raw JSON.

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::error::{Error, Result};
use crate::pattern::Pattern;

/// The content type of every message rmq-bus publishes.
pub(crate) const CONTENT_TYPE: &str = "application/json";

/// The error sent when no handler matches a request, word for word as NestJS sends it.
pub(crate) const NO_HANDLER: &str =
    "There is no matching message handler defined in the remote service.";

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

/// An outgoing request packet.
#[derive(Serialize)]
struct RequestPacket<'a, T: ?Sized> {
    pattern: &'a Pattern,
    data: &'a T,
    id: &'a str,
}

/// Encodes a request as NestJS's `ClientProxy.send` does.
pub(crate) fn encode_request<T: Serialize + ?Sized>(
    pattern: &Pattern,
    data: &T,
    id: &str,
) -> Result<Vec<u8>> {
    serde_json::to_vec(&RequestPacket { pattern, data, id }).map_err(Error::Encode)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReplyPacket<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    response: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    err: Option<&'a serde_json::Value>,
    is_disposed: bool,
}

/// Encodes a handler's answer in NestJS's reply format: a `response` value, an `err` payload, or
/// neither (a handler that answers nothing).
pub(crate) fn encode_reply(
    response: Option<&RawValue>,
    err: Option<&serde_json::Value>,
) -> Vec<u8> {
    serde_json::to_vec(&ReplyPacket {
        response,
        err,
        is_disposed: true,
    })
    .unwrap_or_else(|_| br#"{"isDisposed":true}"#.to_vec())
}

/// NestJS's answer to a request no handler matches.
pub(crate) fn encode_no_handler(id: &str) -> Vec<u8> {
    serde_json::json!({ "id": id, "err": NO_HANDLER, "status": "error" })
        .to_string()
        .into_bytes()
}

/// A reply as a client reads it (the first of a stream; `isDisposed` is not needed for that).
#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Reply {
    pub(crate) response: Option<Box<RawValue>>,
    #[serde(default)]
    pub(crate) err: Option<serde_json::Value>,
}

/// Decodes a reply body.
pub(crate) fn decode_reply(body: &[u8]) -> std::result::Result<Reply, String> {
    serde_json::from_slice(body).map_err(|e| format!("reply is not a JSON reply packet ({e})"))
}

/// A decoded incoming packet.
#[derive(Debug)]
pub(crate) struct Packet {
    pub(crate) pattern: Pattern,
    pub(crate) data: Box<RawValue>,
    /// Present on requests (`send`), absent on events (`emit`).
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
    // serde would also read a struct from an array (`[pattern, data, id]`); a packet is an object.
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(DecodeError::NotJson("expected a JSON object".to_owned()));
    }
    // From text, not bytes: serde_json skips the strings of fields it ignores without checking
    // their UTF-8, and would take `{"pattern":"a","x":"\xff"}`, which is not JSON (found by
    // fuzzing; the fast path's reader, `read_data`, refuses it).
    let text = std::str::from_utf8(body).map_err(|e| DecodeError::NotJson(e.to_string()))?;
    let wire: WirePacket =
        serde_json::from_str(text).map_err(|e| DecodeError::NotJson(e.to_string()))?;
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

/// The pattern of an event written as NestJS and rmq-bus write them, `{"pattern":"text",…`,
/// read without parsing the rest. `None` for any other layout (object patterns, escapes, the
/// pattern after the data, not JSON at all), which [`decode`] reads in full instead.
pub(crate) fn event_pattern(body: &[u8]) -> Option<&str> {
    let rest = body
        .trim_ascii_start()
        .strip_prefix(b"{")?
        .trim_ascii_start();
    let rest = rest.strip_prefix(b"\"pattern\"")?.trim_ascii_start();
    let rest = rest.strip_prefix(b":")?.trim_ascii_start();
    let rest = rest.strip_prefix(b"\"")?;
    let end = rest
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
    let after = rest.get(end + 1..)?.trim_ascii_start().first();
    if rest[end] != b'"' || !matches!(after, Some(b',' | b'}')) {
        return None;
    }
    std::str::from_utf8(&rest[..end]).ok()
}

/// A packet read for its `data`. The pattern is named so that a packet repeating it is refused
/// rather than routed by its first one, and the id so that a packet repeating it is refused here
/// as [`decode`] refuses it (the two disagreed; the differential fuzz check now watches).
/// They are skipped as they are (`IgnoredAny`, not an `Option` of it): an `Option` would only add
/// code to the path every delivery takes.
#[derive(Deserialize)]
struct DataOf<T> {
    #[serde(rename = "pattern", default)]
    _pattern: IgnoredAny,
    #[serde(rename = "id", default)]
    _id: IgnoredAny,
    data: Option<T>,
}

/// Why a packet's data could not be read as the type asked for.
#[derive(Debug)]
pub(crate) enum DataError {
    /// The body is not a JSON packet at all.
    Packet(DecodeError),
    /// The data does not fit.
    Data(serde_json::Error),
}

/// Reads the `data` of a whole packet `body` as `T`, in one pass; a missing `data` is `null`.
pub(crate) fn read_data<'de, T: Deserialize<'de>>(
    body: &'de [u8],
) -> std::result::Result<T, DataError> {
    let not_json =
        |e: &dyn std::fmt::Display| DataError::Packet(DecodeError::NotJson(e.to_string()));
    let text = std::str::from_utf8(body).map_err(|e| not_json(&e))?;
    match serde_json::from_str::<DataOf<T>>(text) {
        Ok(DataOf {
            data: Some(data), ..
        }) => Ok(data),
        Ok(DataOf { data: None, .. }) => serde_json::from_str("null").map_err(DataError::Data),
        // The data may be read before a syntax error further on: the packet's own fault first.
        Err(e) if e.is_data() => match serde_json::from_str::<IgnoredAny>(text) {
            Ok(_) => Err(DataError::Data(e)),
            Err(syntax) => Err(not_json(&syntax)),
        },
        Err(e) => Err(not_json(&e)),
    }
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
    fn event_patterns_are_read_without_parsing_the_rest() {
        assert_eq!(
            event_pattern(br#"{"pattern":"order_created","data":{"x":1}}"#),
            Some("order_created")
        );
        assert_eq!(event_pattern(b" {\n \"pattern\" : \"a.b\" }"), Some("a.b"));
        // Anything unusual is left to the full decoder.
        for body in [
            &br#"{"pattern":"a\"b","data":1}"#[..],
            br#"{"pattern":{"cmd":"sum"},"data":1}"#,
            br#"{"data":1,"pattern":"a"}"#,
            br#"{"pattern":"a" x"#,
            br#"{"pattern":"a"#,
            b"{\"pattern\":\"\xff\",\"data\":1}",
            b"not json",
        ] {
            assert_eq!(
                event_pattern(body),
                None,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn data_is_read_from_the_whole_packet_in_one_pass() {
        let read = |body: &[u8]| read_data::<Vec<u32>>(body);
        assert_eq!(
            read(br#"{"pattern":"a","data":[1,2],"id":"x"}"#).ok(),
            Some(vec![1, 2])
        );
        assert_eq!(
            read_data::<Option<u32>>(br#"{"pattern":"a"}"#).ok(),
            Some(None),
            "a missing data is null"
        );
        assert!(matches!(
            read(br#"{"pattern":"a","data":{}}"#),
            Err(DataError::Data(_))
        ));
        assert!(matches!(
            read(br#"{"pattern":"a","data":{}} x"#),
            Err(DataError::Packet(DecodeError::NotJson(_)))
        ));
        assert!(matches!(
            read(br#"{"pattern":"a","data":[1],"pattern":"b"}"#),
            Err(DataError::Data(_))
        ));
        // A repeated id is refused on this path too, as the full decode refuses it.
        assert!(read(br#"{"pattern":"a","data":[1],"id":1,"id":2}"#).is_err());
        assert!(decode(br#"{"pattern":"a","data":[1],"id":1,"id":2}"#).is_err());
        let check = |body: &[u8]| read_data::<IgnoredAny>(body).map(drop);
        assert!(check(br#"{"pattern":"a","data":{"any":[true]}}"#).is_ok());
        assert!(check(br#"{"pattern":"a","data":{"any":[true]}"#).is_err());
    }

    #[test]
    fn replies_encode_as_nest_does() -> std::result::Result<(), serde_json::Error> {
        let value = serde_json::value::to_raw_value(&serde_json::json!({"total": 6}))?;
        let text = |bytes: Vec<u8>| String::from_utf8_lossy(&bytes).into_owned();
        assert_eq!(
            text(encode_reply(Some(&value), None)),
            r#"{"response":{"total":6},"isDisposed":true}"#
        );
        assert_eq!(text(encode_reply(None, None)), r#"{"isDisposed":true}"#);
        let error = serde_json::json!({"status": "error", "message": "boom"});
        let reply: serde_json::Value = serde_json::from_slice(&encode_reply(None, Some(&error)))?;
        assert_eq!(
            reply,
            serde_json::json!({"err": {"status": "error", "message": "boom"}, "isDisposed": true})
        );
        let no_handler: serde_json::Value = serde_json::from_slice(&encode_no_handler("abc"))?;
        assert_eq!(
            no_handler,
            serde_json::json!({"id": "abc", "err": NO_HANDLER, "status": "error"})
        );
        Ok(())
    }

    #[test]
    fn requests_encode_as_nest_does() -> Result<()> {
        let body = encode_request(&Pattern::from("sum"), &[1, 2], "id-1")?;
        assert_eq!(
            String::from_utf8_lossy(&body),
            r#"{"pattern":"sum","data":[1,2],"id":"id-1"}"#
        );
        Ok(())
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
        assert!(matches!(
            decode(b"[\"a\",2,\"id\"]"),
            Err(DecodeError::NotJson(_))
        ));
        assert!(matches!(decode(b"\xff\xfe"), Err(DecodeError::NotJson(_))));
        // Invalid UTF-8 in a field the decoder ignores is still not JSON (found by fuzzing).
        assert!(matches!(
            decode(b"{\"pattern\":\"ping\",\"dapattern\":\"pin\xde\"}"),
            Err(DecodeError::NotJson(_))
        ));
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
