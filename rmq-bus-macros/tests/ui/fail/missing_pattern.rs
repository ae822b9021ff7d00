use rmq_bus::event_pattern;

#[event_pattern]
async fn on_order_created() {}

fn main() {}
