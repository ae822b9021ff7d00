use rmq_bus::event_pattern;

#[event_pattern("order_created")]
struct OnOrderCreated;

fn main() {}
