//! The transport-neutral core: decode a delivery, route it by pattern, run its handler, and
//! settle it by the configured policy, whatever happens.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::FutureExt;
use tracing::{Instrument, field};

use crate::codec::decode;
use crate::config::{AckMode, FailurePolicy};
use crate::context::{Acker, DeliveryInfo, RmqContext, Settlement};
use crate::error::{Error, Result};
use crate::handler::{BoxHandler, HandlerError, Message, Route};

/// A delivery as any transport hands it over.
pub(crate) struct Inbound {
    pub(crate) info: DeliveryInfo,
    pub(crate) body: Vec<u8>,
    pub(crate) acker: Arc<dyn Acker>,
    pub(crate) channel: Option<lapin::Channel>,
}

/// Handlers by normalised pattern.
pub(crate) struct Router {
    routes: HashMap<String, BoxHandler>,
}

impl Router {
    pub(crate) fn new(routes: Vec<Route>) -> Result<Self> {
        let mut map = HashMap::with_capacity(routes.len());
        for route in routes {
            let key = route.pattern.key().to_owned();
            if map.insert(key.clone(), route.handler).is_some() {
                return Err(Error::DuplicatePattern(key));
            }
        }
        Ok(Self { routes: map })
    }

    fn known(&self) -> String {
        let mut keys: Vec<&str> = self.routes.keys().map(String::as_str).collect();
        keys.sort_unstable();
        keys.join(", ")
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
    let Some(handler) = router.routes.get(key) else {
        let reason = format!(
            "no handler for pattern {key:?}; this service handles: {}",
            router.known()
        );
        return reject_bad_input(acker.as_ref(), auto_acked, &reason).await;
    };

    let redelivered = info.redelivered;
    let on_failure = policy.failure_settlement(redelivered);
    let ctx = RmqContext::new(key.to_owned(), info, acker, channel, auto_acked, on_failure);
    let message = Message {
        data: packet.data,
        ctx: ctx.clone(),
    };
    let outcome = match std::panic::catch_unwind(AssertUnwindSafe(|| handler(message))) {
        Ok(future) => AssertUnwindSafe(future).catch_unwind().await,
        Err(panic) => Err(panic),
    };

    let settlement = match &outcome {
        Ok(Ok(())) => Settlement::Ack,
        Ok(Err(HandlerError::BadPayload(why))) => {
            tracing::warn!(reason = %why, "bad input: rejecting without requeue (dead-lettered if the queue has a DLX)");
            Settlement::Reject
        }
        Ok(Err(HandlerError::Failed(why))) => {
            tracing::error!(error = %why, "handler failed");
            on_failure
        }
        Err(panic) => {
            tracing::error!(panic = %panic_text(panic.as_ref()), "handler panicked");
            on_failure
        }
    };
    match ctx.finish(settlement).await {
        None => {}
        Some(Ok(Settlement::Ack)) if policy.ack_mode == AckMode::Manual => {
            tracing::warn!(
                "handler returned Ok without settling its message (AckMode::Manual); acked it"
            );
        }
        Some(Ok(done)) if done != Settlement::Ack => {
            tracing::info!(settlement = %done, "settled by the failure policy");
        }
        Some(Ok(_)) => {}
        Some(Err(error)) => tracing::warn!(%error, "could not settle"),
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
