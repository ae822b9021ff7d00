//! # rmq-bus
//!
//! Event-driven microservices on RabbitMQ, in the style of NestJS microservices
//! (`Transport.RMQ`) and wire-compatible with them: a Rust service and a NestJS service can share
//! one broker and exchange events both ways.
//!
//! - [`ClientProxy`] emits events, each confirmed by the broker before `emit` returns.
//! - [`Microservice`] consumes queues and routes each message by pattern to its handler, running
//!   handlers concurrently up to the prefetch window.
//! - [`RmqContext`] settles a delivery by hand: [`ack`](RmqContext::ack),
//!   [`nack`](RmqContext::nack), [`reject`](RmqContext::reject).
//! - [`RmqOptions`] configures a broker and a queue, in code or from the environment.
//!
//! ```no_run
//! use rmq_bus::{controller, event_pattern, ClientProxy, Microservice, RmqContext, RmqOptions};
//! use serde::Deserialize;
//!
//! #[derive(Deserialize)]
//! struct Order { price: f64 }
//!
//! struct Billing { orders: ClientProxy }
//!
//! #[controller]
//! impl Billing {
//!     #[event_pattern("order_created")]
//!     async fn bill(&self, #[payload("orderPayload")] order: Order, #[ctx] ctx: RmqContext) -> rmq_bus::Result<()> {
//!         let status = if order.price > 10_000.0 { "CANCELED_FRAUD" } else { "PROCESSED" };
//!         self.orders.emit("order_processed", &serde_json::json!({ "status": status })).await?;
//!         ctx.ack().await
//!     }
//! }
//!
//! #[tokio::main]
//! async fn main() -> rmq_bus::Result<()> {
//!     let orders = ClientProxy::new(RmqOptions::from_env("ORDERS")?);
//!     Microservice::new(RmqOptions::from_env("BILLING")?)
//!         .controller(Billing { orders })
//!         .run() // until Ctrl-C or SIGTERM
//!         .await
//! }
//! ```
//!
//! ## From NestJS to rmq-bus
//!
//! | NestJS | rmq-bus |
//! |---|---|
//! | `@Controller()` class with `@EventPattern('p')` / `@MessagePattern('p')` methods | a struct with a [`#[controller]`](controller) impl block, methods marked [`#[event_pattern("p")]`](event_pattern) / [`#[message_pattern("p")]`](message_pattern) |
//! | `@Payload()`, `@Payload('key')`, `@Ctx()` | `#[payload]`, `#[payload("key")]`, `#[ctx]` on arguments (or the types [`Payload<T>`] and [`RmqContext`]) |
//! | `ClientProxy.emit` / `.send` | [`ClientProxy::emit`] (awaits the broker's confirm) / [`ClientProxy::send`] |
//! | `RmqModule.register({ name })`, `getOptions(queue, noAck)` | [`RmqOptions::from_env`], [`RmqOptions::ack_mode`] |
//! | `RpcException('text')`, `RpcException(object)` | [`RpcError::new`], [`RpcError::object`] |
//! | interceptors | [`Microservice::intercept`] |
//!
//! A controller holds its dependencies (stores, other [`ClientProxy`] handles) and is registered
//! explicitly with [`Microservice::controller`]; free `async fn` handlers use
//! [`Microservice::handler`], closures [`Microservice::on_event`] and [`Microservice::on_message`].
//! The macros check shape (async, one string or `key = value` pattern, known argument
//! attributes) with errors at the offending token; argument and return types are checked by the
//! traits [`FromMessage`], [`IntoHandlerResult`] and [`IntoReply`].
//!
//! ## Ack modes and failures
//!
//! With the default [`AckMode::Manual`], handlers settle their message through [`RmqContext`]
//! ([`AckMode::AfterHandler`] acks on `Ok`; [`AckMode::NoAck`] is NestJS's at-most-once
//! `noAck: true`). Whatever a handler does, the message is settled exactly once:
//!
//! | what happens | settlement |
//! |---|---|
//! | body not JSON, no pattern, unknown pattern, data of the wrong shape, too large | dead-lettered with the reason (to [`RmqOptions::dead_letter_queue`], `<queue>.dlq` by default), never retried |
//! | handler returns `Ok` without settling | acked, with a warning |
//! | handler returns `Err` or panics without settling | its [`RetryPolicy`] (delayed retries on the broker, then the dead-letter queue), else the [`FailurePolicy`]: requeued once, then rejected |
//! | request handler (`#[message_pattern]`) | answered (value or error), then acked |
//! | handler keeps a clone of the context | settled when the last clone is dropped |
//! | shutdown while a handler runs past the drain timeout | returned to the queue |
//!
//! ## Errors
//!
//! Every fallible call returns [`Error`], whose messages name what is at fault and what to do:
//! the variable of a bad setting, the queue whose declaration conflicts, the pattern nobody
//! handles. Broker errors keep the transport's error as their source. Settling twice or on a
//! closed channel is an error value, never a panic.
//!
//! ## Testing without a broker
//!
//! [`testing::TestBroker`] is an in-memory broker with RabbitMQ's semantics. Point the options
//! at it (`memory://name` URIs) and the same controllers run in a unit test; wait for a delivery
//! to be settled, look at what was emitted where, or inject a lost connection or a refused
//! publish:
//!
//! ```
//! use rmq_bus::testing::TestBroker;
//! use rmq_bus::{controller, event_pattern, ClientProxy, Microservice, RmqContext, Settlement};
//! # use serde::Deserialize;
//! # #[derive(Deserialize)] struct Order { price: f64 }
//! # struct Billing { orders: ClientProxy }
//! # #[controller]
//! # impl Billing {
//! #     #[event_pattern("order_created")]
//! #     async fn bill(&self, #[payload("orderPayload")] order: Order, #[ctx] ctx: RmqContext) -> rmq_bus::Result<()> {
//! #         let status = if order.price > 10_000.0 { "CANCELED_FRAUD" } else { "PROCESSED" };
//! #         self.orders.emit("order_processed", &serde_json::json!({ "status": status })).await?;
//! #         ctx.ack().await
//! #     }
//! # }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> rmq_bus::Result<()> {
//! let broker = TestBroker::new();
//! let orders = ClientProxy::new(broker.options("ORDERS"));
//! let billing = Microservice::new(broker.options("BILLING")).controller(Billing { orders }).start().await?;
//!
//! broker.publish("BILLING", "order_created", &serde_json::json!({"orderPayload": {"price": 50000}}))?;
//! assert_eq!(broker.settled("BILLING").await.settlement, Settlement::Ack);
//! let (pattern, data) = broker.messages("ORDERS")[0].packet().expect("a packet");
//! assert_eq!((pattern.as_str(), data["status"].as_str()), ("order_processed", Some("CANCELED_FRAUD")));
//! billing.shutdown().await
//! # }
//! ```
//!
//! ## MSRV
//!
//! Rust 1.88, raised only in a minor release.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod acks;
mod amqp;
mod client;
mod codec;
mod config;
mod context;
mod dispatch;
mod error;
mod handler;
mod interceptor;
mod memory;
mod pattern;
mod retry;
mod rpc;
mod server;
mod trace;
mod transport;

pub mod testing;

pub use client::ClientProxy;
pub use config::{
    AckMode, DEFAULT_CONFIRM_TIMEOUT, DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_PREFETCH,
    DEFAULT_RECONNECT_TIMEOUT, DEFAULT_REQUEST_TIMEOUT, DEFAULT_URI, Exchange, ExchangeKind,
    FailurePolicy, MEMORY_SCHEME, QueueOptions, RmqOptions,
};
pub use context::{DeliveryInfo, Properties, RmqContext, Settlement};
pub use error::{BoxError, Error, Result};
pub use handler::{
    Controller, FromMessage, HandlerError, HandlerFn, HandlerResult, IntoHandlerResult,
    IntoMessageRoute, IntoRoute, Message, Payload, Route, RouteKind,
};
pub use interceptor::{Interceptor, Next};
pub use pattern::Pattern;
pub use retry::RetryPolicy;
pub use rpc::{IntoReply, Response, RpcError};
pub use server::{DEFAULT_DRAIN_TIMEOUT, Microservice, RunningMicroservice, shutdown_signal};

/// Marks an impl block as a controller: its `#[event_pattern]` and `#[message_pattern]` methods
/// become handlers, registered with [`Microservice::controller`]. A pattern routes to one handler.
pub use rmq_bus_macros::controller;
/// Marks an `async fn` as the handler of an event pattern, as NestJS's `@EventPattern`.
///
/// The pattern is a string, `#[event_pattern("order_created")]`, or an object written as
/// `key = value` pairs (strings, numbers, booleans): `#[event_pattern(cmd = "order", version = 2)]`
/// is NestJS's `@EventPattern({ cmd: 'order', version: 2 })`.
///
/// Arguments take `#[payload]` (the data), `#[payload("key")]` (one key of it, as
/// `@Payload('key')`) or `#[ctx]` (the [`RmqContext`]); an argument without one is extracted by
/// its type through [`FromMessage`].
pub use rmq_bus_macros::event_pattern;
/// Marks an `async fn` as the handler of a request pattern, as NestJS's `@MessagePattern`: it
/// answers what [`ClientProxy::send`] sends.
///
/// The handler returns `Result<T, E>` ([`IntoReply`]): `Ok(T)` with `T: Serialize` goes back as
/// the response, `Err(E)` with `E: Into<`[`RpcError`]`>` as the error, in the shapes of NestJS's
/// `RpcException` (`RpcError::new("text")`, a `String` or `&str` send
/// `{"status": "error", "message": "text"}`; [`RpcError::object`] sends any JSON; an [`Error`]
/// sends "Internal server error"). Patterns and arguments are written as for
/// [`event_pattern`](macro@event_pattern).
///
/// ```no_run
/// use rmq_bus::{RpcError, controller, message_pattern};
/// use serde::Serialize;
///
/// #[derive(Serialize)]
/// struct Order { id: u64 }
///
/// struct Orders;
///
/// #[controller]
/// impl Orders {
///     #[message_pattern("get_order")]
///     async fn get(&self, #[payload("id")] id: u64) -> Result<Order, RpcError> {
///         if id == 0 { Err(RpcError::new("no such order")) } else { Ok(Order { id }) }
///     }
/// }
///
/// #[message_pattern(cmd = "sum")]
/// async fn sum(#[payload] numbers: Vec<i64>) -> Result<i64, String> {
///     Ok(numbers.iter().sum())
/// }
/// ```
pub use rmq_bus_macros::message_pattern;

/// What generated code refers to. Not public API: no stability promise.
#[doc(hidden)]
pub mod __private {
    pub use crate::handler::{
        Controller, HandlerError, HandlerFn, IntoHandlerResult, Message, Route,
    };
    pub use crate::rpc::IntoReply;
    pub use futures::future::BoxFuture;

    /// An object pattern from its JSON text, as the macros write it (`cmd = "sum"` becomes
    /// `{"cmd":"sum"}`). Text that is not a JSON object is taken as a string pattern.
    pub fn object_pattern(json: &str) -> crate::Pattern {
        match serde_json::from_str::<serde_json::Value>(json) {
            Ok(value @ serde_json::Value::Object(_)) => crate::Pattern::from(value),
            _ => crate::Pattern::from(json),
        }
    }

    /// The whole data as `T`.
    pub fn payload<T: serde::de::DeserializeOwned>(message: &Message) -> Result<T, HandlerError> {
        crate::handler::payload(message)
    }

    /// `data[key]` as `T`.
    pub fn payload_field<T: serde::de::DeserializeOwned>(
        message: &Message,
        key: &str,
    ) -> Result<T, HandlerError> {
        crate::handler::payload_field(message, key)
    }

    /// The event route of a generated handler, which checks the body itself (see [`finish`]).
    pub fn event_route<F, Fut>(pattern: impl Into<crate::Pattern>, handler: F) -> Route
    where
        F: Fn(Message) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = crate::HandlerResult> + Send + 'static,
    {
        Route::new(pattern.into(), crate::RouteKind::Event, handler, true)
    }

    /// The request route of a generated handler, which checks the body itself (see [`finish`]).
    pub fn message_route<F, Fut>(pattern: impl Into<crate::Pattern>, handler: F) -> Route
    where
        F: Fn(Message) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = crate::HandlerResult> + Send + 'static,
    {
        Route::new(pattern.into(), crate::RouteKind::Message, handler, true)
    }

    /// Ends extraction (checks a body no argument read) and drops the message.
    pub fn finish(message: Message) -> Result<(), HandlerError> {
        message.finish()
    }

    /// The context.
    pub fn context(message: &Message) -> crate::RmqContext {
        message.ctx.clone()
    }

    /// An argument extracted by its type.
    pub fn extract<T: crate::FromMessage>(message: &Message) -> Result<T, HandlerError> {
        T::from_message(message)
    }
}

/// Compiles the README's Rust snippets as doctests, so the quick start cannot rot.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
