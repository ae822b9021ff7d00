//! The tables behind the [outbox](crate::outbox) and the [inbox](crate::inbox), and the
//! databases they live in: PostgreSQL (feature `postgres`) and SQLite (feature `sqlite`), through
//! [sqlx] 0.8.
//!
//! [`migrate`] creates the tables, on an explicit call; it is idempotent. Teams that run their own
//! migrations use the same SQL, [`POSTGRES_SCHEMA`] or [`SQLITE_SCHEMA`]:
//!
//! ```sql
#![doc = include_str!("postgres.sql")]
//! ```
//!
//! sqlx types (`Pool`, `Transaction`) are part of this API on purpose: the outbox writes into the
//! caller's own sqlx transaction. [`sqlx`] is re-exported so that the versions match; a major
//! version of sqlx is a major version of rmq-bus.

#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use tokio::sync::Notify;

use crate::error::{Error, Result};

/// sqlx, re-exported: the outbox and inbox take its pools and transactions.
pub use sqlx;

/// The tables of the outbox and inbox on PostgreSQL, as [`migrate`] creates them.
pub const POSTGRES_SCHEMA: &str = include_str!("postgres.sql");
/// The tables of the outbox and inbox on SQLite, as [`migrate`] creates them.
pub const SQLITE_SCHEMA: &str = include_str!("sqlite.sql");

/// A database the outbox and inbox can live in: [`sqlx::Postgres`] (feature `postgres`) or
/// [`sqlx::Sqlite`] (feature `sqlite`). Sealed: the SQL of each is rmq-bus's own.
pub trait Database: sqlx::Database + sealed::Backend {}

#[cfg(feature = "postgres")]
impl Database for sqlx::Postgres {}
#[cfg(feature = "sqlite")]
impl Database for sqlx::Sqlite {}

/// Creates the outbox and inbox tables (and, on PostgreSQL, the trigger that wakes relays) if
/// they do not exist. Idempotent; call it at start-up, or run the SQL of this module's docs
/// with your own migrations instead.
pub async fn migrate<DB: Database>(pool: &sqlx::Pool<DB>) -> Result<()> {
    DB::migrate(pool)
        .await
        .map_err(|e| database("creating the outbox and inbox tables", e))
}

/// Lets `?` turn a sqlx error of the caller's own queries into an [`Error::Database`], in
/// handlers that return `rmq_bus::Result`.
impl From<sqlx::Error> for Error {
    fn from(error: sqlx::Error) -> Self {
        database("running a query", error)
    }
}

/// An [`Error::Database`] saying what was being done.
pub(crate) fn database(operation: &'static str, error: sqlx::Error) -> Error {
    Error::Database {
        operation,
        source: Box::new(error),
    }
}

/// Milliseconds since the Unix epoch, as the tables store times.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The database-specific half of the outbox and inbox. In a private module: users name
/// [`Database`], never this.
#[allow(unreachable_pub)]
pub(crate) mod sealed {
    use super::*;

    /// An event to write into the outbox.
    pub struct NewRow<'a> {
        pub message_id: &'a str,
        pub destination: &'a str,
        pub routing_key: &'a str,
        pub body: &'a [u8],
        pub correlation_id: Option<&'a str>,
        pub traceparent: Option<&'a str>,
        pub now: i64,
    }

    /// An outbox row a relay claimed.
    #[derive(Debug)]
    pub struct Row {
        pub id: i64,
        pub message_id: String,
        pub destination: String,
        pub routing_key: String,
        pub body: Vec<u8>,
        pub correlation_id: Option<String>,
        pub traceparent: Option<String>,
        pub attempts: i32,
    }

    /// A batch a relay claimed: its rows and, on PostgreSQL, the transaction holding their locks
    /// until the batch is settled.
    pub struct Claim<DB: sqlx::Database> {
        pub tx: Option<sqlx::Transaction<'static, DB>>,
        pub rows: Vec<Row>,
    }

    /// What became of a claimed batch.
    #[derive(Debug, Default)]
    pub struct Settled {
        /// Confirmed by the broker: removed.
        pub done: Vec<i64>,
        /// Refused this time: tried again at `next_attempt_at`, with the reason kept.
        pub retry: Vec<(i64, i64, String)>,
        /// Never publishable: moved to `rmq_bus_outbox_dead` with the reason.
        pub poison: Vec<(i64, String)>,
    }

    /// The SQL of one database.
    pub trait Backend: sqlx::Database + Sized {
        /// The database's `db.system.name` (OpenTelemetry), on the relay's instruments.
        const SYSTEM: &'static str;

        /// Creates the tables.
        fn migrate(pool: &sqlx::Pool<Self>) -> BoxFuture<'_, sqlx::Result<()>>;

        /// Writes `row` in the caller's transaction; the relay is woken once it commits.
        fn insert<'a>(
            conn: &'a mut Self::Connection,
            row: NewRow<'a>,
            wake: &'a Arc<Notify>,
        ) -> BoxFuture<'a, sqlx::Result<()>>;

        /// Claims up to `limit` due rows for `destinations`, oldest first.
        fn claim<'a>(
            pool: &'a sqlx::Pool<Self>,
            destinations: &'a [String],
            limit: i64,
            now: i64,
        ) -> BoxFuture<'a, sqlx::Result<Claim<Self>>>;

        /// Records what became of a claimed batch and releases it.
        fn settle<'a>(
            pool: &'a sqlx::Pool<Self>,
            tx: Option<sqlx::Transaction<'static, Self>>,
            settled: &'a Settled,
            now: i64,
        ) -> BoxFuture<'a, sqlx::Result<()>>;

        /// Rows waiting in the outbox: one `COUNT(*)`, which the relay runs at most once a
        /// second.
        fn backlog(pool: &sqlx::Pool<Self>) -> BoxFuture<'_, sqlx::Result<i64>>;

        /// Starts what wakes the relay when another process commits events (PostgreSQL's
        /// LISTEN); `None` where commits are only seen in-process.
        fn listen(
            pool: &sqlx::Pool<Self>,
            wake: Arc<Notify>,
        ) -> Option<tokio::task::JoinHandle<()>>;

        /// Records, in the caller's transaction, that `consumer` handled `key`; `false` if it
        /// already had.
        fn inbox_claim<'a>(
            conn: &'a mut Self::Connection,
            consumer: &'a str,
            key: &'a str,
            now: i64,
        ) -> BoxFuture<'a, sqlx::Result<bool>>;

        /// Forgets inbox keys handled before `before`; returns how many.
        fn inbox_expire(pool: &sqlx::Pool<Self>, before: i64) -> BoxFuture<'_, sqlx::Result<u64>>;
    }
}

pub(crate) use sealed::{Claim, NewRow, Row, Settled};

/// The queries that read the same on every database (sqlx takes `$1` placeholders on SQLite
/// too), written once: each backend module expands them for its own types.
macro_rules! same_sql {
    ($db:ty) => {
        /// Writes an outbox row.
        async fn insert_row(
            conn: &mut <$db as sqlx::Database>::Connection,
            row: &$crate::store::NewRow<'_>,
        ) -> sqlx::Result<()> {
            sqlx::query(
                "INSERT INTO rmq_bus_outbox (message_id, destination, routing_key, body, \
                 correlation_id, traceparent, created_at, next_attempt_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
            )
            .bind(row.message_id)
            .bind(row.destination)
            .bind(row.routing_key)
            .bind(row.body)
            .bind(row.correlation_id)
            .bind(row.traceparent)
            .bind(row.now)
            .execute(conn)
            .await
            .map(drop)
        }

        /// The columns the claims select, in this order.
        const CLAIMED: &str = "id, message_id, destination, routing_key, body, correlation_id, \
                               traceparent, attempts";

        /// A claimed row, read from the columns of `CLAIMED`.
        fn claimed(row: &<$db as sqlx::Database>::Row) -> sqlx::Result<$crate::store::Row> {
            use sqlx::Row as _;
            Ok($crate::store::Row {
                id: row.try_get(0)?,
                message_id: row.try_get(1)?,
                destination: row.try_get(2)?,
                routing_key: row.try_get(3)?,
                body: row.try_get(4)?,
                correlation_id: row.try_get(5)?,
                traceparent: row.try_get(6)?,
                attempts: row.try_get(7)?,
            })
        }

        /// Records the refused rows (tried again later) and moves the poison ones aside.
        async fn retry_and_poison(
            tx: &mut sqlx::Transaction<'static, $db>,
            settled: &$crate::store::Settled,
            now: i64,
        ) -> sqlx::Result<()> {
            for (id, next_attempt_at, error) in &settled.retry {
                sqlx::query(
                    "UPDATE rmq_bus_outbox SET attempts = attempts + 1, next_attempt_at = $2, \
                     last_error = $3 WHERE id = $1",
                )
                .bind(id)
                .bind(next_attempt_at)
                .bind(error)
                .execute(&mut **tx)
                .await?;
            }
            for (id, reason) in &settled.poison {
                sqlx::query(
                    "INSERT INTO rmq_bus_outbox_dead (id, message_id, destination, routing_key, \
                     body, correlation_id, traceparent, created_at, attempts, reason, moved_at) \
                     SELECT id, message_id, destination, routing_key, body, correlation_id, \
                     traceparent, created_at, attempts + 1, $2, $3 FROM rmq_bus_outbox WHERE id = $1",
                )
                .bind(id)
                .bind(reason)
                .bind(now)
                .execute(&mut **tx)
                .await?;
                sqlx::query("DELETE FROM rmq_bus_outbox WHERE id = $1")
                    .bind(id)
                    .execute(&mut **tx)
                    .await?;
            }
            Ok(())
        }

        /// Counts the rows waiting in the outbox.
        async fn count_rows(pool: &sqlx::Pool<$db>) -> sqlx::Result<i64> {
            sqlx::query_scalar("SELECT COUNT(*) FROM rmq_bus_outbox")
                .fetch_one(pool)
                .await
        }

        /// Records `key` for `consumer`; `false` if it was there.
        async fn claim_key(
            conn: &mut <$db as sqlx::Database>::Connection,
            consumer: &str,
            key: &str,
            now: i64,
        ) -> sqlx::Result<bool> {
            let inserted = sqlx::query(
                "INSERT INTO rmq_bus_inbox (consumer, message_key, handled_at) \
                 VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            )
            .bind(consumer)
            .bind(key)
            .bind(now)
            .execute(conn)
            .await?;
            Ok(inserted.rows_affected() == 1)
        }

        /// Forgets inbox keys handled before `before`.
        async fn expire_keys(pool: &sqlx::Pool<$db>, before: i64) -> sqlx::Result<u64> {
            let deleted = sqlx::query("DELETE FROM rmq_bus_inbox WHERE handled_at < $1")
                .bind(before)
                .execute(pool)
                .await?;
            Ok(deleted.rows_affected())
        }
    };
}
pub(crate) use same_sql;

/// The reason of a poison row as stored: at most 1000 characters.
pub(crate) fn reason(error: &Error) -> String {
    let text = error.to_string();
    match text.char_indices().nth(1000) {
        Some((end, _)) => text[..end].to_owned(),
        None => text,
    }
}
