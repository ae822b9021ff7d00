use rmq_bus::{RmqContext, event_pattern};

#[event_pattern("order_created")]
async fn on_order_created(
    #[payload]
    #[ctx]
    ctx: RmqContext,
) {
    drop(ctx);
}

fn main() {}
