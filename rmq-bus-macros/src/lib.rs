//! Procedural macros of rmq-bus. Use them through `rmq_bus`, which re-exports and documents them;
//! generated code names only `::rmq_bus::__private`, `::core` and `::std`, so users need no other
//! dependency.
//!
//! Each macro parses its input, checks the handler's shape (async, no generics, a string or object
//! pattern, known argument attributes) with errors spanned at the offending tokens, and expands
//! fail-soft: on an error the original item is still emitted (without the rmq attributes), so one
//! mistake gives one error. Types are left to the runtime crate's traits (`IntoHandlerResult` for
//! what an event handler returns, `IntoReply` for a request handler).

mod args;
mod contract;
mod controller;
mod errors;
mod handler;
mod ordering;
mod pattern;

use proc_macro::TokenStream;

use contract::ContractKind;

// Makes an inherent impl block a controller: each method marked `#[event_pattern(...)]` or
// `#[message_pattern(...)]` becomes a route of an `rmq_bus::handler::Controller` impl, registered with
// `Microservice::controller`. A pattern routes to one handler: two methods with the same pattern
// (of either kind) are an error.
//
// Handler methods are `async fn`s taking `&self` (the controller is shared through an `Arc` by
// concurrent handlers).
#[proc_macro_attribute]
#[allow(missing_docs)] // documented where users read it: on its re-export in rmq-bus
pub fn controller(args: TokenStream, item: TokenStream) -> TokenStream {
    controller::expand(args.into(), item.into()).into()
}

// Makes a free `async fn` the handler of an event pattern, as NestJS's `@EventPattern`:
// `#[event_pattern("order_created")]`, or an object pattern `#[event_pattern(cmd = "order",
// version = 2)]` (sent as `{"cmd":"order","version":2}`, keys sorted as NestJS does).
//
// The function stays callable as written; a hidden type of the same name implements
// `rmq_bus::handler::HandlerFn`, registered with `Microservice::handler::<name>()`. On a method, use
// `#[controller]` on its impl block.
#[proc_macro_attribute]
#[allow(missing_docs)] // documented where users read it: on its re-export in rmq-bus
pub fn event_pattern(args: TokenStream, item: TokenStream) -> TokenStream {
    handler::expand_free(pattern::RouteKind::Event, args.into(), item.into()).into()
}

// Makes a free `async fn` the handler of a request pattern, as NestJS's `@MessagePattern`:
// `#[message_pattern("get_order")]` or `#[message_pattern(cmd = "sum")]`. It returns
// `Result<T, E>` (`rmq_bus::handler::IntoReply`): `T: Serialize` is the response, `E: Into<RpcError>`
// the error sent back.
//
// Registered as `#[event_pattern]` functions are, with `Microservice::handler::<name>()`; on a
// method, use `#[controller]` on its impl block.
#[proc_macro_attribute]
#[allow(missing_docs)] // documented where users read it: on its re-export in rmq-bus
pub fn message_pattern(args: TokenStream, item: TokenStream) -> TokenStream {
    handler::expand_free(pattern::RouteKind::Message, args.into(), item.into()).into()
}

// Binds a type to its event pattern, implementing `rmq_bus::contract::Event`:
// `#[event(pattern = "order_created")]`, or `#[event(pattern(cmd = "order_created"))]` for an
// object pattern. See `rmq_bus::contract`.
#[proc_macro_derive(Event, attributes(event))]
#[allow(missing_docs)] // documented where users read it: on its re-export in rmq-bus
pub fn derive_event(input: TokenStream) -> TokenStream {
    contract::derive(ContractKind::Event, input.into()).into()
}

// Binds a type to its request pattern and reply type, implementing
// `rmq_bus::contract::Request`: `#[request(pattern = "get_order", reply = Order)]`. See
// `rmq_bus::contract`.
#[proc_macro_derive(Request, attributes(request))]
#[allow(missing_docs)] // documented where users read it: on its re-export in rmq-bus
pub fn derive_request(input: TokenStream) -> TokenStream {
    contract::derive(ContractKind::Request, input.into()).into()
}
