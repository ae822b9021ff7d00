//! Correlation: fresh ids for messages and requests, and the conversation a handler runs in, so
//! that an emit made inside a handler carries the incoming correlation id (and W3C `traceparent`)
//! forward.

use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::context::RmqContext;

tokio::task_local! {
    static CURRENT: RmqContext;
}

/// Runs `future` as part of the conversation of `ctx`'s message. The context itself is kept,
/// not a copy of its ids: most handlers publish nothing.
pub(crate) async fn scope<F: Future>(ctx: RmqContext, future: F) -> F::Output {
    CURRENT.scope(ctx, future).await
}

/// The correlation id and `traceparent` of a message sent now: `request_id` if given (a
/// request's own id), else the running handler's message's, else a fresh one; `traceparent` if
/// given (the current OpenTelemetry span's), else the handler's message's, continued with a fresh
/// parent id. The handler's message is read in place, and only what is sent is copied: this runs
/// for every emit.
pub(crate) fn outgoing(
    request_id: Option<&str>,
    traceparent: Option<String>,
) -> (String, Option<String>) {
    let carried = CURRENT.try_with(|ctx| {
        let incoming = ctx.properties();
        let correlation_id = match request_id {
            Some(_) => None,
            None => incoming.correlation_id.clone(),
        };
        let traceparent = match traceparent {
            Some(_) => None,
            None => incoming
                .headers
                .get("traceparent")
                .and_then(serde_json::Value::as_str)
                .and_then(child_traceparent),
        };
        (correlation_id, traceparent)
    });
    let (carried_id, carried_traceparent) = carried.unwrap_or_default();
    let correlation_id = request_id
        .map(str::to_owned)
        .or(carried_id)
        .unwrap_or_else(new_id);
    (correlation_id, traceparent.or(carried_traceparent))
}

/// 128 random-looking bits: the high half a keyed hash of a counter (SipHash under a random
/// per-process key, so unpredictable to whoever sees earlier ids), the low half the counter
/// through a bijective mixer (so no two in a process share it). Made for every message
/// published: one hash, not two.
fn random_128() -> u128 {
    static KEY: OnceLock<(RandomState, u64)> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let (state, offset) = KEY.get_or_init(|| {
        let state = RandomState::new();
        let offset = state.hash_one(u64::MAX);
        (state, offset)
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    (u128::from(state.hash_one(n)) << 64) | u128::from(mix(n.wrapping_add(*offset)))
}

/// SplitMix64's finalizer: a bijection on `u64` that spreads every input bit over the output.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A fresh id in UUID v4 form, as NestJS uses for request ids. Written byte by byte: it is made
/// for every message published.
pub(crate) fn new_id() -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bits = random_128() & !(0xf000 << 64) & !(0xc000 << 48) | (0x4000 << 64) | (0x8000 << 48);
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
    std::str::from_utf8(&id)
        .map(str::to_owned)
        .unwrap_or_default()
}

/// The `traceparent` of a message sent on behalf of `parent`: the same trace, a new parent id.
/// `None` when `parent` is not a version-00 W3C traceparent.
pub(crate) fn child_traceparent(parent: &str) -> Option<String> {
    let mut parts = parent.split('-');
    let (version, trace_id, _, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    if version != "00" || !hex(trace_id, 32) || !hex(flags, 2) || parts.next().is_some() {
        return None;
    }
    let span_id = (random_128() as u64).max(1);
    Some(format!("00-{trace_id}-{span_id:016x}-{flags}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_uuid_v4_shaped_and_distinct() {
        let (a, b) = (new_id(), new_id());
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4", "{a}");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"), "{a}");
        assert!(a.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit()), "{a}");
        assert_eq!(a.matches('-').count(), 4, "{a}");
        let many: std::collections::HashSet<String> = (0..10_000).map(|_| new_id()).collect();
        assert_eq!(many.len(), 10_000);
    }

    #[test]
    fn child_traceparents_keep_the_trace() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let child = child_traceparent(parent).unwrap_or_default();
        assert!(
            child.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{child}"
        );
        assert!(child.ends_with("-01"));
        assert_ne!(child, parent);
        assert_eq!(child_traceparent("garbage"), None);
        assert_eq!(
            child_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            None
        );
    }
}
