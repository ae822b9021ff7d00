//! The transactional outbox (features `postgres`, `sqlite`): events written in the same database
//! transaction as the business data they follow from, and published by a relay once committed.
//!
//! It removes the dual write: saving an order and then emitting `order_created` can fail in
//! between (a crash, a broker outage), leaving an order nobody hears of, or an event about an
//! order that was rolled back. With the outbox, the event commits or rolls back with the order,
//! and the [`Relay`] publishes it when the broker can take it.
//!
//! ```no_run
//! # #[cfg(feature = "postgres")]
//! # async fn demo(pool: sqlx::PgPool) -> rmq_bus::Result<()> {
//! use rmq_bus::outbox::Outbox;
//! use rmq_bus::{ClientProxy, RmqOptions};
//!
//! rmq_bus::store::migrate(&pool).await?;
//! let outbox = Outbox::new(pool.clone());
//! let billing = outbox.client(ClientProxy::new(RmqOptions::from_env("BILLING")?));
//! let relay = outbox.relay(); // publishes committed events, in the background
//!
//! let mut tx = pool.begin().await?;
//! sqlx::query("INSERT INTO orders (id) VALUES ('o-1')").execute(&mut *tx).await?;
//! billing.emit(&mut tx, "order_created", &serde_json::json!({"orderId": "o-1"})).await?;
//! tx.commit().await?; // the order and its event, or neither
//!
//! relay.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! ## What the relay guarantees
//!
//! - **At least once.** A row is deleted only once the broker confirmed it. A relay that dies
//!   between the publish and the delete publishes it again: consumers see a duplicate with the
//!   same `message_id`, which an [`Inbox`](crate::inbox::Inbox) absorbs.
//! - **One message id per row**, the AMQP `message_id`, on every attempt.
//! - **Wakes at once** after a commit (LISTEN/NOTIFY on PostgreSQL, a commit hook on SQLite),
//!   and polls every [`poll_interval`](RelayOptions::poll_interval) as a fallback.
//! - **Outages** are waited out with backoff (100 ms, doubling, up to 5 s), without spinning;
//!   the application keeps committing meanwhile.
//! - **Poison rows** (too large, or refused or unroutable [`max_attempts`](RelayOptions::max_attempts)
//!   times) are moved to `rmq_bus_outbox_dead` with the reason, and never block the rows behind
//!   them; a row refused once is retried later, after the rows behind it.
//! - **Order.** With one relay, rows go out per destination in the order they were written
//!   (their id): the events of one transaction, and of transactions one piece of code commits
//!   one after another, keep their order. Transactions committing concurrently have no order to
//!   keep. A refused row that is retried later loses its place.
//! - **Several relays** (PostgreSQL only: processes sharing one database) share the rows through
//!   `FOR UPDATE SKIP LOCKED`: every row is published, none twice by two live relays, but a
//!   relay may publish a later batch while another still holds an earlier one, so order across
//!   batches is not kept. Run one relay where order matters. On SQLite, run one relay per
//!   database.
//! - **Metrics** (feature `metrics`): `rmq_bus.outbox.backlog`, the rows waiting (counted when
//!   the relay starts and at most once a second, lowered by what it removes in between), and
//!   the rows `rmq_bus.outbox.published` and moved aside (`rmq_bus.outbox.dead`).

mod relay;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Notify;

use crate::client::ClientProxy;
use crate::codec::encode_event;
use crate::contract::Event;
use crate::correlation;
use crate::error::{Error, Result};
use crate::pattern::Pattern;
use crate::store::{Database, NewRow, database, now_ms};

pub use relay::Relay;

/// The outbox of one database: hands out [`OutboxClient`]s that write events into transactions,
/// and runs the [`Relay`] that publishes them. Cheap to clone.
pub struct Outbox<DB: Database> {
    inner: Arc<Inner<DB>>,
}

struct Inner<DB: Database> {
    pool: sqlx::Pool<DB>,
    /// The clients rows are published through, by destination.
    clients: RwLock<BTreeMap<String, ClientProxy>>,
    /// Wakes the relay: after a commit, or a notification from the database.
    wake: Arc<Notify>,
}

/// How a [`Relay`] works: [`Outbox::relay_with`].
#[derive(Clone, Debug)]
pub struct RelayOptions {
    batch_size: usize,
    poll_interval: Duration,
    max_attempts: u32,
}

impl Default for RelayOptions {
    fn default() -> Self {
        Self {
            batch_size: 200,
            poll_interval: Duration::from_secs(1),
            max_attempts: 5,
        }
    }
}

impl RelayOptions {
    /// How many rows the relay publishes at once, their confirms awaited together (default 200).
    pub fn batch_size(mut self, rows: usize) -> Self {
        self.batch_size = rows.max(1);
        self
    }

    /// How often the relay looks for rows when nothing woke it (default 1 s): the fallback for
    /// commits it was not told of (another process on SQLite, a lost LISTEN connection).
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// How many times a row may be refused (a publisher nack, unroutable) before it is moved
    /// aside as poison (default 5). A row too large for its client is moved aside at once.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }
}

impl<DB: Database> Clone for Outbox<DB> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<DB: Database> fmt::Debug for Outbox<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outbox").finish_non_exhaustive()
    }
}

impl<DB: Database> Outbox<DB> {
    /// The outbox in `pool`'s database, whose tables [`migrate`](crate::store::migrate)
    /// creates. On PostgreSQL a relay holds two connections of the pool (its batch, and LISTEN).
    pub fn new(pool: sqlx::Pool<DB>) -> Self {
        Self {
            inner: Arc::new(Inner {
                pool,
                clients: RwLock::default(),
                wake: Arc::new(Notify::new()),
            }),
        }
    }

    /// Events for `client`'s queue (or exchange), written with [`OutboxClient::emit`] and
    /// published by this outbox's relay through `client`.
    pub fn client(&self, client: ClientProxy) -> OutboxClient<DB> {
        let destination = client.destination();
        self.inner
            .clients
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(destination.clone(), client.clone());
        OutboxClient {
            outbox: self.clone(),
            client,
            destination,
        }
    }

    /// Starts the relay with the default [`RelayOptions`], in the background, until
    /// [`Relay::shutdown`] (or the relay is dropped). Needs a Tokio runtime.
    pub fn relay(&self) -> Relay {
        self.relay_with(RelayOptions::default())
    }

    /// Starts the relay with `options`.
    pub fn relay_with(&self, options: RelayOptions) -> Relay {
        Relay::start(self.clone(), options)
    }

    /// The pool the outbox lives in.
    pub fn pool(&self) -> &sqlx::Pool<DB> {
        &self.inner.pool
    }
}

/// Writes events for one destination into the caller's transactions. Cheap to clone.
pub struct OutboxClient<DB: Database> {
    outbox: Outbox<DB>,
    client: ClientProxy,
    destination: String,
}

impl<DB: Database> Clone for OutboxClient<DB> {
    fn clone(&self) -> Self {
        Self {
            outbox: self.outbox.clone(),
            client: self.client.clone(),
            destination: self.destination.clone(),
        }
    }
}

impl<DB: Database> fmt::Debug for OutboxClient<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboxClient")
            .field("destination", &self.destination)
            .finish_non_exhaustive()
    }
}

impl<DB: Database> OutboxClient<DB> {
    /// Writes event `pattern` with `data` into `tx`, to be published once `tx` commits, as
    /// [`ClientProxy::emit`] would publish it (same packet, same destination, the running
    /// handler's correlation id). Nothing is published if `tx` rolls back. Returns the event's
    /// message id, its AMQP `message_id` on every attempt.
    ///
    /// Fails with [`Error::TooLarge`] for an event larger than the client's
    /// [`max_message_bytes`](crate::RmqOptions::max_message_bytes), [`Error::Encode`], or
    /// [`Error::Database`].
    pub async fn emit<T: Serialize + ?Sized>(
        &self,
        tx: &mut sqlx::Transaction<'_, DB>,
        pattern: impl Into<Pattern>,
        data: &T,
    ) -> Result<String> {
        let pattern = pattern.into();
        let body = encode_event(&pattern, data)?;
        let max = self.client.max_message_bytes();
        if body.len() > max {
            return Err(Error::TooLarge {
                size: body.len(),
                max,
            });
        }
        let properties = self.client.event_properties(correlation::new_id());
        let message_id = properties.message_id.clone().unwrap_or_default();
        let traceparent = properties
            .headers
            .get("traceparent")
            .and_then(serde_json::Value::as_str);
        let row = NewRow {
            message_id: &message_id,
            destination: &self.destination,
            routing_key: pattern.key(),
            body: &body,
            correlation_id: properties.correlation_id.as_deref(),
            traceparent,
            now: now_ms(),
        };
        DB::insert(&mut **tx, row, &self.outbox.inner.wake)
            .await
            .map_err(|e| database("writing an event into the outbox", e))?;
        Ok(message_id)
    }

    /// Writes a typed event into `tx`: [`emit`](Self::emit) with the pattern of `event`'s type.
    pub async fn publish<E: Event + Serialize>(
        &self,
        tx: &mut sqlx::Transaction<'_, DB>,
        event: &E,
    ) -> Result<String> {
        self.emit(tx, E::pattern(), event).await
    }

    /// The client the relay publishes these events through.
    pub fn client(&self) -> &ClientProxy {
        &self.client
    }
}
