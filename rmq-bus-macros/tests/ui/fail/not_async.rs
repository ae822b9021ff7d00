use rmq_bus::{RmqContext, event_pattern};

#[event_pattern("order_created")]
fn on_order_created(#[ctx] ctx: RmqContext) {
    drop(ctx);
}

fn main() {
    // The type is still emitted: registering reports nothing more.
    let _ = rmq_bus::Microservice::new(rmq_bus::RmqOptions::new("q")).handler::<on_order_created>();
}
