//! The transport-neutral core: decode a delivery, route it by pattern, run its handler, answer a
//! request, and dispose of the delivery by the configured policy (ack, retry, dead-letter),
//! whatever happens.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::Value;
use serde_json::value::RawValue;
use tracing::{Instrument, Span, field};

use crate::codec::{decode, encode_no_handler, encode_reply, event_pattern};
use crate::config::{AckMode, FailurePolicy};
use crate::context::{DeliveryInfo, Properties, RmqContext, Settlement};
use crate::error::{Error, Result};
use crate::handler::{BoxHandler, HandlerError, Message, Route, RouteKind};
use crate::pattern::{is_wildcard, wildcard_matches};
use crate::retry::{ATTEMPT_HEADER, RetryPolicy, now_rfc3339};
use crate::rpc::{Response, RpcError, failure_response};
use crate::trace;

/// Where the dispatcher republishes a delivery.
pub(crate) enum Target {
    /// Straight back into a queue (an immediate retry).
    Queue(String),
    /// Into the delay queue in front of `queue`, whose TTL sends it back there.
    Delayed { queue: String, delay: Duration },
    /// Into a dead-letter queue.
    DeadLetter(String),
}

/// Publishes on behalf of whichever transport delivered a message.
pub(crate) trait Publisher: Send + Sync + 'static {
    /// Sends a reply `body` to queue `reply_to` with `correlation_id`.
    fn reply(
        &self,
        reply_to: &str,
        correlation_id: &str,
        body: Vec<u8>,
    ) -> BoxFuture<'_, Result<()>>;
    /// Publishes a copy of a delivery to `target` and waits for the broker's confirm.
    fn republish<'a>(
        &'a self,
        target: Target,
        body: &'a [u8],
        properties: &'a Properties,
    ) -> BoxFuture<'a, Result<()>>;
}

/// A delivery as any transport hands it over: its context (delivery, body, how to settle it) and
/// where to publish on its behalf.
pub(crate) struct Inbound {
    pub(crate) ctx: RmqContext,
    pub(crate) publisher: Arc<dyn Publisher>,
}

/// One registered handler.
struct Entry {
    /// Its pattern, shared with the context of every message it handles; `None` for a
    /// wildcard, whose messages keep their own.
    key: Option<Arc<str>>,
    /// The handler checks the body itself, so an event may reach it routed by its pattern alone.
    checks_body: bool,
    kind: RouteKind,
    retry: Option<RetryPolicy>,
    handler: BoxHandler,
}

impl Entry {
    /// The pattern to record for a message with `key`: the entry's own, shared, or the
    /// message's where a wildcard matched it.
    fn pattern_of(&self, key: &str) -> Arc<str> {
        self.key.clone().unwrap_or_else(|| Arc::from(key))
    }
}

/// Handlers by normalised pattern; topic wildcards (`order.*`, `order.#`) are tried in
/// registration order when no exact pattern matches.
pub(crate) struct Router {
    exact: HashMap<String, Entry>,
    wildcards: Vec<(String, Entry)>,
}

impl Router {
    pub(crate) fn new(routes: Vec<Route>) -> Result<Self> {
        let mut exact = HashMap::with_capacity(routes.len());
        let mut wildcards: Vec<(String, Entry)> = Vec::new();
        for route in routes {
            let key = route.pattern.key().to_owned();
            let entry = Entry {
                key: (!is_wildcard(&key)).then(|| Arc::from(key.as_str())),
                checks_body: route.checks_body,
                kind: route.kind,
                retry: route.retry,
                handler: route.handler,
            };
            let duplicate = if is_wildcard(&key) {
                let seen = wildcards.iter().any(|(other, _)| *other == key);
                wildcards.push((key.clone(), entry));
                seen
            } else {
                exact.insert(key.clone(), entry).is_some()
            };
            if duplicate {
                return Err(Error::DuplicatePattern(key));
            }
        }
        Ok(Self { exact, wildcards })
    }

    fn get(&self, key: &str) -> Option<&Entry> {
        self.exact.get(key).or_else(|| {
            self.wildcards
                .iter()
                .find(|(pattern, _)| wildcard_matches(pattern, key))
                .map(|(_, entry)| entry)
        })
    }

    /// Every registered pattern key: the binding keys of a topic or direct exchange.
    pub(crate) fn keys(&self) -> Vec<&str> {
        let mut keys: Vec<&str> = self
            .exact
            .keys()
            .map(String::as_str)
            .chain(self.wildcards.iter().map(|(key, _)| key.as_str()))
            .collect();
        keys.sort_unstable();
        keys
    }
}

/// How one queue's deliveries are disposed of; from its [`RmqOptions`](crate::RmqOptions).
#[derive(Clone, Debug)]
pub(crate) struct Policy {
    pub(crate) ack_mode: AckMode,
    pub(crate) on_failure: FailurePolicy,
    pub(crate) max_bytes: usize,
    pub(crate) retry: Option<RetryPolicy>,
    pub(crate) dead_letter_queue: Option<String>,
}

impl Policy {
    /// The policy of the queue of `options`.
    pub(crate) fn of(options: &crate::RmqOptions) -> Self {
        Policy {
            ack_mode: options.ack(),
            on_failure: options.on_failure(),
            max_bytes: options.max_bytes(),
            retry: options.retry_policy().cloned(),
            dead_letter_queue: options.dead_letter_queue_name(),
        }
    }
}

/// What becomes of a delivery once handled.
enum Disposal {
    Settle(Settlement),
    Retry { attempt: u32, delay: Duration },
    DeadLetter { reason: String, attempts: u32 },
}

impl Disposal {
    /// The plain settlement standing in when rmq-bus cannot republish (a handler kept the context).
    /// A retry falls back to one requeue, so that a failing handler that keeps its context
    /// cannot loop for ever.
    fn fallback(&self, redelivered: bool) -> Settlement {
        match self {
            Disposal::Settle(settlement) => *settlement,
            Disposal::Retry { .. } if !redelivered => Settlement::Nack { requeue: true },
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
pub(crate) fn dispatch(
    router: Arc<Router>,
    policy: Arc<Policy>,
    inbound: Inbound,
) -> impl Future<Output = ()> + Send + 'static {
    let info = inbound.ctx.delivery();
    let span = tracing::info_span!(
        "rmq.delivery",
        queue = %info.queue,
        delivery_tag = info.delivery_tag,
        redelivered = info.redelivered,
        correlation_id = info.properties.correlation_id.as_deref().unwrap_or(""),
        pattern = field::Empty,
    );
    run(router, policy, inbound, span.clone()).instrument(span)
}

/// `span`: the delivery's own, to record the pattern in once known.
async fn run(router: Arc<Router>, policy: Arc<Policy>, inbound: Inbound, span: Span) {
    let Inbound { ctx, publisher } = inbound;
    let (router, policy) = (router.as_ref(), policy.as_ref());
    let info = ctx.delivery();
    let attempt = attempt_of(&info.properties);
    // Bad input never reaches a handler: dead-lettered with its reason (a request is told first).
    let routed = match route(router, policy, ctx.body(), &info.properties) {
        Ok(routed) => routed,
        Err(refusal) => {
            return Box::pin(refuse(publisher.as_ref(), policy, &ctx, refusal, attempt)).await;
        }
    };
    let entry = routed.entry;
    span.record("pattern", &*routed.key);
    ctx.set_pattern(routed.key);
    let reply_to = reply_address(info, routed.request_id);
    let message = Message::new(routed.data, ctx.clone());
    let outcome = match std::panic::catch_unwind(AssertUnwindSafe(|| (entry.handler)(message))) {
        Ok(future) => trace::scope(ctx.clone(), AssertUnwindSafe(future).catch_unwind()).await,
        Err(panic) => Err(panic),
    };

    // A request is answered whatever happened, so that its sender need not wait for a timeout;
    // once answered it is acked, as a redelivery would only answer it again.
    let failed = |reason: String| match (&reply_to, entry.retry.as_ref().or(policy.retry.as_ref()))
    {
        (Some(_), _) => Disposal::Settle(Settlement::Ack),
        (None, Some(retry)) if attempt < retry.max_attempts() => Disposal::Retry {
            attempt: attempt + 1,
            delay: retry.delay_before(attempt + 1),
        },
        (None, Some(_)) => Disposal::DeadLetter {
            reason,
            attempts: attempt,
        },
        (None, None) if policy.on_failure == FailurePolicy::RequeueOnce && !info.redelivered => {
            Disposal::Settle(Settlement::Nack { requeue: true })
        }
        (None, None) => Disposal::DeadLetter {
            reason,
            attempts: attempt,
        },
    };
    let (disposal, response) = match outcome {
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
                failed(error.to_string()),
                Response::Error(failure_response(&error)),
            )
        }
        Err(panic) => {
            let text = panic_text(panic.as_ref()).to_owned();
            tracing::error!(panic = %text, attempt, "handler panicked");
            (
                failed(format!("handler panicked: {text}")),
                Response::Error(RpcError::internal()),
            )
        }
    };
    if let Some(reply_to) = &reply_to {
        let body = encode_reply(&response);
        Box::pin(send_reply(publisher.as_ref(), reply_to, body)).await;
    }
    if !ctx.take_over(disposal.fallback(info.redelivered)) {
        return;
    }
    let acked_for_handler = matches!(disposal, Disposal::Settle(Settlement::Ack))
        && entry.kind == RouteKind::Event
        && reply_to.is_none()
        && policy.ack_mode == AckMode::Manual;
    let settlement = match disposal {
        Disposal::Settle(settlement) => settlement,
        disposal => Box::pin(dispose(publisher.as_ref(), policy, &ctx, disposal)).await,
    };
    match ctx.settle_taken(settlement).await {
        Ok(()) if acked_for_handler => {
            tracing::warn!(
                "handler returned Ok without settling its message (AckMode::Manual); acked it"
            )
        }
        Ok(()) => {}
        Err(error) => tracing::warn!(%error, "could not settle"),
    }
}

/// Disposes of a delivery that reaches no handler: tells a request's sender, then dead-letters it
/// with the reason.
async fn refuse(
    publisher: &dyn Publisher,
    policy: &Policy,
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
    let settlement = dispose(publisher, policy, ctx, disposal).await;
    if ctx.take_over(fallback)
        && let Err(error) = ctx.settle_taken(settlement).await
    {
        tracing::warn!(%error, "could not settle");
    }
}

/// Why a delivery reaches no handler.
struct Refusal {
    reason: String,
    /// Its pattern, if it had one.
    pattern: Option<String>,
    /// Its request id, when it was a request nobody handles (its sender is told).
    request_id: Option<String>,
}

/// A delivery's handler, and what the dispatcher read of its packet.
struct Routed<'r> {
    entry: &'r Entry,
    /// The normalised pattern.
    key: Arc<str>,
    /// The data, when the packet was decoded in full; `None` when only its pattern was read.
    data: Option<Box<RawValue>>,
    /// The request id, when the packet is a request.
    request_id: Option<String>,
}

/// Finds the handler of `body`. An event (no `reply_to`) in the usual layout is routed by its
/// pattern alone, leaving the handler's arguments to parse the body once; anything else is
/// decoded in full here.
fn route<'r>(
    router: &'r Router,
    policy: &Policy,
    body: &[u8],
    properties: &Properties,
) -> std::result::Result<Routed<'r>, Refusal> {
    let refuse = |reason: String| Refusal {
        reason,
        pattern: None,
        request_id: None,
    };
    if body.len() > policy.max_bytes {
        return Err(refuse(format!(
            "message of {} bytes exceeds max_message_bytes = {}",
            body.len(),
            policy.max_bytes
        )));
    }
    // An event in the usual layout, for a handler that checks the body itself, is routed by its
    // pattern alone; its handler's arguments parse the body once.
    if properties.reply_to.is_none()
        && let Some(pattern) = event_pattern(body).filter(|pattern| pattern.len() <= 255)
        && let Some(entry) = router.get(pattern).filter(|entry| entry.checks_body)
    {
        return Ok(Routed {
            entry,
            key: entry.pattern_of(pattern),
            data: None,
            request_id: None,
        });
    }
    let packet = decode(body).map_err(|error| refuse(error.to_string()))?;
    let (key, data, request_id) = (packet.pattern.into_key(), Some(packet.data), packet.id);
    // Routing keys have at most 255 bytes; a longer pattern matches no handler, and refusing it
    // here keeps wildcard matching cheap whatever a message claims.
    if key.len() > 255 {
        return Err(refuse(format!(
            "pattern of {} bytes is longer than the 255 a routing key can have",
            key.len()
        )));
    }
    match router.get(&key) {
        Some(entry) => Ok(Routed {
            entry,
            key: entry.pattern_of(&key),
            data,
            request_id,
        }),
        None => Err(Refusal {
            reason: format!(
                "no handler for pattern {key:?}; this service handles: {}",
                router.keys().join(", ")
            ),
            pattern: Some(key),
            request_id,
        }),
    }
}

/// Carries out a disposal: republishes for a retry or into the dead-letter queue (confirmed),
/// and returns how the original delivery is then settled. Republishing failed: requeue, so
/// nothing is lost.
async fn dispose(
    publisher: &dyn Publisher,
    policy: &Policy,
    ctx: &RmqContext,
    disposal: Disposal,
) -> Settlement {
    let (info, pattern, body) = (ctx.delivery(), ctx.pattern(), ctx.body());
    let auto_acked = policy.ack_mode == AckMode::NoAck;
    let (target, properties, done) = match disposal {
        Disposal::Settle(settlement) => return settlement,
        Disposal::Retry { attempt, delay } => {
            let mut properties = info.properties.clone();
            properties
                .headers
                .insert(ATTEMPT_HEADER.to_owned(), attempt.into());
            let target = if delay.is_zero() {
                Target::Queue(info.queue.clone())
            } else {
                Target::Delayed {
                    queue: info.queue.clone(),
                    delay,
                }
            };
            tracing::info!(attempt, ?delay, "scheduling a retry");
            (target, properties, "retry scheduled")
        }
        Disposal::DeadLetter { reason, attempts } => {
            let Some(queue) = policy.dead_letter_queue.clone() else {
                tracing::warn!(%reason, "rejecting without requeue (dead-lettered if the queue has a DLX)");
                return Settlement::Reject;
            };
            let mut properties = info.properties.clone();
            let headers = &mut properties.headers;
            // A message moved back from the dead-letter queue starts its retries afresh.
            headers.remove(ATTEMPT_HEADER);
            headers.insert("x-rmq-bus-error".into(), reason.as_str().into());
            headers.insert("x-rmq-bus-queue".into(), info.queue.as_str().into());
            headers.insert("x-rmq-bus-pattern".into(), pattern.into());
            headers.insert("x-rmq-bus-attempts".into(), attempts.into());
            headers.insert("x-rmq-bus-failed-at".into(), now_rfc3339().into());
            tracing::warn!(%reason, dead_letter_queue = %queue, "dead-lettering");
            (Target::DeadLetter(queue), properties, "dead-lettered")
        }
    };
    if auto_acked {
        tracing::warn!(
            "AckMode::NoAck: the broker already took the message; it is not republished"
        );
        return Settlement::Ack;
    }
    match publisher.republish(target, body, &properties).await {
        Ok(()) => {
            tracing::debug!(done);
            Settlement::Ack
        }
        Err(error) => {
            tracing::error!(%error, "could not republish; requeueing the message so that it is not lost");
            Settlement::Nack { requeue: true }
        }
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
