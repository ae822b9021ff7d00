//! The ordering app in one process, with zero setup: orders and billing run side by side, a few
//! orders are placed (one of them fraudulent), and the flow is printed as it happens.
//!
//! It runs on RabbitMQ when `RABBIT_MQ_URI` (default `amqp://guest:guest@127.0.0.1:5672/%2f`)
//! answers, and otherwise on rmq-bus's in-memory transport, and says which. The code is the same
//! either way: only the URI differs. Each service keeps its data in a SQLite database in memory,
//! written through rmq-bus's outbox (events commit with the data) and inbox (a redelivery has no
//! effect), as the `orders` and `billing` examples do with a file or PostgreSQL.
//!
//! ```text
//! cargo run --example shop
//! ```

mod contracts;
mod database;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use contracts::{GetOrder, Order, OrderCreated, OrderProcessed, OrderStatus};
use database::{Applied, BillStore, Database, OrderStore};
use rmq_bus::config::QueueOptions;
use rmq_bus::{
    ClientProxy, Microservice, RmqContext, RmqOptions, RpcError, controller, event_pattern,
    message_pattern, testing::TestBroker,
};
use tokio::sync::mpsc;
use tracing_subscriber::EnvFilter;

/// Billing's deterministic fraud rule: orders above this price are canceled.
const FRAUD_PRICE_LIMIT: f64 = 10_000.0;

/// Checks orders for fraud and bills them: the bill and `order_processed` commit together.
struct Billing {
    store: Arc<dyn BillStore>,
}

#[controller]
impl Billing {
    #[event_pattern]
    async fn bill(
        &self,
        #[payload] created: OrderCreated,
        #[ctx] ctx: RmqContext,
    ) -> rmq_bus::Result<()> {
        let mut order = created.order_payload;
        order.status = if order.price > FRAUD_PRICE_LIMIT {
            OrderStatus::CanceledFraud
        } else {
            OrderStatus::Processed
        };
        if self.store.bill(&order, &ctx).await? {
            println!(
                "[billing] {}: {:.2} by {} → {}, billed, order_processed in the outbox",
                order.order_id, order.price, order.buyer, order.status
            );
        }
        ctx.ack().await
    }
}

/// Keeps the orders and their status; answers `get_order` requests.
struct Orders {
    store: Arc<dyn OrderStore>,
    updates: mpsc::UnboundedSender<String>,
}

#[controller]
impl Orders {
    /// Status updates of one order are applied in the order they arrive, one at a time (a
    /// later verdict never overwritten by an earlier one); other orders' meanwhile.
    #[event_pattern(ordered_by = "order.orderId")]
    async fn processed(
        &self,
        #[payload] processed: OrderProcessed,
        #[ctx] ctx: RmqContext,
    ) -> rmq_bus::Result<()> {
        let order = processed.order;
        let applied = self.store.apply(&order, &ctx).await?;
        ctx.ack().await?;
        if let Applied::Updated { .. } = applied {
            println!("[orders ] {} is now {}", order.order_id, order.status);
            let _ = self.updates.send(order.order_id);
        }
        Ok(())
    }

    #[message_pattern]
    async fn get_order(&self, #[payload] query: GetOrder) -> Result<Order, RpcError> {
        let order = self.store.get(&query.order_id).await?;
        order.ok_or_else(|| RpcError::new("order not found"))
    }
}

/// RabbitMQ if it answers within a second, else the in-memory transport.
async fn choose_broker() -> (String, String) {
    let uri =
        std::env::var("RABBIT_MQ_URI").unwrap_or_else(|_| rmq_bus::config::DEFAULT_URI.to_owned());
    let options = RmqOptions::new("shop.probe").uri(&uri).no_assert(true);
    let probe = ClientProxy::new(options.clone().reconnect_timeout(Duration::from_secs(1)));
    match probe.connect().await {
        Ok(()) => {
            probe.close().await;
            (uri, format!("RabbitMQ at {}", options.display_uri()))
        }
        Err(_) => (
            TestBroker::named("shop").uri(),
            format!(
                "the in-memory transport (no RabbitMQ answered at {})",
                options.display_uri()
            ),
        ),
    }
}

async fn run() -> rmq_bus::Result<()> {
    let (uri, transport) = choose_broker().await;
    println!("rmq-bus shop: running on {transport}");
    // Queues of this demo only, gone once it stops.
    let queue = |name: &str| {
        let declaration = QueueOptions::default().durable(false).auto_delete(true);
        RmqOptions::new(name).uri(&uri).queue_options(declaration)
    };
    let (billing_queue, orders_queue) = (queue("shop.billing"), queue("shop.orders"));

    let (updates, mut updated) = mpsc::unbounded_channel();
    let (to_billing, to_orders) = (
        ClientProxy::new(billing_queue.clone()),
        ClientProxy::new(orders_queue.clone()),
    );
    let (bills, billing_relay) = Database::in_memory().await?.billing(to_orders.clone());
    let (store, orders_relay) = Database::in_memory().await?.orders(to_billing.clone());
    println!("rmq-bus shop: each service keeps its data in SQLite, in memory");
    let billing = Microservice::new(billing_queue)
        .controller(Billing { store: bills })
        .start()
        .await?;
    let orders = Microservice::new(orders_queue)
        .controller(Orders {
            store: store.clone(),
            updates,
        })
        .start()
        .await?;

    let placed = [
        ("Keyboard", 49.9, "ada@example.com"),
        ("Server rack", 50_000.0, "mallory@example.com"),
        ("Monitor", 299.0, "grace@example.com"),
    ];
    for (n, (product, price, buyer)) in placed.iter().enumerate() {
        let order = Order {
            order_id: format!("o-{}", n + 1),
            product_name: (*product).to_owned(),
            price: *price,
            buyer: (*buyer).to_owned(),
            status: OrderStatus::Pending,
        };
        store.create(&order).await?;
        println!(
            "[orders ] {}: {} at {:.2} for {}: saved PENDING with order_created, in one transaction",
            order.order_id, order.product_name, order.price, order.buyer
        );
    }
    for _ in 0..placed.len() {
        if tokio::time::timeout(Duration::from_secs(10), updated.recv())
            .await
            .ok()
            .flatten()
            .is_none()
        {
            println!("[shop   ] billing did not answer within 10 s");
            break;
        }
    }
    let get = |id: &str| GetOrder {
        order_id: id.to_owned(),
    };
    let fraud = to_orders.request(&get("o-2")).await?;
    println!(
        "[shop   ] send(get_order o-2) → {} ({:.2})",
        fraud.status, fraud.price
    );
    if let Err(error) = to_orders.request(&get("o-9")).await {
        println!("[shop   ] send(get_order o-9) → {error}");
    }

    billing.shutdown().await?;
    orders.shutdown().await?;
    billing_relay.shutdown().await;
    orders_relay.shutdown().await;
    to_billing.close().await;
    to_orders.close().await;
    println!("rmq-bus shop: done");
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("error"));
    tracing_subscriber::fmt().with_env_filter(filter).init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("shop: {error}");
            ExitCode::FAILURE
        }
    }
}
