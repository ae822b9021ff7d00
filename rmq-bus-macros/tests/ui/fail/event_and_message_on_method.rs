use rmq_bus::{controller, event_pattern, message_pattern};

struct Orders;

#[controller]
impl Orders {
    #[event_pattern("order_created")]
    #[message_pattern("get_order")]
    async fn both(&self) {}

    #[message_pattern("sum")]
    #[rmq_bus::message_pattern(cmd = "sum")]
    async fn twice(&self) -> Result<u32, String> {
        Ok(0)
    }
}

fn main() {
    let _ = rmq_bus::Microservice::new(rmq_bus::RmqOptions::new("q")).controller(Orders);
}
