use rmq_bus::event_pattern;

#[event_pattern("order_created")]
async fn on_order_created<T: serde::de::DeserializeOwned>(#[payload] order: T) {
    drop(order);
}

fn main() {}
