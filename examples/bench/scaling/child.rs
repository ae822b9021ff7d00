//! A scaling child (`--scaling <dimension> <value> <queue> <n>`): one setting, one round,
//! reported as one JSON line on stdout.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use rmq_bus::{ClientProxy, Microservice, Pattern, Payload, RmqContext, RmqOptions, RpcError};
use serde::{Deserialize, Serialize};

use super::{ScalingReport, Setting};
use crate::child::{DEFAULT_TIMEOUT_S, init_logging};
use crate::measure::{Recorder, cpu_seconds, peak_rss_kib, record, rss_kib};
use crate::s3::concurrent_echoes;
use crate::workload::PREFETCH;
use crate::{Res, broker_uri, env_number};

/// The pattern of every event round but the pattern settings.
const EVENT: &str = "scaled";

/// An event of a given size, as handled: its index and send time in a fixed-width key (so that
/// every body of a round has the same length), and padding.
#[derive(Deserialize)]
struct Padded {
    key: String,
    // Read, as an application reads its data, though nothing looks at it.
    #[allow(dead_code)]
    pad: String,
}

/// The same event as sent: the padding is borrowed, so that the bench does not copy it per
/// message (rmq-bus's copies are what is measured).
#[derive(Serialize)]
struct PaddedOut<'a> {
    key: String,
    pad: &'a str,
}

impl<'a> PaddedOut<'a> {
    fn new(index: usize, sent_ns: u64, pad: &'a str) -> Self {
        Self {
            key: format!("{index:012}:{sent_ns:020}"),
            pad,
        }
    }
}

impl Padded {
    /// (index, sent_ns) back from the key.
    fn parse(&self) -> Option<(usize, u64)> {
        let (index, sent_ns) = self.key.split_once(':')?;
        Some((index.parse().ok()?, sent_ns.parse().ok()?))
    }
}

/// `--scaling <dimension> <value> <queue> <n>`: runs one setting and prints its report.
pub(crate) fn child(args: &[String]) -> Res<()> {
    let [dimension, value, queue, n] = args else {
        return Err("usage: bench --scaling <dimension> <value> <queue> <n>".into());
    };
    let setting = Setting::parse(dimension, value)
        .ok_or_else(|| format!("unknown scaling setting {dimension} {value}"))?;
    let n: usize = n.parse().map_err(|_| format!("bad message count {n:?}"))?;
    if n == 0 {
        return Err("the message count must be at least 1".into());
    }
    init_logging();
    let timeout = Duration::from_secs(env_number("BENCH_TIMEOUT_S", DEFAULT_TIMEOUT_S)?);
    let uri = broker_uri();
    // The same runtime as the other children: two workers on this 2-core machine.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let round = async {
        match setting {
            Setting::Requesters(requesters) => requests(&uri, queue, requesters, n).await,
            _ => events(setting, &uri, queue, n).await,
        }
    };
    let report = runtime
        .block_on(async { tokio::time::timeout(timeout, round).await })
        .map_err(|_| format!("timed out after {timeout:?} (set BENCH_TIMEOUT_S)"))??;
    runtime.shutdown_timeout(Duration::from_secs(5));
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// The patterns a setting registers, and the index of the one its events carry (the last).
fn patterns(setting: Setting) -> (Vec<String>, usize) {
    let patterns: Vec<String> = match setting {
        Setting::Exact(count) => (0..count).map(|i| format!("{EVENT}-{i}")).collect(),
        Setting::Wildcards(count) => (0..count).map(|i| format!("p{i}.*.x")).collect(),
        _ => vec![EVENT.to_owned()],
    };
    let target = patterns.len().saturating_sub(1);
    (patterns, target)
}

/// The pattern events are sent with: the target itself, or a key only the last wildcard matches.
fn sent_pattern(setting: Setting, target: &str) -> String {
    match setting {
        Setting::Wildcards(_) => target.replace('*', "m"),
        _ => target.to_owned(),
    }
}

/// S1's pipeline under `setting`: `n` confirmed emits, handled and acked by a microservice.
async fn events(setting: Setting, uri: &str, queue: &str, n: usize) -> Res<ScalingReport> {
    let recorder = Arc::new(Recorder::new(n));
    let (patterns, target) = patterns(setting);
    let options = |queue: &str| RmqOptions::new(queue).uri(uri).prefetch(PREFETCH);
    let mut service = Microservice::new(options(queue));
    for idle in setting.queues(queue).iter().skip(1) {
        service = service.queue(options(idle));
    }
    for (i, pattern) in patterns.iter().enumerate() {
        let recorder = recorder.clone();
        service = service.on_event(
            pattern.as_str(),
            move |Payload(event): Payload<Padded>, ctx: RmqContext| {
                let recorder = recorder.clone();
                async move {
                    match event.parse() {
                        Some((index, sent_ns)) if i == target => {
                            record(&recorder, sent_ns, index);
                        }
                        Some(_) => recorder
                            .fail(format!("pattern {i} handled an event for pattern {target}")),
                        None => recorder.fail(format!("an event with a bad key {:?}", event.key)),
                    }
                    ctx.ack().await
                }
            },
        );
    }
    let running = service.start().await?;
    let client = ClientProxy::new(RmqOptions::new(queue).uri(uri));
    client.connect().await?;
    let sent = sent_pattern(setting, &patterns[target]);
    // The body's length without padding, with the widest key: the padding makes up the rest.
    let bare = serde_json::to_vec(&serde_json::json!({
        "pattern": sent,
        "data": PaddedOut::new(0, 0, ""),
    }))?
    .len();
    let pad = "x".repeat(match setting {
        Setting::Payload(bytes) => bytes.saturating_sub(bare),
        _ => 230usize.saturating_sub(bare),
    });
    let body_bytes = bare + pad.len();
    // Typed contracts' patterns are borrowed; this one is made once for the round as well.
    let pattern = Pattern::from_static(Box::leak(sent.into_boxed_str()));

    let idle_rss_kib = rss_kib()?;
    let cpu_before = cpu_seconds()?;
    let start_ns = recorder.now_ns();
    let publishing = {
        let (client, recorder, pad) = (&client, &recorder, pad.as_str());
        futures::stream::iter(0..n).for_each_concurrent(setting.in_flight(), move |i| {
            let pattern = pattern.clone();
            let event = PaddedOut::new(i, recorder.now_ns(), pad);
            async move {
                if let Err(error) = client.emit(pattern, &event).await {
                    recorder.fail(format!("emit: {error}"));
                }
            }
        })
    };
    let (handled, ()) = futures::join!(recorder.wait(), publishing);
    let handled_ns = handled?;
    let cpu_s = cpu_seconds()? - cpu_before;
    running.shutdown().await?;
    client.close().await;
    Ok(ScalingReport {
        n,
        body_bytes,
        per_s: n as f64 / (handled_ns.saturating_sub(start_ns).max(1) as f64 / 1e9),
        cpu_s,
        peak_rss_kib: peak_rss_kib()?,
        idle_rss_kib,
        duplicates: recorder.duplicates() as u64,
    })
}

/// S3's request/reply with `requesters` concurrent requesters, `n` requests in all (rounded up
/// to a multiple of `requesters`); every reply must echo its request.
async fn requests(uri: &str, queue: &str, requesters: usize, n: usize) -> Res<ScalingReport> {
    let running = Microservice::new(RmqOptions::new(queue).uri(uri))
        .on_message("echo", |Payload(n): Payload<u64>| async move {
            Ok::<_, RpcError>(n)
        })
        .start()
        .await?;
    let client = ClientProxy::new(RmqOptions::new(queue).uri(uri));
    let _: u64 = client.send("echo", &0u64).await?; // connects and starts the reply consumer
    let per_requester = n.div_ceil(requesters) as u64;
    let idle_rss_kib = rss_kib()?;
    let cpu_before = cpu_seconds()?;
    let started = Instant::now();
    concurrent_echoes(&client, requesters as u64, per_requester).await?;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_s = cpu_seconds()? - cpu_before;
    let total = per_requester as usize * requesters;
    client.close().await;
    running.shutdown().await?;
    let body_bytes = serde_json::to_vec(&serde_json::json!({
        "pattern": "echo",
        "data": total,
        "id": "00000000-0000-0000-0000-000000000000",
    }))?
    .len();
    Ok(ScalingReport {
        n: total,
        body_bytes,
        per_s: total as f64 / elapsed.max(1e-9),
        cpu_s,
        peak_rss_kib: peak_rss_kib()?,
        idle_rss_kib,
        duplicates: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_padded_event_carries_its_index_and_time_in_a_fixed_width() {
        let sent = serde_json::to_vec(&PaddedOut::new(42, 7, "xx")).unwrap_or_default();
        let event: Option<Padded> = serde_json::from_slice(&sent).ok();
        assert_eq!(event.and_then(|event| event.parse()), Some((42, 7)));
        let widest = PaddedOut::new(999_999_999_999, u64::MAX, "xx");
        assert_eq!(
            serde_json::to_vec(&widest).map(|body| body.len()).ok(),
            Some(sent.len())
        );
    }

    #[test]
    fn only_the_last_wildcard_matches_what_is_sent() {
        let (patterns, target) = patterns(Setting::Wildcards(100));
        assert_eq!((patterns.len(), target), (100, 99));
        assert_eq!(
            sent_pattern(Setting::Wildcards(100), &patterns[target]),
            "p99.m.x"
        );
    }
}
