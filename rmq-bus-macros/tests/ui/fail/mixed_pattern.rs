use rmq_bus::{event_pattern, message_pattern};

#[message_pattern("sum", cmd = "sum")]
async fn sum() -> Result<u32, String> {
    Ok(0)
}

#[event_pattern(cmd = "order", "order_created")]
async fn on_order() {}

fn main() {}
