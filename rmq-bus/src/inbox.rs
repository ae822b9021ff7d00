//! The idempotent inbox (features `postgres`, `sqlite`): a record, in the handler's own database
//! transaction, of the messages each consumer has handled, so that a redelivery is recognised
//! and its effects are not repeated.
//!
//! At-least-once delivery means duplicates: a connection lost before an ack, a crash between a
//! commit and the ack, a publisher that publishes again after a lost confirm. Without an inbox a
//! billing service bills the order again; with it, the duplicate's claim returns `false` and the
//! handler acks it without doing anything.
//!
//! ```no_run
//! # #[cfg(feature = "postgres")]
//! # async fn demo(pool: sqlx::PgPool, inbox: rmq_bus::inbox::Inbox<sqlx::Postgres>, ctx: rmq_bus::RmqContext) -> rmq_bus::Result<()> {
//! let mut tx = pool.begin().await?;
//! if inbox.claim_message(&mut tx, "billing", &ctx).await? {
//!     sqlx::query("INSERT INTO bills (order_id) VALUES ('o-1')").execute(&mut *tx).await?;
//! }
//! tx.commit().await?; // the bill and the record of the message, or neither
//! ctx.ack().await
//! # }
//! ```
//!
//! Claim first, before the transaction reads anything: on SQLite, a transaction that reads and
//! then writes fails with "database is locked" when another one commits in between.
//!
//! Commit, then ack: a crash in between redelivers the message, and the claim then says it was
//! handled. Records older than a retention window can go ([`Inbox::expire`]): keep them longer
//! than a message can take to come back (a dead-letter queue replayed by hand, a publisher's
//! outbox held up by an outage).

use std::time::Duration;

use tokio::task::JoinHandle;

use crate::context::RmqContext;
use crate::error::{Error, Result};
use crate::store::{Database, database, now_ms};

/// The inbox of one database. Cheap to clone.
#[derive(Debug)]
pub struct Inbox<DB: Database> {
    pool: sqlx::Pool<DB>,
}

impl<DB: Database> Clone for Inbox<DB> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
        }
    }
}

impl<DB: Database> Inbox<DB> {
    /// The inbox in `pool`'s database, whose tables [`migrate`](crate::store::migrate) creates.
    pub fn new(pool: sqlx::Pool<DB>) -> Self {
        Self { pool }
    }

    /// Records in `tx` that `consumer` handled the message known by `key`: `true` the first
    /// time, `false` if it already had (in a committed transaction), and the caller then skips
    /// the message's effects and acks it. A concurrent claim of the same key (on PostgreSQL)
    /// waits for this transaction to end.
    ///
    /// `key` is the message's identity: its `message_id` ([`claim_message`](Self::claim_message)),
    /// or a key of the handler's own for senders that set none, such as the order id of an
    /// `order_created`. `consumer` tells handlers apart, so that two services (or two handlers)
    /// sharing a database each handle the message once.
    pub async fn claim(
        &self,
        tx: &mut sqlx::Transaction<'_, DB>,
        consumer: &str,
        key: &str,
    ) -> Result<bool> {
        DB::inbox_claim(&mut **tx, consumer, key, now_ms())
            .await
            .map_err(|e| database("recording a message in the inbox", e))
    }

    /// [`claim`](Self::claim) by the delivery's AMQP `message_id`, which every rmq-bus emit sets.
    /// Fails with [`Error::NoMessageId`] for a message without one (NestJS sets none): give a
    /// key of your own to [`claim`](Self::claim).
    pub async fn claim_message(
        &self,
        tx: &mut sqlx::Transaction<'_, DB>,
        consumer: &str,
        ctx: &RmqContext,
    ) -> Result<bool> {
        let key = ctx
            .properties()
            .message_id
            .as_deref()
            .filter(|id| !id.is_empty())
            .ok_or(Error::NoMessageId)?;
        self.claim(tx, consumer, key).await
    }

    /// Forgets the messages handled more than `retention` ago; returns how many.
    pub async fn expire(&self, retention: Duration) -> Result<u64> {
        let retention = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        DB::inbox_expire(&self.pool, now_ms().saturating_sub(retention))
            .await
            .map_err(|e| database("expiring old inbox records", e))
    }

    /// Runs [`expire`](Self::expire) every `every`, in the background, until the returned task
    /// is dropped. Failures are logged and tried again next time.
    pub fn expire_every(&self, retention: Duration, every: Duration) -> Expiry {
        let inbox = self.clone();
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            loop {
                ticks.tick().await;
                match inbox.expire(retention).await {
                    Ok(0) => {}
                    Ok(expired) => tracing::debug!(expired, "inbox records expired"),
                    Err(error) => {
                        tracing::warn!(%error, "cannot expire inbox records; trying again later")
                    }
                }
            }
        });
        Expiry(task)
    }
}

/// The background expiry of an inbox ([`Inbox::expire_every`]); stops when dropped.
#[derive(Debug)]
pub struct Expiry(JoinHandle<()>);

impl Drop for Expiry {
    fn drop(&mut self) {
        self.0.abort();
    }
}
