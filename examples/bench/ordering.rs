//! Ordering scenario, per-key ordering: 5 ms handlers over 200 keys, the same events handled unordered and
//! ordered by key (`on_ordered_event`), alternating, in the same run; then one key alone, whose
//! rate is bounded by 1 / 5 ms. It runs in the parent process, as S3 does: what it compares is
//! the rate of the two forms, on the same machine at the same time.
//!
//! Each run first fills a queue of its own (confirmed, up to 1000 publishes in flight), then
//! starts the microservice and times it from start until every event was handled.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use rmq_bus::config::DEFAULT_PREFETCH;
use rmq_bus::{ClientProxy, Microservice, Payload, RmqContext, RmqOptions};
use serde::{Deserialize, Serialize};

use crate::admin::delete_queue;
use crate::{BoxError, Res};

/// The handler's work.
const HANDLER: Duration = Duration::from_millis(5);
/// Keys in the many-key runs.
const KEYS: usize = 200;

/// What the ordering scenario measured: events per second of each run, medians over the rounds.
pub(crate) struct OrderingFigures {
    pub(crate) n: usize,
    pub(crate) unordered_per_s: f64,
    pub(crate) ordered_per_s: f64,
    pub(crate) one_key_n: usize,
    pub(crate) one_key_per_s: f64,
    /// One key, with `max_waiting_per_key` as large as the window: no parking.
    pub(crate) one_key_unparked_per_s: f64,
}

impl OrderingFigures {
    pub(crate) fn print(&self) {
        let ratio = self.ordered_per_s / self.unordered_per_s;
        let one_key_bound = 1.0 / HANDLER.as_secs_f64();
        println!();
        println!(
            "Ordering per key (5 ms handlers, prefetch 250) — N={} over {KEYS} keys, {} on one key",
            self.n, self.one_key_n
        );
        println!("  unordered            {:>9.0}/s", self.unordered_per_s);
        println!(
            "  ordered by key       {:>9.0}/s   {ratio:.2}× unordered (target ≥ 0.8×)",
            self.ordered_per_s
        );
        println!(
            "  one key              {:>9.0}/s   {:.2}× the bound of 1 / 5 ms = {one_key_bound:.0}/s (default max_waiting_per_key: its backlog beyond half the window is parked)",
            self.one_key_per_s,
            self.one_key_per_s / one_key_bound
        );
        println!(
            "  one key, no parking  {:>9.0}/s   {:.2}× the bound (max_waiting_per_key = prefetch)",
            self.one_key_unparked_per_s,
            self.one_key_unparked_per_s / one_key_bound
        );
    }

    pub(crate) fn print_figures(&self) {
        println!("figure ordering.n={}", self.n as f64);
        println!("figure ordering.unordered_per_s={}", self.unordered_per_s);
        println!("figure ordering.ordered_per_s={}", self.ordered_per_s);
        println!(
            "figure ordering.ordered_ratio={}",
            self.ordered_per_s / self.unordered_per_s
        );
        println!("figure ordering.one_key_per_s={}", self.one_key_per_s);
        println!(
            "figure ordering.one_key_unparked_per_s={}",
            self.one_key_unparked_per_s
        );
    }
}

/// An event of the ordering scenario: its key and its place in the key's sequence.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Update {
    order_id: String,
    seq: usize,
}

/// Runs the ordering scenario: `rounds` of (unordered, ordered) with `n` events each, then one key with `one_key_n`.
pub(crate) fn ordering(
    admin: &tokio::runtime::Runtime,
    uri: &str,
    n: usize,
    one_key_n: usize,
    rounds: usize,
) -> Res<OrderingFigures> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let pid = std::process::id();
    let run = |name: String, ordered: bool, n: usize, keys: usize| -> Res<f64> {
        let queue = format!("rmq-bus-bench-{pid}-ordering-{name}");
        let unparked = name.ends_with("unparked");
        let result = runtime.block_on(measure(&queue, uri, ordered, n, keys, unparked));
        let _ = admin.block_on(delete_queue(uri, &queue));
        // Where events behind a busy key were parked, if any were.
        let parked = format!("{queue}.retry.1000ms");
        let _ = admin.block_on(delete_queue(uri, &parked));
        let rate = result?;
        println!("ordering {name}: {rate:.0}/s");
        Ok(rate)
    };
    let (mut unordered, mut ordered) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        unordered.push(run(format!("r{round}-unordered"), false, n, KEYS)?);
        ordered.push(run(format!("r{round}-ordered"), true, n, KEYS)?);
    }
    let one_key_per_s = run("one-key".to_owned(), true, one_key_n, 1)?;
    let one_key_unparked_per_s = run("one-key-unparked".to_owned(), true, one_key_n, 1)?;
    Ok(OrderingFigures {
        n,
        unordered_per_s: median(&mut unordered),
        ordered_per_s: median(&mut ordered),
        one_key_n,
        one_key_per_s,
        one_key_unparked_per_s,
    })
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// Fills `queue` with `n` events over `keys` keys, then handles them: events per second.
/// `unparked`: with `max_waiting_per_key` as large as the window.
async fn measure(
    queue: &str,
    uri: &str,
    ordered: bool,
    n: usize,
    keys: usize,
    unparked: bool,
) -> Res<f64> {
    let options = RmqOptions::new(queue).uri(uri);
    let client = ClientProxy::new(options.clone());
    futures::stream::iter(0..n)
        .map(|i| {
            let client = &client;
            async move {
                let update = Update {
                    order_id: format!("o-{}", i % keys),
                    seq: i / keys,
                };
                client.emit("order_updated", &update).await
            }
        })
        // Ordered handlers need each key's events in sequence on the queue: one at a time then.
        .buffered(if keys == 1 { 1 } else { 1000 })
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<rmq_bus::Result<Vec<()>>>()?;
    client.close().await;

    let handled = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(tokio::sync::Notify::new());
    let handler = {
        let (handled, done) = (handled.clone(), done.clone());
        move |Payload(_update): Payload<Update>, ctx: RmqContext| {
            let (handled, done) = (handled.clone(), done.clone());
            async move {
                tokio::time::sleep(HANDLER).await;
                if handled.fetch_add(1, Ordering::Relaxed) + 1 == n {
                    done.notify_one();
                }
                ctx.ack().await
            }
        }
    };
    let service = match unparked {
        true => Microservice::new(options.max_waiting_per_key(usize::from(DEFAULT_PREFETCH))),
        false => Microservice::new(options),
    };
    let service = if ordered {
        service.on_ordered_event("order_updated", "orderId", handler)
    } else {
        service.on_event("order_updated", handler)
    };
    let started = Instant::now();
    let running = service.start().await?;
    let limit = Duration::from_secs(300);
    let finished = tokio::time::timeout(limit, done.notified()).await;
    let elapsed = started.elapsed();
    running.shutdown().await?;
    finished.map_err(|_| -> BoxError {
        format!(
            "only {} of {n} handled in {limit:?}",
            handled.load(Ordering::Relaxed)
        )
        .into()
    })?;
    Ok(n as f64 / elapsed.as_secs_f64())
}
