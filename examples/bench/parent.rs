//! The parent process: runs every (round, scenario, system) in a child, then S3, and prints the
//! results (see [`crate::report`]).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;

use crate::admin::{declare_queue, delete_queue};
use crate::payload::{OutgoingPacket, PATTERN, make_event};
use crate::report::{self, Report, Rounds};
use crate::workload::{IN_FLIGHT, PREFETCH, Scenario, System, forward_queue};
use crate::{Res, broker_uri, env_number, ordering, outbox, s3, scaling};

const DEFAULT_N: usize = 100_000;
const DEFAULT_ROUNDS: usize = 3;
/// How long each latency scenario publishes.
const DEFAULT_LATENCY_S: f64 = 10.0;

/// Runs the whole benchmark; `Ok(false)` if a round or S3 failed.
pub(crate) fn parent() -> Res<bool> {
    let n: usize = env_number("N", DEFAULT_N)?;
    let rounds: usize = env_number("ROUNDS", DEFAULT_ROUNDS)?;
    let s2_n: usize = env_number("S2_N", (n / 5).max(1))?;
    let s4_n: usize = env_number("S4_N", (n / 2).max(1))?;
    let s4_prefetch = crate::workload::s4_prefetch()?;
    let latency_s: f64 = env_number("LATENCY_S", DEFAULT_LATENCY_S)?;
    if n == 0 || rounds == 0 || s2_n == 0 || s4_n == 0 || latency_s.is_nan() || latency_s <= 0.0 {
        return Err("N, S2_N, S4_N, LATENCY_S and ROUNDS must be above 0".into());
    }
    let count_of = |scenario: Scenario| match (scenario, scenario.rate()) {
        (_, Some(rate)) => ((f64::from(rate) * latency_s) as usize).max(1),
        (Scenario::S1, None) => n,
        (Scenario::S4, None) => s4_n,
        _ => s2_n,
    };
    let only = Selection::from_env()?;
    let exe = std::env::current_exe()?;
    let uri = broker_uri();
    let admin = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let unix_time = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let body_bytes = serde_json::to_vec(&OutgoingPacket {
        pattern: PATTERN,
        data: &make_event(n, 1_000_000_000),
    })?
    .len();
    // Other processes on the machine (the broker among them) share its cores: say how busy it was.
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let loadavg: Vec<&str> = loadavg.split_whitespace().take(3).collect();
    println!(
        "rmq-bus bench: nproc={nproc} loadavg={} N={n} S2_N={s2_n}{} S4_N={s4_n} S4_PREFETCH={s4_prefetch} LATENCY_S={latency_s} \
         rounds={rounds} unix_time={unix_time} \
         body≈{body_bytes} B, persistent, confirmed, ≤{IN_FLIGHT} publishes in flight, \
         prefetch {PREFETCH}, manual acks; raw baselines {} a message_id; one child process per \
         round; medians across rounds",
        loadavg.join(","),
        if s2_n == n {
            ""
        } else {
            " (S2 uses fewer messages)"
        },
        match crate::systems::baseline_sends_message_id() {
            true => "with",
            false => "without",
        },
    );

    let mut results = Rounds::default();
    let mut failures = 0;
    let pid = std::process::id();
    let scenarios: Vec<Scenario> = Scenario::ALL
        .into_iter()
        .filter(|scenario| only.wants(scenario.name()))
        .collect();
    for round in 1..=rounds {
        for &scenario in &scenarios {
            let count = count_of(scenario);
            for &system in scenario.systems() {
                let queue = format!("rmq-bus-bench-{pid}-{unix_time}-r{round}-{scenario}-{system}");
                match run_round(&exe, &admin, &uri, system, scenario, &queue, count) {
                    Ok(report) => {
                        report::print_round(round, rounds, scenario, system, &report);
                        results.add(scenario, system, report);
                    }
                    Err(error) => {
                        failures += 1;
                        println!("round {round}/{rounds} {scenario} {system}: FAILED: {error}");
                    }
                }
            }
        }
    }

    for &scenario in &scenarios {
        report::print_table(&results, scenario, count_of(scenario));
    }
    report::print_ratios(&results);
    let s3_n: usize = env_number("S3_N", (n / 10).clamp(1, 10_000))?;
    let s3 = match only
        .wants("s3")
        .then(|| s3::request_reply(&admin, &uri, s3_n))
    {
        None => None,
        Some(Ok(s3)) => {
            s3.print();
            Some(s3)
        }
        Some(Err(error)) => {
            failures += 1;
            println!("S3: FAILED: {error}");
            None
        }
    };
    let ordering_n: usize = env_number("ORDERING_N", (n / 5).clamp(200, 20_000))?;
    let one_key_n: usize = env_number("ORDERING_ONE_KEY_N", (ordering_n / 20).clamp(50, 1_000))?;
    let ordered = match only
        .wants("ordering")
        .then(|| ordering::ordering(&admin, &uri, ordering_n, one_key_n, rounds))
    {
        None => None,
        Some(Ok(ordered)) => {
            ordered.print();
            Some(ordered)
        }
        Some(Err(error)) => {
            failures += 1;
            println!("ordering: FAILED: {error}");
            None
        }
    };
    let outbox_n: usize = env_number("OUTBOX_N", (n / 5).max(1))?;
    if only.wants("outbox")
        && let Err(error) =
            outbox::outbox(&admin, &uri, outbox_n).map(|ran| ran.map(|figures| figures.print()))
    {
        failures += 1;
        println!("outbox: FAILED: {error}");
    }
    if only.wants("scaling") {
        failures += scaling::scaling(&exe, &admin, &uri, rounds)?;
    }
    report::print_figures(&results, s3.as_ref());
    if let Some(ordered) = &ordered {
        ordered.print_figures();
    }
    if failures > 0 {
        println!("{failures} round(s) failed");
    }
    report::print_last_line(&results);
    Ok(failures == 0)
}

/// The scenarios `SCENARIOS` names (comma-separated), or every one: to measure some quickly.
struct Selection(Option<Vec<String>>);

impl Selection {
    /// Names besides [`Scenario`]'s that `SCENARIOS` accepts.
    const OTHERS: [&str; 4] = ["s3", "ordering", "outbox", "scaling"];

    fn from_env() -> Res<Self> {
        let Ok(raw) = std::env::var("SCENARIOS") else {
            return Ok(Self(None));
        };
        let names: Vec<String> = raw
            .split(',')
            .map(|name| name.trim().to_owned())
            .filter(|name| !name.is_empty())
            .collect();
        let known = |name: &str| Scenario::parse(name).is_some() || Self::OTHERS.contains(&name);
        if let Some(unknown) = names.iter().find(|name| !known(name)) {
            return Err(format!("SCENARIOS names {unknown:?}, not a scenario").into());
        }
        Ok(Self(Some(names)))
    }

    fn wants(&self, name: &str) -> bool {
        self.0
            .as_ref()
            .is_none_or(|names| names.iter().any(|wanted| wanted == name))
    }
}

/// Runs one child.
fn run_round(
    exe: &Path,
    admin: &tokio::runtime::Runtime,
    uri: &str,
    system: System,
    scenario: Scenario,
    queue: &str,
    n: usize,
) -> Res<Report> {
    // S4's handlers send on to a second queue.
    let queues = match scenario.drains_backlog() {
        true => vec![queue.to_owned(), forward_queue(queue)],
        false => vec![queue.to_owned()],
    };
    for queue in &queues {
        admin
            .block_on(declare_queue(uri, queue))
            .map_err(|e| format!("declaring {queue}: {e}"))?;
    }
    let n = n.to_string();
    let args = ["--child", system.name(), scenario.name(), queue, &n];
    run_child(exe, admin, uri, &args, &queues)
}

/// Runs this binary with `args` (a child), deletes `queues` whatever it did, and reads the JSON
/// report it printed last; its stderr passes through.
pub(crate) fn run_child<T: DeserializeOwned>(
    exe: &Path,
    admin: &tokio::runtime::Runtime,
    uri: &str,
    args: &[&str],
    queues: &[String],
) -> Res<T> {
    let output = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output();
    for queue in queues {
        if let Err(error) = admin.block_on(delete_queue(uri, queue)) {
            eprintln!("bench: could not delete queue {queue}: {error}");
        }
    }
    let output = output?;
    if !output.status.success() {
        return Err(format!("child exited with {}", output.status).into());
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|line| line.starts_with('{'))
        .ok_or("child printed no report")?;
    Ok(serde_json::from_str(line)?)
}
