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
//! ## Acknowledgement and failures
//!
//! With the default [`AckMode::Manual`], handlers settle their message through [`RmqContext`].
//! Whatever a handler does, the message is settled exactly once:
//!
//! | what happens | settlement |
//! |---|---|
//! | body not JSON, no pattern, unknown pattern, data of the wrong shape, too large | rejected without requeue (dead-lettered if the queue has a dead-letter exchange), logged with the reason |
//! | handler returns `Ok` without settling | acked, with a warning |
//! | handler returns `Err` or panics without settling | [`FailurePolicy`]: by default requeued once, then rejected |
//! | handler keeps a clone of the context | settled when the last clone is dropped |
//! | shutdown while a handler runs past the drain timeout | returned to the queue |
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
    DEFAULT_RECONNECT_TIMEOUT, DEFAULT_REQUEST_TIMEOUT, DEFAULT_URI, Exchange, ExchangeKind, MEMORY_SCHEME,
    FailurePolicy, QueueOptions, RmqOptions,
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
