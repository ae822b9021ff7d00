//! Long runs, not part of the test command: `scripts/soak.sh` runs them (in release mode).
//!
//! - [`orders_and_billing_under_load_with_cuts`]: orders placed at a steady rate
//!   (`SOAK_RATE` a second) to billing, which answers each with `order_processed` to orders,
//!   for `SOAK_SECONDS` (default 600), every connection going through a proxy that cuts them all
//!   every `SOAK_CUT_EVERY` seconds (default 30). Every 10 s it prints RSS, open file
//!   descriptors, live tokio tasks, lapin threads and the queue depths; at the end the lost and
//!   duplicated counts, and the growth of RSS and FDs from the 2nd minute to the end.
//! - [`a_backlog_is_consumed_in_bounded_memory`]: `SOAK_BACKLOG` messages (default 1 000 000)
//!   waiting in a queue before the service starts; RSS sampled while it consumes them.
//!
//! Both run in this one process (billing, orders and the publisher), so RSS and FDs are theirs
//! together.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod common;
mod faults {
    pub mod node;
    pub mod proxy;
}

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Broker, options, unique};
use faults::proxy::Proxy;
use futures::StreamExt;
use rmq_bus::{ClientProxy, Microservice, Payload, RmqContext};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// One sample of the process.
#[derive(Clone, Copy, Debug)]
struct Sample {
    at: Duration,
    rss_kib: u64,
    fds: u64,
    tasks: usize,
    threads: u64,
}

fn sample(started: Instant) -> Sample {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count() as u64);
    Sample {
        at: started.elapsed(),
        rss_kib: field("VmRSS:"),
        fds,
        tasks: tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks(),
        threads: field("Threads:"),
    }
}

/// How often each order came back: one counter per order, all allocated up front, so that the
/// test's own bookkeeping does not grow the RSS it measures.
#[derive(Clone)]
struct Tally(Arc<Vec<std::sync::atomic::AtomicU8>>);

impl Tally {
    fn with_capacity(orders: u64) -> Self {
        Tally(Arc::new(
            (0..orders)
                .map(|_| std::sync::atomic::AtomicU8::new(0))
                .collect(),
        ))
    }
    fn record(&self, n: u64) {
        let slot = usize::try_from(n).ok().and_then(|n| self.0.get(n));
        let slot = slot.expect("an order number placed by this test");
        slot.fetch_add(1, Ordering::Relaxed);
    }
    /// (distinct, in all)
    fn counts(&self) -> (u64, u64) {
        self.0.iter().fold((0, 0), |(distinct, all), count| {
            let count = u64::from(count.load(Ordering::Relaxed));
            (distinct + u64::from(count > 0), all + count)
        })
    }
}

fn growth(from: u64, to: u64) -> f64 {
    if from == 0 {
        return 0.0;
    }
    (to as f64 - from as f64) * 100.0 / from as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a long run: scripts/soak.sh"]
async fn orders_and_billing_under_load_with_cuts() {
    let seconds = env_u64("SOAK_SECONDS", 600);
    let rate = env_u64("SOAK_RATE", 200);
    let cut_every = Duration::from_secs(env_u64("SOAK_CUT_EVERY", 30));
    let broker = Broker::connect().await;
    let proxy = Proxy::start().await;
    let (billing_queue, orders_queue) = (unique("soak-billing"), unique("soak-orders"));
    broker.forget_later(&billing_queue);
    broker.forget_later(&orders_queue);
    let via = |queue: &str| options(queue).uri(proxy.uri());

    let to_orders = ClientProxy::new(via(&orders_queue));
    let billing = Microservice::new(via(&billing_queue))
        .on_event(
            "order_created",
            move |Payload(n): Payload<u64>, ctx: RmqContext| {
                let to_orders = to_orders.clone();
                async move {
                    to_orders
                        .emit(
                            "order_processed",
                            &serde_json::json!({ "order": n, "status": "PROCESSED" }),
                        )
                        .await?;
                    ctx.ack().await
                }
            },
        )
        .start()
        .await
        .expect("start billing");
    // Room for every order the placer can issue (it issues `rate` a second, in whole batches).
    let tally = Tally::with_capacity((rate + 10) * (seconds + 5));
    let orders = Microservice::new(via(&orders_queue))
        .on_event("order_processed", {
            let tally = tally.clone();
            move |Payload(processed): Payload<serde_json::Value>, ctx: RmqContext| {
                let tally = tally.clone();
                async move {
                    tally.record(processed["order"].as_u64().unwrap_or(u64::MAX));
                    ctx.ack().await
                }
            }
        })
        .start()
        .await
        .expect("start orders");
    let placing = ClientProxy::new(via(&billing_queue));

    let started = Instant::now();
    let run_for = Duration::from_secs(seconds);
    let placed = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    // Orders at a steady rate, in batches every 100 ms, each confirmed.
    let placer = tokio::spawn({
        let (placing, placed, failed) = (placing.clone(), placed.clone(), failed.clone());
        async move {
            let per_tick = (rate / 10).max(1);
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let mut next = 0u64;
            while started.elapsed() < run_for {
                tick.tick().await;
                let batch = next..next + per_tick;
                next += per_tick;
                let results: Vec<_> = futures::stream::iter(batch)
                    .map(|n| {
                        let placing = placing.clone();
                        async move {
                            (
                                n,
                                placing.emit("order_created", &serde_json::json!(n)).await,
                            )
                        }
                    })
                    .buffer_unordered(64)
                    .collect()
                    .await;
                for (_, result) in results {
                    match result {
                        Ok(()) => placed.fetch_add(1, Ordering::SeqCst),
                        Err(error) => {
                            eprintln!("an order could not be placed: {error}");
                            failed.fetch_add(1, Ordering::SeqCst)
                        }
                    };
                }
            }
            next
        }
    });

    println!(
        "soak: {seconds} s, {rate} orders/s, every connection cut every {cut_every:?}; \
         sampling every 10 s"
    );
    println!("     t   RSS MiB   FDs  tasks  threads   placed  handled  billing-q  orders-q  cuts");
    let mut samples = Vec::new();
    let mut cuts = 0;
    let mut last_cut = Instant::now();
    while started.elapsed() < run_for {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if last_cut.elapsed() >= cut_every {
            cuts += 1;
            proxy.cut();
            last_cut = Instant::now();
        }
        if started.elapsed().as_secs() / 10 > samples.len() as u64 {
            let now = sample(started);
            let (handled, _) = tally.counts();
            println!(
                "{:>6.0} {:>9.1} {:>5} {:>6} {:>8} {:>8} {:>8} {:>10} {:>9} {:>5}",
                now.at.as_secs_f64(),
                now.rss_kib as f64 / 1024.0,
                now.fds,
                now.tasks,
                now.threads,
                placed.load(Ordering::SeqCst),
                handled,
                broker.try_ready(&billing_queue).await.unwrap_or(0),
                broker.try_ready(&orders_queue).await.unwrap_or(0),
                cuts
            );
            samples.push(now);
        }
    }
    let issued = placer.await.expect("placer");
    let confirmed = placed.load(Ordering::SeqCst);
    // Everything confirmed must come back.
    let drain_started = Instant::now();
    while tally.counts().0 < confirmed && drain_started.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (distinct, total) = tally.counts();
    let end = sample(started);
    let after_warmup = samples
        .iter()
        .find(|s| s.at >= Duration::from_secs(120))
        .copied()
        .unwrap_or(end);
    println!(
        "soak result: {issued} orders issued, {confirmed} confirmed, {} failed to place, {distinct} \
         came back ({} lost, {} duplicated), {cuts} cuts; RSS {:.1} MiB at 2 min, {:.1} MiB at the \
         end ({:+.1}%), FDs {} at 2 min, {} at the end ({:+.1}%), tasks {} → {}, threads {} → {}",
        failed.load(Ordering::SeqCst),
        confirmed.saturating_sub(distinct),
        total - distinct,
        after_warmup.rss_kib as f64 / 1024.0,
        end.rss_kib as f64 / 1024.0,
        growth(after_warmup.rss_kib, end.rss_kib),
        after_warmup.fds,
        end.fds,
        growth(after_warmup.fds, end.fds),
        after_warmup.tasks,
        end.tasks,
        after_warmup.threads,
        end.threads,
    );
    billing.shutdown().await.expect("shutdown billing");
    orders.shutdown().await.expect("shutdown orders");
    placing.close().await;
    broker.cleanup().await;
    assert!(distinct >= confirmed, "every confirmed order came back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a long run: scripts/soak.sh"]
async fn a_backlog_is_consumed_in_bounded_memory() {
    let backlog = env_u64("SOAK_BACKLOG", 1_000_000);
    let prefetch = 250;
    let broker = Broker::connect().await;
    let queue = unique("soak-backlog");
    broker.forget_later(&queue);
    let started = Instant::now();
    let before_publishing = sample(started);
    // The backlog, published before any consumer runs (transient, to spare the disk).
    let client = ClientProxy::new(options(&queue).persistent(false));
    let errors = futures::stream::iter(0..backlog)
        .map(|n| {
            let client = client.clone();
            async move { client.emit("n", &n).await }
        })
        .buffer_unordered(512)
        .filter_map(|result| async move { result.err() })
        .count()
        .await;
    assert_eq!(errors, 0, "the backlog is published");
    client.close().await;
    drop(client);
    let published_in = started.elapsed();
    let ready = broker.ready(&queue).await;
    let before_consuming = sample(started);
    println!(
        "backlog: {ready} messages ready after {published_in:?}; RSS {:.1} MiB before \
         publishing, {:.1} MiB before consuming",
        before_publishing.rss_kib as f64 / 1024.0,
        before_consuming.rss_kib as f64 / 1024.0
    );
    let handled = Arc::new(AtomicU64::new(0));
    let consume_started = Instant::now();
    let service = Microservice::new(options(&queue).prefetch(prefetch))
        .on_event("n", {
            let handled = handled.clone();
            move |Payload(_): Payload<u64>, ctx: RmqContext| {
                let handled = handled.clone();
                async move {
                    handled.fetch_add(1, Ordering::Relaxed);
                    ctx.ack().await
                }
            }
        })
        .start()
        .await
        .expect("start");
    let mut peak = before_consuming;
    let mut last_print = Instant::now();
    while handled.load(Ordering::Relaxed) < backlog {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = sample(started);
        if now.rss_kib > peak.rss_kib {
            peak = now;
        }
        if last_print.elapsed() >= Duration::from_secs(10) {
            last_print = Instant::now();
            println!(
                "backlog: {:>8} handled after {:>5.0} s, RSS {:.1} MiB, FDs {}, tasks {}",
                handled.load(Ordering::Relaxed),
                consume_started.elapsed().as_secs_f64(),
                now.rss_kib as f64 / 1024.0,
                now.fds,
                now.tasks
            );
        }
        assert!(
            consume_started.elapsed() < Duration::from_secs(1800),
            "the backlog is not consumed after 30 min"
        );
    }
    let took = consume_started.elapsed();
    println!(
        "backlog result: {backlog} messages consumed in {took:?} ({:.0}/s) with prefetch \
         {prefetch}; RSS {:.1} MiB before consuming, peak {:.1} MiB ({:+.1} MiB), at the end {:.1} MiB",
        backlog as f64 / took.as_secs_f64(),
        before_consuming.rss_kib as f64 / 1024.0,
        peak.rss_kib as f64 / 1024.0,
        (peak.rss_kib as f64 - before_consuming.rss_kib as f64) / 1024.0,
        sample(started).rss_kib as f64 / 1024.0,
    );
    service.shutdown().await.expect("shutdown");
    broker.cleanup().await;
}
