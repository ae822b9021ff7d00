use rmq_bus::{controller, event_pattern};

struct Billing {
    count: u64,
}

#[controller]
impl Billing {
    #[event_pattern("order_created")]
    async fn bill(&mut self) {
        self.count += 1;
    }
}

fn main() {}
