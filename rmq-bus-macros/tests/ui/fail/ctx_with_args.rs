use rmq_bus::{RmqContext, event_pattern};

#[event_pattern("order_created")]
async fn on_order_created(#[ctx("x")] ctx: RmqContext) {
    drop(ctx);
}

fn main() {}
