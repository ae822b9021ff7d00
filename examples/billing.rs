//! Billing service: a microservice that bills the orders the `orders` example creates.
//!
//! Consumes `order_created` `{"orderPayload": order}` from the billing queue, runs a fraud check,
//! and reports `order_processed` `{"order": order}` with the new status to the orders queue, both
//! typed by the contracts in `contracts.rs`. One database transaction records the message in the
//! inbox, the bill in `bills` and `order_processed` in the outbox; it commits, then the message
//! is acked. A redelivered `order_created` (a crash before the ack, a duplicate from the orders
//! relay) finds its inbox record, and is acked without billing anyone twice. The outbox relay
//! sends `order_processed` once the broker takes it.
//!
//! Configured from the environment only:
//!
//! | variable | default |
//! |---|---|
//! | `RABBIT_MQ_URI` | `amqp://guest:guest@127.0.0.1:5672/%2f` |
//! | `RABBIT_MQ_BILLING_QUEUE` | `BILLING` |
//! | `RABBIT_MQ_ORDERS_QUEUE` | `ORDERS` |
//! | `METRICS_PORT` (Prometheus `/metrics` and `/health`) | `9464` |
//! | `DATABASE_URL` | a SQLite file, `rmq-bus-billing.sqlite` in the temporary directory (logged at start); or `postgres://…`, `sqlite://path` |
//! | `BILLING_ACK_DELAY_MS` | `0`: how long to hold each ack after the commit (the window the crash tests kill billing in) |
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
mod database;
#[path = "support/observability.rs"]
mod observability;

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use contracts::{Order, OrderCreated, OrderProcessed, OrderStatus};
use database::{BillStore, Database};
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
    store: Arc<dyn BillStore>,
    /// How long to hold each ack after the commit (`BILLING_ACK_DELAY_MS`), for the crash tests.
    ack_delay: Duration,
}

#[controller]
impl BillingController {
    /// Runs the fraud check (a price above 10000 is fraud), bills the order and writes the
    /// verdict, `order_processed`, to the outbox, in one transaction; acks once it committed.
    #[event_pattern] // `order_created`, from the pattern of its contract
    async fn on_order_created(
        &self,
        #[payload] created: OrderCreated,
        #[ctx] ctx: RmqContext,
    ) -> rmq_bus::Result<()> {
        let order = created.order_payload;
        let status = if is_fraud(&order) {
            OrderStatus::CanceledFraud
        } else {
            OrderStatus::Processed
        };
        let order = Order { status, ..order };
        if self.store.bill(&order, &ctx).await? {
            match status {
                OrderStatus::CanceledFraud => {
                    tracing::warn!(order_id = %order.order_id, price = order.price, "order canceled as fraud")
                }
                _ => {
                    tracing::info!(order_id = %order.order_id, price = order.price, buyer = %order.buyer, "order billed")
                }
            }
        } else {
            tracing::info!(order_id = %order.order_id, "order_created already handled (a redelivery): already billed, acking");
        }
        if !self.ack_delay.is_zero() {
            tokio::time::sleep(self.ack_delay).await;
        }
        // Acked after the commit: a crash in between redelivers the message, and the inbox
        // then says it was handled.
        ctx.ack().await
    }
}

/// The client of the orders queue, which billing sends `order_processed`.
fn orders_client() -> rmq_bus::Result<ClientProxy> {
    Ok(ClientProxy::new(RmqOptions::from_env("ORDERS")?).sends::<OrderProcessed>())
}

/// The microservice on the billing queue, handling `order_created`.
fn microservice(store: Arc<dyn BillStore>) -> rmq_bus::Result<Microservice> {
    let ack_delay = match std::env::var("BILLING_ACK_DELAY_MS") {
        Err(_) => Duration::ZERO,
        Ok(raw) => {
            Duration::from_millis(raw.trim().parse().map_err(|_| rmq_bus::Error::InvalidEnv {
                var: "BILLING_ACK_DELAY_MS".into(),
                value: raw.clone(),
                reason: "not a number of milliseconds".into(),
            })?)
        }
    };
    Ok(Microservice::new(RmqOptions::from_env("BILLING")?)
        .controller(BillingController { store, ack_delay }))
}

/// The service's AsyncAPI document, made from the same microservice and client as `run` uses,
/// without connecting (the store is an in-memory one, unused).
async fn asyncapi() -> rmq_bus::Result<String> {
    let orders = orders_client()?;
    let (store, background) = Database::in_memory().await?.billing(orders.clone());
    let document = AsyncApi::new("billing", "1.0.0")
        .description(
            "Bills the orders the orders service creates (`order_created`) and reports each \
             verdict back (`order_processed`) through its outbox, once per order (its inbox).",
        )
        .microservice(&microservice(store)?)
        .client(&orders)
        .to_json();
    background.shutdown().await;
    Ok(document)
}

async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let metrics = observability::install_metrics()?;
    let orders = orders_client()?;
    // Connect now so that a wrong RABBIT_MQ_URI shows at start-up, not on the first order.
    orders.connect().await?;
    let (database, location) = Database::open("billing").await?;
    tracing::info!("billing database: {location}");
    let (store, background) = database.billing(orders.clone());
    let running = microservice(store)?.start().await?;
    let clients = vec![("orders", orders.clone())];
    let routes = observability::routes(metrics, running.health_probe(), clients);
    observability::serve_on_metrics_port(routes).await?;
    let ran = running
        .shutdown_on(rmq_bus::microservice::shutdown_signal()) // until Ctrl-C or SIGTERM
        .await;
    background.shutdown().await;
    orders.close().await;
    ran?;
    tracing::info!("billing stopped");
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    if std::env::args().skip(1).any(|arg| arg == "--asyncapi") {
        let printed = asyncapi()
            .await
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
