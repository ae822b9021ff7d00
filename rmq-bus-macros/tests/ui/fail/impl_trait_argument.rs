use rmq_bus::event_pattern;

#[event_pattern("order_created")]
async fn on_order_created(#[payload] order: impl serde::de::DeserializeOwned) {
    drop(order);
}

fn main() {}
