//! The scaling table for people and its `figure scaling.<dimension>.<value>.<figure>` lines for
//! scripts; ratios are to the first setting of each dimension (patterns: to 1 exact pattern).

use super::{ScalingSummary, Setting};

/// The summary of the setting `setting` is compared with, if it ran.
fn baseline(summaries: &[(Setting, ScalingSummary)], setting: Setting) -> Option<ScalingSummary> {
    summaries
        .iter()
        .find(|(s, _)| s.dimension() == setting.dimension())
        .map(|(_, summary)| *summary)
}

/// KiB of RSS each idle queue consumer added to the microservice once started, against one
/// queue; `None` for other settings.
fn kib_per_idle_queue(
    summaries: &[(Setting, ScalingSummary)],
    setting: Setting,
    summary: &ScalingSummary,
) -> Option<f64> {
    match setting {
        Setting::Queues(count) if count > 1 => baseline(summaries, setting)
            .map(|one| (summary.idle_rss_kib - one.idle_rss_kib) / (count - 1) as f64),
        _ => None,
    }
}

/// KiB of peak RSS above the idle process, per pending request; `None` for other settings.
fn kib_per_pending(setting: Setting, summary: &ScalingSummary) -> Option<f64> {
    match setting {
        Setting::Requesters(count) => {
            Some((summary.peak_rss_kib - summary.idle_rss_kib) / count as f64)
        }
        _ => None,
    }
}

/// KiB of peak RSS each requester above the dimension's first setting added: the fixed costs
/// (buffers grown once) cancel out.
fn marginal_kib_per_pending(
    summaries: &[(Setting, ScalingSummary)],
    setting: Setting,
    summary: &ScalingSummary,
) -> Option<f64> {
    let first = summaries
        .iter()
        .find(|(s, _)| s.dimension() == setting.dimension())?;
    match (setting, first) {
        (Setting::Requesters(count), &(Setting::Requesters(fewer), base)) if count > fewer => {
            Some((summary.peak_rss_kib - base.peak_rss_kib) / (count - fewer) as f64)
        }
        _ => None,
    }
}

/// `a / b`, NaN without a baseline.
fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { f64::NAN }
}

pub(super) fn print(summaries: &[(Setting, ScalingSummary)], n: usize, rounds: usize) {
    println!();
    println!(
        "Scaling: how cost grows (rmq-bus; SCALING_N={n}, medians of {rounds} round(s); CPU and RSS \
         of the whole child, publisher and consumer; × is the ratio to the first row of the \
         dimension, patterns to 1 exact)"
    );
    println!(
        "  {:<10} | {:<15} | {:>6} | {:>8} | {:>7} | {:>10} | {:>6} | {:>8} | {:>6} | {:>8} | note",
        "dimension",
        "setting",
        "n",
        "msg/s",
        "MB/s",
        "CPU µs/msg",
        "×CPU",
        "peak RSS",
        "×RSS",
        "idle RSS"
    );
    println!(
        "  {:<10} | {:<15} | {:>6} | {:>8} | {:>7} | {:>10} | {:>6} | {:>8} | {:>6} | {:>8} |",
        "", "", "", "", "", "", "", "MiB", "", "MiB"
    );
    println!("  {}", "-".repeat(122));
    for &(setting, s) in summaries {
        let Some(base) = baseline(summaries, setting) else {
            continue;
        };
        let note = match (
            kib_per_idle_queue(summaries, setting, &s),
            kib_per_pending(setting, &s),
        ) {
            (Some(kib), _) => format!("{kib:.1} KiB RSS per idle queue consumer"),
            (_, Some(kib)) => match marginal_kib_per_pending(summaries, setting, &s) {
                Some(marginal) => format!(
                    "{kib:.1} KiB peak RSS per pending request ({marginal:.1} KiB each above the first row)"
                ),
                None => format!("{kib:.1} KiB peak RSS per pending request"),
            },
            _ if s.duplicates > 0 => format!("{} duplicates", s.duplicates),
            _ => String::new(),
        };
        println!(
            "  {:<10} | {:<15} | {:>6} | {:>8.0} | {:>7.2} | {:>10.1} | {:>6.2} | {:>8.1} | {:>6.2} | {:>8.1} | {note}",
            setting.dimension(),
            setting.label(),
            s.n,
            s.per_s,
            s.mb_per_s(),
            s.cpu_us_per_msg,
            ratio(s.cpu_us_per_msg, base.cpu_us_per_msg),
            s.peak_rss_kib / 1024.0,
            ratio(s.peak_rss_kib, base.peak_rss_kib),
            s.idle_rss_kib / 1024.0,
        );
    }
    let missing: Vec<String> = super::SETTINGS
        .into_iter()
        .filter(|setting| summaries.iter().all(|(s, _)| s != setting))
        .map(|setting| format!("{} {}", setting.dimension(), setting.label()))
        .collect();
    if !missing.is_empty() {
        println!("  no successful round: {}", missing.join(", "));
    }
}

/// `figure scaling.<dimension>.<value>.<figure>=<v>` for every setting that ran.
pub(super) fn print_figures(summaries: &[(Setting, ScalingSummary)]) {
    for &(setting, s) in summaries {
        let Some(base) = baseline(summaries, setting) else {
            continue;
        };
        let key = format!("scaling.{}.{}", setting.dimension(), setting.value());
        let mut figures = vec![
            ("rounds", s.rounds as f64),
            ("n", s.n as f64),
            ("body_bytes", s.body_bytes as f64),
            ("per_s", s.per_s),
            ("mb_per_s", s.mb_per_s()),
            ("cpu_us_per_msg", s.cpu_us_per_msg),
            ("cpu_ratio", ratio(s.cpu_us_per_msg, base.cpu_us_per_msg)),
            ("peak_rss_mib", s.peak_rss_kib / 1024.0),
            ("rss_ratio", ratio(s.peak_rss_kib, base.peak_rss_kib)),
            ("idle_rss_mib", s.idle_rss_kib / 1024.0),
            ("duplicates", s.duplicates as f64),
        ];
        if let Some(kib) = kib_per_idle_queue(summaries, setting, &s) {
            figures.push(("idle_rss_kib_per_queue", kib));
        }
        if let Some(kib) = kib_per_pending(setting, &s) {
            figures.push(("kib_per_pending", kib));
        }
        if let Some(kib) = marginal_kib_per_pending(summaries, setting, &s) {
            figures.push(("marginal_kib_per_pending", kib));
        }
        for (name, value) in figures {
            println!("figure {key}.{name}={value}");
        }
    }
}
