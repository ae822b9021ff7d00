use rmq_bus::event_pattern;

#[event_pattern("order_created")]
async unsafe fn on_order_created() {}

fn main() {}
