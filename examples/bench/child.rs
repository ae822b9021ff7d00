//! A child process: one system, one scenario, one round (`--child <system> <scenario> <queue>
//! <n>`), reported as one JSON line on stdout.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use crate::admin::{Drain, declare_queue, ready_messages};
use crate::measure::{Broker, Recorder, cpu_seconds, peak_rss_kib, percentile};
use crate::payload::make_event;
use crate::report::Report;
use crate::systems::{Consumer, Publisher, RawPublisher};
use crate::workload::{IN_FLIGHT, Scenario, System, forward_queue};
use crate::{Res, broker_uri, env_number};

/// The limit on one round, unless `BENCH_TIMEOUT_S` says otherwise.
pub(crate) const DEFAULT_TIMEOUT_S: u64 = 300;

/// A child's logs go to stderr, which the parent passes through (`RUST_LOG`, default `warn`).
pub(crate) fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// `--child <system> <scenario> <queue> <n>`: runs one round and prints its [`Report`].
pub(crate) fn child(args: &[String]) -> Res<()> {
    let [system, scenario, queue, n] = args else {
        return Err("usage: bench --child <system> <scenario> <queue> <n>".into());
    };
    let system = System::parse(system).ok_or_else(|| format!("unknown system {system:?}"))?;
    let scenario =
        Scenario::parse(scenario).ok_or_else(|| format!("unknown scenario {scenario:?}"))?;
    let n: usize = n.parse().map_err(|_| format!("bad message count {n:?}"))?;
    if n == 0 {
        return Err("the message count must be at least 1".into());
    }
    if !scenario.systems().contains(&system) {
        return Err(format!("{scenario} does not run {system}").into());
    }
    init_logging();
    let timeout = Duration::from_secs(env_number("BENCH_TIMEOUT_S", DEFAULT_TIMEOUT_S)?);
    // The exporter as an application installs it, before rmq-bus starts; scraped once at the end.
    let exporter = match system {
        System::RmqBusPrometheus => Some(
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .with_recommended_naming(true)
                .install_recorder()?,
        ),
        _ => None,
    };
    let uri = broker_uri();
    // `S4_DRAIN=1`: S4's second queue is consumed as it fills.
    let drain = scenario.drains_backlog() && env_number("S4_DRAIN", 0u8)? == 1;
    // Two workers on this 2-core machine; the same runtime for every system.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let round = run_child(system, scenario, &uri, queue, n, timeout, drain);
    let report = runtime.block_on(round)?;
    runtime.shutdown_timeout(Duration::from_secs(5));
    if let Some(exporter) = exporter
        && !exporter
            .render()
            .contains("messaging_client_sent_messages_total")
    {
        return Err("the Prometheus exporter recorded nothing (feature `metrics` off?)".into());
    }
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// One round; with `drain`, a consumer takes S4's forwarded events as they arrive (its CPU is
/// the child's).
async fn run_child(
    system: System,
    scenario: Scenario,
    uri: &str,
    queue: &str,
    n: usize,
    timeout: Duration,
    drain: bool,
) -> Res<Report> {
    let recorder = Arc::new(Recorder::new(n));
    // S4 drains a backlog: its events are published (by the same raw publisher for every
    // system) before the clock starts, and that publishing's CPU time is not the system's.
    let mut cpu_before = 0.0;
    if scenario.drains_backlog() {
        // Declared by the parent already; this lets a child run alone (under callgrind, say).
        declare_queue(uri, queue).await?;
        declare_queue(uri, &forward_queue(queue)).await?;
        preload(uri, queue, &recorder).await?;
        hold_after_preload().await?;
        cpu_before = cpu_seconds()?;
    }
    let drainer = match drain {
        true => Some(Drain::start(uri, &forward_queue(queue)).await?),
        false => None,
    };
    let broker = Broker::find();
    let broker_before = broker.as_ref().and_then(Broker::cpu_seconds);
    let consumer = Consumer::start(system, scenario, uri, queue, &recorder).await?;
    let publisher = Arc::new(Publisher::open(system, uri, queue).await?);

    let start_ns = recorder.now_ns();
    let publishing = match scenario.drains_backlog() {
        true => tokio::spawn(std::future::ready(start_ns)),
        false => tokio::spawn(publish_all(
            publisher.clone(),
            recorder.clone(),
            scenario.rate(),
        )),
    };
    let work = async {
        let handled_ns = recorder.wait().await?;
        let published_ns = publishing
            .await
            .map_err(|e| format!("publisher task: {e}"))?;
        Ok::<_, String>((published_ns, handled_ns))
    };
    let (published_ns, handled_ns) = match tokio::time::timeout(timeout, work).await {
        // In S4 every handled event was one confirmed publish.
        Ok(Ok((_, handled_ns))) if scenario.drains_backlog() => (handled_ns, handled_ns),
        Ok(Ok(times)) => times,
        Ok(Err(error)) => return Err(error.into()),
        Err(_) => {
            return Err(format!(
                "timed out after {timeout:?}: {} of {n} messages handled, {} duplicates \
                 (set BENCH_TIMEOUT_S)",
                recorder.distinct(),
                recorder.duplicates()
            )
            .into());
        }
    };
    if let Some(failure) = recorder.failure() {
        return Err(failure.into());
    }
    let cpu_s = cpu_seconds()? - cpu_before;
    let broker_cpu_s = broker_before
        .zip(broker.as_ref().and_then(Broker::cpu_seconds))
        .map(|(before, after)| after - before);

    consumer.stop().await?;
    if scenario.drains_backlog() {
        // Every event was sent on, confirmed, before its ack: the second queue holds them all,
        // or had them taken.
        let taken = match drainer {
            Some(drainer) => drainer.stop().await,
            None => 0,
        };
        let forwarded = u64::from(ready_messages(uri, &forward_queue(queue)).await?) + taken;
        if (forwarded as usize) < n {
            return Err(format!("{forwarded} of {n} events were sent on").into());
        }
    }
    if let Ok(publisher) = Arc::try_unwrap(publisher) {
        publisher.close().await;
    }
    let latencies = recorder.sorted_latencies();
    let rate = |end_ns: u64| n as f64 / (end_ns.saturating_sub(start_ns).max(1) as f64 / 1e9);
    Ok(Report {
        system: system.name().to_owned(),
        scenario: scenario.name().to_owned(),
        n,
        publish_per_s: rate(published_ns),
        e2e_per_s: rate(handled_ns),
        p50_ms: percentile(&latencies, 50.0) as f64 / 1e6,
        p99_ms: percentile(&latencies, 99.0) as f64 / 1e6,
        p999_ms: percentile(&latencies, 99.9) as f64 / 1e6,
        cpu_s,
        broker_cpu_s,
        peak_rss_kib: peak_rss_kib()?,
        duplicates: recorder.duplicates() as u64,
    })
}

/// Publishes `recorder.n` events, up to [`IN_FLIGHT`] at once, as fast as confirms allow or, in
/// an open loop, event `i` at `i / rate` seconds whatever the earlier ones are doing; returns
/// when the last is confirmed, in ns since the recorder's epoch.
async fn publish_all(publisher: Arc<Publisher>, recorder: Arc<Recorder>, rate: Option<u32>) -> u64 {
    let start = tokio::time::Instant::now();
    futures::stream::iter(0..recorder.n)
        .for_each_concurrent(IN_FLIGHT, |i| {
            let (publisher, recorder) = (&publisher, &recorder);
            async move {
                if let Some(rate) = rate {
                    let due = Duration::from_secs_f64(i as f64 / f64::from(rate));
                    tokio::time::sleep_until(start + due).await;
                }
                // Stamped as it is handed to the publisher: the latency is the library's and the
                // broker's, not the timer's lateness.
                let event = make_event(i, recorder.now_ns());
                if let Err(error) = publisher.publish(event).await {
                    recorder.fail(error);
                }
            }
        })
        .await;
    recorder.now_ns()
}

/// With `BENCH_HOLD=1`, says `preloaded` on stderr and waits for a line on stdin (or its end): a
/// measuring script (`scripts/footprint.py`) zeroes callgrind's counters in between, so that its
/// figures leave the preload out. What the round pays once after it, the script cancels out with
/// rounds of two sizes.
async fn hold_after_preload() -> Res<()> {
    if env_number("BENCH_HOLD", 0u8)? != 1 {
        return Ok(());
    }
    eprintln!("preloaded");
    tokio::task::spawn_blocking(|| std::io::stdin().read_line(&mut String::new()))
        .await
        .map_err(|e| format!("waiting on stdin: {e}"))??;
    Ok(())
}

/// Puts S4's backlog in the queue: `recorder.n` events, published and confirmed by one raw
/// publisher, up to [`IN_FLIGHT`] at once.
async fn preload(uri: &str, queue: &str, recorder: &Recorder) -> Res<()> {
    let publisher = RawPublisher::open(uri, queue).await?;
    let sender = &publisher;
    let failed = futures::stream::iter(0..recorder.n)
        .map(|i| {
            let event = make_event(i, recorder.now_ns());
            async move { sender.publish(&event).await }
        })
        .buffer_unordered(IN_FLIGHT)
        .filter_map(|published| std::future::ready(published.err()))
        .next()
        .await;
    publisher.close().await;
    match failed {
        None => Ok(()),
        Some(error) => Err(format!("preloading the backlog: {error}").into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::delete_queue;
    use crate::payload::correlation_id;

    /// A drained S4 round counts the events its consumer took, and still checks that every event
    /// was sent on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_drained_s4_round_counts_the_events_taken() -> Res<()> {
        let uri = broker_uri();
        let queue = format!("test-bench-drain-{}", correlation_id());
        let forward = forward_queue(&queue);
        let timeout = Duration::from_secs(60);
        let round = run_child(
            System::Expert,
            Scenario::S4,
            &uri,
            &queue,
            200,
            timeout,
            true,
        )
        .await;
        let left = ready_messages(&uri, &forward).await;
        delete_queue(&uri, &queue).await?;
        delete_queue(&uri, &forward).await?;
        assert_eq!(round?.n, 200);
        // The last few may still be on their way to the drain when it stops.
        assert!(left? < 200, "the drain took no forwarded event");
        Ok(())
    }
}
