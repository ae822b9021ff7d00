use rmq_bus::{controller, event_pattern};

struct Billing;

#[controller]
impl Billing {
    #[event_pattern("order_created")]
    async fn bill<'a>(&'a self) {}
}

fn main() {}
