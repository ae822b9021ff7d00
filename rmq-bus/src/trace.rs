//! Correlation: fresh ids for messages and requests, and the conversation a handler runs in, so
//! that an emit made inside a handler carries the incoming correlation id (and W3C `traceparent`)
//! forward.

use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The correlation of the message a handler is working on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Trace {
    pub(crate) correlation_id: Option<String>,
    pub(crate) traceparent: Option<String>,
}

tokio::task_local! {
    static CURRENT: Trace;
}

/// Runs `future` as part of the conversation `trace`.
pub(crate) async fn scope<F: Future>(trace: Trace, future: F) -> F::Output {
    CURRENT.scope(trace, future).await
}

/// The conversation of the running handler, if the caller runs inside one.
pub(crate) fn current() -> Option<Trace> {
    CURRENT.try_with(Trace::clone).ok()
}

/// 128 random-looking bits, unique in this process: a process-wide random key hashes a counter.
fn random_128() -> u128 {
    static KEY: OnceLock<RandomState> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let key = KEY.get_or_init(RandomState::new);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    (u128::from(key.hash_one((n, 0u8))) << 64) | u128::from(key.hash_one((n, 1u8)))
}

/// A fresh id in UUID v4 form, as NestJS uses for request ids. Written digit by digit: it is
/// made for every message published.
pub(crate) fn new_id() -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bits = random_128() & !(0xf000 << 64) & !(0xc000 << 48) | (0x4000 << 64) | (0x8000 << 48);
    let mut id = String::with_capacity(36);
    for nibble in 0..32 {
        if matches!(nibble, 8 | 12 | 16 | 20) {
            id.push('-');
        }
        let digit = (bits >> (124 - 4 * nibble)) & 0xf;
        id.push(char::from(HEX[digit as usize]));
    }
    id
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
