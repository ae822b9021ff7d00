//! Routing: the [`Router`] of a service's handlers by pattern, and each delivery routed to its
//! handler or refused with a reason: the size bound, the fast path that reads only an event's
//! pattern, the full decode otherwise.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use serde_json::value::RawValue;

use super::disposal::Policy;
use super::wildcards::Wildcards;
use crate::codec::{decode, event_pattern};
use crate::config::RetryPolicy;
use crate::delivery::Properties;
use crate::error::{Error, Result};
use crate::handler::{BodyCheck, BoxHandler, Route, RouteKind};
use crate::ordering::KeyPath;
use crate::pattern::is_wildcard;

/// One registered handler.
pub(super) struct Entry {
    /// Its place in registration order, which [`Router::patterns`] lists.
    pub(super) index: usize,
    /// Its pattern, shared with the context of every message it handles; `None` for a
    /// wildcard, whose messages keep their own.
    pub(super) key: Option<Arc<str>>,
    /// Who checks the body: if the handler does, an event may reach it routed by its pattern alone.
    pub(super) body_check: BodyCheck,
    pub(super) kind: RouteKind,
    pub(super) retry: Option<RetryPolicy>,
    /// The key its messages are ordered by: they go through keyed lanes, and its retries are
    /// made in place, holding the lane.
    pub(super) ordered_by: Option<KeyPath>,
    pub(super) handler: BoxHandler,
}

impl Entry {
    /// The pattern to record for a message with `key`: the entry's own, shared, or the
    /// message's where a wildcard matched it.
    pub(super) fn pattern_of(&self, key: &str) -> Arc<str> {
        self.key.clone().unwrap_or_else(|| Arc::from(key))
    }
}

/// Handlers by normalised pattern; when no exact pattern matches, the first registered topic
/// wildcard (`order.*`, `order.#`) that does.
pub(crate) struct Router {
    exact: HashMap<String, Entry, BuildHasherDefault<Fnv>>,
    wildcards: Wildcards<Entry>,
    /// The patterns handled, as a refusal names them.
    pub(super) handled: String,
    /// Whether any handler is ordered: its queues then run through keyed lanes.
    pub(super) ordered: bool,
}

impl Router {
    pub(crate) fn new(routes: Vec<Route>) -> Result<Self> {
        let mut exact = HashMap::with_capacity_and_hasher(routes.len(), Default::default());
        let mut wildcards = Wildcards::default();
        let mut ordered = false;
        for (index, route) in routes.into_iter().enumerate() {
            let key = route.pattern.key().to_owned();
            let ordered_by = route
                .ordered_by
                .as_deref()
                .map(|path| ordered_key(&key, route.kind, path))
                .transpose()?;
            ordered |= ordered_by.is_some();
            let entry = Entry {
                index,
                key: (!is_wildcard(&key)).then(|| Arc::from(key.as_str())),
                body_check: route.body_check,
                kind: route.kind,
                retry: route.retry,
                ordered_by,
                handler: route.handler,
            };
            let duplicate = if is_wildcard(&key) {
                wildcards.insert(key.clone(), entry).is_err()
            } else {
                exact.insert(key.clone(), entry).is_some()
            };
            if duplicate {
                return Err(Error::DuplicatePattern(key));
            }
        }
        let mut router = Self {
            exact,
            wildcards,
            handled: String::new(),
            ordered,
        };
        router.handled = handled(&router.keys());
        Ok(router)
    }

    pub(super) fn get(&self, key: &str) -> Option<&Entry> {
        self.exact
            .get(key)
            .or_else(|| self.wildcards.get(key).map(|(_, entry)| entry))
    }

    /// Every registered pattern key, in registration order (the entries' `index`).
    pub(crate) fn patterns(&self) -> Vec<&str> {
        let mut entries: Vec<(usize, &str)> = self
            .exact
            .iter()
            .map(|(key, entry)| (entry.index, key.as_str()))
            .chain(self.wildcards.iter().map(|(key, entry)| (entry.index, key)))
            .collect();
        entries.sort_unstable();
        entries.into_iter().map(|(_, key)| key).collect()
    }

    /// Every registered pattern key: the binding keys of a topic or direct exchange.
    pub(crate) fn keys(&self) -> Vec<&str> {
        let mut keys: Vec<&str> = self
            .exact
            .keys()
            .map(String::as_str)
            .chain(self.wildcards.iter().map(|(key, _)| key))
            .collect();
        keys.sort_unstable();
        keys
    }
}

/// The key path of an ordered route for `pattern`, checked.
fn ordered_key(pattern: &str, kind: RouteKind, path: &str) -> Result<KeyPath> {
    if kind == RouteKind::Message {
        return Err(Error::Config(format!(
            "the request handler of {pattern:?} is ordered_by {path:?}; only event handlers can be ordered"
        )));
    }
    KeyPath::parse(path)
        .map_err(|reason| Error::Config(format!("handler of {pattern:?}: {reason}")))
}

/// FNV-1a, the hash of the exact patterns. Their keys are the service's own patterns, so a
/// lookup needs none of the defence against chosen collisions that the standard SipHash buys,
/// and every delivery hashes its pattern once: FNV does it in a few instructions a byte.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Why a delivery reaches no handler.
pub(super) struct Refusal {
    pub(super) reason: String,
    /// Its pattern, if it had one.
    pub(super) pattern: Option<String>,
    /// Its request id, when it was a request nobody handles (its sender is told).
    pub(super) request_id: Option<String>,
}

/// A delivery's handler, and what the dispatcher read of its packet.
pub(super) struct Routed<'r> {
    pub(super) entry: &'r Entry,
    /// The normalised pattern.
    pub(super) key: Arc<str>,
    /// The data, when the packet was decoded in full; `None` when only its pattern was read.
    pub(super) data: Option<Box<RawValue>>,
    /// The request id, when the packet is a request.
    pub(super) request_id: Option<String>,
}

/// Finds the handler of `body`. An event (no `reply_to`) in the usual layout is routed by its
/// pattern alone, leaving the handler's arguments to parse the body once; anything else is
/// decoded in full here.
pub(super) fn route<'r>(
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
        && let Some(entry) = router
            .get(pattern)
            .filter(|entry| entry.body_check == BodyCheck::Handler)
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
                router.handled
            ),
            pattern: Some(key),
            request_id,
        }),
    }
}

/// The patterns a service handles, for a refusal's reason: the first few, then how many more.
/// Written once, so that refusing a message costs the same with 10 000 handlers as with ten.
pub(super) fn handled(keys: &[&str]) -> String {
    const SHOWN: usize = 20;
    match keys.len().checked_sub(SHOWN) {
        Some(more) if more > 0 => format!("{} and {more} more", keys[..SHOWN].join(", ")),
        _ => keys.join(", "),
    }
}

#[cfg(test)]
mod tests {
    use std::hash::Hasher;

    use super::{Fnv, handled};

    #[test]
    fn patterns_hash_by_fnv_1a() {
        let hash = |bytes: &[u8]| {
            let mut fnv = Fnv::default();
            fnv.write(bytes);
            fnv.finish()
        };
        // The published FNV-1a 64-bit test vectors.
        assert_eq!(hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(hash(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn a_refusal_names_the_first_twenty_patterns_and_counts_the_rest() {
        let keys: Vec<String> = (0..25).map(|i| format!("p{i:02}")).collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        assert_eq!(handled(&keys[..2]), "p00, p01");
        let many = handled(&keys);
        assert!(
            many.starts_with("p00, p01,") && many.ends_with("p19 and 5 more"),
            "{many}"
        );
    }
}
