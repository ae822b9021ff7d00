//! The broker's state behind its lock: exchanges, bindings, queues and consumers, and the rules
//! RabbitMQ applies to them (routing, prefetch, round robin, requeue, dead-lettering, TTL).
//! Everything here is synchronous; [`super`] wraps it in a mutex and wakes consumers and timers.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::death::{EXPIRED, is_cycle, record_death};
use super::declare::{
    QueueSettings, default_exchange, equivalent, kind_name, no_exchange, no_queue, reserved,
    settings,
};
use super::{MemoryError, PublishOutcome, REPLY_TO};
use crate::config::ExchangeKind;
use crate::delivery::Properties;
use crate::pattern::wildcard_matches;

mod consumers;

/// A message as stored in a queue (one copy per queue).
#[derive(Clone, Debug)]
pub(super) struct Stored {
    pub(super) exchange: String,
    pub(super) routing_key: String,
    pub(super) redelivered: bool,
    pub(super) properties: Properties,
    pub(super) body: Vec<u8>,
    /// Order of entry into its queue, to put messages back in their original order.
    seq: u64,
    /// When the queue's TTL runs out for it.
    expires_at: Option<Instant>,
}

struct Queue {
    /// Tells a queue from a later one of the same name.
    id: u64,
    durable: bool,
    arguments: BTreeMap<String, Value>,
    ttl: Option<Duration>,
    /// Dead-letter exchange and routing key (`None`: the message's own).
    dead_letter: Option<(String, Option<String>)>,
    messages: VecDeque<Stored>,
    /// Consumers in subscription order; `next_consumer` is where round robin resumes.
    consumers: Vec<u64>,
    next_consumer: usize,
    /// The consumer of a direct reply-to queue, which lives as long as it consumes.
    owner: Option<u64>,
}

struct Exchange {
    kind: ExchangeKind,
    /// `(queue, binding key)`.
    bindings: Vec<(String, String)>,
}

struct Consumer {
    queue: String,
    queue_id: u64,
    prefetch: u16,
    no_ack: bool,
    /// Sent to the consumer, not yet taken with `next()`.
    sent: VecDeque<(u64, Stored)>,
    /// Taken and not settled yet (manual acknowledgement only).
    unacked: BTreeMap<u64, Stored>,
    last_tag: u64,
    cancelled: bool,
    /// Its `MemoryConsumer` is gone: forget it once nothing is left to settle.
    dropped: bool,
    wake: Arc<Notify>,
}

impl Consumer {
    /// Whether its prefetch window has room (no-ack consumers are not limited).
    fn has_room(&self) -> bool {
        !self.cancelled
            && (self.no_ack
                || self.prefetch == 0
                || self.sent.len() + self.unacked.len() < usize::from(self.prefetch))
    }

    /// What it holds that the queue counts as unacknowledged.
    fn unsettled(&self) -> usize {
        if self.no_ack {
            0
        } else {
            self.sent.len() + self.unacked.len()
        }
    }
}

/// What a consumer finds when it asks for its next message.
#[allow(clippy::large_enum_variant)] // a short-lived return value, moved out at once
pub(super) enum Take {
    Delivery { tag: u64, message: Stored },
    Empty,
    Ended,
}

/// A new consumer, for `MemoryConsumer`.
pub(super) struct Subscription {
    pub(super) id: u64,
    pub(super) queue: String,
    pub(super) wake: Arc<Notify>,
    /// The connection epoch it lives in: its deliveries cannot be settled after a disconnect.
    pub(super) epoch: u64,
}

pub(super) struct State {
    queues: HashMap<String, Queue>,
    exchanges: HashMap<String, Exchange>,
    consumers: HashMap<u64, Consumer>,
    /// Queues that may have something to deliver or expire.
    dirty: BTreeSet<String>,
    last_id: u64,
    last_seq: u64,
    /// Counts simulated connection losses; deliveries of an earlier epoch cannot be settled.
    epoch: u64,
    refusals: usize,
    /// Whether an expiry timer task is running for this broker.
    pub(super) timer_running: bool,
    /// A queue with a TTL got a message since the timer last looked.
    pub(super) ttl_dirty: bool,
}

impl State {
    pub(super) fn new() -> Self {
        let exchanges = [
            ("amq.direct", ExchangeKind::Direct),
            ("amq.fanout", ExchangeKind::Fanout),
            ("amq.topic", ExchangeKind::Topic),
        ]
        .into_iter()
        .map(|(name, kind)| {
            (
                name.to_owned(),
                Exchange {
                    kind,
                    bindings: Vec::new(),
                },
            )
        })
        .collect();
        Self {
            queues: HashMap::new(),
            exchanges,
            consumers: HashMap::new(),
            dirty: BTreeSet::new(),
            last_id: 0,
            last_seq: 0,
            epoch: 0,
            refusals: 0,
            timer_running: false,
            ttl_dirty: false,
        }
    }

    fn next_id(&mut self) -> u64 {
        self.last_id += 1;
        self.last_id
    }

    pub(super) fn declare_queue(
        &mut self,
        name: &str,
        durable: bool,
        arguments: &BTreeMap<String, Value>,
    ) -> Result<(), MemoryError> {
        if name.is_empty() {
            return Err(MemoryError::PreconditionFailed(
                "server-named queues are not supported by the in-memory broker".into(),
            ));
        }
        // Direct reply-to queues are `amq.` ones too.
        if name.starts_with("amq.") {
            return Err(reserved("queue", name));
        }
        if let Some(queue) = self.queues.get(name) {
            return equivalent(
                name,
                (durable, arguments),
                (queue.durable, &queue.arguments),
            );
        }
        let QueueSettings { ttl, dead_letter } = settings(name, durable, arguments)?;
        let id = self.next_id();
        self.queues.insert(
            name.to_owned(),
            Queue {
                id,
                durable,
                arguments: arguments.clone(),
                ttl,
                dead_letter,
                messages: VecDeque::new(),
                consumers: Vec::new(),
                next_consumer: 0,
                owner: None,
            },
        );
        Ok(())
    }

    pub(super) fn declare_exchange(
        &mut self,
        name: &str,
        kind: ExchangeKind,
    ) -> Result<(), MemoryError> {
        if name.is_empty() {
            return Err(default_exchange());
        }
        match self.exchanges.get(name) {
            Some(exchange) if exchange.kind == kind => Ok(()),
            Some(exchange) => Err(MemoryError::PreconditionFailed(format!(
                "inequivalent arg 'type' for exchange '{name}' in vhost '/': received '{}' but current is '{}'",
                kind_name(kind),
                kind_name(exchange.kind)
            ))),
            None if name.starts_with("amq.") => Err(reserved("exchange", name)),
            None => {
                self.exchanges.insert(
                    name.to_owned(),
                    Exchange {
                        kind,
                        bindings: Vec::new(),
                    },
                );
                Ok(())
            }
        }
    }

    pub(super) fn bind(
        &mut self,
        queue: &str,
        exchange: &str,
        key: &str,
    ) -> Result<(), MemoryError> {
        if exchange.is_empty() {
            return Err(default_exchange());
        }
        if self.queues.get(queue).is_none_or(|q| q.owner.is_some()) {
            return Err(no_queue(queue));
        }
        let exchange = self
            .exchanges
            .get_mut(exchange)
            .ok_or_else(|| no_exchange(exchange))?;
        let binding = (queue.to_owned(), key.to_owned());
        if !exchange.bindings.contains(&binding) {
            exchange.bindings.push(binding);
        }
        Ok(())
    }

    /// Deletes a queue: its bindings go, its consumers end. Returns its ready messages' count.
    pub(super) fn delete_queue(&mut self, name: &str) -> usize {
        // A direct reply-to queue goes with its consumer only.
        if self
            .queues
            .get(name)
            .is_some_and(|queue| queue.owner.is_some())
        {
            return 0;
        }
        let Some(queue) = self.queues.remove(name) else {
            return 0;
        };
        for exchange in self.exchanges.values_mut() {
            exchange.bindings.retain(|(bound, _)| bound != name);
        }
        for id in &queue.consumers {
            if let Some(consumer) = self.consumers.get_mut(id) {
                // What it was sent but did not take goes with the queue; what it took can
                // still be settled (to no effect), as on RabbitMQ.
                consumer.cancelled = true;
                consumer.sent.clear();
                consumer.wake.notify_one();
            }
            self.forget_if_done(*id);
        }
        self.dirty.remove(name);
        queue.messages.len()
    }

    pub(super) fn delete_exchange(&mut self, name: &str) {
        if !name.is_empty() && !name.starts_with("amq.") {
            self.exchanges.remove(name);
        }
    }

    /// Publishes; `refusable`: injected refusals apply to it (they are meant for the code under
    /// test, not for a test's own setup).
    pub(super) fn publish(
        &mut self,
        exchange: &str,
        routing_key: &str,
        body: Vec<u8>,
        properties: Properties,
        refusable: bool,
    ) -> Result<PublishOutcome, MemoryError> {
        let targets = self.route(exchange, routing_key)?;
        if refusable && self.refusals > 0 {
            self.refusals -= 1;
            return Ok(PublishOutcome::Refused);
        }
        if targets.is_empty() {
            return Ok(PublishOutcome::Unroutable);
        }
        let message = Stored {
            exchange: exchange.to_owned(),
            routing_key: routing_key.to_owned(),
            redelivered: false,
            properties,
            body,
            seq: 0,
            expires_at: None,
        };
        let routed = targets.len();
        self.enqueue_all(targets, message);
        Ok(PublishOutcome::Routed(routed))
    }

    pub(super) fn refuse(&mut self, count: usize) {
        self.refusals = self.refusals.saturating_add(count);
    }

    pub(super) fn ready(&self, queue: &str) -> Option<usize> {
        self.queues.get(queue).map(|q| q.messages.len())
    }

    pub(super) fn unacked(&self, queue: &str) -> Option<usize> {
        let queue_id = self.queues.get(queue)?.id;
        Some(
            self.consumers
                .values()
                .filter(|consumer| consumer.queue == queue && consumer.queue_id == queue_id)
                .map(Consumer::unsettled)
                .sum(),
        )
    }

    /// Delivers and expires what can be, in every queue something happened to.
    pub(super) fn pump(&mut self) {
        while let Some(name) = self.dirty.pop_first() {
            self.service(&name);
        }
    }

    /// Expires the heads of every queue with a TTL, then delivers.
    pub(super) fn expire_all(&mut self) {
        let due: Vec<String> = self
            .queues
            .iter()
            .filter(|(_, queue)| queue.ttl.is_some())
            .map(|(name, _)| name.clone())
            .collect();
        self.dirty.extend(due);
        self.pump();
    }

    /// When the next queue head expires.
    pub(super) fn next_expiry(&self) -> Option<Instant> {
        self.queues
            .values()
            .filter_map(|queue| queue.messages.front()?.expires_at)
            .min()
    }

    /// Expires the head while it is due (classic queues expire at the head only), and sends
    /// messages round robin to the consumers with room in their prefetch window.
    fn service(&mut self, name: &str) {
        let now = Instant::now();
        loop {
            let Some(queue) = self.queues.get_mut(name) else {
                return;
            };
            let Some(head) = queue.messages.front() else {
                return;
            };
            let expired = head.expires_at.is_some_and(|at| at <= now);
            // A TTL of 0 lets a message through only to a consumer ready for it right now.
            let chosen = if expired && queue.ttl != Some(Duration::ZERO) {
                None
            } else {
                pick(queue, &self.consumers)
            };
            if !expired && chosen.is_none() {
                return;
            }
            let Some(message) = queue.messages.pop_front() else {
                return;
            };
            match chosen.and_then(|id| self.consumers.get_mut(&id)) {
                Some(consumer) => {
                    consumer.last_tag += 1;
                    consumer.sent.push_back((consumer.last_tag, message));
                    consumer.wake.notify_one();
                }
                None => self.dead_letter(name, message, EXPIRED),
            }
        }
    }

    /// Routes like RabbitMQ: the default exchange to the queue named by the key, a direct
    /// exchange by exact key, a topic exchange by wildcard, a fanout exchange to all its queues.
    fn route(&self, exchange: &str, key: &str) -> Result<Vec<String>, MemoryError> {
        if exchange.is_empty() {
            return Ok(if self.queues.contains_key(key) {
                vec![key.to_owned()]
            } else {
                Vec::new()
            });
        }
        let exchange_state = self
            .exchanges
            .get(exchange)
            .ok_or_else(|| no_exchange(exchange))?;
        let mut targets: Vec<String> = Vec::new();
        if exchange_state.kind == ExchangeKind::ConsistentHash {
            // rmq-bus clients put the ordering key in the routing key too: hashed here (FNV-1a)
            // over the bound queues, one key always to one queue.
            let mut queues: Vec<&String> = exchange_state.bindings.iter().map(|(q, _)| q).collect();
            queues.sort_unstable();
            queues.dedup();
            let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
                (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
            });
            let pick = usize::try_from(hash % queues.len().max(1) as u64).unwrap_or(0);
            return Ok(queues
                .get(pick)
                .map(|q| vec![(*q).clone()])
                .unwrap_or_default());
        }
        for (queue, binding) in &exchange_state.bindings {
            let hit = match exchange_state.kind {
                ExchangeKind::Direct => binding == key,
                ExchangeKind::Topic => wildcard_matches(binding, key),
                ExchangeKind::Fanout | ExchangeKind::ConsistentHash => true,
            };
            if hit && !targets.contains(queue) {
                targets.push(queue.clone());
            }
        }
        Ok(targets)
    }

    /// Stores a copy of `message` in each of `targets`, at the tail.
    fn enqueue_all(&mut self, targets: Vec<String>, message: Stored) {
        let mut copies = std::iter::repeat_n(message, targets.len());
        for name in targets {
            let Some(mut message) = copies.next() else {
                return;
            };
            let Some(queue) = self.queues.get_mut(&name) else {
                continue;
            };
            self.last_seq += 1;
            message.seq = self.last_seq;
            message.expires_at = queue.ttl.map(|ttl| Instant::now() + ttl);
            self.ttl_dirty |= queue.ttl.is_some();
            queue.messages.push_back(message);
            self.dirty.insert(name);
        }
    }

    /// Puts a message back at the head of its queue, unless the queue was deleted meanwhile.
    /// It keeps its expiry time, as on RabbitMQ.
    fn requeue(&mut self, name: &str, queue_id: u64, message: Stored) {
        if let Some(queue) = self
            .queues
            .get_mut(name)
            .filter(|queue| queue.id == queue_id)
        {
            self.ttl_dirty |= queue.ttl.is_some();
            queue.messages.push_front(message);
            self.dirty.insert(name.to_owned());
        }
    }

    /// Dead-letters a message leaving queue `name` for `reason`: to the queue's dead-letter
    /// exchange with death headers, or nowhere when it has none (or when that would close a
    /// cycle without a rejection in it, which RabbitMQ breaks by dropping the message).
    fn dead_letter(&mut self, name: &str, mut message: Stored, reason: &str) {
        let Some((exchange, key)) = self
            .queues
            .get(name)
            .and_then(|queue| queue.dead_letter.clone())
        else {
            return;
        };
        record_death(&mut message, name, reason);
        let key = key.unwrap_or_else(|| message.routing_key.clone());
        // A missing dead-letter exchange drops the message, as on RabbitMQ.
        let Ok(targets) = self.route(&exchange, &key) else {
            return;
        };
        let deaths = match message.properties.headers.get("x-death") {
            Some(Value::Array(deaths)) => deaths.as_slice(),
            _ => &[],
        };
        let targets: Vec<String> = targets
            .into_iter()
            .filter(|target| !is_cycle(target, deaths))
            .collect();
        message.exchange = exchange;
        message.routing_key = key;
        message.redelivered = false;
        self.enqueue_all(targets, message);
    }

    /// Drops a consumer's record once it is stopped, its handle gone and nothing left to settle.
    fn forget_if_done(&mut self, id: u64) {
        if self
            .consumers
            .get(&id)
            .is_some_and(|c| c.cancelled && c.dropped && c.unacked.is_empty())
        {
            self.consumers.remove(&id);
        }
    }
}

/// The next consumer of `queue` in round-robin order with room in its prefetch window.
fn pick(queue: &mut Queue, consumers: &HashMap<u64, Consumer>) -> Option<u64> {
    let count = queue.consumers.len();
    let start = queue.next_consumer;
    let index = (0..count)
        .map(|offset| (start + offset) % count)
        .find(|&index| {
            consumers
                .get(&queue.consumers[index])
                .is_some_and(Consumer::has_room)
        })?;
    queue.next_consumer = (index + 1) % count;
    Some(queue.consumers[index])
}
