//! The outbox and inbox on SQLite: one relay per database (SQLite has no row locks to share
//! the work by), woken in-process by a commit hook on the connection that wrote the events.

use std::sync::Arc;

use futures::future::BoxFuture;
use sqlx::{Sqlite, SqliteConnection, SqlitePool};
use tokio::sync::Notify;

use super::sealed::Backend;
use super::{Claim, NewRow, SQLITE_SCHEMA, Settled, same_sql};

same_sql!(Sqlite);

impl Backend for Sqlite {
    const SYSTEM: &'static str = "sqlite";

    fn migrate(pool: &SqlitePool) -> BoxFuture<'_, sqlx::Result<()>> {
        // Each statement is idempotent: no transaction needed around them.
        Box::pin(async move { sqlx::raw_sql(SQLITE_SCHEMA).execute(pool).await.map(drop) })
    }

    fn insert<'a>(
        conn: &'a mut SqliteConnection,
        row: NewRow<'a>,
        wake: &'a Arc<Notify>,
    ) -> BoxFuture<'a, sqlx::Result<()>> {
        Box::pin(async move {
            insert_row(&mut *conn, &row).await?;
            // Wakes the relay when this connection commits (a rollback wakes nobody). The hook
            // stays on the pooled connection; a later commit without events wakes the relay
            // for nothing, which costs it one query.
            let wake = wake.clone();
            conn.lock_handle().await?.set_commit_hook(move || {
                wake.notify_one();
                true
            });
            Ok(())
        })
    }

    fn claim<'a>(
        pool: &'a SqlitePool,
        destinations: &'a [String],
        limit: i64,
        now: i64,
    ) -> BoxFuture<'a, sqlx::Result<Claim<Sqlite>>> {
        // No transaction: one relay per database, and a read that later wrote would fail
        // (SQLITE_BUSY_SNAPSHOT) whenever another transaction committed in between.
        Box::pin(async move {
            let destinations = json(destinations)?;
            let query = format!(
                "SELECT {CLAIMED} FROM rmq_bus_outbox \
                 WHERE destination IN (SELECT value FROM json_each($1)) AND next_attempt_at <= $2 \
                 ORDER BY id LIMIT $3"
            );
            let rows = sqlx::query(&query)
                .bind(destinations)
                .bind(now)
                .bind(limit)
                .fetch_all(pool)
                .await?;
            let rows = rows.iter().map(claimed).collect::<sqlx::Result<Vec<_>>>()?;
            Ok(Claim { tx: None, rows })
        })
    }

    fn settle<'a>(
        pool: &'a SqlitePool,
        tx: Option<sqlx::Transaction<'static, Sqlite>>,
        settled: &'a Settled,
        now: i64,
    ) -> BoxFuture<'a, sqlx::Result<()>> {
        Box::pin(async move {
            if settled.done.is_empty() && settled.retry.is_empty() && settled.poison.is_empty() {
                return Ok(());
            }
            // Begun by a write: it waits for the write lock (busy_timeout) instead of failing.
            let mut tx = match tx {
                Some(tx) => tx,
                None => pool.begin().await?,
            };
            sqlx::query("DELETE FROM rmq_bus_outbox WHERE id IN (SELECT value FROM json_each($1))")
                .bind(json(&settled.done)?)
                .execute(&mut *tx)
                .await?;
            retry_and_poison(&mut tx, settled, now).await?;
            tx.commit().await
        })
    }

    fn backlog(pool: &SqlitePool) -> BoxFuture<'_, sqlx::Result<i64>> {
        Box::pin(async move { count_rows(pool).await })
    }

    fn listen(_pool: &SqlitePool, _wake: Arc<Notify>) -> Option<tokio::task::JoinHandle<()>> {
        None
    }

    fn inbox_claim<'a>(
        conn: &'a mut SqliteConnection,
        consumer: &'a str,
        key: &'a str,
        now: i64,
    ) -> BoxFuture<'a, sqlx::Result<bool>> {
        Box::pin(async move { claim_key(conn, consumer, key, now).await })
    }

    fn inbox_expire(pool: &SqlitePool, before: i64) -> BoxFuture<'_, sqlx::Result<u64>> {
        Box::pin(async move { expire_keys(pool, before).await })
    }
}

/// A list as a JSON array, which `json_each` takes apart: SQLite has no array parameters.
fn json<T: serde::Serialize>(list: &[T]) -> sqlx::Result<String> {
    serde_json::to_string(list).map_err(|e| sqlx::Error::Encode(Box::new(e)))
}
