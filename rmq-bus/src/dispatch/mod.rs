//! The transport-neutral core of a microservice: each queue's consumer loop, and for every
//! delivery: route it by pattern, run its handler, answer a request, and settle the delivery by
//! the queue's policy (ack, retry, dead-letter), whatever happens. It speaks to the broker only
//! through the transport's port ([`crate::transport`]), whose docs trace the path of one
//! delivery from the socket to the ack.
//!
//! Here, in order: [`serve`] takes deliveries from a [`Consumer`] and runs up to the prefetch
//! window of them at once; [`dispatch`] handles one inside its tracing span: [`route`] reads its
//! pattern and finds the handler in the [`Router`] (bad input is refused and dead-lettered), the
//! handler runs (panics caught), a request is answered, and what the handler left unsettled is
//! settled by the [`Disposal`] its outcome calls for — carried out in [`disposal`] when it means
//! republishing.

mod disposal;
mod lanes;
mod routing;
pub(crate) mod wildcards;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::sync::watch;
use tracing::{Instrument, Span};

use self::disposal::{ATTEMPT_HEADER, Policy, dispose};
pub(crate) use self::routing::Router;
use self::routing::{Entry, Refusal, route};
use crate::codec::{encode_no_handler, encode_reply};
use crate::config::{AckMode, FailurePolicy, RmqOptions};
use crate::context::RmqContext;
use crate::correlation;
use crate::delivery::{DeliveryInfo, Outcome, Properties, Settlement};
use crate::error::{Error, Result};
use crate::handler::{
    HandlerError, HandlerResult, Message, Response, RouteKind, RpcError, failure_response,
};
use crate::telemetry::{self, Binding, Failure, QueueMetrics, Settled, Started};
use crate::transport::{Consumer, Inbound, Publisher};

/// Runs the handlers of `consumer`'s deliveries, at most its queue's prefetch at once, until
/// `stop` is set (then drains them for up to `drain`) or the consumer dies (then lets them
/// finish on their own: their messages come back anyway).
///
/// The handlers run concurrently on this task rather than as a task each: a task per delivery
/// costs a spawn, a wake-up across threads and a copy of the handler's future. Handlers that
/// compute for long belong in `tokio::task::spawn_blocking`, as anywhere in async code.
pub(crate) async fn serve(
    mut consumer: Consumer,
    options: &RmqOptions,
    router: Arc<Router>,
    mut stop: watch::Receiver<bool>,
    drain: Duration,
) -> Result<()> {
    let metrics = Arc::new(QueueMetrics::new(
        &Binding::of(options),
        &router.patterns(),
        options.prefetch,
    ));
    // Boxed, here and below, so that the code of the paths a delivery does not take stays out
    // of the loop's: what a delivery costs in CPU depends on how much code it runs through.
    if router.ordered {
        return Box::pin(lanes::serve(
            consumer, options, router, metrics, stop, drain,
        ))
        .await;
    }
    let policy = Arc::new(Policy::of(options));
    let prefetch = usize::from(options.prefetch);
    let mut handlers = FuturesUnordered::new();
    // A stop is seen at the top of each turn, by one atomic load; its future is polled last, only
    // when nothing else is ready, so that a waiting loop still wakes for it. Polled first on
    // every turn, it took 3 % of a delivery's instruction-cache misses.
    let asked = stop.clone();
    let stopped = stop_requested(&mut stop);
    tokio::pin!(stopped);
    let ended = loop {
        if asked.has_changed().unwrap_or(true) {
            break Ok(());
        }
        let room = handlers.len() < prefetch;
        tokio::select! {
            biased;
            Some(()) = handlers.next(), if !handlers.is_empty() => metrics.in_flight(handlers.len()),
            delivery = consumer.next(), if room => match delivery {
                Ok(inbound) => {
                    handlers.push(dispatch(router.clone(), policy.clone(), metrics.clone(), inbound));
                    metrics.in_flight(handlers.len());
                }
                Err(reason) => break Err(consumer_stopped(&consumer, reason)),
            },
            () = &mut stopped => break Ok(()),
        }
    };
    Box::pin(wind_down(consumer, handlers, ended, drain)).await
}

/// Ends a consumer loop: after a stop, cancels the consumer and drains the handlers for up to
/// `drain`; after the consumer died (`ended` is its error), lets them finish on their own.
async fn wind_down<F: Future<Output = ()> + Send + 'static>(
    consumer: Consumer,
    mut handlers: FuturesUnordered<F>,
    ended: Result<()>,
    drain: Duration,
) -> Result<()> {
    if ended.is_err() {
        let_finish(handlers);
        return ended;
    }
    consumer.cancel().await;
    let drained =
        tokio::time::timeout(drain, async { while handlers.next().await.is_some() {} }).await;
    let left = handlers.len();
    // Closing first returns every unsettled message to the queue, so handlers cut short below
    // cannot settle theirs by the failure policy.
    consumer.close().await;
    drop(handlers);
    match drained {
        Err(_) => Err(Error::DrainTimeout(left)),
        Ok(()) => Ok(()),
    }
}

/// The error of a consumer that stopped by itself, for `reason`.
fn consumer_stopped(consumer: &Consumer, reason: String) -> Error {
    Error::ConsumerStopped {
        queue: consumer.queue().to_owned(),
        reason,
    }
}

/// Lets the handlers of a consumer that is gone finish on their own: its deliveries return to
/// the queue (in order) whatever the handlers do.
fn let_finish<F: Future + Send + 'static>(mut handlers: FuturesUnordered<F>)
where
    F::Output: Send,
{
    if !handlers.is_empty() {
        tokio::spawn(async move { while handlers.next().await.is_some() {} });
    }
}

/// Resolves once a stop is asked for (or the asker is gone).
pub(crate) async fn stop_requested(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// What becomes of a delivery once handled.
enum Disposal {
    Settle(Settlement),
    Retry {
        attempt: u32,
        delay: Duration,
    },
    DeadLetter {
        reason: String,
        attempts: u32,
    },
    /// Moved out of the window behind a stuck key (see `lanes`), to come back after `delay`.
    Park {
        delay: Duration,
    },
}

impl Disposal {
    /// The plain settlement standing in when rmq-bus cannot republish (a handler kept the context).
    /// A retry falls back to one requeue, so that a failing handler that keeps its context
    /// cannot loop for ever.
    fn fallback(&self, redelivered: bool) -> Settlement {
        match self {
            Disposal::Settle(settlement) => *settlement,
            Disposal::Retry { .. } if !redelivered => Settlement::Nack { requeue: true },
            Disposal::Park { .. } => Settlement::Nack { requeue: true },
            Disposal::Retry { .. } | Disposal::DeadLetter { .. } => Settlement::Reject,
        }
    }
}

/// Where to answer a request.
struct ReplyTo {
    id: String,
    queue: String,
    correlation_id: String,
}

/// Handles one delivery from start to settlement, inside a span with its queue, tag and pattern.
///
/// One is allocated for every delivery, so it is kept small (under the allocator's fast size
/// classes): the delivery stays behind its context's pointer, and the paths a plain event never
/// takes (refusals, replies, republishing) are boxed when taken.
fn dispatch(
    router: Arc<Router>,
    policy: Arc<Policy>,
    metrics: Arc<QueueMetrics>,
    inbound: Inbound,
) -> impl Future<Output = ()> + Send + 'static {
    let info = inbound.ctx.delivery();
    let span = telemetry::trace::delivery_span(info);
    run(router, policy, metrics, inbound, span.clone()).instrument(span)
}

/// `span`: the delivery's own, to record the pattern in once known.
async fn run(
    router: Arc<Router>,
    policy: Arc<Policy>,
    metrics: Arc<QueueMetrics>,
    inbound: Inbound,
    span: Span,
) {
    let Inbound { ctx, publisher } = inbound;
    let (router, policy, metrics) = (router.as_ref(), policy.as_ref(), metrics.as_ref());
    let info = ctx.delivery();
    let attempt = attempt_of(&info.properties);
    // Bad input never reaches a handler: dead-lettered with its reason (a request is told first).
    let routed = match route(router, policy, ctx.body(), &info.properties) {
        Ok(routed) => routed,
        Err(refusal) => {
            metrics.unrouted();
            span.record("error.type", Failure::Poison.name());
            let refused = refuse(publisher.as_ref(), policy, metrics, &ctx, refusal, attempt);
            return Box::pin(refused).await;
        }
    };
    let entry = routed.entry;
    metrics.consumed(entry.index);
    span.record("pattern", &*routed.key);
    ctx.set_pattern(routed.key);
    let reply_to = reply_address(info, routed.request_id);
    // An ordered handler's retries are made here, holding its key's lane (see `retry_in_place`).
    let ordered = entry.ordered_by.is_some() && reply_to.is_none();
    let again = ordered.then(|| routed.data.clone());
    let started = Started::now();
    let mut outcome = invoke(entry, routed.data, &ctx).await;
    let mut attempt = attempt;
    if let Some(data) = again {
        (outcome, attempt) = Box::pin(lanes::retry_in_place(
            entry, policy, data, &ctx, outcome, attempt,
        ))
        .await;
    }

    let failure = failure_of(&outcome);
    metrics.processed(entry.index, started, failure);
    let (disposal, response) = match outcome {
        Ok(Ok(response)) => (Disposal::Settle(Settlement::Ack), response),
        failed => {
            let attempt = Attempt {
                entry,
                policy,
                answered: reply_to.is_some(),
                ordered,
                number: attempt,
                redelivered: info.redelivered,
            };
            attempt.failed(failed, failure, &span)
        }
    };
    if let Some(reply_to) = &reply_to {
        let (value, error) = response.parts();
        let body = encode_reply(value, error);
        Box::pin(send_reply(publisher.as_ref(), reply_to, body)).await;
    }
    if !ctx.take_over(disposal.fallback(info.redelivered)) {
        // Settled by the handler (or left to a clone of its context, not counted here).
        if let Some(settlement) = ctx.settlement() {
            metrics.settled(Settled::As(settlement), failure);
        }
        return;
    }
    let acked_for_handler = matches!(disposal, Disposal::Settle(Settlement::Ack))
        && entry.kind == RouteKind::Event
        && reply_to.is_none()
        && policy.ack_mode == AckMode::Manual;
    let (settlement, outcome) = match disposal {
        Disposal::Settle(settlement) => (settlement, Outcome::of(settlement)),
        disposal => Box::pin(dispose(publisher.as_ref(), policy, &ctx, disposal)).await,
    };
    metrics.settled(Settled::of(settlement, &outcome), failure);
    match ctx.settle_taken(settlement, outcome).await {
        Ok(()) if acked_for_handler => unsettled_by_handler(),
        Ok(()) => {}
        Err(error) => not_settled(&error),
    }
}

/// Logs a manual-ack handler that returned `Ok` without settling. Out of line, as every log
/// call in the delivery path: a rare warning should not lengthen the code each delivery runs
/// through.
#[cold]
#[inline(never)]
fn unsettled_by_handler() {
    tracing::warn!("handler returned Ok without settling its message (AckMode::Manual); acked it");
}

/// Logs a settlement that did not go through.
#[cold]
#[inline(never)]
fn not_settled(error: &Error) {
    tracing::warn!(%error, "could not settle");
}

/// How a handler run failed, for its metrics and its span.
fn failure_of(outcome: &Invoked) -> Option<Failure> {
    match outcome {
        Ok(Ok(_)) => None,
        Ok(Err(HandlerError::BadInput(_))) => Some(Failure::BadInput),
        Ok(Err(_)) => Some(Failure::Handler),
        Err(_) => Some(Failure::Panic),
    }
}

/// A delivery's handler run, as its failure is judged.
struct Attempt<'a> {
    entry: &'a Entry,
    policy: &'a Policy,
    /// A request, answered whatever happened, so that its sender need not wait for a timeout;
    /// once answered it is acked, as a redelivery would only answer it again.
    answered: bool,
    /// An ordered handler's retries were made in place already.
    ordered: bool,
    /// Its delivery number (1 for the first).
    number: u32,
    redelivered: bool,
}

impl Attempt<'_> {
    /// What a failed run calls for, and the error a request is answered with; logged, and its
    /// `failure` recorded in the delivery's `span`. Out of line: the success path of every
    /// delivery stays short in code, which is what its CPU cost is mostly about.
    #[cold]
    #[inline(never)]
    fn failed(
        &self,
        outcome: Invoked,
        failure: Option<Failure>,
        span: &Span,
    ) -> (Disposal, Response) {
        if let Some(failure) = failure {
            span.record("error.type", failure.name());
        }
        let attempt = self.number;
        match outcome {
            Ok(Ok(response)) => (Disposal::Settle(Settlement::Ack), response),
            Ok(Err(error @ HandlerError::BadInput(_))) => {
                tracing::warn!(reason = %error, "bad input: dead-lettering");
                let disposal = Disposal::DeadLetter {
                    reason: error.to_string(),
                    attempts: attempt,
                };
                (disposal, Response::Error(failure_response(&error)))
            }
            Ok(Err(error)) => {
                tracing::error!(%error, attempt, "handler failed");
                (
                    self.disposal(error.to_string()),
                    Response::Error(failure_response(&error)),
                )
            }
            Err(panic) => {
                let text = panic_text(panic.as_ref()).to_owned();
                tracing::error!(panic = %text, attempt, "handler panicked");
                (
                    self.disposal(format!("handler panicked: {text}")),
                    Response::Error(RpcError::internal()),
                )
            }
        }
    }

    /// The disposal of a run that failed for `reason`: a retry while the policy allows one,
    /// else a dead letter (or one requeue, by the queue's failure policy).
    fn disposal(&self, reason: String) -> Disposal {
        let retry = self.entry.retry.as_ref().or(self.policy.retry.as_ref());
        let attempt = self.number;
        match retry {
            _ if self.answered => Disposal::Settle(Settlement::Ack),
            _ if self.ordered => Disposal::DeadLetter {
                reason,
                attempts: attempt,
            },
            Some(retry) if attempt < retry.max_attempts() => Disposal::Retry {
                attempt: attempt + 1,
                delay: retry.delay_before(attempt + 1),
            },
            Some(_) => Disposal::DeadLetter {
                reason,
                attempts: attempt,
            },
            None if self.policy.on_failure == FailurePolicy::RequeueOnce && !self.redelivered => {
                Disposal::Settle(Settlement::Nack { requeue: true })
            }
            None => Disposal::DeadLetter {
                reason,
                attempts: attempt,
            },
        }
    }
}

/// What a handler run gives: its result, or its panic.
type Invoked = std::result::Result<HandlerResult, Box<dyn std::any::Any + Send>>;

/// Runs the handler of `entry` on a message of `data` (`None`: still in the body), catching panics.
async fn invoke(entry: &Entry, data: Option<Box<RawValue>>, ctx: &RmqContext) -> Invoked {
    let message = Message::new(data, ctx.clone());
    match std::panic::catch_unwind(AssertUnwindSafe(|| (entry.handler)(message))) {
        Ok(future) => {
            correlation::scope(ctx.clone(), AssertUnwindSafe(future).catch_unwind()).await
        }
        Err(panic) => Err(panic),
    }
}

/// Dead-letters a delivery for `reason` without reaching a handler.
async fn refuse_with(
    publisher: &dyn Publisher,
    policy: &Policy,
    metrics: &QueueMetrics,
    ctx: &RmqContext,
    reason: String,
) {
    let refusal = Refusal {
        reason,
        pattern: None,
        request_id: None,
    };
    metrics.unrouted();
    refuse(
        publisher,
        policy,
        metrics,
        ctx,
        refusal,
        attempt_of(&ctx.delivery().properties),
    )
    .await;
}

/// Disposes of a delivery that reaches no handler: tells a request's sender, then dead-letters it
/// with the reason.
async fn refuse(
    publisher: &dyn Publisher,
    policy: &Policy,
    metrics: &QueueMetrics,
    ctx: &RmqContext,
    refusal: Refusal,
    attempt: u32,
) {
    if let Some(reply_to) = reply_address(ctx.delivery(), refusal.request_id) {
        send_reply(publisher, &reply_to, encode_no_handler(&reply_to.id)).await;
    }
    if let Some(pattern) = refusal.pattern {
        ctx.set_pattern(Arc::from(pattern));
    }
    let disposal = Disposal::DeadLetter {
        reason: refusal.reason,
        attempts: attempt,
    };
    // No handler holds the context, so the dispatcher takes it over unless the broker already
    // settled it (`AckMode::NoAck`, where `dispose` only logs).
    let fallback = disposal.fallback(ctx.redelivered());
    let (settlement, outcome) = dispose(publisher, policy, ctx, disposal).await;
    if !ctx.take_over(fallback) {
        return;
    }
    metrics.settled(Settled::of(settlement, &outcome), Some(Failure::Poison));
    if let Err(error) = ctx.settle_taken(settlement, outcome).await {
        not_settled(&error);
    }
}

/// The delivery number of this message to a handler (1 for the first).
fn attempt_of(properties: &Properties) -> u32 {
    properties
        .headers
        .get(ATTEMPT_HEADER)
        .and_then(Value::as_u64)
        .map_or(1, |n| n.clamp(1, u64::from(u32::MAX)) as u32)
}

/// Where the reply to a request goes: a packet with an `id` and a `reply_to` property.
fn reply_address(info: &DeliveryInfo, id: Option<String>) -> Option<ReplyTo> {
    let id = id?;
    let Some(queue) = info.properties.reply_to.clone() else {
        tracing::warn!(request_id = %id, "request has no reply_to property; its reply cannot be sent");
        return None;
    };
    let correlation_id = info
        .properties
        .correlation_id
        .clone()
        .unwrap_or_else(|| id.clone());
    Some(ReplyTo {
        id,
        queue,
        correlation_id,
    })
}

async fn send_reply(publisher: &dyn Publisher, to: &ReplyTo, body: Vec<u8>) {
    if let Err(error) = publisher.reply(&to.queue, &to.correlation_id, body).await {
        tracing::warn!(%error, reply_to = %to.queue, "could not send the reply; the requester will time out");
    }
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("non-text panic payload")
}
