use rmq_bus::{event_pattern, message_pattern};

#[message_pattern("get_order")]
#[event_pattern("order_created")]
async fn both() -> Result<u32, String> {
    Ok(0)
}

#[message_pattern("sum")]
#[rmq_bus::message_pattern(cmd = "sum")]
async fn twice() -> Result<u32, String> {
    Ok(0)
}

fn main() {
    // One type per function: registering reports nothing more.
    let _ = rmq_bus::Microservice::new(rmq_bus::RmqOptions::new("q"))
        .handler::<both>()
        .handler::<twice>();
}
