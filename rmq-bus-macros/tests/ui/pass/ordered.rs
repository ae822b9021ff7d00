//! Ordered handlers: `ordered_by` on functions, methods and contracts.
#![deny(warnings)]

use rmq_bus::contract::Event;
use rmq_bus::{Microservice, RmqContext, RmqOptions, controller, event_pattern};
use serde::{Deserialize, Serialize};

/// An order changed; its updates are handled in order.
#[derive(Event, Serialize, Deserialize)]
#[event(pattern = "order_updated", ordered_by = "orderId")]
#[serde(rename_all = "camelCase")]
struct OrderUpdated {
    order_id: String,
}

#[event_pattern] // ordered by the contract's key
async fn on_update(#[payload] update: OrderUpdated) {
    let _ = update.order_id;
}

#[derive(Deserialize)]
struct Order {
    id: String,
}

#[event_pattern("order_paid", ordered_by = "order.id")]
async fn on_paid(#[payload("order")] order: Order, #[ctx] ctx: RmqContext) -> rmq_bus::Result<()> {
    let _ = order.id;
    ctx.ack().await
}

struct Shipping;

#[controller]
impl Shipping {
    #[event_pattern(ordered_by = "orderId", "order_shipped")]
    async fn shipped(&self, #[payload("orderId")] id: String) {
        let _ = id;
    }
}

fn main() {
    assert_eq!(OrderUpdated::ORDERED_BY, Some("orderId"));
    let _ = Microservice::new(RmqOptions::new("ORDERS"))
        .handler::<on_update>()
        .handler::<on_paid>()
        .controller(Shipping);
}
