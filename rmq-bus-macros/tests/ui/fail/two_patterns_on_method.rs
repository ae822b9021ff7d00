use rmq_bus::{controller, event_pattern};

struct Billing;

#[controller]
impl Billing {
    #[event_pattern("order_created")]
    #[rmq_bus::event_pattern("order_updated")]
    async fn bill(&self) {}
}

fn main() {}
