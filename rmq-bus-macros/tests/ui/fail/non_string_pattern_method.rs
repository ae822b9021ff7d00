use rmq_bus::{controller, event_pattern};

struct Billing;

#[controller]
impl Billing {
    #[event_pattern({ "cmd": "sum" })]
    async fn sum(&self) {}
}

fn main() {}
