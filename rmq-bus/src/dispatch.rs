//! The transport-neutral core: decode a delivery, route it by pattern, run its handler, answer a
//! request, and settle the delivery by the configured policy, whatever happens.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use tracing::{Instrument, field};

use crate::codec::{decode, encode_no_handler, encode_reply};
use crate::config::{AckMode, FailurePolicy};
use crate::context::{Acker, DeliveryInfo, RmqContext, Settlement};
use crate::error::{Error, Result};
use crate::handler::{BoxHandler, HandlerError, Message, Route, RouteKind};
use crate::pattern::{is_wildcard, wildcard_matches};
use crate::rpc::{Response, RpcError, failure_response};
use crate::trace::{self, Trace};

/// Publishes replies to requests on behalf of whichever transport delivered them.
pub(crate) trait Replier: Send + Sync + 'static {
    /// Sends `body` to queue `reply_to` with `correlation_id`.
    fn reply(
        &self,
        reply_to: &str,
        correlation_id: &str,
        body: Vec<u8>,
    ) -> BoxFuture<'static, Result<()>>;
}

/// A delivery as any transport hands it over.
pub(crate) struct Inbound {
    pub(crate) info: DeliveryInfo,
    pub(crate) body: Vec<u8>,
    pub(crate) acker: Arc<dyn Acker>,
    pub(crate) replier: Arc<dyn Replier>,
    pub(crate) channel: Option<lapin::Channel>,
}

/// Handlers by normalised pattern; topic wildcards (`order.*`, `order.#`) are tried in
/// registration order when no exact pattern matches.
pub(crate) struct Router {
    exact: HashMap<String, (RouteKind, BoxHandler)>,
    wildcards: Vec<(String, RouteKind, BoxHandler)>,
}

impl Router {
    pub(crate) fn new(routes: Vec<Route>) -> Result<Self> {
        let mut exact = HashMap::with_capacity(routes.len());
        let mut wildcards: Vec<(String, RouteKind, BoxHandler)> = Vec::new();
        for route in routes {
            let key = route.pattern.key().to_owned();
            let duplicate = if is_wildcard(&key) {
                let seen = wildcards.iter().any(|(other, ..)| *other == key);
                wildcards.push((key.clone(), route.kind, route.handler));
                seen
            } else {
                exact
                    .insert(key.clone(), (route.kind, route.handler))
                    .is_some()
            };
            if duplicate {
                return Err(Error::DuplicatePattern(key));
            }
        }
        Ok(Self { exact, wildcards })
    }

    fn get(&self, key: &str) -> Option<(RouteKind, &BoxHandler)> {
        if let Some((kind, handler)) = self.exact.get(key) {
            return Some((*kind, handler));
        }
        self.wildcards
            .iter()
            .find(|(pattern, ..)| wildcard_matches(pattern, key))
            .map(|(_, kind, handler)| (*kind, handler))
    }

    /// Every registered pattern key: the binding keys of a topic or direct exchange.
    pub(crate) fn keys(&self) -> Vec<&str> {
        let mut keys: Vec<&str> = self
            .exact
            .keys()
            .map(String::as_str)
            .chain(self.wildcards.iter().map(|(key, ..)| key.as_str()))
            .collect();
        keys.sort_unstable();
        keys
    }
}

/// How deliveries are settled; from the queue's [`RmqOptions`](crate::RmqOptions).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Policy {
    pub(crate) ack_mode: AckMode,
    pub(crate) on_failure: FailurePolicy,
    pub(crate) max_bytes: usize,
}

impl Policy {
    fn failure_settlement(&self, redelivered: bool) -> Settlement {
        match self.on_failure {
            FailurePolicy::RequeueOnce if !redelivered => Settlement::Nack { requeue: true },
            _ => Settlement::Reject,
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
pub(crate) async fn dispatch(router: &Router, policy: Policy, inbound: Inbound) {
    let span = tracing::info_span!(
        "rmq.delivery",
        queue = %inbound.info.queue,
        delivery_tag = inbound.info.delivery_tag,
        redelivered = inbound.info.redelivered,
        correlation_id = inbound.info.properties.correlation_id.as_deref().unwrap_or(""),
        pattern = field::Empty,
    );
    run(router, policy, inbound).instrument(span).await
}

async fn run(router: &Router, policy: Policy, inbound: Inbound) {
    let Inbound {
        info,
        body,
        acker,
        replier,
        channel,
    } = inbound;
    let auto_acked = policy.ack_mode == AckMode::NoAck;
    if body.len() > policy.max_bytes {
        let reason = format!(
            "message of {} bytes exceeds max_message_bytes = {}",
            body.len(),
            policy.max_bytes
        );
        return reject_bad_input(acker.as_ref(), auto_acked, &reason).await;
    }
    let packet = match decode(&body) {
        Ok(packet) => packet,
        Err(error) => {
            return reject_bad_input(acker.as_ref(), auto_acked, &error.to_string()).await;
        }
    };
    drop(body);
    let key = packet.pattern.key();
    tracing::Span::current().record("pattern", key);
    let reply_to = reply_address(&info, packet.id);
    let Some((kind, handler)) = router.get(key) else {
        if let Some(reply_to) = &reply_to {
            send_reply(replier.as_ref(), reply_to, encode_no_handler(&reply_to.id)).await;
        }
        let reason = format!(
            "no handler for pattern {key:?}; this service handles: {}",
            router.keys().join(", ")
        );
        return reject_bad_input(acker.as_ref(), auto_acked, &reason).await;
    };

    let trace = Trace {
        correlation_id: info.properties.correlation_id.clone(),
        traceparent: info
            .properties
            .headers
            .get("traceparent")
            .and_then(|v| v.as_str())
            .map(str::to_owned),
    };
    let on_failure = policy.failure_settlement(info.redelivered);
    let ctx = RmqContext::new(key.to_owned(), info, acker, channel, auto_acked, on_failure);
    let message = Message {
        data: packet.data,
        ctx: ctx.clone(),
    };
    let outcome = match std::panic::catch_unwind(AssertUnwindSafe(|| handler(message))) {
        Ok(future) => trace::scope(trace, AssertUnwindSafe(future).catch_unwind()).await,
        Err(panic) => Err(panic),
    };

    // A request is answered whatever happened, so that its sender need not wait for a timeout;
    // once answered it is acked, as a redelivery would only answer it again.
    let (settlement, response) = match outcome {
        Ok(Ok(response)) => (Settlement::Ack, response),
        Ok(Err(error @ HandlerError::BadInput(_))) => {
            tracing::warn!(reason = %error, "bad input: rejecting without requeue (dead-lettered if the queue has a DLX)");
            (
                Settlement::Reject,
                Response::Error(failure_response(&error)),
            )
        }
        Ok(Err(error)) => {
            tracing::error!(%error, "handler failed");
            let settlement = if reply_to.is_some() {
                Settlement::Ack
            } else {
                on_failure
            };
            (settlement, Response::Error(failure_response(&error)))
        }
        Err(panic) => {
            tracing::error!(panic = %panic_text(panic.as_ref()), "handler panicked");
            let settlement = if reply_to.is_some() {
                Settlement::Ack
            } else {
                on_failure
            };
            (settlement, Response::Error(RpcError::internal()))
        }
    };
    if let Some(reply_to) = &reply_to {
        send_reply(replier.as_ref(), reply_to, encode_reply(&response)).await;
    }
    match ctx.finish(settlement).await {
        None => {}
        Some(Ok(Settlement::Ack)) => {
            if kind == RouteKind::Event && reply_to.is_none() && policy.ack_mode == AckMode::Manual
            {
                tracing::warn!(
                    "handler returned Ok without settling its message (AckMode::Manual); acked it"
                );
            }
        }
        Some(Ok(done)) => tracing::info!(settlement = %done, "settled by the failure policy"),
        Some(Err(error)) => tracing::warn!(%error, "could not settle"),
    }
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

async fn send_reply(replier: &dyn Replier, to: &ReplyTo, body: Vec<u8>) {
    if let Err(error) = replier.reply(&to.queue, &to.correlation_id, body).await {
        tracing::warn!(%error, reply_to = %to.queue, "could not send the reply; the requester will time out");
    }
}

async fn reject_bad_input(acker: &dyn Acker, auto_acked: bool, reason: &str) {
    if auto_acked {
        tracing::warn!(%reason, "bad input dropped (AckMode::NoAck acked it on delivery)");
        return;
    }
    tracing::warn!(%reason, "bad input: rejecting without requeue (dead-lettered if the queue has a DLX)");
    if let Err(error) = acker.settle(Settlement::Reject).await {
        tracing::warn!(%error, "could not reject bad input");
    }
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("non-text panic payload")
}
