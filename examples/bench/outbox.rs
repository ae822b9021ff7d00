//! The transactional outbox: the same events published by confirmed `ClientProxy::emit`s (up to
//! 1000 in flight) and by the outbox relay from PostgreSQL (rows committed first, 100 per
//! transaction; then the relay is timed from its start until the outbox is empty, every row
//! confirmed and deleted). It runs in the parent process on a database of its own
//! (`BENCH_POSTGRES_URL`, default `postgres://postgres@127.0.0.1:5432`), dropped after; without
//! PostgreSQL it is skipped. Target: relay ≥ 0.5 × direct.

use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use rmq_bus::outbox::{Outbox, RelayOptions};
use rmq_bus::store::sqlx::{self, Executor, PgPool};
use rmq_bus::{ClientProxy, RmqOptions};

use crate::Res;
use crate::admin::delete_queue;

/// What the outbox scenario measured.
pub(crate) struct OutboxFigures {
    pub(crate) n: usize,
    /// Confirmed emits per second, direct.
    pub(crate) direct_per_s: f64,
    /// Rows written to the outbox per second (100 per transaction), relay stopped.
    pub(crate) commit_per_s: f64,
    /// Rows relayed (published, confirmed, deleted) per second.
    pub(crate) relay_per_s: f64,
}

impl OutboxFigures {
    pub(crate) fn print(&self) {
        let Self {
            n,
            direct_per_s,
            commit_per_s,
            relay_per_s,
        } = self;
        println!();
        println!("Transactional outbox on PostgreSQL — N={n}");
        println!("  direct confirmed emits: {direct_per_s:.0} msg/s");
        println!("  outbox writes (100 per transaction): {commit_per_s:.0} rows/s");
        println!(
            "  relay (batches of 200, pipelined confirms): {relay_per_s:.0} msg/s = {:.2} × direct (target ≥ 0.5)",
            relay_per_s / direct_per_s
        );
        for (key, value) in [
            ("outbox.n", *n as f64),
            ("outbox.direct_per_s", *direct_per_s),
            ("outbox.commit_per_s", *commit_per_s),
            ("outbox.relay_per_s", *relay_per_s),
            ("outbox.relay_ratio", relay_per_s / direct_per_s),
        ] {
            println!("figure {key}={value}");
        }
    }
}

/// Runs the outbox scenario with `n` events; `Ok(None)` when no PostgreSQL answers.
pub(crate) fn outbox(
    admin: &tokio::runtime::Runtime,
    uri: &str,
    n: usize,
) -> Res<Option<OutboxFigures>> {
    let server = std::env::var("BENCH_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let Ok(server_pool) = runtime.block_on(PgPool::connect(&format!("{server}/postgres"))) else {
        println!();
        println!("outbox: skipped (no PostgreSQL at {server}; set BENCH_POSTGRES_URL)");
        return Ok(None);
    };
    let database = format!("rmq_bus_bench_{}", std::process::id());
    let queue = format!("rmq-bus-bench-{}-outbox", std::process::id());
    runtime.block_on(server_pool.execute(format!("CREATE DATABASE {database}").as_str()))?;
    let result = runtime.block_on(measure(&format!("{server}/{database}"), &queue, uri, n));
    let _ = runtime.block_on(
        server_pool.execute(format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)").as_str()),
    );
    let _ = admin.block_on(delete_queue(uri, &queue));
    result.map(Some)
}

async fn measure(database: &str, queue: &str, uri: &str, n: usize) -> Res<OutboxFigures> {
    let client = ClientProxy::new(RmqOptions::new(queue).uri(uri));
    client.connect().await?;
    let event = |i: usize| serde_json::json!({"orderPayload": {"orderId": i, "price": 10.5}});

    let started = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let client = client.clone();
            async move { client.emit("order_created", &event(i)).await }
        })
        .buffer_unordered(1000)
        .try_collect::<Vec<()>>()
        .await?;
    let direct_per_s = n as f64 / started.elapsed().as_secs_f64();

    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(database)
        .await?;
    rmq_bus::store::migrate(&pool).await?;
    let outbox = Outbox::new(pool.clone());
    let events = outbox.client(client.clone());
    let started = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
        let mut tx = pool.begin().await?;
        for i in chunk {
            events.emit(&mut tx, "order_created", &event(*i)).await?;
        }
        tx.commit().await?;
    }
    let commit_per_s = n as f64 / started.elapsed().as_secs_f64();

    let started = Instant::now();
    let relay = outbox.relay_with(RelayOptions::default());
    loop {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM rmq_bus_outbox")
            .fetch_one(&pool)
            .await?;
        if left == 0 {
            break;
        }
        if started.elapsed() > Duration::from_secs(300) {
            return Err(format!("the relay left {left} rows after 300 s").into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let relay_per_s = n as f64 / started.elapsed().as_secs_f64();
    relay.shutdown().await;
    pool.close().await;
    client.close().await;
    Ok(OutboxFigures {
        n,
        direct_per_s,
        commit_per_s,
        relay_per_s,
    })
}
