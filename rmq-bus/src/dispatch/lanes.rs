//! Keyed lanes: the consumer loop of a queue with ordered handlers
//! ([`Route::ordered_by`](crate::handler::Route::ordered_by)). A message of an ordered handler
//! goes into its key's lane: one message of a key runs at a time, the next waiting behind it in
//! delivery order; different keys run concurrently, up to the prefetch window. Messages of other
//! handlers run at once, as in the plain loop ([`super::serve`]), which queues without ordered
//! handlers keep: they pay nothing for lanes.
//!
//! A key that is stuck (its handler retrying in place, or slow) must not fill the window: at most
//! [`RmqOptions::max_waiting_per_key`] of its messages wait in process. Beyond that they are
//! *parked*: republished, one at a time and in order, to the delay queue
//! `<queue>.retry.<PARK_DELAY>ms` (the original acked), whose TTL sends them back in order. Until
//! every parked message of the key is back, later messages of the key are parked behind them, so
//! the key's order holds while its messages leave the window to the other keys.
//!
//! An ordered handler's failures are retried here too, in place ([`retry_in_place`]), so that a
//! retry keeps its key's lane.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::watch;
use tracing::Instrument;

use super::disposal::{PARKED_HEADER, Policy, dispose};
use serde_json::value::RawValue;

use super::{
    Disposal, Entry, Invoked, Router, consumer_stopped, dispatch, invoke, let_finish, refuse_with,
    stop_requested,
};
use crate::codec::{decode, event_pattern};
use crate::config::{AckMode, FailurePolicy, RmqOptions};
use crate::context::RmqContext;
use crate::delivery::{Outcome, Settlement};
use crate::error::{Error, Result};
use crate::handler::HandlerError;
use crate::telemetry::{self, QueueMetrics};
use crate::transport::{Consumer, Inbound};

/// How long a parked message waits on the broker before it comes back.
pub(crate) const PARK_DELAY: Duration = Duration::from_secs(1);

/// After this long without a parked message of a key coming back (purged from the delay queue,
/// say), the key stops waiting for them, so that it cannot stay parked for ever.
const PARKED_PATIENCE: Duration = Duration::from_secs(60);

/// What the loop does with a delivery or a lane that moved on.
enum Job {
    /// Runs it; `key`: the lane to advance when it is done.
    Handle(Inbound, Option<String>),
    /// Dead-letters it: its key cannot be read.
    Refuse(Inbound, String),
    /// Parks it, for the lane of `key`.
    Park(Inbound, String),
}

/// What a finished job leaves to do.
enum Done {
    Nothing,
    /// The message of this key's lane finished.
    Handled(String),
    /// A message of this key was parked (`true`), or requeued when that failed.
    Parked(String, bool),
}

/// Serves `consumer` through keyed lanes; as [`super::serve`] otherwise. On stop it does not
/// cancel the consumer until the lanes are drained, so that a single-active-consumer queue hands
/// over to the next consumer only once the messages held here are done (or returned in order).
pub(super) async fn serve(
    mut consumer: Consumer,
    options: &RmqOptions,
    router: Arc<Router>,
    metrics: Arc<QueueMetrics>,
    mut stop: watch::Receiver<bool>,
    drain: Duration,
) -> Result<()> {
    let policy = Arc::new(Policy::of(options));
    let prefetch = usize::from(options.prefetch);
    // Without acks the broker took the messages already: parking would lose them, so they wait.
    let per_key = match options.ack_mode {
        AckMode::NoAck => usize::MAX,
        _ => options.waiting_per_key(),
    };
    let mut lanes = Lanes::new(per_key);
    let mut running = FuturesUnordered::new();
    let run = |job| run_job(router.clone(), policy.clone(), metrics.clone(), job);
    let stopped = stop_requested(&mut stop);
    tokio::pin!(stopped);
    let ended = loop {
        let room = running.len() + lanes.held < prefetch;
        tokio::select! {
            biased;
            () = &mut stopped => break Ok(()),
            Some(done) = running.next(), if !running.is_empty() => {
                if let Some(job) = lanes.finished(done) {
                    running.push(run(job));
                }
                metrics.in_flight(running.len());
            }
            delivery = consumer.next(), if room => match delivery {
                Ok(inbound) => {
                    if let Some(job) = lanes.admit(&router, &policy, inbound) {
                        running.push(run(job));
                        metrics.in_flight(running.len());
                    }
                }
                Err(reason) => break Err(consumer_stopped(&consumer, reason)),
            },
        }
    };
    if ended.is_err() {
        let_finish(running);
        return ended;
    }
    let drained = tokio::time::timeout(drain, async {
        while let Some(done) = running.next().await {
            if let Some(job) = lanes.finished(done) {
                running.push(run(job));
            }
        }
    })
    .await;
    let left = running.len() + lanes.held;
    // Closing returns whatever is still held or unread, in queue order, before another consumer
    // of the queue can take over.
    consumer.close().await;
    drop(running);
    drop(lanes);
    match drained {
        Err(_) => Err(Error::DrainTimeout(left)),
        Ok(()) => Ok(()),
    }
}

/// Runs one job.
async fn run_job(
    router: Arc<Router>,
    policy: Arc<Policy>,
    metrics: Arc<QueueMetrics>,
    job: Job,
) -> Done {
    match job {
        Job::Handle(inbound, key) => {
            dispatch(router, policy, metrics, inbound).await;
            key.map_or(Done::Nothing, Done::Handled)
        }
        Job::Refuse(inbound, reason) => {
            let span = delivery_span(&inbound);
            async {
                tracing::warn!(%reason, "no ordering key: dead-lettering");
                let publisher = inbound.publisher.as_ref();
                refuse_with(publisher, &policy, &metrics, &inbound.ctx, reason).await;
            }
            .instrument(span)
            .await;
            Done::Nothing
        }
        Job::Park(inbound, key) => {
            let span = delivery_span(&inbound);
            let parked = park(&policy, &inbound).instrument(span).await;
            Done::Parked(key, parked)
        }
    }
}

fn delivery_span(inbound: &Inbound) -> tracing::Span {
    telemetry::trace::delivery_span(inbound.ctx.delivery())
}

/// Retries an ordered handler that failed (or panicked) without settling its message, in
/// place: the message keeps its prefetch slot and its key's lane, so later messages of the key
/// wait and the order holds (a retry through a delay queue would let them overtake it). Attempts
/// and delays are the retry policy's; without one, `FailurePolicy::RequeueOnce` is one more
/// attempt at once. Returns the last outcome and its attempt number; the caller dead-letters a
/// failure.
pub(super) async fn retry_in_place(
    entry: &Entry,
    policy: &Policy,
    data: Option<Box<RawValue>>,
    ctx: &RmqContext,
    mut outcome: Invoked,
    mut attempt: u32,
) -> (Invoked, u32) {
    let retry = entry.retry.as_ref().or(policy.retry.as_ref());
    loop {
        let failed = match &outcome {
            Ok(Err(HandlerError::BadInput(_))) | Ok(Ok(_)) => false,
            Ok(Err(_)) | Err(_) => true,
        };
        if !failed || ctx.settlement().is_some() {
            return (outcome, attempt);
        }
        let delay = match retry {
            Some(retry) if attempt < retry.max_attempts() => retry.delay_before(attempt + 1),
            None if policy.on_failure == FailurePolicy::RequeueOnce && attempt < 2 => {
                Duration::ZERO
            }
            _ => return (outcome, attempt),
        };
        match &outcome {
            Ok(Err(error)) => {
                tracing::warn!(%error, attempt, ?delay, "ordered handler failed; retrying in place, holding its key")
            }
            _ => tracing::warn!(
                attempt,
                ?delay,
                "ordered handler panicked; retrying in place, holding its key"
            ),
        }
        tokio::time::sleep(delay).await;
        attempt += 1;
        outcome = invoke(entry, data.clone(), ctx).await;
    }
}

/// Republishes a message to the park queue and acks it; `false` if it was requeued instead.
async fn park(policy: &Policy, inbound: &Inbound) -> bool {
    let ctx = &inbound.ctx;
    let disposal = Disposal::Park { delay: PARK_DELAY };
    let (settlement, outcome) = dispose(inbound.publisher.as_ref(), policy, ctx, disposal).await;
    let parked = matches!(outcome, Outcome::Parked { .. });
    if ctx.take_over(Settlement::Nack { requeue: true })
        && let Err(error) = ctx.settle_taken(settlement, outcome).await
    {
        tracing::warn!(%error, "could not settle");
    }
    parked
}

/// One key's lane.
#[derive(Default)]
struct Lane {
    /// A message of the key is running.
    running: bool,
    /// Its messages waiting to run, in delivery order.
    waiting: VecDeque<Inbound>,
    /// A message of the key is being parked.
    parking: bool,
    /// Its messages waiting to be parked, in delivery order.
    to_park: VecDeque<Inbound>,
    /// Its parked messages not back yet.
    parked_out: usize,
    /// When the last was parked.
    parked_at: Option<Instant>,
}

impl Lane {
    fn idle(&self) -> bool {
        !self.running
            && !self.parking
            && self.waiting.is_empty()
            && self.to_park.is_empty()
            && self.parked_out == 0
    }
}

/// The lanes of one consumer.
struct Lanes {
    lanes: HashMap<String, Lane>,
    /// How many messages of one key may wait in process.
    per_key: usize,
    /// Messages held in lanes, not running: they count against the prefetch window.
    held: usize,
}

impl Lanes {
    fn new(per_key: usize) -> Self {
        Self {
            lanes: HashMap::new(),
            per_key,
            held: 0,
        }
    }

    /// Takes a delivery: what to run now, if anything (or it waits in its lane).
    fn admit(&mut self, router: &Router, policy: &Policy, inbound: Inbound) -> Option<Job> {
        let key = match key_of(router, policy, &inbound) {
            None => return Some(Job::Handle(inbound, None)),
            Some(Err(reason)) => return Some(Job::Refuse(inbound, reason)),
            Some(Ok(key)) => key,
        };
        let lane = self.lanes.entry(key.clone()).or_default();
        if lane.parked_out > 0
            && lane
                .parked_at
                .is_some_and(|at| at.elapsed() > PARKED_PATIENCE)
        {
            tracing::warn!(
                key,
                missing = lane.parked_out,
                "parked messages of this key did not come back; no longer waiting for them"
            );
            lane.parked_out = 0;
        }
        // A parked message coming back is the oldest of its key's parked ones (its delay queue
        // is first in, first out): it may go into the lane.
        let returning =
            lane.parked_out > 0 && inbound.ctx.properties().headers.contains_key(PARKED_HEADER);
        if returning {
            lane.parked_out -= 1;
        }
        let behind_parked = lane.parked_out > 0 || lane.parking || !lane.to_park.is_empty();
        if !returning && behind_parked {
            return Self::park_in(lane, &mut self.held, inbound, key);
        }
        if !lane.running {
            lane.running = true;
            return Some(Job::Handle(inbound, Some(key)));
        }
        if lane.waiting.len() < self.per_key {
            lane.waiting.push_back(inbound);
            self.held += 1;
            return None;
        }
        Self::park_in(lane, &mut self.held, inbound, key)
    }

    /// Parks `inbound` now, or after the message of `lane` being parked.
    fn park_in(lane: &mut Lane, held: &mut usize, inbound: Inbound, key: String) -> Option<Job> {
        if lane.parking {
            lane.to_park.push_back(inbound);
            *held += 1;
            return None;
        }
        lane.parking = true;
        Some(Job::Park(inbound, key))
    }

    /// Advances the lane of a finished job: what to run next in it, if anything.
    fn finished(&mut self, done: Done) -> Option<Job> {
        let (key, parked) = match done {
            Done::Nothing => return None,
            Done::Handled(key) => (key, None),
            Done::Parked(key, parked) => (key, Some(parked)),
        };
        let lane = self.lanes.get_mut(&key)?;
        let next = match parked {
            None => {
                lane.running = false;
                let next = lane.waiting.pop_front();
                lane.running = next.is_some();
                next.map(|next| Job::Handle(next, Some(key.clone())))
            }
            Some(parked) => {
                lane.parking = false;
                if parked {
                    lane.parked_out += 1;
                    lane.parked_at = Some(Instant::now());
                }
                let next = lane.to_park.pop_front();
                lane.parking = next.is_some();
                next.map(|next| Job::Park(next, key.clone()))
            }
        };
        if next.is_some() {
            self.held -= 1;
        } else if lane.idle() {
            self.lanes.remove(&key);
        }
        next
    }
}

/// The ordering key of a delivery: `None` when its handler is not ordered (or it reaches no
/// handler, which the dispatcher then reports), `Err` when it cannot be read.
fn key_of(
    router: &Router,
    policy: &Policy,
    inbound: &Inbound,
) -> Option<std::result::Result<String, String>> {
    let ctx = &inbound.ctx;
    let body = ctx.body();
    if ctx.properties().reply_to.is_some() || body.len() > policy.max_bytes {
        return None;
    }
    if let Some(pattern) = event_pattern(body) {
        let path = router.get(pattern)?.ordered_by.as_ref()?;
        return Some(path.read(body));
    }
    let packet = decode(body).ok()?;
    let path = router.get(packet.pattern.key())?.ordered_by.as_ref()?;
    Some(path.read_data(&packet.data))
}
