//! [`RpcError`]: the error a request handler answers with, as NestJS's `RpcException`, and what
//! [`ClientProxy::send`](crate::ClientProxy::send) hands back when the remote side answered one.

use std::fmt;

use serde_json::Value;

/// The error a request handler answers with, as NestJS's `RpcException`.
///
/// `RpcError::new("text")` (or `"text".into()`) goes on the wire as
/// `{"status": "error", "message": "text"}`, like `new RpcException("text")`; `RpcError::object(v)`
/// sends `v` itself, like `new RpcException(object)`. A [`crate::Error`] becomes NestJS's
/// `{"status": "error", "message": "Internal server error"}` (its text is logged, not sent).
///
/// On the requesting side, [`Error::Remote`](crate::Error::Remote) carries the remote error as an
/// `RpcError`: [`message`](Self::message) reads its text, [`payload`](Self::payload) the whole.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcError(Value);

impl RpcError {
    /// `{"status": "error", "message": message}`.
    pub fn new(message: impl fmt::Display) -> Self {
        Self(serde_json::json!({ "status": "error", "message": message.to_string() }))
    }

    /// Any JSON value, sent as it is.
    pub fn object(error: impl Into<Value>) -> Self {
        Self(error.into())
    }

    /// What an unexpected failure answers, hiding its details as NestJS does.
    pub fn internal() -> Self {
        Self::new("Internal server error")
    }

    /// The payload, as sent.
    pub fn payload(&self) -> &Value {
        &self.0
    }

    /// The error's text: its `"message"` field (as NestJS's `RpcException("text")` sends it), or
    /// the payload itself when it is a string. `None` for other shapes; read
    /// [`payload`](Self::payload) then.
    pub fn message(&self) -> Option<&str> {
        match &self.0 {
            Value::String(text) => Some(text),
            Value::Object(fields) => fields.get("message").and_then(Value::as_str),
            _ => None,
        }
    }

    /// The payload, taken out.
    pub fn into_payload(self) -> Value {
        self.0
    }
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.message() {
            Some(message) => f.write_str(message),
            None => write!(f, "{}", self.0),
        }
    }
}

impl From<&str> for RpcError {
    fn from(message: &str) -> Self {
        Self::new(message)
    }
}

impl From<String> for RpcError {
    fn from(message: String) -> Self {
        Self::new(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_message_is_read_from_either_shape() {
        assert_eq!(
            RpcError::new("order not found").message(),
            Some("order not found")
        );
        assert_eq!(RpcError::object("plain").message(), Some("plain"));
        let coded = RpcError::object(json!({"code": 42}));
        assert_eq!(coded.message(), None);
        assert_eq!(coded.to_string(), r#"{"code":42}"#);
        assert_eq!(RpcError::internal().to_string(), "Internal server error");
    }
}
