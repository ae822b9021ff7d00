//! The database of the `orders`, `billing` and `shop` examples: PostgreSQL at `DATABASE_URL`
//! (`postgres://…`), a SQLite file (`sqlite://path`, or by default one in the temporary
//! directory, named after the service), or SQLite in memory (the shop demo).
//!
//! Each service's writes go through one transaction with rmq-bus's outbox and inbox:
//! - orders: `POST /orders` inserts the order and its `order_created` event together;
//!   `order_processed` updates the status and records the message in the inbox together.
//! - billing: `order_created` records the message in the inbox, the bill in `bills` (one row
//!   per order: `order_id` is its key) and `order_processed` in the outbox, together.
//!
//! The same SQL runs on both databases (`$1` placeholders work on SQLite too); a macro
//! implements the stores once per database type.

// Each example uses a part of it.
#![allow(dead_code)]

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use rmq_bus::inbox::{Expiry, Inbox};
use rmq_bus::outbox::{Outbox, OutboxClient, Relay};
use rmq_bus::store::sqlx::postgres::PgPoolOptions;
use rmq_bus::store::sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use rmq_bus::store::sqlx::{self, PgPool, Postgres, Sqlite, SqlitePool};
use rmq_bus::{ClientProxy, Error, RmqContext};

use crate::contracts::{Order, OrderCreated, OrderProcessed, OrderStatus};

/// How long the inbox remembers a message: far longer than any redelivery takes.
const INBOX_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// The tables of the examples, on top of rmq-bus's own.
const TABLES: &str = "
CREATE TABLE IF NOT EXISTS orders (
    order_id     TEXT PRIMARY KEY,
    product_name TEXT NOT NULL,
    price        DOUBLE PRECISION NOT NULL,
    buyer        TEXT NOT NULL,
    status       TEXT NOT NULL,
    created_at   BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS bills (
    order_id  TEXT PRIMARY KEY,
    amount    DOUBLE PRECISION NOT NULL,
    status    TEXT NOT NULL,
    billed_at BIGINT NOT NULL
);
";

/// A service's database, its tables created.
pub(crate) enum Database {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

impl Database {
    /// The database of `DATABASE_URL`, or a SQLite file named after `service` in the temporary
    /// directory; returns it and where it is, for the log.
    pub(crate) async fn open(service: &str) -> Result<(Database, String), Error> {
        let url = match std::env::var("DATABASE_URL") {
            Ok(url) if !url.trim().is_empty() => url,
            _ => {
                let path = std::env::temp_dir().join(format!("rmq-bus-{service}.sqlite"));
                format!("sqlite://{}", path.display())
            }
        };
        let database = if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let pool = PgPoolOptions::new()
                .max_connections(10)
                .acquire_timeout(Duration::from_secs(10))
                .connect(&url)
                .await?;
            Database::Postgres(pool)
        } else if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(&url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .busy_timeout(Duration::from_secs(10));
            Database::Sqlite(
                SqlitePoolOptions::new()
                    .max_connections(5)
                    .connect_with(options)
                    .await?,
            )
        } else {
            return Err(Error::Config(format!(
                "DATABASE_URL={url:?} is neither a postgres:// nor a sqlite:// URL"
            )));
        };
        database.create_tables().await?;
        let shown = match url.split_once('@') {
            // Hide the credentials of a PostgreSQL URL.
            Some((_, host)) => format!("postgres://…@{host}"),
            None => url,
        };
        Ok((database, shown))
    }

    /// A SQLite database in memory, gone when the process ends (the shop demo). One connection,
    /// kept open: an in-memory database lives as long as its connection.
    pub(crate) async fn in_memory() -> Result<Database, Error> {
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect("sqlite::memory:")
            .await?;
        let database = Database::Sqlite(pool);
        database.create_tables().await?;
        Ok(database)
    }

    async fn create_tables(&self) -> Result<(), Error> {
        match self {
            Database::Postgres(pool) => {
                rmq_bus::store::migrate(pool).await?;
                sqlx::raw_sql(TABLES).execute(pool).await?;
            }
            Database::Sqlite(pool) => {
                rmq_bus::store::migrate(pool).await?;
                sqlx::raw_sql(TABLES).execute(pool).await?;
            }
        }
        Ok(())
    }

    /// The orders service's store, sending `order_created` through `billing`, and what runs
    /// in the background for it (the relay, the inbox expiry).
    pub(crate) fn orders(&self, billing: ClientProxy) -> (Arc<dyn OrderStore>, Background) {
        match self {
            Database::Postgres(pool) => stores(pool, billing),
            Database::Sqlite(pool) => stores(pool, billing),
        }
    }

    /// The billing service's store, sending `order_processed` through `orders`.
    pub(crate) fn billing(&self, orders: ClientProxy) -> (Arc<dyn BillStore>, Background) {
        match self {
            Database::Postgres(pool) => stores(pool, orders),
            Database::Sqlite(pool) => stores(pool, orders),
        }
    }
}

/// The stores of one database: its pool, inbox, and outbox towards one destination.
struct Stores<DB: rmq_bus::store::Database> {
    pool: sqlx::Pool<DB>,
    inbox: Inbox<DB>,
    outbox: OutboxClient<DB>,
}

/// The stores on `pool`, with their relay and inbox expiry running.
fn stores<DB, S>(pool: &sqlx::Pool<DB>, client: ClientProxy) -> (Arc<S>, Background)
where
    DB: rmq_bus::store::Database,
    Stores<DB>: Into<Arc<S>>,
    S: ?Sized,
{
    let outbox = Outbox::new(pool.clone());
    let stores = Stores {
        pool: pool.clone(),
        inbox: Inbox::new(pool.clone()),
        outbox: outbox.client(client),
    };
    let background = Background {
        relay: outbox.relay(),
        _expiry: stores
            .inbox
            .expire_every(INBOX_RETENTION, Duration::from_secs(3600)),
    };
    (stores.into(), background)
}

/// What runs in the background for a store: the outbox relay and the inbox expiry.
pub(crate) struct Background {
    relay: Relay,
    _expiry: Expiry,
}

impl Background {
    /// Stops the relay once its current batch is settled.
    pub(crate) async fn shutdown(self) {
        self.relay.shutdown().await;
    }
}

/// What became of an `order_processed`.
pub(crate) enum Applied {
    /// The order's status was `previous` and is now the new one.
    Updated { previous: OrderStatus },
    /// This message was applied before (a redelivery).
    Duplicate,
    /// No such order.
    Unknown,
}

/// The orders service's data.
pub(crate) trait OrderStore: Send + Sync {
    /// Saves a new order and its `order_created` event, in one transaction.
    fn create<'a>(&'a self, order: &'a Order) -> BoxFuture<'a, rmq_bus::Result<()>>;
    /// Applies billing's verdict `order` (the message of `ctx`) once, through the inbox.
    fn apply<'a>(
        &'a self,
        order: &'a Order,
        ctx: &'a RmqContext,
    ) -> BoxFuture<'a, rmq_bus::Result<Applied>>;
    /// One order.
    fn get<'a>(&'a self, order_id: &'a str) -> BoxFuture<'a, rmq_bus::Result<Option<Order>>>;
    /// Every order, oldest first.
    fn list(&self) -> BoxFuture<'_, rmq_bus::Result<Vec<Order>>>;
}

/// The billing service's data.
pub(crate) trait BillStore: Send + Sync {
    /// Bills `order` (its verdict in its status) and writes `order_processed`, in one
    /// transaction with the inbox record of the message of `ctx`; `false` if that message was
    /// handled before (nobody is billed twice).
    fn bill<'a>(
        &'a self,
        order: &'a Order,
        ctx: &'a RmqContext,
    ) -> BoxFuture<'a, rmq_bus::Result<bool>>;
}

/// The inbox key of a message: its `message_id`, or `fallback` for senders that set none
/// (NestJS services).
fn inbox_key(ctx: &RmqContext, fallback: impl FnOnce() -> String) -> String {
    ctx.properties()
        .message_id
        .clone()
        .filter(|id| !id.is_empty())
        .unwrap_or_else(fallback)
}

/// An order from a row of `orders`.
fn order_from<R>(row: &R) -> rmq_bus::Result<Order>
where
    R: sqlx::Row,
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> f64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let status: String = row.try_get("status")?;
    Ok(Order {
        order_id: row.try_get("order_id")?,
        product_name: row.try_get("product_name")?,
        price: row.try_get("price")?,
        buyer: row.try_get("buyer")?,
        status: serde_json::from_value(serde_json::Value::String(status.clone())).map_err(
            |_| Error::Config(format!("unknown order status {status:?} in the database")),
        )?,
    })
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The stores of one database type: the same SQL on both.
macro_rules! stores_on {
    ($db:ty) => {
        impl From<Stores<$db>> for Arc<dyn OrderStore> {
            fn from(stores: Stores<$db>) -> Self {
                Arc::new(stores)
            }
        }

        impl From<Stores<$db>> for Arc<dyn BillStore> {
            fn from(stores: Stores<$db>) -> Self {
                Arc::new(stores)
            }
        }

        impl OrderStore for Stores<$db> {
            fn create<'a>(&'a self, order: &'a Order) -> BoxFuture<'a, rmq_bus::Result<()>> {
                Box::pin(async move {
                    let mut tx = self.pool.begin().await?;
                    sqlx::query(
                        "INSERT INTO orders (order_id, product_name, price, buyer, status, created_at) \
                         VALUES ($1, $2, $3, $4, $5, $6)",
                    )
                    .bind(&order.order_id)
                    .bind(&order.product_name)
                    .bind(order.price)
                    .bind(&order.buyer)
                    .bind(order.status.to_string())
                    .bind(now_ms())
                    .execute(&mut *tx)
                    .await?;
                    let event = OrderCreated { order_payload: order.clone() };
                    self.outbox.publish(&mut tx, &event).await?;
                    tx.commit().await?;
                    Ok(())
                })
            }

            fn apply<'a>(
                &'a self,
                order: &'a Order,
                ctx: &'a RmqContext,
            ) -> BoxFuture<'a, rmq_bus::Result<Applied>> {
                Box::pin(async move {
                    let key = inbox_key(ctx, || {
                        format!("order_processed:{}:{}", order.order_id, order.status)
                    });
                    // The claim first: on SQLite, a transaction that reads before it writes
                    // fails ("database is locked") if another one commits in between.
                    let mut tx = self.pool.begin().await?;
                    if !self.inbox.claim(&mut tx, "orders", &key).await? {
                        return Ok(Applied::Duplicate);
                    }
                    let previous: Option<String> =
                        sqlx::query_scalar("SELECT status FROM orders WHERE order_id = $1")
                            .bind(&order.order_id)
                            .fetch_optional(&mut *tx)
                            .await?;
                    let Some(previous) = previous else {
                        // Rolled back: the claim does not count.
                        return Ok(Applied::Unknown);
                    };
                    sqlx::query("UPDATE orders SET status = $2 WHERE order_id = $1")
                        .bind(&order.order_id)
                        .bind(order.status.to_string())
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    let previous = serde_json::from_value(serde_json::Value::String(previous))
                        .unwrap_or(OrderStatus::Pending);
                    Ok(Applied::Updated { previous })
                })
            }

            fn get<'a>(
                &'a self,
                order_id: &'a str,
            ) -> BoxFuture<'a, rmq_bus::Result<Option<Order>>> {
                Box::pin(async move {
                    let row = sqlx::query("SELECT * FROM orders WHERE order_id = $1")
                        .bind(order_id)
                        .fetch_optional(&self.pool)
                        .await?;
                    row.as_ref().map(order_from).transpose()
                })
            }

            fn list(&self) -> BoxFuture<'_, rmq_bus::Result<Vec<Order>>> {
                Box::pin(async move {
                    let rows = sqlx::query("SELECT * FROM orders ORDER BY created_at, order_id")
                        .fetch_all(&self.pool)
                        .await?;
                    rows.iter().map(order_from).collect()
                })
            }
        }

        impl BillStore for Stores<$db> {
            fn bill<'a>(
                &'a self,
                order: &'a Order,
                ctx: &'a RmqContext,
            ) -> BoxFuture<'a, rmq_bus::Result<bool>> {
                Box::pin(async move {
                    let key = inbox_key(ctx, || format!("order_created:{}", order.order_id));
                    let mut tx = self.pool.begin().await?;
                    if !self.inbox.claim(&mut tx, "billing", &key).await? {
                        return Ok(false);
                    }
                    sqlx::query(
                        "INSERT INTO bills (order_id, amount, status, billed_at) VALUES ($1, $2, $3, $4)",
                    )
                    .bind(&order.order_id)
                    .bind(order.price)
                    .bind(order.status.to_string())
                    .bind(now_ms())
                    .execute(&mut *tx)
                    .await?;
                    let event = OrderProcessed { order: order.clone() };
                    self.outbox.publish(&mut tx, &event).await?;
                    tx.commit().await?;
                    Ok(true)
                })
            }
        }
    };
}

stores_on!(Postgres);
stores_on!(Sqlite);
