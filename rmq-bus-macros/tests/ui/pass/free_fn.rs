//! Free handlers: registered with `.handler::<name>()`, and still callable directly.
#![deny(warnings)]

use rmq_bus::{Microservice, RmqContext, RmqOptions, event_pattern};
use serde::Deserialize;

#[derive(Deserialize)]
struct Order {
    price: f64,
}

#[event_pattern("order_created")]
async fn on_order_created(#[payload] order: Order, #[ctx] ctx: RmqContext) -> rmq_bus::Result<()> {
    let _ = order.price;
    ctx.ack().await
}

#[event_pattern("order_priced")]
pub(crate) async fn on_price(#[payload("price")] price: f64) -> Result<(), String> {
    if price < 0.0 {
        Err(format!("negative price {price}"))
    } else {
        Ok(())
    }
}

mod nested {
    /// A public handler in a module.
    #[rmq_bus::event_pattern("nested")]
    pub async fn nested(_ctx: rmq_bus::RmqContext) {}
}

/// Only called directly, never registered.
#[event_pattern("direct")]
async fn direct(#[payload] value: u32) {
    let _ = value + 1;
}

fn main() {
    let _ = Microservice::new(RmqOptions::new("q"))
        .handler::<on_order_created>()
        .handler::<on_price>()
        .handler::<nested::nested>();
    let _ = direct(1);
    let _ = on_price(1.0);
}
