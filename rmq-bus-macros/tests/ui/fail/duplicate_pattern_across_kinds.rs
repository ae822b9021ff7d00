use rmq_bus::{controller, event_pattern, message_pattern};

struct Orders;

#[controller]
impl Orders {
    #[event_pattern("order")]
    async fn on_order(&self) {}

    #[message_pattern("order")]
    async fn get_order(&self) -> Result<u32, String> {
        Ok(0)
    }

    #[message_pattern(cmd = "sum", version = 2)]
    async fn sum(&self) -> Result<u32, String> {
        Ok(0)
    }

    // The same object pattern, keys in another order.
    #[event_pattern(version = 2, cmd = "sum")]
    async fn on_sum(&self) {}
}

fn main() {
    let _ = rmq_bus::Microservice::new(rmq_bus::RmqOptions::new("q")).controller(Orders);
}
