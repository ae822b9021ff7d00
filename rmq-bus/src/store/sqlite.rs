//! The outbox and inbox on SQLite: one relay per database (SQLite has no row locks to share
//! the work by), woken in-process by a commit hook on the connection that wrote the events.

use std::sync::Arc;

use futures::future::BoxFuture;
use sqlx::{Row as _, Sqlite, SqliteConnection, SqlitePool};
use tokio::sync::Notify;

use super::sealed::Backend;
use super::{Claim, NewRow, Row, SQLITE_SCHEMA, Settled};

impl Backend for Sqlite {
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
            sqlx::query(
                "INSERT INTO rmq_bus_outbox (message_id, destination, routing_key, body, \
                 correlation_id, traceparent, created_at, next_attempt_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
            )
            .bind(row.message_id)
            .bind(row.destination)
            .bind(row.routing_key)
            .bind(row.body)
            .bind(row.correlation_id)
            .bind(row.traceparent)
            .bind(row.now)
            .execute(&mut *conn)
            .await?;
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
            let destinations = serde_json::to_string(destinations)
                .map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
            let rows = sqlx::query(
                "SELECT id, message_id, destination, routing_key, body, correlation_id, \
                 traceparent, attempts FROM rmq_bus_outbox \
                 WHERE destination IN (SELECT value FROM json_each(?1)) AND next_attempt_at <= ?2 \
                 ORDER BY id LIMIT ?3",
            )
            .bind(destinations)
            .bind(now)
            .bind(limit)
            .fetch_all(pool)
            .await?;
            let rows = rows
                .iter()
                .map(|row| {
                    Ok(Row {
                        id: row.try_get(0)?,
                        message_id: row.try_get(1)?,
                        destination: row.try_get(2)?,
                        routing_key: row.try_get(3)?,
                        body: row.try_get(4)?,
                        correlation_id: row.try_get(5)?,
                        traceparent: row.try_get(6)?,
                        attempts: row.try_get(7)?,
                    })
                })
                .collect::<sqlx::Result<Vec<_>>>()?;
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
            let mut tx = match tx {
                Some(tx) => tx,
                None => pool.begin().await?,
            };
            let done = serde_json::to_string(&settled.done)
                .map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
            sqlx::query("DELETE FROM rmq_bus_outbox WHERE id IN (SELECT value FROM json_each(?1))")
                .bind(done)
                .execute(&mut *tx)
                .await?;
            for (id, next_attempt_at, error) in &settled.retry {
                sqlx::query(
                    "UPDATE rmq_bus_outbox SET attempts = attempts + 1, next_attempt_at = ?2, \
                     last_error = ?3 WHERE id = ?1",
                )
                .bind(id)
                .bind(next_attempt_at)
                .bind(error)
                .execute(&mut *tx)
                .await?;
            }
            for (id, reason) in &settled.poison {
                sqlx::query(
                    "INSERT INTO rmq_bus_outbox_dead (id, message_id, destination, routing_key, \
                     body, correlation_id, traceparent, created_at, attempts, reason, moved_at) \
                     SELECT id, message_id, destination, routing_key, body, correlation_id, \
                     traceparent, created_at, attempts + 1, ?2, ?3 FROM rmq_bus_outbox WHERE id = ?1",
                )
                .bind(id)
                .bind(reason)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                sqlx::query("DELETE FROM rmq_bus_outbox WHERE id = ?1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await
        })
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
        Box::pin(async move {
            let inserted = sqlx::query(
                "INSERT INTO rmq_bus_inbox (consumer, message_key, handled_at) \
                 VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
            )
            .bind(consumer)
            .bind(key)
            .bind(now)
            .execute(conn)
            .await?;
            Ok(inserted.rows_affected() == 1)
        })
    }

    fn inbox_expire(pool: &SqlitePool, before: i64) -> BoxFuture<'_, sqlx::Result<u64>> {
        Box::pin(async move {
            let deleted = sqlx::query("DELETE FROM rmq_bus_inbox WHERE handled_at < ?1")
                .bind(before)
                .execute(pool)
                .await?;
            Ok(deleted.rows_affected())
        })
    }
}
