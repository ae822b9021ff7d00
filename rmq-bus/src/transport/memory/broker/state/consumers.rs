//! Consumers' side of the broker: subscribing, taking deliveries within the prefetch window,
//! cancelling, settling, and a simulated lost connection.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use tokio::sync::Notify;

use super::super::Settled;
use super::super::death::REJECTED;
use super::super::declare::no_queue;
use super::{Consumer, MemoryError, Queue, REPLY_TO, State, Stored, Subscription, Take};
use crate::delivery::{Outcome, Settlement};

impl State {
    pub(crate) fn consume(
        &mut self,
        queue: &str,
        prefetch: u16,
        no_ack: bool,
    ) -> Result<Subscription, MemoryError> {
        let reply_to = queue == REPLY_TO;
        if reply_to && !no_ack {
            return Err(MemoryError::PreconditionFailed(
                "reply consumer cannot acknowledge".into(),
            ));
        }
        if !reply_to && self.queues.get(queue).is_none_or(|q| q.owner.is_some()) {
            return Err(no_queue(queue));
        }
        let id = self.next_id();
        let name = if reply_to {
            let name = format!("{REPLY_TO}.mem-{id}");
            let queue_id = self.next_id();
            self.queues.insert(
                name.clone(),
                Queue {
                    id: queue_id,
                    durable: false,
                    arguments: BTreeMap::new(),
                    ttl: None,
                    dead_letter: None,
                    messages: VecDeque::new(),
                    consumers: Vec::new(),
                    next_consumer: 0,
                    owner: Some(id),
                },
            );
            name
        } else {
            queue.to_owned()
        };
        let Some(target) = self.queues.get_mut(&name) else {
            return Err(no_queue(queue));
        };
        target.consumers.push(id);
        let wake = Arc::new(Notify::new());
        self.consumers.insert(
            id,
            Consumer {
                queue: name.clone(),
                queue_id: target.id,
                prefetch,
                no_ack,
                sent: VecDeque::new(),
                unacked: BTreeMap::new(),
                last_tag: 0,
                cancelled: false,
                dropped: false,
                wake: wake.clone(),
            },
        );
        self.dirty.insert(name.clone());
        Ok(Subscription {
            id,
            queue: name,
            wake,
            epoch: self.epoch,
        })
    }

    /// Hands the consumer its next message, if it was sent one.
    pub(crate) fn take(&mut self, id: u64) -> Take {
        let Some(consumer) = self.consumers.get_mut(&id) else {
            return Take::Ended;
        };
        if consumer.cancelled {
            return Take::Ended;
        }
        let Some((tag, message)) = consumer.sent.pop_front() else {
            return Take::Empty;
        };
        if !consumer.no_ack {
            consumer.unacked.insert(tag, message.clone());
        }
        Take::Delivery { tag, message }
    }

    /// Stops a consumer. What it was sent but has not taken goes back to the head of the queue
    /// (marked redelivered, as RabbitMQ marks anything it had sent); what it took stays
    /// unacknowledged until settled or the connection is lost.
    pub(crate) fn cancel(&mut self, id: u64, dropped: bool) {
        let Some(consumer) = self.consumers.get_mut(&id) else {
            return;
        };
        consumer.dropped |= dropped;
        if !consumer.cancelled {
            consumer.cancelled = true;
            consumer.wake.notify_one();
            let sent = std::mem::take(&mut consumer.sent);
            let (name, queue_id, no_ack) =
                (consumer.queue.clone(), consumer.queue_id, consumer.no_ack);
            if let Some(queue) = self.queues.get_mut(&name).filter(|q| q.id == queue_id) {
                queue.consumers.retain(|other| *other != id);
            }
            for (_, mut message) in sent.into_iter().rev() {
                message.redelivered |= !no_ack;
                self.requeue(&name, queue_id, message);
            }
            if self
                .queues
                .get(&name)
                .is_some_and(|queue| queue.owner == Some(id))
            {
                self.queues.remove(&name);
                self.dirty.remove(&name);
            }
        }
        self.forget_if_done(id);
    }

    pub(crate) fn settle(
        &mut self,
        id: u64,
        epoch: u64,
        tag: u64,
        settlement: Settlement,
    ) -> Result<Settled, MemoryError> {
        if epoch != self.epoch {
            return Err(MemoryError::Disconnected);
        }
        let unknown = || MemoryError::PreconditionFailed(format!("unknown delivery tag {tag}"));
        let consumer = self.consumers.get_mut(&id).ok_or_else(unknown)?;
        let mut message = consumer.unacked.remove(&tag).ok_or_else(unknown)?;
        let (name, queue_id) = (consumer.queue.clone(), consumer.queue_id);
        let record = Settled {
            queue: name.clone(),
            body: message.body.clone(),
            properties: message.properties.clone(),
            settlement,
            outcome: Outcome::of(settlement),
        };
        // Its window has room again.
        self.dirty.insert(name.clone());
        let alive = self
            .queues
            .get(&name)
            .is_some_and(|queue| queue.id == queue_id);
        match settlement {
            Settlement::Ack => {}
            Settlement::Nack { requeue: true } => {
                message.redelivered = true;
                self.requeue(&name, queue_id, message);
            }
            Settlement::Nack { requeue: false } | Settlement::Reject => {
                if alive {
                    self.dead_letter(&name, message, REJECTED);
                }
            }
        }
        self.forget_if_done(id);
        Ok(record)
    }

    /// A simulated connection loss: every consumer ends, and what they had not settled goes
    /// back to the head of its queue in its original order, redelivered. Messages sent to no-ack
    /// consumers and not yet taken are lost, as on RabbitMQ.
    pub(crate) fn disconnect(&mut self) {
        self.epoch += 1;
        let mut returned: BTreeMap<(String, u64), Vec<Stored>> = BTreeMap::new();
        for (id, consumer) in std::mem::take(&mut self.consumers) {
            consumer.wake.notify_one();
            if let Some(queue) = self.queues.get_mut(&consumer.queue) {
                queue.consumers.retain(|other| *other != id);
            }
            if consumer.no_ack {
                continue;
            }
            let back = returned
                .entry((consumer.queue, consumer.queue_id))
                .or_default();
            back.extend(consumer.sent.into_iter().map(|(_, message)| message));
            back.extend(consumer.unacked.into_values());
        }
        self.queues.retain(|_, queue| queue.owner.is_none());
        for ((name, queue_id), mut messages) in returned {
            messages.sort_by_key(|message| message.seq);
            for mut message in messages.into_iter().rev() {
                message.redelivered = true;
                self.requeue(&name, queue_id, message);
            }
        }
    }
}
