//! Procedural macros of rmq-bus. Use them through `rmq_bus`, which re-exports them.
use proc_macro::TokenStream;

/// See `rmq_bus::controller`.
#[proc_macro_attribute]
pub fn controller(_args: TokenStream, item: TokenStream) -> TokenStream {
    item
}

/// See `rmq_bus::event_pattern`.
#[proc_macro_attribute]
pub fn event_pattern(_args: TokenStream, item: TokenStream) -> TokenStream {
    item
}
