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
//! | `METRICS_PORT` (Prometheus `/metrics` and `/health`) | `9464` |
//! | `RUST_LOG` | `info` |
//!
//! ```text
//! RABBIT_MQ_URI=amqp://guest:guest@127.0.0.1:5672/%2f cargo run --example billing
//! ```
//!
//! Stops cleanly on Ctrl-C or SIGTERM, letting in-flight handlers finish.
//!
//! `cargo run --example billing -- --asyncapi` prints the service's AsyncAPI document (JSON) and
//! exits, without connecting: `examples/asyncapi/billing.json` is that document.

mod contracts;
#[path = "support/observability.rs"]
mod observability;

use std::io::Write;
use std::process::ExitCode;

use contracts::{Order, OrderCreated, OrderProcessed, OrderStatus};
use rmq_bus::contract::AsyncApi;
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
    /// Runs the fraud check (a price above 10000 is fraud) and reports the verdict with
    /// `order_processed`; acks only once the broker confirmed that report.
    #[event_pattern] // `order_created`, from the pattern of its contract
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

/// The client of the orders queue, which billing sends `order_processed`.
fn orders_client() -> rmq_bus::Result<ClientProxy> {
    Ok(ClientProxy::new(RmqOptions::from_env("ORDERS")?).sends::<OrderProcessed>())
}

/// The microservice on the billing queue, handling `order_created`.
fn microservice(orders: ClientProxy) -> rmq_bus::Result<Microservice> {
    Ok(
        Microservice::new(RmqOptions::from_env("BILLING")?)
            .controller(BillingController { orders }),
    )
}

/// The service's AsyncAPI document, made from the same microservice and client as `run` uses,
/// without connecting.
fn asyncapi() -> rmq_bus::Result<String> {
    let orders = orders_client()?;
    let document = AsyncApi::new("billing", "1.0.0")
        .description(
            "Bills the orders the orders service creates (`order_created`) and reports each \
             verdict back (`order_processed`), acking only once the report is confirmed.",
        )
        .microservice(&microservice(orders.clone())?)
        .client(&orders)
        .to_json();
    Ok(document)
}

async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let metrics = observability::install_metrics()?;
    let orders = orders_client()?;
    // Connect now so that a wrong RABBIT_MQ_URI shows at start-up, not on the first order.
    orders.connect().await?;
    let running = microservice(orders.clone())?.start().await?;
    let clients = vec![("orders", orders.clone())];
    let routes = observability::routes(metrics, running.health_probe(), clients);
    observability::serve_on_metrics_port(routes).await?;
    let ran = running
        .shutdown_on(rmq_bus::microservice::shutdown_signal()) // until Ctrl-C or SIGTERM
        .await;
    orders.close().await;
    ran?;
    tracing::info!("billing stopped");
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    if std::env::args().skip(1).any(|arg| arg == "--asyncapi") {
        let printed = asyncapi()
            .map_err(|error| error.to_string())
            .and_then(|document| {
                std::io::stdout()
                    .write_all(document.as_bytes())
                    .map_err(|error| error.to_string())
            });
        return match printed {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("billing: {error}");
                ExitCode::FAILURE
            }
        };
    }
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
