//! The messages of a document: NestJS's envelopes around the payload schemas, the replies of
//! requests, and the keys everything is filed under.

use serde_json::{Map, Value, json};

use crate::handler::RouteKind;
use crate::pattern::{Pattern, is_wildcard};
use crate::schema::{MessageDoc, Schemas};

/// Where every message says its correlation id is, in `components.correlationIds`.
pub(super) const CORRELATION_ID: &str = "correlationId";

/// The correlation id component.
pub(super) fn correlation_id() -> Value {
    json!({
        "location": "$message.header#/correlation_id",
        "description": "The AMQP correlation_id property: a request's id, which its reply carries back; on an event, the id of the conversation it belongs to, carried forward by what a handler sends.",
    })
}

/// The schema of data nothing is known of.
fn any_data() -> Value {
    json!({
        "description": "Any JSON value: the handler's payload type has no schema (a closure, or a type that does not derive `schemars::JsonSchema`).",
    })
}

/// The schema of the envelope's `pattern`.
fn pattern_schema(pattern: &Pattern) -> Value {
    let value = serde_json::to_value(pattern).unwrap_or_else(|_| Value::from(pattern.key()));
    match value {
        Value::String(key) if is_wildcard(&key) => json!({
            "type": "string",
            "description": format!(
                "A routing key the topic pattern `{key}` matches: `*` stands for one dot-separated word, `#` for any number of them."
            ),
        }),
        value => json!({ "const": value }),
    }
}

/// A message's payload: NestJS's `{"pattern", "data"}`, with `"id"` for a request.
fn envelope(kind: RouteKind, pattern: &Pattern, data: Value) -> Value {
    let mut properties = Map::new();
    properties.insert("pattern".to_owned(), pattern_schema(pattern));
    properties.insert("data".to_owned(), data);
    let mut required = vec!["pattern", "data"];
    if kind == RouteKind::Message {
        properties.insert(
            "id".to_owned(),
            json!({
                "type": "string",
                "description": "The request's id, as NestJS's ClientProxy.send writes it.",
            }),
        );
        required.push("id");
    }
    json!({ "type": "object", "properties": properties, "required": required })
}

/// A reply's payload: `{"response", "isDisposed": true}`, or `{"err", "isDisposed": true}`.
fn reply_envelope(response: Value) -> Value {
    json!({
        "oneOf": [
            {
                "title": "response",
                "type": "object",
                "properties": {
                    "response": response,
                    "isDisposed": { "const": true },
                },
                "required": ["response", "isDisposed"],
            },
            {
                "title": "error",
                "type": "object",
                "properties": {
                    "err": {
                        "description": "NestJS's RpcException: `{\"status\": \"error\", \"message\": text}` for a text (the text is `Internal server error` when the handler failed), any JSON for an object, or NestJS's no-handler message when no handler has the pattern.",
                    },
                    "isDisposed": { "type": "boolean" },
                },
                "required": ["err"],
            },
        ],
    })
}

/// `components.messages`, and the schemas their payloads refer to.
#[derive(Debug)]
pub(super) struct Messages {
    pub(super) schemas: Schemas,
    pub(super) messages: Map<String, Value>,
}

impl Messages {
    pub(super) fn new() -> Self {
        Self {
            schemas: Schemas::new(),
            messages: Map::new(),
        }
    }

    /// Files the message of a handler or contract of `kind` for `pattern`, and returns its key:
    /// the contract type's name, else the pattern in UpperCamelCase. The same message filed
    /// twice has one key; another message with the same name gets a number.
    pub(super) fn message(
        &mut self,
        kind: RouteKind,
        pattern: &Pattern,
        doc: &MessageDoc,
    ) -> String {
        let data = (doc.payload)(&mut self.schemas).unwrap_or_else(any_data);
        let title = if doc.name.is_empty() {
            pattern.key()
        } else {
            doc.name
        };
        let mut message = json!({
            "name": pattern.key(),
            "title": title,
            "contentType": "application/json",
            "correlationId": { "$ref": format!("#/components/correlationIds/{CORRELATION_ID}") },
            "payload": envelope(kind, pattern, data),
        });
        if !doc.description.is_empty() {
            message["description"] = doc.description.into();
        }
        let base = if doc.name.is_empty() {
            upper_camel(pattern.key())
        } else {
            identifier(doc.name)
        };
        self.file(&base, message)
    }

    /// Files the reply to request `key` (filed by [`message`](Self::message)), and returns its
    /// key, `<key>Reply`.
    pub(super) fn reply(&mut self, key: &str, pattern: &Pattern, doc: &MessageDoc) -> String {
        let response = doc
            .reply
            .and_then(|reply| reply(&mut self.schemas))
            .unwrap_or_else(any_data);
        let title = if doc.name.is_empty() {
            pattern.key()
        } else {
            doc.name
        };
        let message = json!({
            "title": format!("{title} reply"),
            "summary": format!("The answer to a `{}` request, sent to its reply_to address.", pattern.key()),
            "contentType": "application/json",
            "correlationId": { "$ref": format!("#/components/correlationIds/{CORRELATION_ID}") },
            "payload": reply_envelope(response),
        });
        self.file(&format!("{key}Reply"), message)
    }

    /// Files `message` under `base`, or `base2`, `base3`… if another message has it; a message
    /// already filed keeps its key.
    fn file(&mut self, base: &str, message: Value) -> String {
        let mut n = 1;
        loop {
            let key = if n == 1 {
                base.to_owned()
            } else {
                format!("{base}{n}")
            };
            match self.messages.get(&key) {
                Some(filed) if *filed == message => return key,
                Some(_) => n += 1,
                None => {
                    self.messages.insert(key.clone(), message);
                    return key;
                }
            }
        }
    }
}

/// `text` as a key AsyncAPI accepts (`[A-Za-z0-9_-]`): other characters become `_`.
pub(super) fn identifier(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let c = if c.is_ascii_alphanumeric() || c == '-' {
            c
        } else {
            '_'
        };
        if !(c == '_' && out.ends_with('_')) {
            out.push(c);
        }
    }
    let out = out.trim_matches('_');
    if out.is_empty() {
        "_".to_owned()
    } else {
        out.to_owned()
    }
}

/// `text` in UpperCamelCase, its words split at anything not alphanumeric: `order_created` and
/// `order.created` are `OrderCreated`, `{"cmd":"sum"}` is `CmdSum`; wildcards are `Any` (`*`)
/// and `All` (`#`).
pub(super) fn upper_camel(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut word_start = true;
    for c in text.chars() {
        match c {
            '*' | '#' => {
                out.push_str(if c == '*' { "Any" } else { "All" });
                word_start = true;
            }
            c if c.is_ascii_alphanumeric() => {
                if word_start {
                    out.push(c.to_ascii_uppercase());
                } else {
                    out.push(c);
                }
                word_start = false;
            }
            _ => word_start = true,
        }
    }
    if out.is_empty() {
        "Message".to_owned()
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_identifiers() {
        assert_eq!(upper_camel("order_created"), "OrderCreated");
        assert_eq!(upper_camel("order.*"), "OrderAny");
        assert_eq!(upper_camel("audit.#"), "AuditAll");
        assert_eq!(upper_camel(r#"{"cmd":"sum"}"#), "CmdSum");
        assert_eq!(upper_camel("GetOrder"), "GetOrder");
        assert_eq!(upper_camel("日本"), "Message");
        assert_eq!(identifier("orders.dlq"), "orders_dlq");
        assert_eq!(identifier("BILLING"), "BILLING");
        assert_eq!(identifier("a b//c-d"), "a_b_c-d");
        assert_eq!(identifier("::"), "_");
    }

    #[test]
    fn the_same_message_is_filed_once_and_another_with_its_name_gets_a_number() {
        let mut messages = Messages::new();
        let doc = MessageDoc::unknown();
        let event = messages.message(RouteKind::Event, &Pattern::from("x"), &doc);
        let again = messages.message(RouteKind::Event, &Pattern::from("x"), &doc);
        let request = messages.message(RouteKind::Message, &Pattern::from("x"), &doc);
        assert_eq!(
            (event.as_str(), again.as_str(), request.as_str()),
            ("X", "X", "X2")
        );
        let payload = &messages.messages["X2"]["payload"];
        assert_eq!(payload["required"], json!(["pattern", "data", "id"]));
        assert_eq!(payload["properties"]["pattern"], json!({"const": "x"}));
    }

    #[test]
    fn object_patterns_are_constants_and_wildcards_strings() {
        let object = Pattern::from(json!({"cmd": "sum", "v": 2}));
        assert_eq!(
            pattern_schema(&object),
            json!({"const": {"cmd": "sum", "v": 2}})
        );
        assert_eq!(pattern_schema(&Pattern::from("order.*"))["type"], "string");
    }
}
