use rmq_bus::{event_pattern, message_pattern};

const SUM: &str = "sum";

#[message_pattern(cmd = SUM)]
async fn sum() -> Result<u32, String> {
    Ok(0)
}

#[event_pattern(cmd = "order", version = -"2")]
async fn on_order() {}

#[event_pattern(cmd = "order", version = 2u8)]
async fn on_order_u8() {}

fn main() {}
