//! Handlers: what a pattern routes to, how their arguments are extracted, and what they return.
//!
//! A handler is an `async fn` whose arguments are extracted from the message. With the macros,
//! `#[payload]`, `#[payload("key")]` and `#[ctx]` say where each comes from; without them, each
//! argument type implements [`FromMessage`] ([`Payload<T>`], [`RmqContext`]), as axum's extractors.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::future::BoxFuture;
use serde::Deserialize;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde_json::value::RawValue;

use crate::codec::{self, DataError};
use crate::context::RmqContext;
use crate::pattern::Pattern;
use crate::rpc::Response;

/// A message on its way to a handler: its context (and body) and, when it was decoded apart,
/// its data.
#[derive(Debug)]
pub struct Message {
    /// The packet's `data`, when it was decoded apart from the body (requests, unusual layouts)
    /// or replaced by an interceptor; `None` while it is still in the body, where the handler's
    /// arguments read it in the same pass as the rest of the packet.
    pub(crate) data: Option<Box<RawValue>>,
    pub(crate) ctx: RmqContext,
    /// Whether an argument read the whole body, so that it is known to be a packet.
    pub(crate) read: AtomicBool,
}

impl Message {
    pub(crate) fn new(data: Option<Box<RawValue>>, ctx: RmqContext) -> Self {
        Self {
            data,
            ctx,
            read: AtomicBool::new(false),
        }
    }

    /// The packet's `data`, as raw JSON; `Err` when the body is not a JSON packet.
    pub fn data(&self) -> Result<&RawValue, HandlerError> {
        match &self.data {
            Some(data) => Ok(data),
            None => self
                .read_data::<Option<&RawValue>>(|| "JSON".to_owned())
                .map(|data| data.unwrap_or(RawValue::NULL)),
        }
    }

    /// The delivery context.
    pub fn context(&self) -> &RmqContext {
        &self.ctx
    }

    /// Reads the data as `T`: the data decoded apart if there is one, else straight from the
    /// whole body (`what` names `T` in errors).
    fn read_data<'a, T: Deserialize<'a>>(
        &'a self,
        what: impl FnOnce() -> String,
    ) -> Result<T, HandlerError> {
        let read = match &self.data {
            Some(data) => serde_json::from_str(data.get()).map_err(DataError::Data),
            None => codec::read_data(self.ctx.body())
                .inspect(|_| self.read.store(true, Ordering::Relaxed)),
        };
        read.map_err(|error| match error {
            DataError::Packet(error) => HandlerError::BadInput(error.to_string()),
            DataError::Data(e) => HandlerError::BadInput(format!("data is not {}: {e}", what())),
        })
    }

    /// Ends extraction: a body none of the handler's arguments read is checked here, so that a
    /// handler never runs for a message that is not a JSON packet.
    pub(crate) fn finish(self) -> Result<(), HandlerError> {
        if self.data.is_some() || self.read.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.read_data::<IgnoredAny>(|| "JSON".to_owned()).map(drop)
    }
}

/// Why a handler did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandlerError {
    /// The message is bad input (its data does not fit the handler's arguments, or an
    /// interceptor refused it): dead-lettered, never retried.
    BadInput(String),
    /// The handler itself returned an error: settled by the [`FailurePolicy`](crate::FailurePolicy).
    Failed(String),
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandlerError::BadInput(why) => {
                write!(f, "message data does not fit the handler: {why}")
            }
            HandlerError::Failed(why) => write!(f, "handler failed: {why}"),
        }
    }
}

/// What a handler resolves to, once its return value is interpreted.
pub type HandlerResult = Result<Response, HandlerError>;

pub(crate) type BoxHandler =
    Arc<dyn Fn(Message) -> BoxFuture<'static, HandlerResult> + Send + Sync>;

/// Whether a route handles events (`emit`) or requests (`send`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteKind {
    /// `#[event_pattern]`: no reply; failures are settled by the failure policy.
    Event,
    /// `#[message_pattern]`: answers the request; acked once the reply is sent.
    Message,
}

/// A pattern and the handler it routes to. Built by the macros, [`Microservice::on_event`](crate::Microservice::on_event),
/// [`Microservice::on_message`](crate::Microservice::on_message), [`Route::event`] or [`Route::message`].
pub struct Route {
    pub(crate) pattern: Pattern,
    pub(crate) kind: RouteKind,
    pub(crate) retry: Option<crate::retry::RetryPolicy>,
    /// Whether the handler checks the body itself ([`Message::finish`], as extractor-built
    /// handlers do), so that the dispatcher may route an event by its pattern alone.
    pub(crate) checks_body: bool,
    pub(crate) handler: BoxHandler,
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Route")
            .field("pattern", &self.pattern)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl Route {
    /// Routes event `pattern` to `handler`, a function from the [`Message`] to a [`HandlerResult`].
    pub fn event<F, Fut>(pattern: impl Into<Pattern>, handler: F) -> Self
    where
        F: Fn(Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        Self::new(pattern.into(), RouteKind::Event, handler, false)
    }

    /// Routes request `pattern` to `handler`, whose [`Response`] is sent back to the requester.
    pub fn message<F, Fut>(pattern: impl Into<Pattern>, handler: F) -> Self
    where
        F: Fn(Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        Self::new(pattern.into(), RouteKind::Message, handler, false)
    }

    /// A route whose handler extracts its arguments and then calls [`Message::finish`]: the
    /// glue the macros and [`IntoRoute`] generate.
    pub(crate) fn new<F, Fut>(
        pattern: Pattern,
        kind: RouteKind,
        handler: F,
        checks_body: bool,
    ) -> Self
    where
        F: Fn(Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        let handler: BoxHandler = Arc::new(move |message| Box::pin(handler(message)));
        Self {
            pattern,
            kind,
            retry: None,
            handler,
            checks_body,
        }
    }

    /// Retries this handler's failures with `policy`, over its queue's.
    pub fn retry(mut self, policy: crate::retry::RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// Whether it routes events or requests.
    pub fn kind(&self) -> RouteKind {
        self.kind
    }

    /// The pattern routed.
    pub fn pattern(&self) -> &Pattern {
        &self.pattern
    }
}

/// A struct whose impl block holds handlers, registered with
/// [`Microservice::controller`](crate::Microservice::controller). Implemented by `#[controller]`.
pub trait Controller: Send + Sync + 'static {
    /// The routes of every handler method, in declaration order.
    fn routes(self: Arc<Self>) -> Vec<Route>;
}

/// A free `async fn` marked `#[event_pattern]`, registered with
/// [`Microservice::handler`](crate::Microservice::handler). Implemented by the macro, on a type
/// of the function's name.
pub trait HandlerFn {
    /// The function's route.
    fn route() -> Route;
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

impl<E: fmt::Display> IntoHandlerResult for Result<(), E> {
    fn into_handler_result(self) -> HandlerResult {
        self.map(|()| Response::Nothing)
            .map_err(|e| HandlerError::Failed(e.to_string()))
    }
}

/// A handler argument taken from the message.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be taken from a message",
    note = "use `Payload<T>` (or `#[payload] arg: T` with the macros) for data, `#[payload(\"key\")]` for one key of it, and `RmqContext` (or `#[ctx]`) for the context"
)]
pub trait FromMessage: Sized {
    /// Extracts the argument; `Err` means the message is bad input.
    fn from_message(message: &Message) -> Result<Self, HandlerError>;
}

/// The message data, deserialized as `T`.
#[derive(Debug, Clone, PartialEq)]
pub struct Payload<T>(pub T);

impl<T: DeserializeOwned> FromMessage for Payload<T> {
    fn from_message(message: &Message) -> Result<Self, HandlerError> {
        payload(message).map(Payload)
    }
}

impl FromMessage for RmqContext {
    fn from_message(message: &Message) -> Result<Self, HandlerError> {
        Ok(message.ctx.clone())
    }
}

/// Deserializes the whole data as `T`.
pub(crate) fn payload<T: DeserializeOwned>(message: &Message) -> Result<T, HandlerError> {
    message.read_data(|| format!("a {}", std::any::type_name::<T>()))
}

/// Deserializes `data[key]` as `T` (NestJS's `@Payload('key')`). A missing key is `null`, so an
/// `Option<T>` argument accepts it.
pub(crate) fn payload_field<T: DeserializeOwned>(
    message: &Message,
    key: &str,
) -> Result<T, HandlerError> {
    type Fields<'a> = std::collections::HashMap<std::borrow::Cow<'a, str>, &'a RawValue>;
    let fields: Fields<'_> = message.read_data(|| format!("an object with a {key:?} key"))?;
    let raw = fields.get(key).map_or("null", |raw| raw.get());
    serde_json::from_str(raw).map_err(|e| {
        HandlerError::BadInput(format!(
            "data.{key} is not a {}: {e}",
            std::any::type_name::<T>()
        ))
    })
}

/// A function or closure usable as an event handler: `async` with up to four [`FromMessage`]
/// arguments, returning an [`IntoHandlerResult`]. `Args` only tells the implementations apart.
pub trait IntoRoute<Args>: Send + Sync + 'static {
    /// Builds the event route for `pattern`.
    fn into_route(self, pattern: Pattern) -> Route;
}

/// A function or closure usable as a request handler: `async` with up to four [`FromMessage`]
/// arguments, returning an [`IntoReply`](crate::IntoReply).
pub trait IntoMessageRoute<Args>: Send + Sync + 'static {
    /// Builds the request route for `pattern`.
    fn into_message_route(self, pattern: Pattern) -> Route;
}

macro_rules! impl_into_route {
    ($($arg:ident),*) => {
        impl<F, Fut, R, $($arg),*> IntoRoute<($($arg,)*)> for F
        where
            F: Fn($($arg),*) -> Fut + Clone + Send + Sync + 'static,
            Fut: Future<Output = R> + Send + 'static,
            R: IntoHandlerResult,
            $($arg: FromMessage + Send + 'static,)*
        {
            #[allow(non_snake_case, unused_variables)]
            fn into_route(self, pattern: Pattern) -> Route {
                Route::new(pattern, RouteKind::Event, move |message: Message| {
                    let handler = self.clone();
                    async move {
                        $(let $arg = $arg::from_message(&message)?;)*
                        message.finish()?;
                        handler($($arg),*).await.into_handler_result()
                    }
                }, true)
            }
        }

        impl<F, Fut, R, $($arg),*> IntoMessageRoute<($($arg,)*)> for F
        where
            F: Fn($($arg),*) -> Fut + Clone + Send + Sync + 'static,
            Fut: Future<Output = R> + Send + 'static,
            R: crate::rpc::IntoReply,
            $($arg: FromMessage + Send + 'static,)*
        {
            #[allow(non_snake_case, unused_variables)]
            fn into_message_route(self, pattern: Pattern) -> Route {
                Route::new(pattern, RouteKind::Message, move |message: Message| {
                    let handler = self.clone();
                    async move {
                        $(let $arg = $arg::from_message(&message)?;)*
                        message.finish()?;
                        handler($($arg),*).await.into_reply()
                    }
                }, true)
            }
        }
    };
}

impl_into_route!();
impl_into_route!(A1);
impl_into_route!(A1, A2);
impl_into_route!(A1, A2, A3);
impl_into_route!(A1, A2, A3, A4);
