//! Benchmark: rmq-bus against two raw lapin baselines, on the same workload and broker.
//!
//! ```text
//! cargo run --release --example bench                       # N=100000, 3 rounds
//! N=2000 ROUNDS=1 cargo run --release --example bench       # smoke check
//! ```
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `N` | messages per S1 round | 100000 |
//! | `S2_N` | messages per S2 round | `N / 5` |
//! | `ROUNDS` | rounds per system and scenario | 3 |
//! | `RABBIT_MQ_URI` | broker | `amqp://guest:guest@127.0.0.1:5672/%2f` |
//! | `BENCH_TIMEOUT_S` | limit on one round | 300 |
//! | `RUST_LOG` | log filter of the child processes | `warn` |
//!
//! Systems:
//! - **rmq-bus**: `ClientProxy::emit` (up to 1000 in flight) and a `Microservice` with prefetch
//!   100 and manual acks, whose `on_event` handler calls `ctx.ack()`.
//! - **lapin-typical**: raw lapin, the same concurrent confirmed publishes of a typed payload with
//!   the same properties (JSON content type, persistent, a correlation id, as rmq-bus sends), and
//!   a `consumer.next()` loop that deserializes each delivery and acks it (`basic.ack` each).
//! - **lapin-expert**: as typical, but acks are coalesced: one `basic.ack` with `multiple` for
//!   every 20 in-order handled deliveries, a smaller run flushed 1 ms after it began.
//!
//! Scenarios:
//! - **S1 pipeline**: persistent, confirmed publishes of NestJS `order_created` events to a fresh
//!   durable queue, consumed in the same process. Confirmed publish rate, end-to-end rate (N over
//!   the time from the first publish to the last handled message), publish→handler latency,
//!   process CPU time and peak RSS.
//! - **S2 slow handler**: the handler awaits 5 ms before acking; end-to-end rate. With prefetch
//!   100, at most 100 handlers run at once, so no system can exceed 20 000 msg/s.
//! - **S3 request/reply**: sequential round trips p50/p99 and the rate of 64 concurrent requesters
//!   (see [`s3_request_reply`]).
//!
//! Each (round, scenario, system) runs in a child process (this binary re-executed with
//! `--child <system> <scenario> <queue> <n>`), so CPU time and peak RSS belong to that system
//! alone. The child prints one JSON line; the parent runs rounds A B C A B C …, reports the median
//! of each figure across rounds, and exits non-zero if any round failed.
//!
//! "Handled" means the handler's work is done, just before it settles the message; it is counted
//! by the same code in every system, as are the latencies.

use std::error::Error;
use std::fmt;
use std::hint::black_box;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, BasicRejectOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use rmq_bus::{ClientProxy, Microservice, Payload, RmqContext, RmqOptions, RunningMicroservice};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::task::JoinSet;

type BoxError = Box<dyn Error + Send + Sync>;
type Res<T> = Result<T, BoxError>;

const PATTERN: &str = "order_created";
/// Publishes awaiting their confirm at once, per system.
const IN_FLIGHT: usize = 1000;
/// S1's prefetch, as the task specifies it.
const PREFETCH: u16 = 100;
/// lapin-expert acks once per this many in-order handled deliveries…
const ACK_BATCH: u64 = 20;
/// …or this long after the first handled delivery left unacked.
const ACK_FLUSH: Duration = Duration::from_millis(1);
/// The S2 handler's stand-in for I/O.
const SLOW_HANDLER: Duration = Duration::from_millis(5);
/// Linux reports process CPU times in clock ticks of `USER_HZ`, which is 100 on every
/// architecture Linux supports for user space (`sysconf(_SC_CLK_TCK)`); std cannot ask.
const USER_HZ: f64 = 100.0;
const DEFAULT_N: usize = 100_000;
const DEFAULT_ROUNDS: usize = 3;
const DEFAULT_TIMEOUT_S: u64 = 300;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum System {
    RmqBus,
    Typical,
    Expert,
}

impl System {
    const ALL: [System; 3] = [System::RmqBus, System::Typical, System::Expert];

    fn name(self) -> &'static str {
        match self {
            System::RmqBus => "rmq-bus",
            System::Typical => "lapin-typical",
            System::Expert => "lapin-expert",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|system| system.name() == s)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    S1,
    S2,
}

impl Scenario {
    const ALL: [Scenario; 2] = [Scenario::S1, Scenario::S2];

    fn name(self) -> &'static str {
        match self {
            Scenario::S1 => "s1",
            Scenario::S2 => "s2",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|scenario| scenario.name() == s)
    }

    fn title(self) -> &'static str {
        match self {
            Scenario::S1 => "S1 pipeline",
            Scenario::S2 => "S2 slow handler (5 ms)",
        }
    }

    /// S1 uses the prefetch of the task; S2 rmq-bus's default, for every system alike.
    fn prefetch(self) -> u16 {
        match self {
            Scenario::S1 => PREFETCH,
            Scenario::S2 => rmq_bus::DEFAULT_PREFETCH,
        }
    }

    fn handler_delay(self) -> Option<Duration> {
        match self {
            Scenario::S1 => None,
            Scenario::S2 => Some(SLOW_HANDLER),
        }
    }
}

impl fmt::Display for System {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

// ---------------------------------------------------------------------------------------------
// Payload
// ---------------------------------------------------------------------------------------------

/// The order inside an `order_created` event, camelCase as a NestJS service sends it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Order {
    order_id: String,
    product_name: String,
    price: f64,
    quantity: u32,
    buyer: String,
    status: String,
}

/// The event data: the order and, for latency, when it was sent (ns since the child's epoch).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OrderEvent {
    order_payload: Order,
    sent_ns: u64,
}

/// The NestJS packet, as the raw baselines write it.
#[derive(Serialize)]
struct OutgoingPacket<'a> {
    pattern: &'a str,
    data: &'a OrderEvent,
}

/// The NestJS packet, as the raw baselines read it.
#[derive(Deserialize)]
struct IncomingPacket {
    pattern: String,
    data: OrderEvent,
}

/// A fresh UUID-shaped correlation id, made as rmq-bus makes its own (a keyed hash of a counter
/// and the counter mixed, hex written byte by byte), so that the baselines pay the same for their
/// ids.
fn correlation_id() -> String {
    use std::hash::{BuildHasher, RandomState};
    use std::sync::OnceLock;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    static KEY: OnceLock<(RandomState, u64)> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let (state, offset) = KEY.get_or_init(|| {
        let state = RandomState::new();
        let offset = state.hash_one(u64::MAX);
        (state, offset)
    });
    let mix = |mut z: u64| {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let bits = (u128::from(state.hash_one(n)) << 64) | u128::from(mix(n.wrapping_add(*offset)));
    let mut id = [b'-'; 36];
    let mut at = 0;
    for (i, byte) in bits.to_be_bytes().into_iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            at += 1;
        }
        id[at] = HEX[usize::from(byte >> 4)];
        id[at + 1] = HEX[usize::from(byte & 0xf)];
        at += 2;
    }
    String::from_utf8_lossy(&id).into_owned()
}

fn make_event(i: usize, sent_ns: u64) -> OrderEvent {
    OrderEvent {
        order_payload: Order {
            order_id: format!("8f14e45f-ceea-467a-9af0-{i:012}"),
            product_name: "Mechanical keyboard".to_owned(),
            price: 129.99,
            quantity: 1,
            buyer: "ada@example.com".to_owned(),
            status: "PENDING".to_owned(),
        },
        sent_ns,
    }
}

// ---------------------------------------------------------------------------------------------
// Measurement, identical for every system
// ---------------------------------------------------------------------------------------------

/// What the handlers of all systems record into: latencies, the handled count, completion.
struct Recorder {
    epoch: Instant,
    n: usize,
    latencies: Vec<AtomicU64>,
    received: AtomicUsize,
    handled: AtomicUsize,
    last_handled_ns: AtomicU64,
    complete: Notify,
    failure: Mutex<Option<String>>,
}

impl Recorder {
    fn new(n: usize) -> Self {
        Self {
            epoch: Instant::now(),
            n,
            latencies: (0..n).map(|_| AtomicU64::new(0)).collect(),
            received: AtomicUsize::new(0),
            handled: AtomicUsize::new(0),
            last_handled_ns: AtomicU64::new(0),
            complete: Notify::new(),
            failure: Mutex::new(None),
        }
    }

    fn now_ns(&self) -> u64 {
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

    /// A handler finished its work (and is about to settle its message).
    fn handled(&self) {
        if self.handled.fetch_add(1, Ordering::AcqRel) + 1 == self.n {
            self.last_handled_ns.store(self.now_ns(), Ordering::Release);
            self.complete.notify_one();
        }
    }

    fn is_complete(&self) -> bool {
        self.handled.load(Ordering::Acquire) >= self.n
    }

    /// Fails the round (the first failure is the one reported) and wakes the waiter.
    fn fail(&self, what: impl fmt::Display) {
        if let Ok(mut failure) = self.failure.lock() {
            failure.get_or_insert_with(|| what.to_string());
        }
        self.complete.notify_one();
    }

    fn failure(&self) -> Option<String> {
        self.failure.lock().ok().and_then(|failure| failure.clone())
    }

    /// Waits until every message is handled or something failed.
    async fn wait(&self) -> Result<(), String> {
        loop {
            if let Some(failure) = self.failure() {
                return Err(failure);
            }
            if self.is_complete() {
                return Ok(());
            }
            self.complete.notified().await;
        }
    }

    /// Sorted latencies of the messages received, in ns.
    fn sorted_latencies(&self) -> Vec<u64> {
        let count = self.received.load(Ordering::Acquire).min(self.n);
        let mut latencies: Vec<u64> = self.latencies[..count]
            .iter()
            .map(|latency| latency.load(Ordering::Relaxed))
            .collect();
        latencies.sort_unstable();
        latencies
    }
}

/// The handler body of every system: record the latency, do the scenario's work, count it.
async fn handle(recorder: &Recorder, event: &OrderEvent, delay: Option<Duration>) {
    recorder.received(event.sent_ns);
    black_box(event);
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    recorder.handled();
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// utime + stime of this process, in seconds (`/proc/self/stat` fields 14 and 15).
fn cpu_seconds() -> Res<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Field 2, the command name, is parenthesised and may hold spaces: count from after it.
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or("unexpected /proc/self/stat format")?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // after_name starts at field 3, so field k is fields[k - 3].
    let ticks = |k: usize| -> Res<u64> {
        Ok(fields
            .get(k - 3)
            .ok_or("short /proc/self/stat")?
            .parse::<u64>()?)
    };
    Ok((ticks(14)? + ticks(15)?) as f64 / USER_HZ)
}

/// Peak resident set size of this process, in KiB (`VmHWM` of `/proc/self/status`).
fn peak_rss_kib() -> Res<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|line| line.starts_with("VmHWM:"))
        .ok_or("no VmHWM in /proc/self/status")?;
    Ok(line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?)
}

// ---------------------------------------------------------------------------------------------
// Child: one system, one scenario, one round
// ---------------------------------------------------------------------------------------------

/// What a child reports, as one JSON line on stdout.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Report {
    system: String,
    scenario: String,
    n: usize,
    publish_per_s: f64,
    e2e_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// utime + stime of the child from its start to the last handled and confirmed message.
    cpu_s: f64,
    peak_rss_kib: u64,
}

impl Report {
    fn cpu_us_per_msg(&self) -> f64 {
        self.cpu_s * 1e6 / self.n as f64
    }

    fn peak_rss_mib(&self) -> f64 {
        self.peak_rss_kib as f64 / 1024.0
    }
}

/// The publishing side of a system.
enum Publisher {
    Bus(ClientProxy),
    Raw {
        connection: Box<Connection>,
        channel: Channel,
        queue: ShortString,
    },
}

impl Publisher {
    async fn open(system: System, uri: &str, queue: &str) -> Res<Self> {
        match system {
            System::RmqBus => {
                let client = ClientProxy::new(RmqOptions::new(queue).uri(uri));
                client.connect().await?;
                Ok(Publisher::Bus(client))
            }
            System::Typical | System::Expert => {
                let connection = Connection::connect(uri, ConnectionProperties::default()).await?;
                let channel = connection.create_channel().await?;
                channel
                    .confirm_select(ConfirmSelectOptions::default())
                    .await?;
                Ok(Publisher::Raw {
                    connection: Box::new(connection),
                    channel,
                    queue: ShortString::from(queue),
                })
            }
        }
    }

    /// Publishes one event and waits for its confirm.
    async fn publish(&self, event: OrderEvent) -> Result<(), String> {
        match self {
            Publisher::Bus(client) => client
                .emit(PATTERN, &event)
                .await
                .map_err(|e| format!("emit: {e}")),
            Publisher::Raw { channel, queue, .. } => {
                let body = serde_json::to_vec(&OutgoingPacket {
                    pattern: PATTERN,
                    data: &event,
                })
                .map_err(|e| format!("encode: {e}"))?;
                // The same properties as rmq-bus's: JSON, persistent, a correlation id.
                let properties = BasicProperties::default()
                    .with_content_type(ShortString::from("application/json"))
                    .with_delivery_mode(2)
                    .with_correlation_id(ShortString::from(correlation_id()));
                // mandatory, as rmq-bus publishes: an unroutable event is an error, not lost.
                let options = BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                };
                let confirm = channel
                    .basic_publish(
                        ShortString::from(""),
                        queue.clone(),
                        options,
                        &body,
                        properties,
                    )
                    .await
                    .map_err(|e| format!("basic.publish: {e}"))?;
                match confirm.await {
                    Ok(Confirmation::Ack(None)) => Ok(()),
                    Ok(other) => Err(format!("publish not confirmed: {other:?}")),
                    Err(e) => Err(format!("publish confirm: {e}")),
                }
            }
        }
    }

    async fn close(self) {
        match self {
            Publisher::Bus(client) => client.close().await,
            Publisher::Raw {
                connection,
                channel,
                ..
            } => {
                let _ = channel.close(200, ShortString::from("done")).await;
                let _ = connection.close(200, ShortString::from("done")).await;
            }
        }
    }
}

/// Publishes `recorder.n` events, up to [`IN_FLIGHT`] at once; returns when the last is
/// confirmed, in ns since the recorder's epoch.
async fn publish_all(publisher: Arc<Publisher>, recorder: Arc<Recorder>) -> u64 {
    futures::stream::iter(0..recorder.n)
        .for_each_concurrent(IN_FLIGHT, |i| {
            let (publisher, recorder) = (&publisher, &recorder);
            async move {
                let event = make_event(i, recorder.now_ns());
                if let Err(error) = publisher.publish(event).await {
                    recorder.fail(error);
                }
            }
        })
        .await;
    recorder.now_ns()
}

/// The consuming side of a system, running.
enum Consumer {
    Bus(RunningMicroservice),
    Raw {
        connection: Box<Connection>,
        channel: Channel,
        task: tokio::task::JoinHandle<Result<(), String>>,
    },
}

impl Consumer {
    async fn start(
        system: System,
        scenario: Scenario,
        uri: &str,
        queue: &str,
        recorder: &Arc<Recorder>,
    ) -> Res<Self> {
        let delay = scenario.handler_delay();
        if system == System::RmqBus {
            let recorder = recorder.clone();
            let running = Microservice::new(
                RmqOptions::new(queue)
                    .uri(uri)
                    .prefetch(scenario.prefetch()),
            )
            .on_event(
                PATTERN,
                move |Payload(event): Payload<OrderEvent>, ctx: RmqContext| {
                    let recorder = recorder.clone();
                    async move {
                        handle(&recorder, &event, delay).await;
                        ctx.ack().await
                    }
                },
            )
            .start()
            .await?;
            return Ok(Consumer::Bus(running));
        }
        let connection = Connection::connect(uri, ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        channel
            .basic_qos(scenario.prefetch(), BasicQosOptions::default())
            .await?;
        // As rmq-bus does (the parent declared it already; this lets a child run alone).
        channel
            .queue_declare(
                ShortString::from(queue),
                QueueDeclareOptions::durable(),
                FieldTable::default(),
            )
            .await?;
        let consumer = channel
            .basic_consume(
                ShortString::from(queue),
                ShortString::from(""),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let recorder = recorder.clone();
        let task = if system == System::Typical {
            tokio::spawn(consume_typical(consumer, recorder, delay))
        } else {
            tokio::spawn(consume_expert(channel.clone(), consumer, recorder, delay))
        };
        Ok(Consumer::Raw {
            connection: Box::new(connection),
            channel,
            task,
        })
    }

    /// Lets handlers finish and closes; an error if the consumer itself failed.
    async fn stop(self) -> Result<(), String> {
        match self {
            Consumer::Bus(running) => running
                .shutdown()
                .await
                .map_err(|e| format!("microservice: {e}")),
            Consumer::Raw {
                connection,
                channel,
                task,
            } => {
                let ended = match task.await {
                    Ok(ended) => ended,
                    Err(join) => Err(format!("consumer task: {join}")),
                };
                let _ = channel.close(200, ShortString::from("done")).await;
                let _ = connection.close(200, ShortString::from("done")).await;
                ended
            }
        }
    }
}

/// Decodes a delivery as the raw baselines do: the whole packet, typed.
fn decode(data: &[u8]) -> Result<OrderEvent, String> {
    let packet: IncomingPacket =
        serde_json::from_slice(data).map_err(|e| format!("bad packet: {e}"))?;
    if packet.pattern != PATTERN {
        return Err(format!("unexpected pattern {:?}", packet.pattern));
    }
    Ok(packet.data)
}

async fn next_delivery(consumer: &mut lapin::Consumer) -> Result<lapin::message::Delivery, String> {
    match consumer.next().await {
        Some(Ok(delivery)) => Ok(delivery),
        Some(Err(error)) => Err(format!("consumer: {error}")),
        None => Err("consumer ended early".to_owned()),
    }
}

/// lapin as most code uses it: next delivery, deserialize, handle, ack that one delivery. With a
/// slow handler (S2) each delivery gets its own task, or the handlers would run one at a time.
async fn consume_typical(
    mut consumer: lapin::Consumer,
    recorder: Arc<Recorder>,
    delay: Option<Duration>,
) -> Result<(), String> {
    let mut tasks = JoinSet::new();
    for _ in 0..recorder.n {
        let delivery = next_delivery(&mut consumer).await?;
        let event = match decode(&delivery.data) {
            Ok(event) => event,
            Err(error) => {
                let _ = delivery.reject(BasicRejectOptions { requeue: false }).await;
                recorder.fail(&error);
                return Err(error);
            }
        };
        let acker = delivery.acker;
        match delay {
            None => {
                handle(&recorder, &event, None).await;
                acker
                    .ack(BasicAckOptions::default())
                    .await
                    .map_err(|e| format!("basic.ack: {e}"))?;
            }
            Some(delay) => {
                let recorder = recorder.clone();
                tasks.spawn(async move {
                    handle(&recorder, &event, Some(delay)).await;
                    acker
                        .ack(BasicAckOptions::default())
                        .await
                        .map_err(|e| format!("basic.ack: {e}"))
                });
                while let Some(done) = tasks.try_join_next() {
                    done.map_err(|e| e.to_string())??;
                }
            }
        }
    }
    while let Some(done) = tasks.join_next().await {
        done.map_err(|e| e.to_string())??;
    }
    Ok(())
}

/// Which handled delivery tags can be acked with one `multiple` ack: the highest tag below
/// which every tag is handled. Tags on a channel count up from 1.
struct AckWindow {
    /// Highest tag acked so far.
    acked: u64,
    /// Highest tag with every tag up to it handled.
    handled_upto: u64,
    /// Handled flags for the tags after `handled_upto`.
    ahead: std::collections::VecDeque<bool>,
}

impl AckWindow {
    fn new() -> Self {
        Self {
            acked: 0,
            handled_upto: 0,
            ahead: std::collections::VecDeque::with_capacity(
                usize::from(rmq_bus::DEFAULT_PREFETCH.max(PREFETCH)) * 2,
            ),
        }
    }

    fn handled(&mut self, tag: u64) {
        let Some(offset) = tag
            .checked_sub(self.handled_upto + 1)
            .and_then(|offset| usize::try_from(offset).ok())
        else {
            return;
        };
        if self.ahead.len() <= offset {
            self.ahead.resize(offset + 1, false);
        }
        self.ahead[offset] = true;
        while self.ahead.front() == Some(&true) {
            self.ahead.pop_front();
            self.handled_upto += 1;
        }
    }

    fn unacked(&self) -> u64 {
        self.handled_upto - self.acked
    }

    /// The tag to ack with `multiple` now, if any, marking it acked.
    fn take(&mut self) -> Option<u64> {
        (self.unacked() > 0).then(|| {
            self.acked = self.handled_upto;
            self.acked
        })
    }
}

async fn ack_upto(channel: Channel, tag: u64) -> Result<(), String> {
    channel
        .basic_ack(tag, BasicAckOptions { multiple: true })
        .await
        .map_err(|e| format!("basic.ack multiple: {e}"))
}

/// lapin as an expert would use it: handlers run as futures inside the consumer task, and
/// handled deliveries are acked in batches with one `basic.ack multiple` per [`ACK_BATCH`]
/// in-order deliveries, or [`ACK_FLUSH`] after a smaller run began, so the prefetch window
/// never starves.
async fn consume_expert(
    channel: Channel,
    mut consumer: lapin::Consumer,
    recorder: Arc<Recorder>,
    delay: Option<Duration>,
) -> Result<(), String> {
    let mut window = AckWindow::new();
    let mut handlers = FuturesUnordered::new();
    let mut acks = FuturesUnordered::new();
    let flush = tokio::time::sleep(ACK_FLUSH);
    tokio::pin!(flush);
    let mut flush_armed = false;
    let mut received = 0;
    while received < recorder.n || !handlers.is_empty() {
        let handled_tag = tokio::select! {
            delivery = next_delivery(&mut consumer), if received < recorder.n => {
                let delivery = delivery?;
                received += 1;
                let tag = delivery.delivery_tag;
                let event = match decode(&delivery.data) {
                    Ok(event) => event,
                    Err(error) => {
                        let _ = delivery.reject(BasicRejectOptions { requeue: false }).await;
                        recorder.fail(&error);
                        return Err(error);
                    }
                };
                match delay {
                    None => {
                        handle(&recorder, &event, None).await;
                        tag
                    }
                    Some(delay) => {
                        let recorder = recorder.clone();
                        handlers.push(async move {
                            handle(&recorder, &event, Some(delay)).await;
                            tag
                        });
                        continue;
                    }
                }
            }
            Some(tag) = handlers.next(), if !handlers.is_empty() => tag,
            () = &mut flush, if flush_armed => {
                flush_armed = false;
                if let Some(tag) = window.take() {
                    acks.push(ack_upto(channel.clone(), tag));
                }
                continue;
            }
            Some(acked) = acks.next(), if !acks.is_empty() => {
                acked?;
                continue;
            }
        };
        window.handled(handled_tag);
        if window.unacked() >= ACK_BATCH {
            if let Some(tag) = window.take() {
                acks.push(ack_upto(channel.clone(), tag));
            }
            flush_armed = false;
        } else if window.unacked() > 0 && !flush_armed {
            flush
                .as_mut()
                .reset(tokio::time::Instant::now() + ACK_FLUSH);
            flush_armed = true;
        }
    }
    if let Some(tag) = window.take() {
        acks.push(ack_upto(channel.clone(), tag));
    }
    while let Some(acked) = acks.next().await {
        acked?;
    }
    Ok(())
}

async fn run_child(
    system: System,
    scenario: Scenario,
    uri: &str,
    queue: &str,
    n: usize,
    timeout: Duration,
) -> Res<Report> {
    let recorder = Arc::new(Recorder::new(n));
    let consumer = Consumer::start(system, scenario, uri, queue, &recorder).await?;
    let publisher = Arc::new(Publisher::open(system, uri, queue).await?);

    let start_ns = recorder.now_ns();
    let publishing = tokio::spawn(publish_all(publisher.clone(), recorder.clone()));
    let work = async {
        recorder.wait().await?;
        publishing.await.map_err(|e| format!("publisher task: {e}"))
    };
    let published_ns = match tokio::time::timeout(timeout, work).await {
        Ok(Ok(published_ns)) => published_ns,
        Ok(Err(error)) => return Err(error.into()),
        Err(_) => {
            return Err(format!(
                "timed out after {timeout:?}: {} of {n} messages handled (set BENCH_TIMEOUT_S)",
                recorder.handled.load(Ordering::Acquire)
            )
            .into());
        }
    };
    if let Some(failure) = recorder.failure() {
        return Err(failure.into());
    }
    let cpu_s = cpu_seconds()?;
    let handled_ns = recorder.last_handled_ns.load(Ordering::Acquire);

    consumer.stop().await?;
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
        cpu_s,
        peak_rss_kib: peak_rss_kib()?,
    })
}

/// `--child <system> <scenario> <queue> <n>`: runs one round and prints its [`Report`].
fn child(args: &[String]) -> Res<()> {
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
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let timeout = Duration::from_secs(env_number("BENCH_TIMEOUT_S", DEFAULT_TIMEOUT_S)?);
    let uri = broker_uri();
    // Two workers on this 2-core machine; the same runtime for every system.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(run_child(system, scenario, &uri, queue, n, timeout))?;
    runtime.shutdown_timeout(Duration::from_secs(5));
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Parent: rounds, aggregation, report
// ---------------------------------------------------------------------------------------------

fn broker_uri() -> String {
    std::env::var("RABBIT_MQ_URI").unwrap_or_else(|_| rmq_bus::DEFAULT_URI.to_owned())
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

/// Declares the round's queue as rmq-bus does (durable, no arguments), so both sides match.
async fn declare_queue(uri: &str, queue: &str) -> Res<()> {
    let connection = Connection::connect(uri, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .queue_declare(
            ShortString::from(queue),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await?;
    let _ = connection.close(200, ShortString::from("declared")).await;
    Ok(())
}

/// Deletes the round's queue, with whatever is left in it.
async fn delete_queue(uri: &str, queue: &str) -> Res<()> {
    let connection = Connection::connect(uri, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .queue_delete(ShortString::from(queue), QueueDeleteOptions::default())
        .await?;
    let _ = connection.close(200, ShortString::from("deleted")).await;
    Ok(())
}

/// Runs one child; its stderr passes through.
fn run_round(
    exe: &Path,
    admin: &tokio::runtime::Runtime,
    uri: &str,
    system: System,
    scenario: Scenario,
    queue: &str,
    n: usize,
) -> Res<Report> {
    admin
        .block_on(declare_queue(uri, queue))
        .map_err(|e| format!("declaring {queue}: {e}"))?;
    let output = Command::new(exe)
        .args(["--child", system.name(), scenario.name(), queue])
        .arg(n.to_string())
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output();
    if let Err(error) = admin.block_on(delete_queue(uri, queue)) {
        eprintln!("bench: could not delete queue {queue}: {error}");
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

fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let len = values.len();
    match len {
        0 => None,
        _ if len % 2 == 1 => Some(values[len / 2]),
        _ => Some((values[len / 2 - 1] + values[len / 2]) / 2.0),
    }
}

/// Median of each figure across a system's successful rounds.
#[derive(Clone, Copy, Debug)]
struct Summary {
    rounds: usize,
    publish_per_s: f64,
    e2e_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu_s: f64,
    cpu_us_per_msg: f64,
    peak_rss_mib: f64,
}

fn summarize(reports: &[Report]) -> Option<Summary> {
    let figure = |f: fn(&Report) -> f64| median(reports.iter().map(f).collect());
    Some(Summary {
        rounds: reports.len(),
        publish_per_s: figure(|r| r.publish_per_s)?,
        e2e_per_s: figure(|r| r.e2e_per_s)?,
        p50_ms: figure(|r| r.p50_ms)?,
        p99_ms: figure(|r| r.p99_ms)?,
        cpu_s: figure(|r| r.cpu_s)?,
        cpu_us_per_msg: figure(Report::cpu_us_per_msg)?,
        peak_rss_mib: figure(Report::peak_rss_mib)?,
    })
}

fn print_row_header() {
    println!(
        "  {:<18} | {:>10} | {:>10} | {:>8} | {:>8} | {:>6} | {:>10} | {:>12}",
        "system", "publish/s", "e2e/s", "p50 ms", "p99 ms", "CPU s", "CPU µs/msg", "peak RSS MiB"
    );
    println!("  {}", "-".repeat(106));
}

fn print_row(name: &str, s: &Summary) {
    println!(
        "  {:<18} | {:>10.0} | {:>10.0} | {:>8.2} | {:>8.2} | {:>6.2} | {:>10.1} | {:>12.1}",
        name,
        s.publish_per_s,
        s.e2e_per_s,
        s.p50_ms,
        s.p99_ms,
        s.cpu_s,
        s.cpu_us_per_msg,
        s.peak_rss_mib
    );
}

/// `a / b` with two decimals, or `n/a` when a side has no successful round.
fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "n/a".to_owned(),
    }
}

/// S3 request/reply through rmq-bus (direct reply-to): `S3_N` sequential round trips (p50,
/// p99), then `S3_N` requests from 64 concurrent requesters (rate). In this process: request
/// latency, not CPU or memory, is what S3 measures.
fn s3_request_reply(admin: &tokio::runtime::Runtime, uri: &str, n: usize) -> Res<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let queue = format!("rmq-bus-bench-{}-s3", std::process::id());
    let result: Res<(f64, f64, f64)> = runtime.block_on(async {
        let running = Microservice::new(RmqOptions::new(&queue).uri(uri))
            .on_message("echo", |Payload(n): Payload<u64>| async move {
                Ok::<_, rmq_bus::RpcError>(n)
            })
            .start()
            .await?;
        let client = ClientProxy::new(RmqOptions::new(&queue).uri(uri));
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
        let per_requester = n.div_ceil(64) as u64;
        let requesters = (0..64u64).map(|r| {
            let client = client.clone();
            async move {
                for i in 0..per_requester {
                    let _: u64 = client.send("echo", &(r * per_requester + i)).await?;
                }
                Ok::<_, rmq_bus::Error>(())
            }
        });
        for outcome in futures::future::join_all(requesters).await {
            outcome?;
        }
        let rate = (per_requester * 64) as f64 / started.elapsed().as_secs_f64();
        client.close().await;
        running.shutdown().await?;
        let ms = |ns: u64| ns as f64 / 1e6;
        Ok((
            ms(percentile(&round_trips, 0.50)),
            ms(percentile(&round_trips, 0.99)),
            rate,
        ))
    });
    let _ = admin.block_on(delete_queue(uri, &queue));
    let (p50, p99, rate) = result?;
    println!();
    println!("S3 request/reply (rmq-bus send → #[message_pattern], direct reply-to) — N={n}");
    println!("  sequential round trip p50 {p50:.3} ms  p99 {p99:.3} ms (target p50 ≤ 1 ms)");
    println!("  64 concurrent requesters: {rate:.0} requests/s");
    Ok(())
}

fn parent() -> Res<bool> {
    let n: usize = env_number("N", DEFAULT_N)?;
    let rounds: usize = env_number("ROUNDS", DEFAULT_ROUNDS)?;
    let s2_n: usize = env_number("S2_N", (n / 5).max(1))?;
    if n == 0 || rounds == 0 || s2_n == 0 {
        return Err("N, S2_N and ROUNDS must be at least 1".into());
    }
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
        "rmq-bus bench: nproc={nproc} loadavg={} N={n} S2_N={s2_n}{} rounds={rounds} unix_time={unix_time} \
         body≈{body_bytes} B, persistent, confirmed, ≤{IN_FLIGHT} publishes in flight, \
         prefetch {PREFETCH}, manual acks; one child process per round; medians across rounds",
        loadavg.join(","),
        if s2_n == n {
            ""
        } else {
            " (S2 uses fewer messages)"
        },
    );

    let mut reports: Vec<(Scenario, System, Report)> = Vec::new();
    let mut failures = 0;
    let pid = std::process::id();
    for round in 1..=rounds {
        for scenario in Scenario::ALL {
            let count = if scenario == Scenario::S1 { n } else { s2_n };
            for system in System::ALL {
                let queue = format!("rmq-bus-bench-{pid}-{unix_time}-r{round}-{scenario}-{system}");
                match run_round(&exe, &admin, &uri, system, scenario, &queue, count) {
                    Ok(report) => {
                        println!(
                            "round {round}/{rounds} {scenario} {system:<13}: publish {:>7.0}/s  \
                             e2e {:>7.0}/s  p50 {:>7.2} ms  p99 {:>7.2} ms  CPU {:>5.2} s  \
                             RSS {:>5.1} MiB",
                            report.publish_per_s,
                            report.e2e_per_s,
                            report.p50_ms,
                            report.p99_ms,
                            report.cpu_s,
                            report.peak_rss_mib()
                        );
                        reports.push((scenario, system, report));
                    }
                    Err(error) => {
                        failures += 1;
                        println!("round {round}/{rounds} {scenario} {system}: FAILED: {error}");
                    }
                }
            }
        }
    }

    let summary = |scenario: Scenario, system: System| {
        let mine: Vec<Report> = reports
            .iter()
            .filter(|(sc, sy, _)| *sc == scenario && *sy == system)
            .map(|(_, _, report)| report.clone())
            .collect();
        summarize(&mine)
    };
    for scenario in Scenario::ALL {
        let count = if scenario == Scenario::S1 { n } else { s2_n };
        println!();
        println!("{} — N={count}", scenario.title());
        print_row_header();
        for system in System::ALL {
            match summary(scenario, system) {
                Some(s) => print_row(&format!("{system} ({})", s.rounds), &s),
                None => println!("  {system:<18} | no successful round"),
            }
        }
    }

    let get = |scenario, system, f: fn(&Summary) -> f64| summary(scenario, system).map(|s| f(&s));
    let e2e = |s: &Summary| s.e2e_per_s;
    let cpu = |s: &Summary| s.cpu_us_per_msg;
    let (bus, typical, expert) = (System::RmqBus, System::Typical, System::Expert);
    let (s1, s2) = (Scenario::S1, Scenario::S2);
    println!();
    println!(
        "S1 publish ratio (rmq-bus / raw lapin expert): {}",
        ratio(
            get(s1, bus, |s| s.publish_per_s),
            get(s1, expert, |s| s.publish_per_s)
        )
    );
    println!(
        "S1 end_to_end ratio (rmq-bus / raw lapin typical): {}",
        ratio(get(s1, bus, e2e), get(s1, typical, e2e))
    );
    println!(
        "S1 CPU per message ratio (rmq-bus / raw lapin expert): {} (target ≤ 1.10)",
        ratio(get(s1, bus, cpu), get(s1, expert, cpu))
    );
    println!(
        "S1 CPU per message ratio (rmq-bus / raw lapin typical): {}",
        ratio(get(s1, bus, cpu), get(s1, typical, cpu))
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
        ratio(get(s2, bus, e2e), get(s1, bus, e2e)),
        Scenario::S2.prefetch(),
        f64::from(Scenario::S2.prefetch()) / SLOW_HANDLER.as_secs_f64()
    );
    println!(
        "S2 end_to_end ratio (rmq-bus / raw lapin expert): {}",
        ratio(get(s2, bus, e2e), get(s2, expert, e2e))
    );
    println!(
        "S2 end_to_end ratio (rmq-bus / raw lapin typical): {}",
        ratio(get(s2, bus, e2e), get(s2, typical, e2e))
    );
    let s3_n: usize = env_number("S3_N", (n / 10).clamp(1, 10_000))?;
    if let Err(error) = s3_request_reply(&admin, &uri, s3_n) {
        failures += 1;
        println!("S3: FAILED: {error}");
    }
    if failures > 0 {
        println!("{failures} round(s) failed");
    }
    println!(
        "S1 end_to_end ratio (rmq-bus / raw lapin expert): {}",
        ratio(get(s1, bus, e2e), get(s1, expert, e2e))
    );
    Ok(failures == 0)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let result = match args.get(1).map(String::as_str) {
        Some("--child") => child(&args[2..]).map(|()| true),
        _ => parent(),
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
