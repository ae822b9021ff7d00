use rmq_bus::{controller, event_pattern};

struct Billing;

#[controller]
impl Billing {
    #[event_pattern("order_created")]
    fn bill(&self, #[payload] _price: f64) {}
}

fn main() {
    // The Controller impl is still emitted: registering reports nothing more.
    let _ = rmq_bus::Microservice::new(rmq_bus::RmqOptions::new("q")).controller(Billing);
}
