//! What a delivery is, as plain data: where it came from, its properties, and how it was settled.
//! Every layer uses these types; they depend on nothing else in the crate.

use std::collections::BTreeMap;
use std::fmt;

/// How a delivery was settled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Settlement {
    /// Acknowledged: done with, removed from the queue.
    Ack,
    /// Negatively acknowledged, with or without requeue.
    Nack {
        /// Whether the broker puts the message back in the queue.
        requeue: bool,
    },
    /// Rejected: dead-lettered if the queue has a dead-letter exchange, dropped otherwise.
    Reject,
}

impl fmt::Display for Settlement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Settlement::Ack => "ack",
            Settlement::Nack { requeue: true } => "nack with requeue",
            Settlement::Nack { requeue: false } => "nack without requeue",
            Settlement::Reject => "reject",
        })
    }
}

impl Settlement {
    /// A small code, so that a settlement fits in an atomic (0 is "not settled").
    pub(crate) fn code(self) -> u8 {
        match self {
            Settlement::Ack => 1,
            Settlement::Nack { requeue: true } => 2,
            Settlement::Nack { requeue: false } => 3,
            Settlement::Reject => 4,
        }
    }

    /// The settlement of a [`code`](Self::code); `None` for any other number.
    pub(crate) fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Settlement::Ack),
            2 => Some(Settlement::Nack { requeue: true }),
            3 => Some(Settlement::Nack { requeue: false }),
            4 => Some(Settlement::Reject),
            _ => None,
        }
    }
}

/// Message properties, transport-neutral.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct Properties {
    /// `correlation_id`: ties a reply to its request (and a message to its conversation).
    pub correlation_id: Option<String>,
    /// `reply_to`: where a request wants its reply.
    pub reply_to: Option<String>,
    /// `content_type` (NestJS sets none).
    pub content_type: Option<String>,
    /// `message_id`.
    pub message_id: Option<String>,
    /// `delivery_mode`: 2 for persistent, 1 for transient.
    pub delivery_mode: Option<u8>,
    /// `timestamp`, seconds since the Unix epoch.
    pub timestamp: Option<u64>,
    /// `priority`, 0 to 9 on a priority queue.
    pub priority: Option<u8>,
    /// `expiration`: a per-message TTL in milliseconds, as text.
    pub expiration: Option<String>,
    /// `type`: the application's name for the kind of message.
    pub message_type: Option<String>,
    /// `app_id`: the publishing application.
    pub app_id: Option<String>,
    /// Application headers, as JSON values.
    pub headers: BTreeMap<String, serde_json::Value>,
}

/// Where a delivery came from: queue, exchange, routing key, delivery tag, redelivered flag and
/// properties.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct DeliveryInfo {
    /// The queue it was consumed from.
    pub queue: String,
    /// The exchange it was published to (`""` for the default exchange).
    pub exchange: String,
    /// The routing key it was published with.
    pub routing_key: String,
    /// The broker's tag for it on its channel.
    pub delivery_tag: u64,
    /// Whether it was delivered before and not acked (a requeue, or a lost connection).
    pub redelivered: bool,
    /// Its properties and headers.
    pub properties: Properties,
}

/// What became of a delivery, and why: the settlement as the broker saw it, with what rmq-bus
/// did around it (a retry scheduled, a dead letter published). Tests read it from
/// [`Settled`](crate::testing::Settled).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Acked: handled (or settled by hand, or answered, for a request).
    Acked,
    /// Its handler failed; a copy was republished for delivery `attempt` after `delay` (through
    /// the delay queue `<queue>.retry.<ms>ms`, or straight back when `delay` is zero), and the
    /// original acked.
    Retried {
        /// The delivery number the retry will be (2 for the first retry).
        attempt: u32,
        /// How long the copy waits on the broker.
        delay: std::time::Duration,
    },
    /// A copy was republished to the dead-letter queue `queue` with `reason` in its
    /// `x-rmq-bus-error` header, and the original acked.
    DeadLettered {
        /// The dead-letter queue.
        queue: String,
        /// Why: the bad input, or the last failure.
        reason: String,
    },
    /// Its key's lane was full behind a stuck message of an ordered handler: a copy was
    /// republished to the delay queue `<queue>.retry.<ms>ms` to come back after `delay`, in order
    /// with the key's other parked messages, and the original acked.
    Parked {
        /// How long the copy waits on the broker.
        delay: std::time::Duration,
    },
    /// Nacked with requeue: it goes back into its queue, to be delivered again.
    Requeued,
    /// Rejected (or nacked without requeue): dead-lettered by the queue's own dead-letter
    /// exchange, or dropped without one. `reason` says why when rmq-bus rejected it (bad input,
    /// or a last failure, with [`reject_dead_letters`](crate::RmqOptions::reject_dead_letters)).
    Rejected {
        /// Why rmq-bus rejected it; `None` when a handler did.
        reason: Option<String>,
    },
}

impl Outcome {
    /// The outcome a plain settlement stands for, when nothing more is known.
    pub(crate) fn of(settlement: Settlement) -> Self {
        match settlement {
            Settlement::Ack => Outcome::Acked,
            Settlement::Nack { requeue: true } => Outcome::Requeued,
            Settlement::Nack { requeue: false } | Settlement::Reject => {
                Outcome::Rejected { reason: None }
            }
        }
    }
}
