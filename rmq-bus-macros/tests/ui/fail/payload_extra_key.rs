use rmq_bus::event_pattern;

#[event_pattern("order_created")]
async fn on_order_created(#[payload("price", "amount")] price: f64) {
    let _ = price;
}

fn main() {}
