//! Request/reply: what a `#[message_pattern]` handler answers, in NestJS's reply format.

use std::fmt;

use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::handler::{HandlerError, HandlerResult};

/// What a handler produced for the sender of a request.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Response {
    /// No value: events, and request handlers that answer nothing (`{"isDisposed": true}`).
    Nothing,
    /// A value (`{"response": V, "isDisposed": true}`).
    Value(Box<RawValue>),
    /// An error (`{"err": E, "isDisposed": true}`).
    Error(RpcError),
}

/// The error a request handler answers with, as NestJS's `RpcException`.
///
/// `RpcError::new("text")` (or `"text".into()`) goes on the wire as
/// `{"status": "error", "message": "text"}`, like `new RpcException("text")`; `RpcError::object(v)`
/// sends `v` itself, like `new RpcException(object)`. A [`crate::Error`] becomes NestJS's
/// `{"status": "error", "message": "Internal server error"}` (its text is logged, not sent).
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

    /// The payload sent.
    pub fn payload(&self) -> &Value {
        &self.0
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

impl From<crate::Error> for RpcError {
    fn from(error: crate::Error) -> Self {
        tracing::error!(%error, "request handler failed; answering \"Internal server error\"");
        Self::internal()
    }
}

/// What a request handler can return: `Result<T, E>` with `T: Serialize` (the response) and
/// `E: Into<RpcError>` (the error sent back).
#[diagnostic::on_unimplemented(
    message = "a request handler cannot return `{Self}`",
    note = "return `Result<T, E>` where `T: Serialize` and `E: Into<rmq_bus::RpcError>` (RpcError, String, &str, rmq_bus::Error)"
)]
pub trait IntoReply {
    /// Interprets the value.
    fn into_reply(self) -> HandlerResult;
}

impl<T: Serialize, E: Into<RpcError>> IntoReply for Result<T, E> {
    fn into_reply(self) -> HandlerResult {
        match self {
            Ok(value) => serde_json::value::to_raw_value(&value)
                .map(Response::Value)
                .or_else(|e| {
                    tracing::error!(error = %e, "cannot encode the response as JSON");
                    Ok(Response::Error(RpcError::internal()))
                }),
            Err(error) => Ok(Response::Error(error.into())),
        }
    }
}

/// The error sent when no handler matches a request, word for word as NestJS sends it.
pub(crate) const NO_HANDLER: &str =
    "There is no matching message handler defined in the remote service.";

/// Turns a failure of a request handler into the error its sender gets.
pub(crate) fn failure_response(error: &HandlerError) -> RpcError {
    match error {
        HandlerError::BadInput(why) => RpcError::new(why),
        HandlerError::Failed(_) => RpcError::internal(),
    }
}
