use rmq_bus::contract::Event;
use rmq_bus::{Microservice, RmqOptions, event_pattern};
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize)]
#[event(pattern = "order_created")]
struct OrderCreated {
    price: f64,
}

#[event_pattern("order_creatd")]
async fn bill(#[payload] order: OrderCreated) {
    let _ = order.price;
}

fn main() {
    let _ = Microservice::new(RmqOptions::new("BILLING")).handler::<bill>();
}
