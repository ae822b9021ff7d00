//! Measurement, identical for every system: the [`Recorder`] every handler records into, the
//! handler body itself, percentiles, and the process's CPU time and peak RSS.

use std::fmt;
use std::hint::black_box;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::Res;
use crate::payload::OrderEvent;

/// Linux reports process CPU times in clock ticks of `USER_HZ`, which is 100 on every
/// architecture Linux supports for user space (`sysconf(_SC_CLK_TCK)`); std cannot ask.
const USER_HZ: f64 = 100.0;

/// What the handlers of all systems record into: latencies, which messages were handled,
/// completion.
pub(crate) struct Recorder {
    epoch: Instant,
    /// Messages in the round, indexed `0..n`.
    pub(crate) n: usize,
    latencies: Vec<AtomicU64>,
    received: AtomicUsize,
    /// One bit per message index, set when the message is first handled: a bitset rather than a
    /// set so that recording costs every system one atomic `or`, no hashing, no allocation.
    handled: Vec<AtomicU64>,
    /// Messages handled at least once; the round is complete when all `n` are.
    distinct: AtomicUsize,
    /// Handlings of a message already handled (redeliveries), which do not count towards `n`.
    duplicates: AtomicUsize,
    /// When the last distinct message was handled; 0 until then.
    completed_ns: AtomicU64,
    complete: Notify,
    failure: Mutex<Option<String>>,
}

impl Recorder {
    pub(crate) fn new(n: usize) -> Self {
        Self {
            epoch: Instant::now(),
            n,
            latencies: (0..n).map(|_| AtomicU64::new(0)).collect(),
            received: AtomicUsize::new(0),
            handled: (0..n.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            distinct: AtomicUsize::new(0),
            duplicates: AtomicUsize::new(0),
            completed_ns: AtomicU64::new(0),
            complete: Notify::new(),
            failure: Mutex::new(None),
        }
    }

    pub(crate) fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// A handler started on a message sent at `sent_ns`.
    fn received(&self, sent_ns: u64) {
        let latency = self.now_ns().saturating_sub(sent_ns);
        let slot = self.received.fetch_add(1, Ordering::Relaxed);
        if let Some(slot) = self.latencies.get(slot) {
            slot.store(latency, Ordering::Relaxed);
        }
    }

    /// A handler finished its work on message `index` (and is about to settle it).
    fn handled(&self, index: usize) {
        let word = self.handled.get(index / 64).filter(|_| index < self.n);
        let Some(word) = word else {
            self.fail(format!("message index {index} is not in 0..{}", self.n));
            return;
        };
        let bit = 1u64 << (index % 64);
        if word.fetch_or(bit, Ordering::AcqRel) & bit != 0 {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if self.distinct.fetch_add(1, Ordering::AcqRel) + 1 == self.n {
            // Never 0, which means "not complete".
            self.completed_ns
                .store(self.now_ns().max(1), Ordering::Release);
            self.complete.notify_one();
        }
    }

    /// Messages handled at least once.
    pub(crate) fn distinct(&self) -> usize {
        self.distinct.load(Ordering::Acquire)
    }

    /// Handlings of messages handled before.
    pub(crate) fn duplicates(&self) -> usize {
        self.duplicates.load(Ordering::Acquire)
    }

    /// When the last distinct message was handled, in ns since the epoch, once all were.
    pub(crate) fn completed_ns(&self) -> Option<u64> {
        Some(self.completed_ns.load(Ordering::Acquire)).filter(|&ns| ns > 0)
    }

    /// Fails the round (the first failure is the one reported) and wakes the waiter.
    pub(crate) fn fail(&self, what: impl fmt::Display) {
        if let Ok(mut failure) = self.failure.lock() {
            failure.get_or_insert_with(|| what.to_string());
        }
        self.complete.notify_one();
    }

    pub(crate) fn failure(&self) -> Option<String> {
        self.failure.lock().ok().and_then(|failure| failure.clone())
    }

    /// Waits until every message is handled or something failed; returns when the last
    /// message was handled.
    pub(crate) async fn wait(&self) -> Result<u64, String> {
        loop {
            if let Some(failure) = self.failure() {
                return Err(failure);
            }
            if let Some(completed_ns) = self.completed_ns() {
                return Ok(completed_ns);
            }
            self.complete.notified().await;
        }
    }

    /// Sorted latencies of the messages received, in ns.
    pub(crate) fn sorted_latencies(&self) -> Vec<u64> {
        let count = self.received.load(Ordering::Acquire).min(self.n);
        let mut latencies: Vec<u64> = self.latencies[..count]
            .iter()
            .map(|latency| latency.load(Ordering::Relaxed))
            .collect();
        latencies.sort_unstable();
        latencies
    }
}

/// The handler body of every system: record the latency, do the scenario's work, record which
/// message was handled.
pub(crate) async fn handle(recorder: &Recorder, event: &OrderEvent, delay: Option<Duration>) {
    recorder.received(event.sent_ns);
    black_box(event);
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    match event.index() {
        Some(index) => recorder.handled(index),
        None => recorder.fail("an event whose order id holds no message index"),
    }
}

/// The handler body of the scaling rounds, whose events are not [`OrderEvent`]s: message
/// `index`, sent at `sent_ns`, handled.
pub(crate) fn record(recorder: &Recorder, sent_ns: u64, index: usize) {
    recorder.received(sent_ns);
    recorder.handled(index);
}

/// Nearest-rank percentile of sorted values; `p` is in percent (50.0 for the median).
pub(crate) fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    // p × len first: with whole percents the product is exact, and so is the rank.
    let rank = (p * sorted.len() as f64 / 100.0).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// utime + stime of this process, in seconds (`/proc/self/stat` fields 14 and 15).
pub(crate) fn cpu_seconds() -> Res<f64> {
    stat_cpu_seconds(&std::fs::read_to_string("/proc/self/stat")?)
}

/// The RabbitMQ node on this machine, whose CPU time a round reads before and after: the
/// broker does most of the work of a round, more than any client, and its CPU per message shows
/// whether a system makes it work harder.
pub(crate) struct Broker {
    stat: std::path::PathBuf,
}

impl Broker {
    /// The `beam.smp` process that has used the most CPU (a `rabbitmqctl` runs one too, briefly);
    /// `None` without one (a remote broker).
    pub(crate) fn find() -> Option<Self> {
        std::fs::read_dir("/proc")
            .ok()?
            .flatten()
            .filter(|entry| {
                std::fs::read_to_string(entry.path().join("comm"))
                    .is_ok_and(|comm| comm.trim() == "beam.smp")
            })
            .map(|entry| Broker {
                stat: entry.path().join("stat"),
            })
            .filter_map(|broker| Some((broker.cpu_seconds()?, broker)))
            .max_by(|(a, _), (b, _)| a.total_cmp(b))
            .map(|(_, broker)| broker)
    }

    /// Its utime + stime so far, in seconds; `None` once it is gone.
    pub(crate) fn cpu_seconds(&self) -> Option<f64> {
        stat_cpu_seconds(&std::fs::read_to_string(&self.stat).ok()?).ok()
    }
}

/// utime + stime, in seconds, of a process's `/proc/<pid>/stat` line (fields 14 and 15).
fn stat_cpu_seconds(stat: &str) -> Res<f64> {
    // Field 2, the command name, is parenthesised and may hold spaces: count from after it.
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or("unexpected /proc/<pid>/stat format")?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // after_name starts at field 3, so field k is fields[k - 3].
    let ticks = |k: usize| -> Res<u64> {
        Ok(fields
            .get(k - 3)
            .ok_or("short /proc/<pid>/stat")?
            .parse::<u64>()?)
    };
    Ok((ticks(14)? + ticks(15)?) as f64 / USER_HZ)
}

/// Peak resident set size of this process, in KiB (`VmHWM` of `/proc/self/status`).
pub(crate) fn peak_rss_kib() -> Res<u64> {
    status_kib("VmHWM:")
}

/// Resident set size of this process now, in KiB (`VmRSS` of `/proc/self/status`).
pub(crate) fn rss_kib() -> Res<u64> {
    status_kib("VmRSS:")
}

/// A `<field> <n> kB` line of `/proc/self/status`, in KiB.
fn status_kib(field: &str) -> Res<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|line| line.starts_with(field))
        .ok_or_else(|| format!("no {field} in /proc/self/status"))?;
    Ok(line
        .trim_start_matches(field)
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_takes_percent() {
        let values: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&values, 50.0), 50);
        assert_eq!(percentile(&values, 99.0), 99);
        assert_eq!(percentile(&values, 100.0), 100);
        assert_eq!(percentile(&values, 1.0), 1);
        // The old S3 call: 0.5 is the 0.5th percentile, the smallest value here.
        assert_eq!(percentile(&values, 0.5), 1);
    }

    #[test]
    fn percentile_of_few_values() {
        assert_eq!(percentile(&[], 50.0), 0);
        assert_eq!(percentile(&[7], 0.0), 7);
        assert_eq!(percentile(&[7], 50.0), 7);
        assert_eq!(percentile(&[7], 99.0), 7);
        assert_eq!(percentile(&[7], 100.0), 7);
        let ten: Vec<u64> = (1..=10).collect();
        assert_eq!(percentile(&ten, 50.0), 5);
        assert_eq!(percentile(&ten, 99.0), 10);
    }

    #[test]
    fn a_round_completes_on_distinct_messages_only() {
        let recorder = Recorder::new(3);
        recorder.handled(0);
        recorder.handled(0);
        recorder.handled(2);
        recorder.handled(2);
        assert_eq!((recorder.distinct(), recorder.duplicates()), (2, 2));
        assert_eq!(recorder.completed_ns(), None);
        recorder.handled(1);
        assert_eq!((recorder.distinct(), recorder.duplicates()), (3, 2));
        assert!(recorder.completed_ns().is_some());
        assert_eq!(recorder.failure(), None);
    }

    #[test]
    fn an_index_out_of_the_round_fails_it() {
        // 3 messages share one bitset word with room for 64: index 3 must not count.
        let recorder = Recorder::new(3);
        recorder.handled(3);
        assert_eq!(recorder.distinct(), 0);
        assert!(recorder.failure().is_some());
    }
}
