//! The workload's messages: NestJS `order_created` events, the packets the raw baselines write
//! and read, and the correlation ids they stamp on them.

use std::sync::atomic::{AtomicU64, Ordering};

use rmq_bus::contract::Event;
use serde::{Deserialize, Serialize};

pub(crate) const PATTERN: &str = "order_created";
/// What S4's billing-shaped handlers send on.
pub(crate) const PROCESSED_PATTERN: &str = "order_processed";

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

/// The event data: the order and, for latency, when it was sent (ns since the child's epoch). A
/// typed contract, as rmq-bus's side sends and handles it.
#[derive(Debug, Serialize, Deserialize, Event)]
#[event(pattern = "order_created")]
#[serde(rename_all = "camelCase")]
pub(crate) struct OrderEvent {
    order_payload: Order,
    pub(crate) sent_ns: u64,
}

impl OrderEvent {
    /// The message's index in its round: the last group of the order id ([`make_event`] writes
    /// it there, so the body stays what earlier runs of the bench sent).
    pub(crate) fn index(&self) -> Option<usize> {
        let (_, digits) = self.order_payload.order_id.rsplit_once('-')?;
        digits.parse().ok()
    }
}

/// S4's answer to an `order_created`: the billed order, sent on by every system with the same
/// body (the event's own data, under another pattern).
#[derive(Serialize, Event)]
#[event(pattern = "order_processed")]
pub(crate) struct OrderProcessed<'a>(pub(crate) &'a OrderEvent);

/// The NestJS packet, as the raw baselines write it.
#[derive(Serialize)]
pub(crate) struct OutgoingPacket<'a> {
    pub(crate) pattern: &'a str,
    pub(crate) data: &'a OrderEvent,
}

/// The NestJS packet, as the raw baselines read it.
#[derive(Deserialize)]
struct IncomingPacket {
    pattern: String,
    data: OrderEvent,
}

/// Event `i` of a round, sent at `sent_ns`.
pub(crate) fn make_event(i: usize, sent_ns: u64) -> OrderEvent {
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

/// Decodes a delivery as the raw baselines do: the whole packet, typed.
pub(crate) fn decode(data: &[u8]) -> Result<OrderEvent, String> {
    let packet: IncomingPacket =
        serde_json::from_slice(data).map_err(|e| format!("bad packet: {e}"))?;
    if packet.pattern != PATTERN {
        return Err(format!("unexpected pattern {:?}", packet.pattern));
    }
    Ok(packet.data)
}

/// A fresh UUID-shaped correlation id, made as rmq-bus makes its own (a keyed hash of a counter
/// and the counter mixed, hex written byte by byte), so that the baselines pay the same for their
/// ids.
pub(crate) fn correlation_id() -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_carries_its_index() {
        for i in [0, 7, 99_999, 1_000_000_000_000] {
            assert_eq!(make_event(i, 1).index(), Some(i));
        }
    }
}
