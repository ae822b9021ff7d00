use rmq_bus::{controller, event_pattern, message_pattern};

#[event_pattern]
async fn on_text(#[payload] text: String) {
    let _ = text;
}

struct Orders;

#[controller]
impl Orders {
    #[message_pattern]
    async fn get(&self, #[payload] id: u64) -> Result<u64, String> {
        Ok(id)
    }
}

fn main() {}
