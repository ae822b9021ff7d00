use rmq_bus::{controller, message_pattern};

#[message_pattern("get_order")]
fn get_order(#[payload("id")] id: u64) -> Result<u64, String> {
    Ok(id)
}

struct Orders;

#[controller]
impl Orders {
    #[message_pattern(cmd = "sum")]
    fn sum(&self, #[payload] numbers: Vec<u32>) -> Result<u32, String> {
        Ok(numbers.iter().sum())
    }
}

fn main() {
    // The type and the Controller impl are still emitted: registering reports nothing more.
    let _ = rmq_bus::Microservice::new(rmq_bus::RmqOptions::new("q"))
        .handler::<get_order>()
        .controller(Orders);
}
