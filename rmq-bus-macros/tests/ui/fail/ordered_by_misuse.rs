use rmq_bus::{event_pattern, message_pattern};

// Requests are answered one by one already: only events are ordered.
#[message_pattern("get_order", ordered_by = "orderId")]
async fn get_order(#[payload] id: String) -> Result<String, String> {
    Ok(id)
}

// The key is a path into the data, written as a string.
#[event_pattern("order_updated", ordered_by = order_id)]
async fn not_a_string() {}

#[event_pattern("order_paid", ordered_by = "order..id")]
async fn empty_segment() {}

#[event_pattern("order_shipped", ordered_by = "orderId", ordered_by = "id")]
async fn twice() {}

fn main() {}
