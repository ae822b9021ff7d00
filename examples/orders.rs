//! Orders service: an HTTP API that takes orders and hands them to billing over RabbitMQ.
//!
//! - `POST /orders` `{"productName", "price", "buyer"}` stores the order as `PENDING`, emits
//!   `order_created` `{"orderPayload": order}` to the billing queue and, once the broker has
//!   confirmed the event, answers `201` with the order.
//! - `GET /orders/{orderId}` and `GET /orders` show orders and their status.
//! - `GET /metrics` (Prometheus) and `GET /health` (200 when connected and consuming, else 503).
//! - A microservice on the orders queue applies `order_processed` `{"order": order}` events
//!   (sent by the `billing` example) to the stored orders, and answers `get_order`
//!   `{"orderId"}` requests with the order, or the error
//!   `{"status": "error", "message": "order not found"}`.
//!
//! Configured from the environment only:
//!
//! | variable | default |
//! |---|---|
//! | `RABBIT_MQ_URI` | `amqp://guest:guest@127.0.0.1:5672/%2f` |
//! | `RABBIT_MQ_BILLING_QUEUE` | `BILLING` |
//! | `RABBIT_MQ_ORDERS_QUEUE` | `ORDERS` |
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
#[path = "support/observability.rs"]
mod observability;

use std::collections::HashMap;
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
use rmq_bus::contract::AsyncApi;
use rmq_bus::{
    ClientProxy, Microservice, RmqContext, RmqOptions, RpcError, controller, event_pattern,
    message_pattern,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{RwLock, watch};
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

type Store = Arc<RwLock<HashMap<String, Order>>>;

/// What the HTTP handlers share.
#[derive(Clone)]
struct App {
    store: Store,
    billing: ClientProxy,
}

/// Handles the events billing sends back.
struct OrdersController {
    store: Store,
}

#[controller]
impl OrdersController {
    /// Applies billing's verdict to the stored order. An order it does not know (one from
    /// before a restart) is rejected, to the dead-letter queue.
    #[event_pattern] // `order_processed`, from the pattern of its contract
    async fn on_order_processed(
        &self,
        #[payload] processed: OrderProcessed,
        #[ctx] ctx: RmqContext,
    ) -> rmq_bus::Result<()> {
        let order = processed.order;
        let previous = self
            .store
            .write()
            .await
            .get_mut(&order.order_id)
            .map(|stored| std::mem::replace(&mut stored.status, order.status));
        match previous {
            Some(previous) => {
                if previous == OrderStatus::Failed {
                    // The emit was not confirmed in time, yet the event did reach billing.
                    tracing::warn!(order_id = %order.order_id, "billing processed an order reported as failed");
                }
                tracing::info!(order_id = %order.order_id, status = ?order.status, "order updated");
                ctx.ack().await
            }
            None => {
                // The store lives in memory, so this is an order from before a restart (or
                // from elsewhere). Retrying cannot make it known, so requeueing would only
                // loop; rejecting rather than acking dead-letters it where the queue has a
                // dead-letter exchange, for an operator to look at.
                tracing::warn!(order_id = %order.order_id, "order_processed for an unknown order; rejecting");
                ctx.reject().await
            }
        }
    }

    /// Answers with the order, or the error `{"status": "error", "message": "order not found"}`.
    #[message_pattern] // `get_order`, answered with `GetOrder`'s reply type: an `Order`
    async fn get_order(&self, #[payload] query: GetOrder) -> Result<Order, RpcError> {
        let order = self.store.read().await.get(&query.order_id).cloned();
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
    // Stored before the emit: billing may answer before `emit` returns.
    app.store
        .write()
        .await
        .insert(order.order_id.clone(), order.clone());
    let event = OrderCreated {
        order_payload: order.clone(),
    };
    match app.billing.publish(&event).await {
        Ok(()) => {
            tracing::info!(order_id = %order.order_id, price = order.price, "order created");
            (StatusCode::CREATED, Json(order)).into_response()
        }
        Err(emit_error) => {
            // Marked FAILED rather than removed: a confirm timeout means the event may still
            // reach billing, and its `order_processed` should then find the order; a FAILED
            // record also tells whoever got the 503 what became of their order.
            if let Some(stored) = app.store.write().await.get_mut(&order.order_id)
                && stored.status == OrderStatus::Pending
            {
                stored.status = OrderStatus::Failed;
            }
            tracing::error!(order_id = %order.order_id, error = %emit_error, "order not sent to billing");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "order {} could not be sent to billing: {emit_error}",
                    order.order_id
                ),
            )
        }
    }
}

async fn get_order(State(app): State<App>, Path(order_id): Path<String>) -> Response {
    match app.store.read().await.get(&order_id) {
        Some(order) => Json(order).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no order {order_id:?}")),
    }
}

async fn list_orders(State(app): State<App>) -> Json<Vec<Order>> {
    Json(app.store.read().await.values().cloned().collect())
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
/// without connecting.
fn asyncapi() -> rmq_bus::Result<String> {
    let document = AsyncApi::new("orders", "1.0.0")
        .description(
            "Takes orders over HTTP and hands them to billing (`order_created`), applies \
             billing's verdicts (`order_processed`) and answers `get_order` requests.",
        )
        .microservice(&microservice(Store::default())?)
        .client(&billing_client()?)
        .to_json();
    Ok(document)
}

async fn run() -> Result<(), BoxError> {
    let address = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port()?));
    let metrics = observability::install_metrics()?;
    let billing = billing_client()?;
    // Connect now so that a wrong RABBIT_MQ_URI shows at start-up, not on the first order.
    billing.connect().await?;
    let store = Store::default();
    let microservice = microservice(store.clone())?.start().await?;
    let probe = microservice.health_probe();
    let app = observability::routes(metrics, probe, vec![("billing", billing.clone())]).merge(
        Router::new()
            .route("/orders", get(list_orders).post(create_order))
            .route("/orders/{order_id}", get(get_order))
            .with_state(App {
                store,
                billing: billing.clone(),
            }),
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
    billing.close().await;
    served.and(ran)?;
    tracing::info!("orders stopped");
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    if std::env::args().skip(1).any(|arg| arg == "--asyncapi") {
        let printed = asyncapi()
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
