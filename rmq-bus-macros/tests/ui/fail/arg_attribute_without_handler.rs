use rmq_bus::controller;

struct Billing;

#[controller]
impl Billing {
    async fn bill(&self, #[payload] _price: f64) {}
}

fn main() {}
