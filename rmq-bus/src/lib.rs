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
//! The root holds what every service uses; the rest is in modules named for what they hold:
//! [`config`] (settings, ack modes, retry policies, queue and exchange declarations),
//! [`contract`] (typed events and requests),
//! [`context`] (the delivery and its settlement), [`handler`] (routes, extractors, replies,
//! interceptors), [`health`] (connection and consumer state, for readiness probes),
//! [`microservice`] (the running service, shutdown) and [`testing`] (an in-memory broker for
//! tests).
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
//! traits [`FromMessage`](handler::FromMessage), [`IntoHandlerResult`](handler::IntoHandlerResult)
//! and [`IntoReply`](handler::IntoReply).
//!
//! ## Ack modes and failures
//!
//! With the default [`AckMode::Manual`](config::AckMode::Manual), handlers settle their message
//! through [`RmqContext`] ([`AckMode::AfterHandler`](config::AckMode::AfterHandler) acks on
//! `Ok`; [`AckMode::NoAck`](config::AckMode::NoAck) is NestJS's at-most-once `noAck: true`).
//! Whatever a handler does, the message is settled exactly once:
//!
//! | what happens | settlement |
//! |---|---|
//! | body not JSON, no pattern, unknown pattern, data of the wrong shape, too large | dead-lettered with the reason (to [`RmqOptions::dead_letter_queue`], `<queue>.dlq` by default), never retried |
//! | handler returns `Ok` without settling | acked, with a warning |
//! | handler returns `Err` or panics without settling | its [`RetryPolicy`](config::RetryPolicy) (delayed retries on the broker, then the dead-letter queue), else the [`FailurePolicy`](config::FailurePolicy): requeued once, then dead-lettered |
//! | request handler (`#[message_pattern]`) | answered (value or error), then acked |
//! | handler keeps a clone of the context | settled when the last clone is dropped |
//! | shutdown while a handler runs past the drain timeout | returned to the queue |
//!
//! ## Errors
//!
//! Every fallible call returns [`Error`], whose messages name what is at fault and what to do:
//! the variable of a bad setting, the queue whose declaration conflicts, the pattern nobody
//! handles. Broker errors keep the transport's error as their source. Settling twice or on a
//! closed channel is an error value, never a panic. A publish the broker refuses (a publisher
//! nack) fails at once with [`Error::Nacked`]; only a lost connection is retried, up to
//! [`RmqOptions::reconnect_timeout`].
//!
//! ## Testing without a broker
//!
//! [`testing::TestBroker`] is an in-memory broker with RabbitMQ's semantics. Point the options
//! at it (`memory://name` URIs) and the same controllers run in a unit test; wait for a delivery
//! to be settled and see what became of it (acked, retried, dead-lettered, …), look at what was
//! emitted where, or inject a lost connection or a refused publish:
//!
//! ```
//! use rmq_bus::context::Outcome;
//! use rmq_bus::testing::TestBroker;
//! use rmq_bus::{controller, event_pattern, ClientProxy, Microservice, RmqContext};
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
//! assert_eq!(broker.settled("BILLING").await.outcome, Outcome::Acked); // waits, at most 10 s
//! let (pattern, data) = broker.messages("ORDERS")?[0].packet().expect("a packet");
//! assert_eq!((pattern.as_str(), data["status"].as_str()), ("order_processed", Some("CANCELED_FRAUD")));
//! billing.shutdown().await
//! # }
//! ```
//!
//! ## MSRV
//!
//! Rust 1.88, raised only in a minor release.

#![cfg_attr(docsrs, feature(doc_cfg))]

// The modules in layers, lowest first; each imports only from the layers before it:
//   plain data     delivery, rpc, error, pattern, schema (what a document says of a handler),
//                  health (what a service reports of itself)
//   wire format    codec (pure: no I/O)
//   settings       config
//   instruments    telemetry (metrics through the `metrics` facade, trace context)
//   the delivery   context (with the port transports settle through), correlation
//   brokers        transport: the port, and its RabbitMQ and in-memory adapters (the only code
//                  naming lapin)
//   handlers       handler
//   the core       dispatch (consumer loop, routing, settlement policy, retries, dead letters)
//   the surface    contract, client, microservice, testing
//   databases      store (the outbox and inbox tables, per database), then outbox (and its
//                  relay, over client) and inbox; features `postgres` and `sqlite`
mod client;
mod codec;
pub mod config;
pub mod context;
pub mod contract;
mod correlation;
mod delivery;
mod dispatch;
mod error;
mod fuzzing;
pub mod handler;
pub mod health;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub mod inbox;
pub mod microservice;
pub mod ordering;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub mod outbox;
mod pattern;
mod rpc;
mod schema;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub mod store;
mod telemetry;
pub mod testing;
mod transport;

pub use client::ClientProxy;
pub use config::RmqOptions;
pub use context::RmqContext;
pub use error::{Error, Result};
pub use handler::Payload;
pub use microservice::Microservice;
pub use pattern::Pattern;
pub use rpc::RpcError;

/// lapin, re-exported for the one escape hatch that names it, [`RmqContext::channel`], so that
/// your code uses the same lapin as rmq-bus. It is public API on purpose: a major version of
/// lapin is a major version of rmq-bus.
pub use lapin;

/// Marks an inherent impl block as a controller: its `#[event_pattern]` and `#[message_pattern]`
/// methods become its handlers ([`Controller`](handler::Controller)), registered with
/// [`Microservice::controller`]. Handler methods are `async fn`s taking `&self`: the controller is
/// shared by handlers running concurrently, so mutable state goes behind a `Mutex` or an atomic.
/// A pattern routes to one handler: two methods with the same pattern are an error.
pub use rmq_bus_macros::controller;
/// Marks an `async fn` as the handler of an event pattern, as NestJS's `@EventPattern`: a method
/// of a [`#[controller]`](controller) impl block, or a free function registered with
/// [`Microservice::handler`] (`.handler::<on_order_created>()`; the function stays callable).
///
/// The pattern is a string, `#[event_pattern("order_created")]`, or an object written as
/// `key = value` pairs (strings, numbers, booleans): `#[event_pattern(cmd = "order", version = 2)]`
/// is NestJS's `@EventPattern({ cmd: 'order', version: 2 })`, keys sorted as NestJS does. Without
/// a pattern, `#[event_pattern]` takes the pattern of its `#[payload]` argument's
/// [contract].
///
/// Arguments take `#[payload]` (the data), `#[payload("key")]` (one key of it, as
/// `@Payload('key')`) or `#[ctx]` (the [`RmqContext`], by value: clones are cheap); an argument
/// without one is extracted by its type through [`FromMessage`](handler::FromMessage).
///
/// The handler returns `()`, or `Result<(), E>` for any `E: Display` (`rmq_bus::Error`,
/// `anyhow::Error`, `String`, …) ([`IntoHandlerResult`](handler::IntoHandlerResult)). An `Err`
/// (or a panic) leaves the message to the queue's retry or failure policy; the error's text is
/// logged and goes into the dead letter's `x-rmq-bus-error` header.
///
/// ```no_run
/// use rmq_bus::{RmqContext, event_pattern};
///
/// #[event_pattern("order_created")]
/// async fn on_order_created(#[payload("orderPayload")] order: serde_json::Value, #[ctx] ctx: RmqContext) -> rmq_bus::Result<()> {
///     println!("billing {order}");
///     ctx.ack().await
/// }
/// # let _ = rmq_bus::Microservice::new(rmq_bus::RmqOptions::new("BILLING")).handler::<on_order_created>();
/// ```
pub use rmq_bus_macros::event_pattern;
/// Marks an `async fn` as the handler of a request pattern, as NestJS's `@MessagePattern`: it
/// answers what [`ClientProxy::send`] sends. It goes on a method of a [`#[controller]`](controller)
/// impl block or on a free function, as [`event_pattern`](macro@event_pattern) does; without a
/// pattern it takes its `#[payload]` [contract]'s, and must return the contract's reply
/// type.
///
/// The handler returns `Result<T, E>` ([`IntoReply`](handler::IntoReply)): `Ok(T)` with `T: Serialize` goes back as
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
    pub use crate::contract::check::{
        ByAnything, ByContract, Described, DocProbe, EventDoc, PatternKey, PatternKeyOf, PlainDoc,
        Probe, ReplyOf, RequestDoc, describe_event, describe_request, same_pattern, typed_reply,
    };
    pub use crate::handler::glue::{
        context, event_route, extract, finish, message_route, object_pattern, ordered, payload,
        payload_field,
    };
    pub use crate::handler::{
        Controller, HandlerError, HandlerFn, IntoHandlerResult, IntoReply, Message, Route,
    };
    pub use crate::schema::{
        BySchema, MessageDoc, NoSchema, RouteDoc, SchemaFn, SchemaProbe, Schemas, object_schema,
    };
    pub use futures::future::BoxFuture;
    pub use serde_json::Value;
}

/// What the fuzz targets (`fuzz/`) and their corpus replay test reach of the internals: the
/// decoders and the pattern rules. Not part of the API.
#[doc(hidden)]
pub mod __fuzz {
    pub use crate::fuzzing::*;
}

/// Compiles the README's Rust snippets as doctests, so the quick start cannot rot (with the
/// default features, which the AsyncAPI snippet needs).
#[doc = include_str!("../../README.md")]
#[cfg(all(doctest, feature = "asyncapi"))]
pub struct ReadmeDoctests;
