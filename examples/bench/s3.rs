//! S3 request/reply through rmq-bus (`send` → `on_message`, direct reply-to): sequential round
//! trips (p50, p99), then the rate of 64 concurrent requesters. It runs in the parent process:
//! request latency, not CPU or memory, is what S3 measures.

use std::time::Instant;

use rmq_bus::{ClientProxy, Microservice, Payload, RmqOptions};

use crate::admin::delete_queue;
use crate::measure::percentile;
use crate::{BoxError, Res};

/// Concurrent requesters in the second part.
const REQUESTERS: u64 = 64;

/// What S3 measured.
pub(crate) struct S3Figures {
    /// Sequential round trips; the concurrent part sends this many, rounded up to a multiple of
    /// [`REQUESTERS`].
    pub(crate) n: usize,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) concurrent_per_s: f64,
}

impl S3Figures {
    pub(crate) fn print(&self) {
        let Self {
            n,
            p50_ms,
            p99_ms,
            concurrent_per_s,
        } = self;
        println!();
        println!("S3 request/reply (rmq-bus send → #[message_pattern], direct reply-to) — N={n}");
        println!(
            "  sequential round trip p50 {p50_ms:.3} ms  p99 {p99_ms:.3} ms (target p50 ≤ 1 ms)"
        );
        println!("  {REQUESTERS} concurrent requesters: {concurrent_per_s:.0} requests/s");
    }
}

/// Runs S3 with `n` requests on a queue of its own, deleted after. Every reply must echo its
/// request, or S3 fails.
pub(crate) fn request_reply(
    admin: &tokio::runtime::Runtime,
    uri: &str,
    n: usize,
) -> Res<S3Figures> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let queue = format!("rmq-bus-bench-{}-s3", std::process::id());
    let result = runtime.block_on(measure(&queue, uri, n));
    let _ = admin.block_on(delete_queue(uri, &queue));
    result
}

async fn measure(queue: &str, uri: &str, n: usize) -> Res<S3Figures> {
    let running = Microservice::new(RmqOptions::new(queue).uri(uri))
        .on_message("echo", |Payload(n): Payload<u64>| async move {
            Ok::<_, rmq_bus::RpcError>(n)
        })
        .start()
        .await?;
    let client = ClientProxy::new(RmqOptions::new(queue).uri(uri));
    let _: u64 = client.send("echo", &0u64).await?; // connects and starts the reply consumer
    let mut round_trips = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let started = Instant::now();
        let echoed: u64 = client.send("echo", &i).await?;
        round_trips.push(started.elapsed().as_nanos() as u64);
        if echoed != i {
            return Err(format!("reply {echoed} to request {i}").into());
        }
    }
    round_trips.sort_unstable();
    let started = Instant::now();
    let per_requester = n.div_ceil(REQUESTERS as usize) as u64;
    concurrent_echoes(&client, REQUESTERS, per_requester).await?;
    let concurrent_per_s = (per_requester * REQUESTERS) as f64 / started.elapsed().as_secs_f64();
    client.close().await;
    running.shutdown().await?;
    let ms = |ns: u64| ns as f64 / 1e6;
    Ok(S3Figures {
        n,
        p50_ms: ms(percentile(&round_trips, 50.0)),
        p99_ms: ms(percentile(&round_trips, 99.0)),
        concurrent_per_s,
    })
}

/// `requesters` concurrent requesters, each sending `per_requester` echo requests one after the
/// other (requester `r` sends `r × per_requester + i`); every reply must echo its request.
pub(crate) async fn concurrent_echoes(
    client: &ClientProxy,
    requesters: u64,
    per_requester: u64,
) -> Res<()> {
    let each = (0..requesters).map(|r| async move {
        for i in 0..per_requester {
            let request = r * per_requester + i;
            let echoed: u64 = client.send("echo", &request).await?;
            if echoed != request {
                return Err(format!("requester {r}: reply {echoed} to request {request}").into());
            }
        }
        Ok::<_, BoxError>(())
    });
    for outcome in futures::future::join_all(each).await {
        outcome?;
    }
    Ok(())
}
