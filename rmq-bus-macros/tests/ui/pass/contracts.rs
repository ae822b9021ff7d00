//! Typed contracts: handlers that take their pattern (and reply type) from their payload's type.
#![deny(warnings)]

use rmq_bus::contract::{Event, Request};
use rmq_bus::{
    Microservice, RmqContext, RmqOptions, RpcError, controller, event_pattern, message_pattern,
};
use serde::{Deserialize, Serialize};

/// An order was placed.
#[derive(Event, Serialize, Deserialize)]
#[event(pattern = "order_created")]
struct OrderCreated {
    price: f64,
}

#[derive(Serialize, Deserialize)]
struct Order {
    id: String,
}

#[derive(Request, Serialize, Deserialize)]
#[request(pattern(cmd = "get_order"), reply = Order)]
struct GetOrder {
    id: String,
}

#[event_pattern]
async fn bill(#[payload] order: OrderCreated, #[ctx] ctx: RmqContext) -> rmq_bus::Result<()> {
    let _ = order.price;
    ctx.ack().await
}

/// Naming the contract's own pattern is allowed.
#[event_pattern("order_created")]
async fn audit(#[payload] order: OrderCreated) {
    let _ = order.price;
}

struct Orders;

#[controller]
impl Orders {
    #[message_pattern]
    async fn get(&self, #[payload] query: GetOrder) -> Result<Order, RpcError> {
        Ok(Order { id: query.id })
    }

    #[message_pattern(cmd = "get_order")]
    async fn get_again(&self, #[payload] query: GetOrder) -> Result<Order, RpcError> {
        Ok(Order { id: query.id })
    }
}

fn main() {
    assert_eq!(OrderCreated::PATTERN, "order_created");
    assert_eq!(OrderCreated::DESCRIPTION, "An order was placed.");
    assert_eq!(GetOrder::PATTERN, r#"{"cmd":"get_order"}"#);
    let _ = Microservice::new(RmqOptions::new("BILLING"))
        .handler::<bill>()
        .handler::<audit>();
    let _ = Microservice::new(RmqOptions::new("ORDERS")).controller(Orders);
}
