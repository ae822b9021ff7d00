//! A controller using every argument form, unit- and `Result`-returning handlers, unmarked
//! methods, and both paths of the attribute.
#![deny(warnings)]

use rmq_bus::{ClientProxy, Payload, RmqContext, RmqOptions, controller, event_pattern};
use serde::Deserialize;

#[derive(Deserialize)]
struct Order {
    price: f64,
}

struct Billing {
    orders: ClientProxy,
}

#[controller]
impl Billing {
    /// Documented handlers keep their docs.
    #[event_pattern("order_created")]
    async fn bill(
        &self,
        #[payload("orderPayload")] order: Order,
        #[ctx] ctx: RmqContext,
    ) -> rmq_bus::Result<()> {
        let _ = (&self.orders, order.price);
        ctx.ack().await
    }

    #[event_pattern("order_updated")]
    async fn whole(&self, #[payload] order: Order) {
        self.helper(order.price);
    }

    #[rmq_bus::event_pattern("order_deleted")]
    async fn by_type(&self, Payload(order): Payload<Order>, ctx: RmqContext) -> Result<(), String> {
        let _ = (order.price, ctx.redelivered());
        Err("not yet".to_owned())
    }

    #[event_pattern("ping")]
    async fn no_args(&self) {}

    #[event_pattern("typed_receiver")]
    async fn typed_receiver(self: &Self, _ctx: RmqContext) {}

    #[event_pattern("optional")]
    async fn optional(
        &self,
        #[payload("maybe")] maybe: Option<String>,
        #[allow(unused_variables)]
        #[ctx]
        unused: RmqContext,
    ) {
        let _ = maybe;
    }

    fn helper(&self, _price: f64) {}

    /// An unmarked associated function is left alone.
    fn new(orders: ClientProxy) -> Self {
        Self { orders }
    }
}

struct Generic<T> {
    value: T,
}

#[controller]
impl<T> Generic<T>
where
    T: Clone + Send + Sync + 'static,
{
    #[event_pattern("generic")]
    async fn handle(&self, #[payload] _data: u32) {
        let _ = self.value.clone();
    }
}

struct Empty;

#[controller]
impl Empty {}

fn main() {
    let billing = Billing::new(ClientProxy::new(RmqOptions::new("orders")));
    let _ = rmq_bus::Microservice::new(RmqOptions::new("billing"))
        .controller(billing)
        .controller(Generic { value: 1_u8 })
        .controller(Empty);
}
