//! What rounds report and how the parent shows it: the child's JSON [`Report`], medians across
//! rounds, the tables and ratios for people, and the `figure` lines for scripts.

use std::fmt::Display;

use serde::{Deserialize, Serialize};

use crate::s3::S3Figures;
use crate::workload::{SLOW_HANDLER, Scenario, System};

/// What a child reports, as one JSON line on stdout.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Report {
    pub(crate) system: String,
    pub(crate) scenario: String,
    pub(crate) n: usize,
    pub(crate) publish_per_s: f64,
    pub(crate) e2e_per_s: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) p999_ms: f64,
    /// utime + stime of the child from its start to the last handled and confirmed message.
    pub(crate) cpu_s: f64,
    /// utime + stime of the local broker from just before the consumer starts (after S4's
    /// preload) to the last handled message; `None` with a remote broker.
    #[serde(default)]
    pub(crate) broker_cpu_s: Option<f64>,
    pub(crate) peak_rss_kib: u64,
    /// Handlings of messages already handled (redeliveries); they did not count towards `n`.
    pub(crate) duplicates: u64,
}

impl Report {
    fn cpu_us_per_msg(&self) -> f64 {
        self.cpu_s * 1e6 / self.n as f64
    }

    fn broker_cpu_us_per_msg(&self) -> Option<f64> {
        self.broker_cpu_s.map(|cpu_s| cpu_s * 1e6 / self.n as f64)
    }

    fn peak_rss_mib(&self) -> f64 {
        self.peak_rss_kib as f64 / 1024.0
    }
}

/// Median of each figure across a system's successful rounds.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Summary {
    rounds: usize,
    publish_per_s: f64,
    e2e_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    cpu_s: f64,
    cpu_us_per_msg: f64,
    /// `NaN` when no round saw the broker's CPU.
    broker_cpu_us_per_msg: f64,
    peak_rss_mib: f64,
    /// Summed, not a median: any is worth seeing.
    duplicates: u64,
}

pub(crate) fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let len = values.len();
    match len {
        0 => None,
        _ if len % 2 == 1 => Some(values[len / 2]),
        _ => Some((values[len / 2 - 1] + values[len / 2]) / 2.0),
    }
}

fn summarize(reports: &[&Report]) -> Option<Summary> {
    let figure = |f: fn(&Report) -> f64| median(reports.iter().map(|r| f(r)).collect());
    Some(Summary {
        rounds: reports.len(),
        publish_per_s: figure(|r| r.publish_per_s)?,
        e2e_per_s: figure(|r| r.e2e_per_s)?,
        p50_ms: figure(|r| r.p50_ms)?,
        p99_ms: figure(|r| r.p99_ms)?,
        p999_ms: figure(|r| r.p999_ms)?,
        cpu_s: figure(|r| r.cpu_s)?,
        cpu_us_per_msg: figure(Report::cpu_us_per_msg)?,
        broker_cpu_us_per_msg: median(
            reports
                .iter()
                .filter_map(|r| r.broker_cpu_us_per_msg())
                .collect(),
        )
        .unwrap_or(f64::NAN),
        peak_rss_mib: figure(Report::peak_rss_mib)?,
        duplicates: reports.iter().map(|r| r.duplicates).sum(),
    })
}

/// Every successful round's report.
#[derive(Default)]
pub(crate) struct Rounds {
    reports: Vec<(Scenario, System, Report)>,
}

impl Rounds {
    pub(crate) fn add(&mut self, scenario: Scenario, system: System, report: Report) {
        self.reports.push((scenario, system, report));
    }

    /// The medians of a system in a scenario; `None` without a successful round.
    fn summary(&self, scenario: Scenario, system: System) -> Option<Summary> {
        let mine: Vec<&Report> = self
            .reports
            .iter()
            .filter(|(sc, sy, _)| *sc == scenario && *sy == system)
            .map(|(_, _, report)| report)
            .collect();
        summarize(&mine)
    }

    /// Figure `f` of a system's summary; `None` without a successful round, or when the figure
    /// is absent (`NaN`: the broker's CPU, with a remote broker).
    fn get(&self, scenario: Scenario, system: System, f: fn(&Summary) -> f64) -> Option<f64> {
        self.summary(scenario, system)
            .map(|s| f(&s))
            .filter(|figure| !figure.is_nan())
    }
}

/// The progress line of one successful round.
pub(crate) fn print_round(
    round: usize,
    rounds: usize,
    scenario: Scenario,
    system: System,
    report: &Report,
) {
    println!(
        "round {round}/{rounds} {scenario} {system:<13}: publish {:>7.0}/s  \
         e2e {:>7.0}/s  p50 {:>7.2} ms  p99 {:>7.2} ms  p99.9 {:>7.2} ms  CPU {:>5.2} s  \
         RSS {:>5.1} MiB{}",
        report.publish_per_s,
        report.e2e_per_s,
        report.p50_ms,
        report.p99_ms,
        report.p999_ms,
        report.cpu_s,
        report.peak_rss_mib(),
        match report.duplicates {
            0 => String::new(),
            duplicates => format!("  {duplicates} duplicates"),
        }
    );
}

/// A scenario's table: one row of medians per system.
pub(crate) fn print_table(rounds: &Rounds, scenario: Scenario, count: usize) {
    println!();
    println!("{} — N={count}", scenario.title());
    println!(
        "  {:<18} | {:>10} | {:>10} | {:>8} | {:>8} | {:>8} | {:>6} | {:>10} | {:>13} | {:>12}",
        "system",
        "publish/s",
        "e2e/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "CPU s",
        "CPU µs/msg",
        "broker µs/msg",
        "peak RSS MiB"
    );
    println!("  {}", "-".repeat(133));
    for &system in scenario.systems() {
        match rounds.summary(scenario, system) {
            Some(s) => println!(
                "  {:<18} | {:>10.0} | {:>10.0} | {:>8.2} | {:>8.2} | {:>8.2} | {:>6.2} | {:>10.1} | {:>13.1} | {:>12.1}",
                format!("{system} ({})", s.rounds),
                s.publish_per_s,
                s.e2e_per_s,
                s.p50_ms,
                s.p99_ms,
                s.p999_ms,
                s.cpu_s,
                s.cpu_us_per_msg,
                s.broker_cpu_us_per_msg,
                s.peak_rss_mib
            ),
            None => println!("  {system:<18} | no successful round"),
        }
    }
}

/// `a / b` with two decimals, or `n/a` when a side has no successful round.
fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "n/a".to_owned(),
    }
}

/// A ratio of rmq-bus to a raw lapin baseline in one scenario: the figure's name in the label,
/// the figure, the baseline, and a note (a target) printed after the ratio.
type BaselineRatio = (&'static str, fn(&Summary) -> f64, System, &'static str);

/// Prints `<scenario> <name> ratio (rmq-bus / raw lapin <baseline>): <ratio><note>` for each of
/// `lines`: one format for every ratio of rmq-bus to a baseline.
fn print_baseline_ratios(rounds: &Rounds, scenario: Scenario, lines: &[BaselineRatio]) {
    for &(name, figure, baseline, note) in lines {
        // `lapin-expert` reads `raw lapin expert` here.
        let baseline_name = baseline.name().replace("lapin-", "raw lapin ");
        println!(
            "{} {name} ratio (rmq-bus / {baseline_name}): {}{note}",
            scenario.name().to_uppercase(),
            ratio(
                rounds.get(scenario, System::RmqBus, figure),
                rounds.get(scenario, baseline, figure)
            )
        );
    }
}

/// The ratios of S1 and S2 against the baselines and the targets.
pub(crate) fn print_ratios(rounds: &Rounds) {
    let get = |scenario, system, f| rounds.get(scenario, system, f);
    let (bus, typical, expert) = (System::RmqBus, System::Typical, System::Expert);
    let (s1, s2) = (Scenario::S1, Scenario::S2);
    println!();
    print_baseline_ratios(
        rounds,
        s1,
        &[
            ("publish", |s| s.publish_per_s, expert, ""),
            ("end_to_end", |s| s.e2e_per_s, typical, ""),
            (
                "CPU per message",
                |s| s.cpu_us_per_msg,
                expert,
                " (target ≤ 1.10)",
            ),
            ("CPU per message", |s| s.cpu_us_per_msg, typical, ""),
        ],
    );
    let exported = System::RmqBusPrometheus;
    println!(
        "S1 end_to_end ratio (rmq-bus with a Prometheus exporter / rmq-bus): {} (target ≥ 0.95); \
         CPU per message {}",
        ratio(
            get(s1, exported, |s| s.e2e_per_s),
            get(s1, bus, |s| s.e2e_per_s)
        ),
        ratio(
            get(s1, exported, |s| s.cpu_us_per_msg),
            get(s1, bus, |s| s.cpu_us_per_msg)
        ),
    );
    let rss = |system| {
        get(s1, system, |s| s.peak_rss_mib).map_or("n/a".to_owned(), |mib| format!("{mib:.1}"))
    };
    println!(
        "S1 peak RSS MiB: rmq-bus {}, lapin-typical {}, lapin-expert {} (target rmq-bus ≤ 25 at N=100000)",
        rss(bus),
        rss(typical),
        rss(expert)
    );
    println!(
        "S2 end_to_end ratio (rmq-bus S2 / rmq-bus S1): {} (target ≥ 0.85; S2 cannot exceed \
         prefetch {} / 5 ms = {:.0} msg/s)",
        ratio(get(s2, bus, |s| s.e2e_per_s), get(s1, bus, |s| s.e2e_per_s)),
        Scenario::S2.prefetch(),
        f64::from(Scenario::S2.prefetch()) / SLOW_HANDLER.as_secs_f64()
    );
    print_baseline_ratios(
        rounds,
        s2,
        &[
            ("end_to_end", |s| s.e2e_per_s, expert, ""),
            ("end_to_end", |s| s.e2e_per_s, typical, ""),
        ],
    );
    print_baseline_ratios(
        rounds,
        Scenario::S4,
        &[
            ("end_to_end", |s| s.e2e_per_s, expert, " (target ≥ 0.95)"),
            (
                "CPU per event",
                |s| s.cpu_us_per_msg,
                expert,
                " (target ≤ 1.00)",
            ),
            (
                "broker CPU per event",
                |s| s.broker_cpu_us_per_msg,
                expert,
                "",
            ),
        ],
    );
    for scenario in [Scenario::LatencyLow, Scenario::LatencyHigh] {
        let target = match scenario {
            Scenario::LatencyLow => " (target ≤ 1.20)",
            _ => "",
        };
        print_baseline_ratios(
            rounds,
            scenario,
            &[
                ("p50", |s| s.p50_ms, typical, ""),
                ("p99", |s| s.p99_ms, typical, target),
                ("p99.9", |s| s.p999_ms, typical, ""),
                ("p99", |s| s.p99_ms, expert, ""),
            ],
        );
    }
}

/// The headline, always the last line printed:
/// `S1 end_to_end ratio (rmq-bus / raw lapin expert): <ratio>`.
pub(crate) fn print_last_line(rounds: &Rounds) {
    print_baseline_ratios(
        rounds,
        Scenario::S1,
        &[("end_to_end", |s| s.e2e_per_s, System::Expert, "")],
    );
}

fn figure(key: &str, value: impl Display) {
    println!("figure {key}={value}");
}

/// The figures again, one `figure <key>=<value>` line each, in the format the crate docs
/// describe (scripts and the smoke test read them: keep it stable).
pub(crate) fn print_figures(rounds: &Rounds, s3: Option<&S3Figures>) {
    println!();
    println!("Figures for scripts (medians across rounds; keys in the bench's docs):");
    for scenario in Scenario::ALL {
        for &system in scenario.systems() {
            let Some(s) = rounds.summary(scenario, system) else {
                continue;
            };
            let key = |name: &str| format!("{scenario}.{system}.{name}");
            figure(&key("rounds"), s.rounds);
            figure(&key("publish_per_s"), s.publish_per_s);
            figure(&key("e2e_per_s"), s.e2e_per_s);
            figure(&key("p50_ms"), s.p50_ms);
            figure(&key("p99_ms"), s.p99_ms);
            figure(&key("p999_ms"), s.p999_ms);
            figure(&key("cpu_s"), s.cpu_s);
            figure(&key("cpu_us_per_msg"), s.cpu_us_per_msg);
            if !s.broker_cpu_us_per_msg.is_nan() {
                figure(&key("broker_cpu_us_per_msg"), s.broker_cpu_us_per_msg);
            }
            figure(&key("peak_rss_mib"), s.peak_rss_mib);
            figure(&key("duplicates"), s.duplicates);
        }
    }
    figure("s2.prefetch", Scenario::S2.prefetch());
    figure("s2.handler_ms", SLOW_HANDLER.as_secs_f64() * 1e3);
    if let Some(s3) = s3 {
        figure("s3.n", s3.n);
        figure("s3.p50_ms", s3.p50_ms);
        figure("s3.p99_ms", s3.p99_ms);
        figure("s3.concurrent_per_s", s3.concurrent_per_s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![7.0]), Some(7.0));
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(vec![5.0, 5.0]), Some(5.0));
    }
}
