//! Procedural macros of rmq-bus. Use them through `rmq_bus`, which re-exports them; generated code
//! names only `::rmq_bus::__private`, `::core` and `::std`, so users need no other dependency.
//!
//! Each macro parses its input, checks the handler's shape (async, no generics, a string pattern,
//! known argument attributes) with errors spanned at the offending tokens, and expands fail-soft:
//! on an error the original item is still emitted (without the rmq attributes), so one mistake
//! gives one error. Types are left to the runtime crate's traits.

mod args;
mod controller;
mod errors;
mod handler;

use proc_macro::TokenStream;

/// Makes an inherent impl block a controller: each method marked `#[event_pattern("p")]` becomes
/// a route of an `rmq_bus::Controller` impl, registered with `Microservice::controller`.
///
/// Handler methods are `async fn`s taking `&self` (the controller is shared through an `Arc` by
/// concurrent handlers). See `rmq_bus::controller`.
#[proc_macro_attribute]
pub fn controller(args: TokenStream, item: TokenStream) -> TokenStream {
    controller::expand(args.into(), item.into()).into()
}

/// Makes a free `async fn` the handler of an event pattern: `#[event_pattern("order_created")]`.
///
/// The function stays callable as written; a hidden type of the same name implements
/// `rmq_bus::HandlerFn`, registered with `Microservice::handler::<name>()`. On a method, use
/// `#[controller]` on its impl block. See `rmq_bus::event_pattern`.
#[proc_macro_attribute]
pub fn event_pattern(args: TokenStream, item: TokenStream) -> TokenStream {
    handler::expand_free(args.into(), item.into()).into()
}
