//! Billing service: a microservice that bills the orders the `orders` example creates.
//!
//! Consumes `order_created` `{"orderPayload": order}` from the billing queue, runs a fraud check,
//! and emits `order_processed` `{"order": order}` with the new status to the orders queue, both
//! typed by the contracts in `contracts.rs`. The message is acked only once the broker has
//! confirmed that event; if the emit fails the handler fails, and rmq-bus requeues the message
//! once, then dead-letters it.
//!
//! Configured from the environment only:
//!
//! | variable | default |
//! |---|---|
//! | `RABBIT_MQ_URI` | `amqp://guest:guest@127.0.0.1:5672/%2f` |
//! | `RABBIT_MQ_BILLING_QUEUE` | `BILLING` |
//! | `RABBIT_MQ_ORDERS_QUEUE` | `ORDERS` |
//! | `RUST_LOG` | `info` |
//!
//! ```text
//! RABBIT_MQ_URI=amqp://guest:guest@127.0.0.1:5672/%2f cargo run --example billing
//! ```
//!
//! Stops cleanly on Ctrl-C or SIGTERM, letting in-flight handlers finish.

mod contracts;

use std::process::ExitCode;

use contracts::{Order, OrderCreated, OrderProcessed, OrderStatus};
use rmq_bus::{ClientProxy, Microservice, RmqContext, RmqOptions, controller, event_pattern};
use tracing_subscriber::EnvFilter;

/// Orders priced above this are canceled as fraud.
const FRAUD_PRICE_LIMIT: f64 = 10_000.0;

/// The fraud rule, deterministic so that it can be tested: any order priced above
/// [`FRAUD_PRICE_LIMIT`] is fraud.
fn is_fraud(order: &Order) -> bool {
    order.price > FRAUD_PRICE_LIMIT
}

/// Bills orders and reports each outcome to the orders service.
struct BillingController {
    orders: ClientProxy,
}

#[controller]
impl BillingController {
    /// `order_created`, from the pattern of its contract.
    #[event_pattern]
    async fn on_order_created(
        &self,
        #[payload] created: OrderCreated,
        #[ctx] ctx: RmqContext,
    ) -> rmq_bus::Result<()> {
        let order = created.order_payload;
        let status = if is_fraud(&order) {
            tracing::warn!(order_id = %order.order_id, price = order.price, "order canceled as fraud");
            OrderStatus::CanceledFraud
        } else {
            tracing::info!(order_id = %order.order_id, price = order.price, buyer = %order.buyer, "order billed");
            OrderStatus::Processed
        };
        let order = Order { status, ..order };
        // Acked only after the broker confirmed the outcome: if we crash in between, the
        // order is billed again rather than never reported.
        self.orders.publish(&OrderProcessed { order }).await?;
        ctx.ack().await
    }
}

async fn run() -> rmq_bus::Result<()> {
    let orders = ClientProxy::new(RmqOptions::from_env("ORDERS")?);
    // Connect now so that a wrong RABBIT_MQ_URI shows at start-up, not on the first order.
    orders.connect().await?;
    let ran = Microservice::new(RmqOptions::from_env("BILLING")?)
        .controller(BillingController {
            orders: orders.clone(),
        })
        .run() // until Ctrl-C or SIGTERM
        .await;
    orders.close().await;
    ran?;
    tracing::info!("billing stopped");
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // `main` returning the error would print its Debug form; the Display form says
            // what to fix.
            eprintln!("billing: {error}");
            ExitCode::FAILURE
        }
    }
}
