use rmq_bus::ClientProxy;
use rmq_bus::contract::Request;
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

#[derive(Serialize)]
struct NotAnEvent {
    id: String,
}

async fn calls(client: ClientProxy) -> rmq_bus::Result<()> {
    // A payload that is no event contract cannot be published.
    client.publish(&NotAnEvent { id: "o-1".into() }).await?;
    // The reply is the contract's: it cannot be read as another type.
    let count: u64 = client.request(&GetOrder { id: "o-1".into() }).await?;
    let _ = count;
    Ok(())
}

fn main() {
    let _ = calls;
}
