use rmq_bus::event_pattern;

struct Billing;

impl Billing {
    #[event_pattern("order_created")]
    async fn bill(&self, #[payload] _price: f64) {}
}

fn main() {}
