//! Request handlers next to event handlers: string and object patterns on both kinds, every
//! supported reply type, free request handlers registered with `.handler::<name>()`.
#![deny(warnings)]

use rmq_bus::{
    ClientProxy, Microservice, RmqContext, RmqOptions, RpcError, controller, event_pattern,
    message_pattern,
};
use serde::{Deserialize, Serialize};

#[derive(Deserialize, Serialize)]
struct Order {
    id: u64,
    price: f64,
}

struct Orders {
    events: ClientProxy,
}

#[controller]
impl Orders {
    #[message_pattern("get_order")]
    async fn get(&self, #[payload("id")] id: u64) -> Result<Order, RpcError> {
        if id == 0 {
            return Err(RpcError::new("no such order"));
        }
        Ok(Order { id, price: 1.0 })
    }

    #[message_pattern(cmd = "sum")]
    async fn sum(&self, #[payload] numbers: Vec<u32>) -> Result<u32, String> {
        numbers
            .iter()
            .try_fold(0_u32, |sum, n| sum.checked_add(*n))
            .ok_or_else(|| "overflow".to_owned())
    }

    /// Keys in any order, keywords and strings as keys, every kind of value.
    #[rmq_bus::message_pattern(
        version = 2,
        cmd = "price",
        r#type = "quote",
        "x-region" = "eu",
        ratio = -0.5,
        live = true,
        offset = -3,
    )]
    async fn price(
        &self,
        #[payload] order: Order,
        #[ctx] ctx: RmqContext,
    ) -> Result<f64, &'static str> {
        let _ = ctx.redelivered();
        Ok(order.price)
    }

    #[message_pattern("cancel_order")]
    async fn cancel(&self, #[payload("id")] id: u64) -> Result<(), rmq_bus::Error> {
        self.events.emit("order_cancelled", &id).await
    }

    #[event_pattern("order_created")]
    async fn created(&self, #[payload] order: Order) -> rmq_bus::Result<()> {
        let _ = order.id;
        Ok(())
    }

    /// The same keys as `sum` with another value: another pattern.
    #[event_pattern(cmd = "order", version = 2)]
    async fn versioned(&self, #[payload] _order: Order) {}

    /// `{"cmd":1}` and `{"cmd":"1"}` are two patterns.
    #[event_pattern(cmd = 1)]
    async fn numbered(&self) {}

    #[message_pattern(cmd = "1")]
    async fn string_one(&self) -> Result<bool, RpcError> {
        Ok(true)
    }
}

#[message_pattern("ping")]
async fn ping() -> Result<&'static str, RpcError> {
    Ok("pong")
}

#[message_pattern(cmd = "echo")]
pub(crate) async fn echo(#[payload] text: String, _ctx: RmqContext) -> Result<String, String> {
    Ok(text)
}

mod nested {
    /// A public request handler in a module.
    #[rmq_bus::message_pattern(cmd = "nested")]
    pub async fn nested() -> Result<(), rmq_bus::RpcError> {
        Err(rmq_bus::RpcError::object("gone"))
    }
}

#[event_pattern(cmd = "order_created", version = 1)]
async fn on_order_created(#[payload("id")] id: u64) {
    let _ = id;
}

fn main() {
    let orders = Orders {
        events: ClientProxy::new(RmqOptions::new("events")),
    };
    let _ = Microservice::new(RmqOptions::new("orders"))
        .controller(orders)
        .handler::<ping>()
        .handler::<echo>()
        .handler::<nested::nested>()
        .handler::<on_order_created>();
    // Still callable directly.
    let _ = ping();
}
