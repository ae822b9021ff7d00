//! The outbox and inbox on PostgreSQL: row locks (`FOR UPDATE SKIP LOCKED`) so that relays share
//! the work, and LISTEN/NOTIFY so that they wake when a transaction with events commits.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::postgres::PgListener;
use sqlx::{PgConnection, PgPool, Postgres};
use tokio::sync::Notify;

use super::sealed::Backend;
use super::{Claim, NewRow, POSTGRES_SCHEMA, Settled, same_sql};

/// The channel the insert trigger notifies (see the schema).
const CHANNEL: &str = "rmq_bus_outbox";

same_sql!(Postgres);

impl Backend for Postgres {
    const SYSTEM: &'static str = "postgresql";

    fn migrate(pool: &PgPool) -> BoxFuture<'_, sqlx::Result<()>> {
        // One simple query: PostgreSQL runs it as one transaction, under the advisory lock.
        Box::pin(async move { sqlx::raw_sql(POSTGRES_SCHEMA).execute(pool).await.map(drop) })
    }

    fn insert<'a>(
        conn: &'a mut PgConnection,
        row: NewRow<'a>,
        _wake: &'a Arc<Notify>,
    ) -> BoxFuture<'a, sqlx::Result<()>> {
        // The trigger notifies the relays, which PostgreSQL delivers at commit, and only then.
        Box::pin(async move { insert_row(conn, &row).await })
    }

    fn claim<'a>(
        pool: &'a PgPool,
        destinations: &'a [String],
        limit: i64,
        now: i64,
    ) -> BoxFuture<'a, sqlx::Result<Claim<Postgres>>> {
        // The locks last until `settle` commits: rows another relay holds are skipped, not
        // waited for, and a relay that dies releases its rows with its connection.
        Box::pin(async move {
            let mut tx = pool.begin().await?;
            let query = format!(
                "SELECT {CLAIMED} FROM rmq_bus_outbox \
                 WHERE destination = ANY($1) AND next_attempt_at <= $2 \
                 ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED"
            );
            let rows = sqlx::query(&query)
                .bind(destinations)
                .bind(now)
                .bind(limit)
                .fetch_all(&mut *tx)
                .await?;
            let rows = rows.iter().map(claimed).collect::<sqlx::Result<Vec<_>>>()?;
            Ok(Claim { tx: Some(tx), rows })
        })
    }

    fn settle<'a>(
        pool: &'a PgPool,
        tx: Option<sqlx::Transaction<'static, Postgres>>,
        settled: &'a Settled,
        now: i64,
    ) -> BoxFuture<'a, sqlx::Result<()>> {
        Box::pin(async move {
            let mut tx = match tx {
                Some(tx) => tx,
                None => pool.begin().await?,
            };
            if !settled.done.is_empty() {
                sqlx::query("DELETE FROM rmq_bus_outbox WHERE id = ANY($1)")
                    .bind(&settled.done)
                    .execute(&mut *tx)
                    .await?;
            }
            retry_and_poison(&mut tx, settled, now).await?;
            tx.commit().await
        })
    }

    fn backlog(pool: &PgPool) -> BoxFuture<'_, sqlx::Result<i64>> {
        Box::pin(async move { count_rows(pool).await })
    }

    fn listen(pool: &PgPool, wake: Arc<Notify>) -> Option<tokio::task::JoinHandle<()>> {
        let pool = pool.clone();
        Some(tokio::spawn(async move {
            // Notifications missed while not listening are made up for by the relay's poll.
            let mut pause = Duration::from_millis(100);
            loop {
                match listen_until_error(&pool, &wake).await {
                    Ok(()) | Err(sqlx::Error::PoolClosed) => return,
                    Err(error) => {
                        tracing::debug!(%error, "outbox LISTEN failed; listening again");
                        // A wake now: anything committed meanwhile is not missed.
                        wake.notify_one();
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_secs(5));
                    }
                }
            }
        }))
    }

    fn inbox_claim<'a>(
        conn: &'a mut PgConnection,
        consumer: &'a str,
        key: &'a str,
        now: i64,
    ) -> BoxFuture<'a, sqlx::Result<bool>> {
        // A concurrent claim of the same key waits for this transaction: it then sees the row
        // (and gets `false`) if this one commits, or inserts it if this one rolls back.
        Box::pin(async move { claim_key(conn, consumer, key, now).await })
    }

    fn inbox_expire(pool: &PgPool, before: i64) -> BoxFuture<'_, sqlx::Result<u64>> {
        Box::pin(async move { expire_keys(pool, before).await })
    }
}

/// Listens on the outbox channel, waking the relay on each notification and after each
/// reconnection (notifications sent meanwhile are lost), until an error.
async fn listen_until_error(pool: &PgPool, wake: &Notify) -> sqlx::Result<()> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    loop {
        wake.notify_one();
        listener.try_recv().await?;
    }
}
