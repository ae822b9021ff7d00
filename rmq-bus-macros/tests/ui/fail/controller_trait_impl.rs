use rmq_bus::{controller, event_pattern};

trait Bills {
    async fn bill(&self);
}

struct Billing;

#[controller]
impl Bills for Billing {
    #[event_pattern("order_created")]
    async fn bill(&self) {}
}

fn main() {}
