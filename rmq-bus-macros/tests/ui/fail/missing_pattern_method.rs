use rmq_bus::{controller, event_pattern};

struct Billing;

#[controller]
impl Billing {
    #[event_pattern]
    async fn bill(&self) {}

    #[event_pattern()]
    async fn refund(&self) {}
}

fn main() {}
