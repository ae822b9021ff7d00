use rmq_bus::{controller, event_pattern};

struct Billing;

#[controller(queue = "billing")]
impl Billing {
    #[event_pattern("order_created")]
    async fn bill(&self) {}
}

fn main() {
    let _ = rmq_bus::Microservice::new(rmq_bus::RmqOptions::new("q")).controller(Billing);
}
