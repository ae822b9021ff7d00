use rmq_bus::event_pattern;

#[event_pattern("order_created")]
async fn on_order_created(#[payload(42)] price: f64) {
    let _ = price;
}

fn main() {}
