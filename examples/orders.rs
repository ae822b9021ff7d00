//! Orders service: an HTTP API that takes orders and hands them to billing over RabbitMQ.
//!
//! - `POST /orders` `{"productName", "price", "buyer"}` saves the order as `PENDING` and its
//!   `order_created` `{"orderPayload": order}` event in one database transaction (the
//!   transactional outbox), and answers `201` with the order as soon as that commits, even while
//!   the broker is down: the outbox relay sends the event to the billing queue when it can.
//! - `GET /orders/{orderId}` and `GET /orders` show orders and their status, from the database.
//! - `GET /metrics` (Prometheus) and `GET /health` (200 when connected and consuming, else 503).
//! - A microservice on the orders queue applies `order_processed` `{"order": order}` events
//!   (sent by the `billing` example) to the stored orders, once each (the inbox: a redelivery
//!   changes nothing), and answers `get_order` `{"orderId"}` requests with the order, or the
//!   error `{"status": "error", "message": "order not found"}`.
//!
//! Configured from the environment only:
//!
//! | variable | default |
//! |---|---|
//! | `RABBIT_MQ_URI` | `amqp://guest:guest@127.0.0.1:5672/%2f` |
//! | `RABBIT_MQ_BILLING_QUEUE` | `BILLING` |
//! | `RABBIT_MQ_ORDERS_QUEUE` | `ORDERS` |
//! | `DATABASE_URL` | a SQLite file, `rmq-bus-orders.sqlite` in the temporary directory (logged at start); or `postgres://…`, `sqlite://path` |
//! | `PORT` | `3000` |
//! | `RUST_LOG` | `info` |
//!
//! ```text
//! RABBIT_MQ_URI=amqp://guest:guest@127.0.0.1:5672/%2f cargo run --example orders
//! cargo run --example billing   # in another terminal
//! curl -si localhost:3000/orders -H 'content-type: application/json' \
//!      -d '{"productName": "book", "price": 12.5, "buyer": "ada"}'
//! ```
//!
//! Stops cleanly on Ctrl-C or SIGTERM: the HTTP server finishes its requests and the
//! microservice drains its handlers.
//!
//! `cargo run --example orders -- --asyncapi` prints the service's AsyncAPI document (JSON) and
//! exits, without connecting: `examples/asyncapi/orders.json` is that document.

mod contracts;
mod database;
#[path = "support/observability.rs"]
mod observability;

use std::hash::{BuildHasher, RandomState};
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use contracts::{GetOrder, Order, OrderCreated, OrderProcessed, OrderStatus};
use database::{Applied, Database, OrderStore};
use rmq_bus::contract::AsyncApi;
use rmq_bus::{
    ClientProxy, Microservice, RmqContext, RmqOptions, RpcError, controller, event_pattern,
    message_pattern,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing_subscriber::EnvFilter;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of `POST /orders`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NewOrder {
    product_name: String,
    price: f64,
    buyer: String,
}

impl NewOrder {
    fn validate(&self) -> Result<(), String> {
        if self.product_name.trim().is_empty() {
            return Err("productName must not be empty".into());
        }
        if self.buyer.trim().is_empty() {
            return Err("buyer must not be empty".into());
        }
        if !self.price.is_finite() || self.price < 0.0 {
            return Err(format!(
                "price must be a finite number >= 0, got {}",
                self.price
            ));
        }
        Ok(())
    }
}

type Store = Arc<dyn OrderStore>;

/// What the HTTP handlers share.
#[derive(Clone)]
struct App {
    store: Store,
}

/// Handles the events billing sends back.
struct OrdersController {
    store: Store,
}

#[controller]
impl OrdersController {
    /// Applies billing's verdict to the stored order, once: a redelivered verdict is acked
    /// without effect. An order it does not know is rejected, to the dead-letter queue.
    #[event_pattern] // `order_processed`, from the pattern of its contract
    async fn on_order_processed(
        &self,
        #[payload] processed: OrderProcessed,
        #[ctx] ctx: RmqContext,
    ) -> rmq_bus::Result<()> {
        let order = processed.order;
        match self.store.apply(&order, &ctx).await? {
            Applied::Updated { previous } => {
                tracing::info!(order_id = %order.order_id, status = ?order.status, ?previous, "order updated");
            }
            Applied::Duplicate => {
                tracing::info!(order_id = %order.order_id, "order_processed already applied (a redelivery); acking");
            }
            Applied::Unknown => {
                // Retrying cannot make it known, so requeueing would only loop; rejecting
                // rather than acking dead-letters it where the queue has a dead-letter
                // exchange, for an operator to look at.
                tracing::warn!(order_id = %order.order_id, "order_processed for an unknown order; rejecting");
                return ctx.reject().await;
            }
        }
        // Acked once committed: a crash in between redelivers it, and the inbox absorbs it.
        ctx.ack().await
    }

    /// Answers with the order, or the error `{"status": "error", "message": "order not found"}`.
    #[message_pattern] // `get_order`, answered with `GetOrder`'s reply type: an `Order`
    async fn get_order(&self, #[payload] query: GetOrder) -> Result<Order, RpcError> {
        let order = self.store.get(&query.order_id).await?;
        order.ok_or_else(|| RpcError::new("order not found"))
    }
}

/// A JSON error response, `{"error": message}`.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    #[derive(Serialize)]
    struct Body {
        error: String,
    }
    let body = Body {
        error: message.into(),
    };
    (status, Json(body)).into_response()
}

/// A unique, UUID-shaped id: 64 bits of clock, 16 bits of a process-wide counter, 48 bits from
/// the randomly keyed std hasher. Clock and counter keep ids apart within the process, the
/// random bits across processes; ids only need to be unique, not unguessable.
fn new_order_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let random = RandomState::new().hash_one((count, nanos, std::process::id()));
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        nanos >> 32,
        (nanos >> 16) & 0xffff,
        nanos & 0xffff,
        count & 0xffff,
        random & 0xffff_ffff_ffff
    )
}

async fn create_order(
    State(app): State<App>,
    body: Result<Json<NewOrder>, JsonRejection>,
) -> Response {
    let new = match body {
        Ok(Json(new)) => new,
        // axum answers bad JSON in plain text; keep its status and message, as JSON.
        Err(rejection) => return error(rejection.status(), rejection.body_text()),
    };
    if let Err(why) = new.validate() {
        return error(StatusCode::UNPROCESSABLE_ENTITY, why);
    }
    let order = Order {
        order_id: new_order_id(),
        product_name: new.product_name,
        price: new.price,
        buyer: new.buyer,
        status: OrderStatus::Pending,
    };
    // The order and its event commit together, or neither does: the relay publishes the
    // event once it can, so a broker outage delays billing but refuses no order.
    match app.store.create(&order).await {
        Ok(()) => {
            tracing::info!(order_id = %order.order_id, price = order.price, "order created");
            (StatusCode::CREATED, Json(order)).into_response()
        }
        Err(save_error) => {
            tracing::error!(order_id = %order.order_id, error = %save_error, "order not saved");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("order {} could not be saved: {save_error}", order.order_id),
            )
        }
    }
}

async fn get_order(State(app): State<App>, Path(order_id): Path<String>) -> Response {
    match app.store.get(&order_id).await {
        Ok(Some(order)) => Json(order).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no order {order_id:?}")),
        Err(read_error) => error(StatusCode::SERVICE_UNAVAILABLE, read_error.to_string()),
    }
}

async fn list_orders(State(app): State<App>) -> Response {
    match app.store.list().await {
        Ok(orders) => Json(orders).into_response(),
        Err(read_error) => error(StatusCode::SERVICE_UNAVAILABLE, read_error.to_string()),
    }
}

fn port() -> Result<u16, BoxError> {
    match std::env::var("PORT") {
        Err(_) => Ok(3000),
        Ok(raw) => raw
            .trim()
            .parse()
            .map_err(|_| format!("environment variable PORT={raw:?} is not a port number").into()),
    }
}

/// The microservice on the orders queue: `order_processed` events and `get_order` requests.
fn microservice(store: Store) -> rmq_bus::Result<Microservice> {
    Ok(Microservice::new(RmqOptions::from_env("ORDERS")?).controller(OrdersController { store }))
}

/// The client of billing's queue, which sends it `order_created`.
fn billing_client() -> rmq_bus::Result<ClientProxy> {
    Ok(ClientProxy::new(RmqOptions::from_env("BILLING")?).sends::<OrderCreated>())
}

/// The service's AsyncAPI document, made from the same microservice and client as `run` uses,
/// without connecting (the store is an in-memory one, unused).
async fn asyncapi() -> rmq_bus::Result<String> {
    let billing = billing_client()?;
    let (store, background) = Database::in_memory().await?.orders(billing.clone());
    let document = AsyncApi::new("orders", "1.0.0")
        .description(
            "Takes orders over HTTP and hands them to billing (`order_created`), applies \
             billing's verdicts (`order_processed`) and answers `get_order` requests.",
        )
        .microservice(&microservice(store)?)
        .client(&billing)
        .to_json();
    background.shutdown().await;
    Ok(document)
}

async fn run() -> Result<(), BoxError> {
    let address = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port()?));
    let metrics = observability::install_metrics()?;
    let billing = billing_client()?;
    // Connect now so that a wrong RABBIT_MQ_URI shows at start-up, not on the first order.
    billing.connect().await?;
    let (database, location) = Database::open("orders").await?;
    tracing::info!("orders database: {location}");
    let (store, background) = database.orders(billing.clone());
    let microservice = microservice(store.clone())?.start().await?;
    let probe = microservice.health_probe();
    let app = observability::routes(metrics, probe, vec![("billing", billing.clone())]).merge(
        Router::new()
            .route("/orders", get(list_orders).post(create_order))
            .route("/orders/{order_id}", get(get_order))
            .with_state(App { store }),
    );
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| format!("cannot listen on {address} (set PORT to a free port): {e}"))?;
    tracing::info!("orders listening on http://{address}");

    // `shutdown_signal` resolves once, but two servers wait for it: a watch channel fans it
    // out. Either server stopping by itself (say, the broker connection is lost) stops the
    // other too, so the process exits instead of running half-alive.
    let (stop, stopped) = watch::channel(false);
    let wait = |mut stopped: watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    };
    let signal = async {
        tokio::select! {
            () = rmq_bus::microservice::shutdown_signal() => {}
            () = wait(stopped.clone()) => {}
        }
        let _ = stop.send(true);
    };
    let http = async {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(wait(stopped.clone()))
            .await;
        let _ = stop.send(true);
        served.map_err(|e| BoxError::from(format!("HTTP server failed: {e}")))
    };
    let bus = async {
        let ran = microservice.shutdown_on(wait(stopped.clone())).await;
        let _ = stop.send(true);
        ran.map_err(BoxError::from)
    };
    let ((), served, ran) = tokio::join!(signal, http, bus);
    background.shutdown().await;
    billing.close().await;
    served.and(ran)?;
    tracing::info!("orders stopped");
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    if std::env::args().skip(1).any(|arg| arg == "--asyncapi") {
        let printed = asyncapi()
            .await
            .map_err(BoxError::from)
            .and_then(|document| Ok(std::io::stdout().write_all(document.as_bytes())?));
        return match printed {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("orders: {error}");
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
            eprintln!("orders: {error}");
            ExitCode::FAILURE
        }
    }
}
