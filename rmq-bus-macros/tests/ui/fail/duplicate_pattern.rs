use rmq_bus::{controller, event_pattern};

struct Billing;

#[controller]
impl Billing {
    #[event_pattern("order_created")]
    async fn bill(&self) {}

    #[event_pattern("order_created")]
    async fn audit(&self) {}
}

fn main() {
    let _ = rmq_bus::Microservice::new(rmq_bus::RmqOptions::new("q")).controller(Billing);
}
