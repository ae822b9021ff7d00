use rmq_bus::{controller, message_pattern};

#[message_pattern(cmd = "sum", version = 1, cmd = "add")]
async fn sum() -> Result<u32, String> {
    Ok(0)
}

struct Orders;

#[controller]
impl Orders {
    #[message_pattern(cmd = "get", "cmd" = "get")]
    async fn get(&self) -> Result<u32, String> {
        Ok(0)
    }
}

fn main() {}
