//! Handlers: what a pattern routes to, how their arguments are extracted, what they return, and
//! the interceptors around them.
//!
//! A handler is an `async fn` whose arguments are extracted from the message. With the macros,
//! `#[payload]`, `#[payload("key")]` and `#[ctx]` say where each comes from; without them, each
//! argument type implements [`FromMessage`] ([`Payload<T>`], [`RmqContext`]), as axum's extractors.
//! An event handler returns `()` or `Result<(), E: Display>` ([`IntoHandlerResult`]); a request
//! handler `Result<T: Serialize, E: Into<RpcError>>` ([`IntoReply`]).

mod interceptor;
mod reply;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::future::BoxFuture;
use serde::Deserialize;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde_json::value::RawValue;

pub(crate) use self::interceptor::wrap;
pub use self::interceptor::{Interceptor, Next};
pub(crate) use self::reply::failure_response;
pub use self::reply::{IntoHandlerResult, IntoReply, Response};
use crate::codec::{self, DataError};
use crate::config::RetryPolicy;
use crate::context::RmqContext;
use crate::pattern::Pattern;
pub use crate::rpc::RpcError;
use crate::schema::RouteDoc;

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
    /// The handler itself returned an error: settled by the [`FailurePolicy`](crate::config::FailurePolicy).
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

/// Who makes sure that a handler never runs for a body that is not a JSON packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BodyCheck {
    /// The handler's generated glue does, reading the body with its arguments and checking the
    /// rest with [`Message::finish`]: the dispatcher may route an event by its pattern alone.
    Handler,
    /// The dispatcher decodes the whole packet before the handler runs (raw and intercepted
    /// routes, which may never read the body).
    Dispatcher,
}

/// A pattern and the handler it routes to. Built by the macros, [`Microservice::on_event`](crate::Microservice::on_event),
/// [`Microservice::on_message`](crate::Microservice::on_message), [`Route::event`] or [`Route::message`].
pub struct Route {
    pub(crate) pattern: Pattern,
    pub(crate) kind: RouteKind,
    pub(crate) retry: Option<RetryPolicy>,
    /// The path into the data of the key its messages are ordered by, checked when the
    /// microservice starts.
    pub(crate) ordered_by: Option<String>,
    pub(crate) body_check: BodyCheck,
    pub(crate) handler: BoxHandler,
    /// What a generated document says of it: set by the macros, `None` for closures. Read only
    /// when a document is made.
    #[cfg_attr(not(feature = "asyncapi"), allow(dead_code))]
    pub(crate) doc: Option<RouteDoc>,
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Route")
            .field("pattern", &self.pattern)
            .field("kind", &self.kind)
            .field("ordered_by", &self.ordered_by)
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
        Self::new(
            pattern.into(),
            RouteKind::Event,
            BodyCheck::Dispatcher,
            handler,
        )
    }

    /// Routes request `pattern` to `handler`, whose [`Response`] is sent back to the requester.
    pub fn message<F, Fut>(pattern: impl Into<Pattern>, handler: F) -> Self
    where
        F: Fn(Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        Self::new(
            pattern.into(),
            RouteKind::Message,
            BodyCheck::Dispatcher,
            handler,
        )
    }

    /// A route of `kind` for `pattern`, whose body `body_check` says who checks.
    pub(crate) fn new<F, Fut>(
        pattern: Pattern,
        kind: RouteKind,
        body_check: BodyCheck,
        handler: F,
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
            ordered_by: None,
            handler,
            body_check,
            doc: None,
        }
    }

    /// Retries this handler's failures with `policy`, over its queue's.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// Orders this event handler's messages by the key at `path` in their data (`"orderId"`,
    /// dotted for nesting: `"order.id"`): messages with the same key are handled one at a time,
    /// in delivery order, retries included; other keys run concurrently. A message without the
    /// key is dead-lettered. A path that is not a dotted path, or a request route, is refused at
    /// start. The README's *Ordering* section says what is guaranteed.
    pub fn ordered_by(mut self, path: impl Into<String>) -> Self {
        self.ordered_by = Some(path.into());
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

/// `T`'s name without its module paths (`Vec<Order>`, not `alloc::vec::Vec<shop::Order>`): it
/// goes into the error a request's sender gets, which should not show the service's modules.
fn short_type_name<T>() -> String {
    let full = std::any::type_name::<T>();
    let mut name = String::with_capacity(full.len());
    let mut segment = String::new();
    for c in full.chars() {
        if c.is_alphanumeric() || c == '_' || c == ':' {
            segment.push(c);
        } else {
            name.push_str(segment.rsplit("::").next().unwrap_or(&segment));
            segment.clear();
            name.push(c);
        }
    }
    name.push_str(segment.rsplit("::").next().unwrap_or(&segment));
    name
}

/// Deserializes the whole data as `T`.
pub(crate) fn payload<T: DeserializeOwned>(message: &Message) -> Result<T, HandlerError> {
    message.read_data(|| format!("a {}", short_type_name::<T>()))
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
            short_type_name::<T>()
        ))
    })
}

/// What the macros' generated code calls, through `rmq_bus::__private`. Not public API.
pub(crate) mod glue {
    use super::{BodyCheck, FromMessage, HandlerError, HandlerResult, Message, Route, RouteKind};
    use crate::context::RmqContext;
    use crate::pattern::Pattern;
    use crate::schema::RouteDoc;
    use serde::de::DeserializeOwned;
    use std::future::Future;

    /// An object pattern from its JSON text, as the macros write it (`cmd = "sum"` becomes
    /// `{"cmd":"sum"}`). Text that is not a JSON object is taken as a string pattern.
    pub fn object_pattern(json: &str) -> Pattern {
        match serde_json::from_str::<serde_json::Value>(json) {
            Ok(value @ serde_json::Value::Object(_)) => Pattern::from(value),
            _ => Pattern::from(json),
        }
    }

    /// The whole data as `T`.
    pub fn payload<T: DeserializeOwned>(message: &Message) -> Result<T, HandlerError> {
        super::payload(message)
    }

    /// `data[key]` as `T`.
    pub fn payload_field<T: DeserializeOwned>(
        message: &Message,
        key: &str,
    ) -> Result<T, HandlerError> {
        super::payload_field(message, key)
    }

    /// `route`, ordered by `key` if there is one (the attribute's, or the payload contract's).
    pub fn ordered(route: Route, key: Option<&'static str>) -> Route {
        match key {
            Some(key) => route.ordered_by(key),
            None => route,
        }
    }

    /// The context.
    pub fn context(message: &Message) -> RmqContext {
        message.ctx.clone()
    }

    /// An argument extracted by its type.
    pub fn extract<T: FromMessage>(message: &Message) -> Result<T, HandlerError> {
        T::from_message(message)
    }

    /// Ends extraction (checks a body no argument read) and drops the message.
    pub fn finish(message: Message) -> Result<(), HandlerError> {
        message.finish()
    }

    /// The event route of a generated handler, which checks the body itself (see [`finish`]),
    /// with what a document says of it.
    pub fn event_route<F, Fut>(pattern: impl Into<Pattern>, doc: RouteDoc, handler: F) -> Route
    where
        F: Fn(Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        Route {
            doc: Some(doc),
            ..Route::new(
                pattern.into(),
                RouteKind::Event,
                BodyCheck::Handler,
                handler,
            )
        }
    }

    /// The request route of a generated handler, which checks the body itself (see [`finish`]),
    /// with what a document says of it.
    pub fn message_route<F, Fut>(pattern: impl Into<Pattern>, doc: RouteDoc, handler: F) -> Route
    where
        F: Fn(Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        Route {
            doc: Some(doc),
            ..Route::new(
                pattern.into(),
                RouteKind::Message,
                BodyCheck::Handler,
                handler,
            )
        }
    }
}

/// A function or closure usable as an event handler: `async` with up to four [`FromMessage`]
/// arguments, returning an [`IntoHandlerResult`]. `Args` only tells the implementations apart.
pub trait IntoRoute<Args>: Send + Sync + 'static {
    /// Builds the event route for `pattern`.
    fn into_route(self, pattern: Pattern) -> Route;
}

/// A function or closure usable as a request handler: `async` with up to four [`FromMessage`]
/// arguments, returning an [`IntoReply`].
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
                Route::new(pattern, RouteKind::Event, BodyCheck::Handler, move |message: Message| {
                    let handler = self.clone();
                    async move {
                        $(let $arg = $arg::from_message(&message)?;)*
                        message.finish()?;
                        handler($($arg),*).await.into_handler_result()
                    }
                })
            }
        }

        impl<F, Fut, R, $($arg),*> IntoMessageRoute<($($arg,)*)> for F
        where
            F: Fn($($arg),*) -> Fut + Clone + Send + Sync + 'static,
            Fut: Future<Output = R> + Send + 'static,
            R: IntoReply,
            $($arg: FromMessage + Send + 'static,)*
        {
            #[allow(non_snake_case, unused_variables)]
            fn into_message_route(self, pattern: Pattern) -> Route {
                Route::new(pattern, RouteKind::Message, BodyCheck::Handler, move |message: Message| {
                    let handler = self.clone();
                    async move {
                        $(let $arg = $arg::from_message(&message)?;)*
                        message.finish()?;
                        handler($($arg),*).await.into_reply()
                    }
                })
            }
        }
    };
}

impl_into_route!();
impl_into_route!(A1);
impl_into_route!(A1, A2);
impl_into_route!(A1, A2, A3);
impl_into_route!(A1, A2, A3, A4);

#[cfg(test)]
mod tests {
    use super::short_type_name;

    #[test]
    fn type_names_lose_their_module_paths() {
        assert_eq!(short_type_name::<Vec<String>>(), "Vec<String>");
        assert_eq!(
            short_type_name::<std::collections::HashMap<u8, Option<f64>>>(),
            "HashMap<u8, Option<f64>>"
        );
        assert_eq!(short_type_name::<(u8, [i32; 2])>(), "(u8, [i32; 2])");
    }
}
