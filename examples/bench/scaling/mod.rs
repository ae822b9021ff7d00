//! How cost grows: rmq-bus alone, one setting of one dimension per child process (payload size,
//! registered patterns, consumed queues, concurrent requesters), each measured as the other
//! scenarios are (CPU time and peak RSS of the child), and printed as one table with ratios to
//! the smallest setting of each dimension (see [`table`]).
//!
//! The event settings run S1's pipeline (confirmed `ClientProxy::emit`s, consumed in the same
//! process with prefetch 100 and manual acks); the requester settings run S3's request/reply.
//! CPU is counted from the first publish to the last handled message (or reply), so start-up
//! (registering 10 000 handlers, opening 100 consumers) is not in the per-message figure; it is
//! in the idle RSS, taken once every consumer runs and before the first message.

mod child;
mod table;

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::report::median;
use crate::workload::IN_FLIGHT;
use crate::{Res, env_number};

pub(crate) use child::child;

/// Messages per event setting at payloads of 4 KiB and less; larger payloads get fewer, for about
/// the same bytes (see [`Setting::count`]).
pub(crate) const DEFAULT_SCALING_N: usize = 30_000;
/// Bytes of event bodies awaiting their confirm at once, at most: a thousand 1 MiB publishes in
/// flight would measure the publisher's buffers, not rmq-bus.
const IN_FLIGHT_BYTES: usize = 16 << 20;

/// One setting of one dimension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Setting {
    /// Events whose whole body (NestJS packet) is this many bytes.
    Payload(usize),
    /// This many exact patterns registered; events for the last.
    Exact(usize),
    /// This many wildcard patterns (`p<i>.*.x`) registered; events match the last only.
    Wildcards(usize),
    /// This many queues consumed by one microservice; events on the first, the others idle.
    Queues(usize),
    /// This many concurrent requesters (S3's `send` → `on_message`).
    Requesters(usize),
}

/// Every setting, in the table's order; the first of each dimension is its baseline.
pub(crate) const SETTINGS: [Setting; 13] = [
    Setting::Payload(230),
    Setting::Payload(4 << 10),
    Setting::Payload(64 << 10),
    Setting::Payload(1 << 20),
    Setting::Exact(1),
    Setting::Exact(100),
    Setting::Exact(10_000),
    Setting::Wildcards(100),
    Setting::Queues(1),
    Setting::Queues(10),
    Setting::Queues(100),
    Setting::Requesters(64),
    Setting::Requesters(1000),
];

impl Setting {
    pub(crate) fn dimension(self) -> &'static str {
        match self {
            Setting::Payload(_) => "payload",
            Setting::Exact(_) | Setting::Wildcards(_) => "patterns",
            Setting::Queues(_) => "queues",
            Setting::Requesters(_) => "requesters",
        }
    }

    /// The setting in figure keys: `scaling.<dimension>.<value>.<figure>`.
    pub(crate) fn value(self) -> String {
        match self {
            Setting::Wildcards(count) => format!("{count}w"),
            Setting::Payload(count)
            | Setting::Exact(count)
            | Setting::Queues(count)
            | Setting::Requesters(count) => count.to_string(),
        }
    }

    pub(crate) fn parse(dimension: &str, value: &str) -> Option<Self> {
        SETTINGS
            .into_iter()
            .find(|setting| setting.dimension() == dimension && setting.value() == value)
    }

    /// The setting for people.
    fn label(self) -> String {
        match self {
            Setting::Payload(bytes) if bytes >= 1 << 20 => format!("{} MiB", bytes >> 20),
            Setting::Payload(bytes) if bytes >= 1 << 10 => format!("{} KiB", bytes >> 10),
            Setting::Payload(bytes) => format!("{bytes} B"),
            Setting::Exact(count) => format!("{count} exact"),
            Setting::Wildcards(count) => format!("{count} wildcard"),
            Setting::Queues(1) => "1".to_owned(),
            Setting::Queues(count) => format!("{count} ({} idle)", count - 1),
            Setting::Requesters(count) => count.to_string(),
        }
    }

    /// Messages (or requests) of this setting's round, from `SCALING_N`: payloads above 4 KiB
    /// get proportionally fewer (a 1 MiB round of `SCALING_N` would take minutes), but never
    /// fewer than `min(n, 20)`.
    pub(crate) fn count(self, n: usize) -> usize {
        match self {
            Setting::Payload(bytes) if bytes > 4 << 10 => {
                (n.saturating_mul(4 << 10) / bytes).max(n.min(20))
            }
            _ => n,
        }
    }

    /// Publishes awaiting their confirm at once: S1's thousand, fewer for large payloads.
    pub(crate) fn in_flight(self) -> usize {
        match self {
            Setting::Payload(bytes) => (IN_FLIGHT_BYTES / bytes).clamp(1, IN_FLIGHT),
            _ => IN_FLIGHT,
        }
    }

    /// Every queue the round consumes (to delete after it): the round's own, then idle ones.
    pub(crate) fn queues(self, queue: &str) -> Vec<String> {
        let count = match self {
            Setting::Queues(count) => count,
            _ => 1,
        };
        std::iter::once(queue.to_owned())
            .chain((1..count).map(|i| format!("{queue}.idle{i}")))
            .collect()
    }
}

/// What a scaling child reports, as one JSON line on stdout.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ScalingReport {
    /// Messages, or requests, handled.
    pub(crate) n: usize,
    /// The body of one event as published (the request's, for requesters).
    pub(crate) body_bytes: usize,
    /// Messages (or requests) per second, from the first publish to the last handled.
    pub(crate) per_s: f64,
    /// CPU time over the same span, the whole process (publisher, consumer and their runtime).
    pub(crate) cpu_s: f64,
    pub(crate) peak_rss_kib: u64,
    /// RSS once every consumer runs, before the first message of the round.
    pub(crate) idle_rss_kib: u64,
    pub(crate) duplicates: u64,
}

/// Medians across rounds of one setting.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ScalingSummary {
    rounds: usize,
    n: usize,
    body_bytes: usize,
    per_s: f64,
    cpu_us_per_msg: f64,
    peak_rss_kib: f64,
    idle_rss_kib: f64,
    duplicates: u64,
}

impl ScalingSummary {
    fn of(reports: &[&ScalingReport]) -> Option<Self> {
        let figure = |f: fn(&ScalingReport) -> f64| median(reports.iter().map(|r| f(r)).collect());
        let first = reports.first()?;
        Some(Self {
            rounds: reports.len(),
            n: first.n,
            body_bytes: first.body_bytes,
            per_s: figure(|r| r.per_s)?,
            cpu_us_per_msg: figure(|r| r.cpu_s * 1e6 / r.n.max(1) as f64)?,
            peak_rss_kib: figure(|r| r.peak_rss_kib as f64)?,
            idle_rss_kib: figure(|r| r.idle_rss_kib as f64)?,
            duplicates: reports.iter().map(|r| r.duplicates).sum(),
        })
    }

    /// Megabytes (10⁶ B) of bodies per second.
    fn mb_per_s(&self) -> f64 {
        self.per_s * self.body_bytes as f64 / 1e6
    }
}

/// Runs every setting `rounds` times (settings interleaved, as the other scenarios' systems
/// are), prints the table and its figures; returns the number of failed rounds.
pub(crate) fn scaling(
    exe: &Path,
    admin: &tokio::runtime::Runtime,
    uri: &str,
    default_rounds: usize,
) -> Res<usize> {
    let n: usize = env_number("SCALING_N", DEFAULT_SCALING_N)?;
    let rounds: usize = env_number("SCALING_ROUNDS", default_rounds)?;
    if n == 0 || rounds == 0 {
        println!();
        println!("Scaling: skipped (SCALING_N=0 or SCALING_ROUNDS=0)");
        return Ok(0);
    }
    let pid = std::process::id();
    let mut reports: Vec<(Setting, ScalingReport)> = Vec::new();
    let mut failures = 0;
    for round in 1..=rounds {
        for setting in SETTINGS {
            let queue = format!(
                "rmq-bus-bench-{pid}-scaling-r{round}-{}-{}",
                setting.dimension(),
                setting.value()
            );
            let count = setting.count(n);
            let label = setting.label();
            match run_child(exe, admin, uri, setting, &queue, count) {
                Ok(report) => {
                    println!(
                        "scaling round {round}/{rounds} {:<10} {label:<16}: {:>8.0}/s  CPU {:>5.2} s  \
                         peak RSS {:>6.1} MiB",
                        setting.dimension(),
                        report.per_s,
                        report.cpu_s,
                        report.peak_rss_kib as f64 / 1024.0
                    );
                    reports.push((setting, report));
                }
                Err(error) => {
                    failures += 1;
                    println!(
                        "scaling round {round}/{rounds} {} {label}: FAILED: {error}",
                        setting.dimension()
                    );
                }
            }
        }
    }
    let summaries: Vec<(Setting, ScalingSummary)> = SETTINGS
        .into_iter()
        .filter_map(|setting| {
            let mine: Vec<&ScalingReport> = reports
                .iter()
                .filter(|(s, _)| *s == setting)
                .map(|(_, report)| report)
                .collect();
            ScalingSummary::of(&mine).map(|summary| (setting, summary))
        })
        .collect();
    table::print(&summaries, n, rounds);
    table::print_figures(&summaries);
    Ok(failures)
}

/// Runs one scaling child, then deletes its queues.
fn run_child(
    exe: &Path,
    admin: &tokio::runtime::Runtime,
    uri: &str,
    setting: Setting,
    queue: &str,
    n: usize,
) -> Res<ScalingReport> {
    let (value, n) = (setting.value(), n.to_string());
    let args = ["--scaling", setting.dimension(), &value, queue, &n];
    crate::parent::run_child(exe, admin, uri, &args, &setting.queues(queue))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setting_parses_back_from_its_key() {
        for setting in SETTINGS {
            assert_eq!(
                Setting::parse(setting.dimension(), &setting.value()),
                Some(setting)
            );
        }
    }

    #[test]
    fn large_payloads_get_fewer_messages_and_fewer_in_flight() {
        assert_eq!(Setting::Payload(230).count(20_000), 20_000);
        assert_eq!(Setting::Payload(1 << 20).count(20_000), 78);
        assert_eq!(Setting::Payload(64 << 10).count(30_000), 1875);
        assert_eq!(Setting::Payload(1 << 20).count(300), 20);
        assert_eq!(Setting::Payload(230).in_flight(), 1000);
        assert_eq!(Setting::Payload(1 << 20).in_flight(), 16);
        assert_eq!(Setting::Queues(3).queues("q"), ["q", "q.idle1", "q.idle2"]);
    }
}
