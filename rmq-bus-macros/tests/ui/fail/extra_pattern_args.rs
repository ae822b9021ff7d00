use rmq_bus::event_pattern;

#[event_pattern("order_created", "order_updated")]
async fn on_order() {}

fn main() {}
