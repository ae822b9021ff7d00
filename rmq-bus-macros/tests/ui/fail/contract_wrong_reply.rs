use rmq_bus::contract::Request;
use rmq_bus::{RpcError, message_pattern};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Order {
    id: String,
}

#[derive(Request, Serialize, Deserialize)]
#[request(pattern = "get_order", reply = Order)]
struct GetOrder {
    id: String,
}

#[message_pattern]
async fn get_order(#[payload] query: GetOrder) -> Result<String, RpcError> {
    Ok(query.id)
}

fn main() {}
