//! Benchmark: rmq-bus against two raw lapin baselines, on the same workload and broker.
//!
//! ```text
//! cargo run --release --example bench                       # N=100000, 3 rounds
//! N=2000 ROUNDS=1 cargo run --release --example bench       # smoke check
//! SCENARIOS=scaling cargo run --release --example bench    # the scaling table alone
//! ```
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `N` | messages per S1 round | 100000 |
//! | `S2_N` | messages per S2 round | `N / 5` |
//! | `S3_N` | S3 round trips, sequential and concurrent | `N / 10`, at most 10000 |
//! | `S4_N` | events per S4 round | `N / 2` |
//! | `S4_PREFETCH` | S4's prefetch, for every system | rmq-bus's default, 250 |
//! | `S4_DRAIN` | `1`: a consumer in each S4 child takes the `order_processed` events as they arrive (its CPU counts as the child's), rather than leaving them in the second queue | `0` |
//! | `LATENCY_S` | seconds each latency round publishes | 10 |
//! | `ORDERING_N` | ordering events per run, over 200 keys | `N / 5`, 200 to 20000 |
//! | `ORDERING_ONE_KEY_N` | ordering events on one key | `ORDERING_N / 20`, 50 to 1000 |
//! | `OUTBOX_N` | outbox events, direct and through the outbox | `N / 5` |
//! | `BENCH_POSTGRES_URL` | the outbox scenario's PostgreSQL server (a database of its own is created, dropped after) | `postgres://postgres@127.0.0.1:5432` |
//! | `SCALING_N` | messages per scaling round (payloads above 4 KiB: `SCALING_N × 4 KiB / size`, at least `min(SCALING_N, 20)`); requests per requester setting; 0 skips the scaling table | 30000 |
//! | `SCALING_ROUNDS` | rounds per scaling setting | `ROUNDS` |
//! | `ROUNDS` | rounds per system and scenario (and ordering pairs) | 3 |
//! | `SCENARIOS` | only these, comma-separated: `s1`, `s2`, `s4`, `latency1k`, `latency5k`, `s3`, `ordering`, `outbox`, `scaling` | all |
//! | `BASELINE_MESSAGE_ID` | `0`: the raw baselines send no `message_id` (rmq-bus sends one with every event) | on |
//! | `RABBIT_MQ_URI` | broker | `amqp://guest:guest@127.0.0.1:5672/%2f` |
//! | `BENCH_TIMEOUT_S` | limit on one round | 300 |
//! | `RUST_LOG` | log filter of the child processes | `warn` |
//!
//! Systems:
//! - **rmq-bus**: `ClientProxy::publish` of a typed contract (up to 1000 in flight) and a
//!   `Microservice` with prefetch 100 and manual acks, whose `on_event` handler calls `ctx.ack()`.
//! - **rmq-bus-prometheus** (S1 only): rmq-bus again, with a Prometheus exporter
//!   (`metrics-exporter-prometheus`) installed as an application would, so that every metric is
//!   recorded: what observability costs. The round fails if the exporter recorded nothing.
//! - **lapin-typical**: raw lapin, the same concurrent confirmed publishes of a typed payload with
//!   the same properties (JSON content type, persistent, a correlation id and a message id, as
//!   rmq-bus sends; `BASELINE_MESSAGE_ID=0` leaves the message id out), and
//!   a `consumer.next()` loop that deserializes each delivery and acks it (`basic.ack` each).
//! - **lapin-expert**: as typical, but acks are coalesced: one `basic.ack` with `multiple` for
//!   every 20 in-order handled deliveries, a smaller run flushed 1 ms after it began.
//!
//! Scenarios:
//! - **S1 pipeline**: persistent, confirmed publishes of NestJS `order_created` events to a fresh
//!   durable queue, consumed in the same process. Confirmed publish rate, end-to-end rate (N over
//!   the time from the first publish to the last handled message), publish→handler latency,
//!   process CPU time and peak RSS.
//! - **S2 slow handler**: the handler awaits 5 ms before acking; end-to-end rate. Every system
//!   uses rmq-bus's default prefetch (250), so at most 250 handlers run at once and no system can
//!   exceed 250 / 5 ms = 50 000 msg/s.
//! - **S3 request/reply**: sequential round trips p50/p99 and the rate of 64 concurrent requesters
//!   (see the [`s3`] module).
//! - **S4 billing pipeline**: `S4_N` events wait in the queue; the consumer (default prefetch)
//!   handles each as the billing example does: one confirmed `order_processed` publish to a second
//!   queue, then the ack. rmq-bus (a `ClientProxy::publish` awaited in the handler) against
//!   lapin-expert (handlers as futures publishing on one confirm channel, pipelined, and coalesced
//!   acks). Rate from the consumer's start to the last forwarded event; CPU without the preload.
//! - **Latency at 1k/s and 5k/s**: an open loop publishes event `i` at `i / rate` seconds for
//!   `LATENCY_S` seconds, whatever the confirms do; publish→handler p50, p99 and p99.9 at normal
//!   load rather than under saturation (S1's latencies are queueing).
//! - **Ordering** (per key): 5 ms handlers over 200 keys, unordered against ordered by key in
//!   alternating runs, then one key alone (bounded by 1 / 5 ms) (see the [`ordering`] module).
//!
//! - **Scaling** (how cost grows; rmq-bus only): per-message CPU and peak RSS against payload size
//!   (230 B, 4 KiB, 64 KiB, 1 MiB bodies, with MB/s; at most 16 MiB of bodies awaiting confirms,
//!   so 16 publishes in flight at 1 MiB; 1 MiB is below the default `max_message_bytes` of
//!   16 MiB, so the option is left alone), registered patterns (1, 100, 10 000 exact, events for
//!   the last; 100 wildcards `p<i>.*.x`, events matching only the last), queues consumed by one
//!   microservice (1, 10, 100; events on one, RSS per idle queue consumer from the RSS once all
//!   are consuming) and S3 requesters (64, 1000; memory per pending request is the peak RSS above
//!   the idle process over the requesters). Events run S1's pipeline, prefetch 100; one child
//!   per (round, setting); CPU from the first publish to the last handled message (see the
//!   [`scaling`] module).
//!
//! Each (round, scenario, system) runs in a child process (this binary re-executed with
//! `--child <system> <scenario> <queue> <n>`), so CPU time and peak RSS belong to that system
//! alone. The child prints one JSON line; the parent runs rounds A B C A B C …, reports the median
//! of each figure across rounds, and exits non-zero if any round failed.
//!
//! "Handled" means the handler's work is done, just before it settles the message; it is counted
//! by the same code in every system, as are the latencies. A round ends when every one of its
//! messages has been handled at least once: a redelivered message counts once (and as a
//! duplicate in the child's report).
//!
//! Output, for people: a line per round, a table per scenario, ratios, S3. For scripts (and the
//! smoke test in `rmq-bus/tests/examples_e2e.rs`), the same medians follow as `figure <key>=<value>`
//! lines, values as Rust prints an `f64`:
//! - `<scenario>.<system>.<figure>` for `s1`, `s2`, `s4`, `latency1k` and `latency5k`
//!   (`s1.rmq-bus.e2e_per_s`), figures `rounds`, `publish_per_s`, `e2e_per_s`, `p50_ms`, `p99_ms`,
//!   `p999_ms`, `cpu_s`, `cpu_us_per_msg`, `peak_rss_mib` and `duplicates` (summed over rounds),
//!   and `broker_cpu_us_per_msg` (the CPU of the broker's `beam.smp` from the consumer's start,
//!   after S4's preload, to the last message, per message) when the broker runs on this machine;
//!   a system without a successful round has none;
//! - `s2.prefetch` and `s2.handler_ms`, the bound on S2's rate being `prefetch / handler_ms`;
//! - `s3.n`, `s3.p50_ms`, `s3.p99_ms`, `s3.concurrent_per_s`, if S3 succeeded;
//! - `ordering.n`, `ordering.unordered_per_s`, `ordering.ordered_per_s`, `ordering.ordered_ratio`,
//!   `ordering.one_key_per_s`, if the ordering scenario succeeded.
//! - `outbox.n`, `outbox.direct_per_s`, `outbox.commit_per_s`, `outbox.relay_per_s`,
//!   `outbox.relay_ratio`, if the outbox scenario ran.
//! - `scaling.<dimension>.<value>.<figure>` for every scaling setting with a successful round:
//!   dimensions and values `payload.{230,4096,65536,1048576}` (body bytes),
//!   `patterns.{1,100,10000,100w}` (`w`: wildcards), `queues.{1,10,100}`,
//!   `requesters.{64,1000}`; figures `rounds`, `n`, `body_bytes`, `per_s`, `mb_per_s`,
//!   `cpu_us_per_msg`, `cpu_ratio` and `rss_ratio` (to the dimension's first value; patterns to
//!   `1`), `peak_rss_mib`, `idle_rss_mib`, `duplicates`; and `idle_rss_kib_per_queue` for queues
//!   above 1, `kib_per_pending` for requesters (and `marginal_kib_per_pending` above 64: the
//!   peak RSS each requester added to 64's).
//!
//! The last line is always `S1 end_to_end ratio (rmq-bus / raw lapin expert): <ratio or n/a>`.

mod admin;
mod child;
mod measure;
mod ordering;
mod outbox;
mod parent;
mod payload;
mod report;
mod s3;
mod scaling;
mod systems;
mod workload;

use std::process::ExitCode;

// The rmq-bus names whose paths are changing (to `rmq_bus::config` and `rmq_bus::microservice`)
// are imported here only; the modules use them as `crate::…`.
use rmq_bus::config::{DEFAULT_PREFETCH, DEFAULT_URI};
use rmq_bus::microservice::RunningMicroservice;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Res<T> = Result<T, BoxError>;

fn broker_uri() -> String {
    std::env::var("RABBIT_MQ_URI").unwrap_or_else(|_| DEFAULT_URI.to_owned())
}

fn env_number<T: std::str::FromStr>(var: &str, default: T) -> Res<T> {
    match std::env::var(var) {
        Err(_) => Ok(default),
        Ok(raw) => raw
            .trim()
            .parse()
            .map_err(|_| format!("environment variable {var}={raw:?} is not a number").into()),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let result = match args.get(1).map(String::as_str) {
        Some("--child") => child::child(&args[2..]).map(|()| true),
        Some("--scaling") => scaling::child(&args[2..]).map(|()| true),
        _ => parent::parent(),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("bench: {error}");
            ExitCode::FAILURE
        }
    }
}
