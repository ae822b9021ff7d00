use rmq_bus::contract::{Event, Request};
use serde::{Deserialize, Serialize};

#[derive(Request, Serialize, Deserialize)]
#[request(pattern = "get_order", reply = String, ordered_by = "id")]
struct GetOrder {
    id: String,
}

#[derive(Event, Serialize, Deserialize)]
#[event(pattern = "order_updated", ordered_by = "")]
struct OrderUpdated {
    order_id: String,
}

fn main() {}
