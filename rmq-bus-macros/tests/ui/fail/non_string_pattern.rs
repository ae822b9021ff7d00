use rmq_bus::event_pattern;

#[event_pattern(42)]
async fn on_order_created() {}

fn main() {}
