//! What handlers return: [`IntoHandlerResult`] for events, [`IntoReply`] for requests, and the
//! [`Response`] a request's sender gets.

use std::fmt;

use serde::Serialize;
use serde_json::value::RawValue;

use super::{HandlerError, HandlerResult};
use crate::rpc::RpcError;

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

impl Response {
    /// The reply packet's `response` and `err` fields.
    pub(crate) fn parts(&self) -> (Option<&RawValue>, Option<&serde_json::Value>) {
        match self {
            Response::Nothing => (None, None),
            Response::Value(value) => (Some(value.as_ref()), None),
            Response::Error(error) => (None, Some(error.payload())),
        }
    }
}

/// A value a handler can return. `()` is success; `Err(e)` of `Result<(), E>` fails with `e`'s
/// `Display` text.
#[diagnostic::on_unimplemented(
    message = "an event handler cannot return `{Self}`",
    note = "return `()` or `Result<(), E>` where `E: Display` (for example rmq_bus::Error, anyhow::Error, String)"
)]
pub trait IntoHandlerResult {
    /// Interprets the value.
    fn into_handler_result(self) -> HandlerResult;
}

impl IntoHandlerResult for () {
    fn into_handler_result(self) -> HandlerResult {
        Ok(Response::Nothing)
    }
}

/// An `Err` fails the handler with the error's text; a [`HandlerError`] is taken as it is, so
/// that `Err(HandlerError::BadInput(…))` dead-letters the message at once, as from an
/// interceptor.
impl<E: fmt::Display + 'static> IntoHandlerResult for Result<(), E> {
    fn into_handler_result(self) -> HandlerResult {
        self.map(|()| Response::Nothing).map_err(|error| {
            match (&error as &dyn std::any::Any).downcast_ref::<HandlerError>() {
                Some(handler_error) => handler_error.clone(),
                None => HandlerError::Failed(error.to_string()),
            }
        })
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

/// Turns a failure of a request handler into the error its sender gets.
pub(crate) fn failure_response(error: &HandlerError) -> RpcError {
    match error {
        HandlerError::BadInput(why) => RpcError::new(why),
        HandlerError::Failed(_) => RpcError::internal(),
    }
}
