use rmq_bus::{RmqContext, event_pattern};

#[event_pattern("order_created")]
async fn on_order_created(#[ctx] ctx: &RmqContext) {
    let _ = ctx;
}

fn main() {}
