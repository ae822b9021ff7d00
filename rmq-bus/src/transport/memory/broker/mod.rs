//! The in-memory broker, with RabbitMQ's semantics, so services can be tested without RabbitMQ:
//! exchanges and bindings, prefetch and round robin, acknowledgements, requeue, dead-lettering,
//! queue TTL, direct reply-to, and injected faults (a lost connection, refused publishes).

mod death;
mod declare;
mod state;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};

use tokio::sync::Notify;

use crate::config::ExchangeKind;
use crate::delivery::{Outcome, Properties, Settlement};
use state::{State, Take};

use crate::transport::REPLY_TO;

/// Why the broker refused an operation, as RabbitMQ would say it (it would close the channel).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum MemoryError {
    /// 404: no such queue or exchange.
    NotFound(String),
    /// 406: an inequivalent redeclaration, an invalid argument, an unknown delivery tag.
    PreconditionFailed(String),
    /// 403: a reserved name (`amq.*`) or the default exchange.
    AccessRefused(String),
    /// The delivery's connection was lost: it cannot be settled any more.
    Disconnected,
}

impl fmt::Display for MemoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemoryError::NotFound(text) => write!(f, "NOT_FOUND - {text}"),
            MemoryError::PreconditionFailed(text) => write!(f, "PRECONDITION_FAILED - {text}"),
            MemoryError::AccessRefused(text) => write!(f, "ACCESS_REFUSED - {text}"),
            MemoryError::Disconnected => {
                f.write_str("connection lost: the channel of this delivery is closed")
            }
        }
    }
}

impl std::error::Error for MemoryError {}

/// Who publishes to the broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sender {
    /// A client's emit or request: what refusals injected for a test apply to.
    Client,
    /// A microservice's reply or republished copy (a retry, a dead letter).
    Service,
    /// The test itself, setting the scene (`TestBroker::publish`).
    Test,
}

/// What became of a publish.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PublishOutcome {
    /// Stored in this many queues (one copy each).
    Routed(usize),
    /// No queue got it; a mandatory publish comes back as returned.
    Unroutable,
    /// Not stored: the broker nacked it (injected with [`MemoryBroker::refuse_publishes`]).
    Refused,
}

struct Inner {
    state: Mutex<State>,
    /// Wakes the expiry timer task.
    timer: Arc<Notify>,
    /// Every settlement, oldest first, for tests to wait on.
    settled: Mutex<std::collections::VecDeque<Settled>>,
    settled_wake: Notify,
    /// Whether settlements are recorded (a test helper watches this broker).
    record_settlements: std::sync::atomic::AtomicBool,
}

/// A delivery a consumer settled, as tests see it.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Settled {
    /// The queue it was consumed from.
    pub queue: String,
    /// Its body.
    pub body: Vec<u8>,
    /// Its properties.
    pub properties: Properties,
    /// How it was settled, as the broker saw it.
    pub settlement: Settlement,
    /// What became of it, and why: acked, retried, dead-lettered, requeued or rejected.
    pub outcome: Outcome,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Lets the timer task see the broker is gone and end.
        self.timer.notify_one();
    }
}

/// A broker in memory. Clones share it; [`named`](Self::named) ones are shared process-wide.
#[derive(Clone)]
pub(crate) struct MemoryBroker {
    inner: Arc<Inner>,
}

impl fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBroker").finish_non_exhaustive()
    }
}

impl MemoryBroker {
    /// The process-wide broker called `name`, created on first use and never dropped (like a
    /// running RabbitMQ): every call with the same name gives the same broker.
    pub(crate) fn named(name: &str) -> Self {
        static NAMED: OnceLock<Mutex<HashMap<String, MemoryBroker>>> = OnceLock::new();
        let mut named = NAMED
            .get_or_init(Mutex::default)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        named
            .entry(name.to_owned())
            .or_insert_with(Self::new)
            .clone()
    }

    /// A broker of its own.
    pub(crate) fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State::new()),
                timer: Arc::new(Notify::new()),
                settled: Mutex::default(),
                settled_wake: Notify::new(),
                record_settlements: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// Declares a queue: idempotent when equal; a different `durable` flag or different
    /// arguments (those RabbitMQ compares) fail as on RabbitMQ. Understands `x-message-ttl`,
    /// `x-dead-letter-exchange`, `x-dead-letter-routing-key`, `x-queue-type` (classic or
    /// quorum); accepts and ignores `x-expires` and the rest.
    pub(crate) fn declare_queue(
        &self,
        name: &str,
        durable: bool,
        arguments: &BTreeMap<String, serde_json::Value>,
    ) -> Result<(), MemoryError> {
        self.with(|state| state.declare_queue(name, durable, arguments))
    }

    /// Declares an exchange; the same name with another kind fails as on RabbitMQ.
    /// `amq.direct`, `amq.fanout` and `amq.topic` exist from the start.
    pub(crate) fn declare_exchange(
        &self,
        name: &str,
        kind: ExchangeKind,
    ) -> Result<(), MemoryError> {
        self.with(|state| state.declare_exchange(name, kind))
    }

    /// Binds `queue` to `exchange` with `routing_key` (ignored by fanout exchanges).
    pub(crate) fn bind(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
    ) -> Result<(), MemoryError> {
        self.with(|state| state.bind(queue, exchange, routing_key))
    }

    /// Deletes a queue and its bindings; its consumers end. Returns how many ready messages
    /// went with it (0 if there was no such queue).
    pub(crate) fn delete_queue(&self, name: &str) -> usize {
        self.with(|state| state.delete_queue(name))
    }

    /// Deletes an exchange and its bindings (not the default or `amq.*` ones).
    pub(crate) fn delete_exchange(&self, name: &str) {
        self.with(|state| state.delete_exchange(name));
    }

    /// Publishes a message, routed like RabbitMQ does: the default exchange `""` to the queue
    /// named `routing_key`, a direct exchange by exact key, a topic exchange by wildcard, a
    /// fanout exchange to every bound queue. Each queue gets its own copy. Refusals injected with
    /// [`refuse_publishes`](Self::refuse_publishes) apply to clients' publishes only.
    pub(crate) fn publish(
        &self,
        sender: Sender,
        exchange: &str,
        routing_key: &str,
        body: Vec<u8>,
        properties: Properties,
    ) -> Result<PublishOutcome, MemoryError> {
        let refusable = sender == Sender::Client;
        self.with(|state| state.publish(exchange, routing_key, body, properties, refusable))
    }

    /// Consumes `queue`, with at most `prefetch` unsettled deliveries at a time (0: no limit;
    /// no limit either with `no_ack`). Consuming [`REPLY_TO`] (with `no_ack`) creates a private
    /// reply queue, named by [`MemoryConsumer::reply_to`], that lives as long as the consumer.
    pub(crate) fn consume(
        &self,
        queue: &str,
        prefetch: u16,
        no_ack: bool,
    ) -> Result<MemoryConsumer, MemoryError> {
        let subscription = self.with(|state| state.consume(queue, prefetch, no_ack))?;
        Ok(MemoryConsumer {
            broker: self.clone(),
            id: subscription.id,
            epoch: subscription.epoch,
            reply_to: queue == REPLY_TO,
            queue: subscription.queue,
            wake: subscription.wake,
        })
    }

    /// Messages waiting in `queue`; `None` if there is no such queue.
    pub(crate) fn ready(&self, queue: &str) -> Option<usize> {
        self.observe(|state| state.ready(queue))
    }

    /// Messages of `queue` delivered to consumers and not settled; `None` if there is no such queue.
    pub(crate) fn unacked(&self, queue: &str) -> Option<usize> {
        self.observe(|state| state.unacked(queue))
    }

    /// Records settlements from now on, for [`next_settled`](Self::next_settled).
    pub(crate) fn record_settlements(&self) {
        self.inner
            .record_settlements
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Waits for the next settlement of a delivery from `queue` (in settlement order) and
    /// takes it from the record.
    pub(crate) async fn next_settled(&self, queue: &str) -> Settled {
        loop {
            let woken = self.inner.settled_wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            {
                let mut settled = self
                    .inner
                    .settled
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if let Some(found) = settled
                    .iter()
                    .position(|s| s.queue == queue)
                    .and_then(|at| settled.remove(at))
                {
                    return found;
                }
            }
            woken.await;
        }
    }

    /// Simulates a lost connection: every consumer ends, their unsettled messages go back to
    /// the head of their queues in their original order, marked redelivered, and settling those
    /// deliveries fails with [`MemoryError::Disconnected`]. Queues, exchanges and bindings stay;
    /// direct reply-to queues go with their consumers.
    pub(crate) fn disconnect(&self) {
        self.with(State::disconnect);
    }

    /// Settles delivery `tag` of `consumer` (made in connection `epoch`) as `outcome` says it
    /// was: acks (removes), nacks with requeue (back to the head of the queue, redelivered), or
    /// nacks without requeue / rejects (dead-lettered if the queue has a dead-letter exchange,
    /// else dropped). Fails with [`MemoryError::Disconnected`] after a lost connection, and with
    /// [`MemoryError::PreconditionFailed`] ("unknown delivery tag") if already settled or
    /// delivered without acknowledgement.
    pub(crate) fn settle(
        &self,
        consumer: u64,
        epoch: u64,
        tag: u64,
        settlement: Settlement,
        outcome: Outcome,
    ) -> Result<(), MemoryError> {
        let mut settled = self.with(|state| state.settle(consumer, epoch, tag, settlement))?;
        settled.outcome = outcome;
        let inner = &self.inner;
        // Recorded only for tests that asked (a TestBroker), so a long-lived broker keeps nothing.
        if inner
            .record_settlements
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            inner
                .settled
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push_back(settled);
            inner.settled_wake.notify_waiters();
        }
        Ok(())
    }

    /// Makes the next `count` publishes return [`PublishOutcome::Refused`] without storing them.
    pub(crate) fn refuse_publishes(&self, count: usize) {
        self.with(|state| state.refuse(count));
    }

    /// Runs `f` on the state, then delivers what became deliverable and wakes the expiry timer
    /// if a queue with a TTL got messages.
    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut state = self.inner.lock();
        let out = f(&mut state);
        self.catch_up(&mut state);
        out
    }

    /// Looks at the state once it is up to date.
    fn observe<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        let mut state = self.inner.lock();
        self.catch_up(&mut state);
        f(&state)
    }

    fn catch_up(&self, state: &mut State) {
        if state.timer_running {
            state.pump();
        } else {
            // No timer yet (or none possible outside a runtime): expire what is due now.
            state.expire_all();
        }
        // Also after the runtime that ran the timer is gone, with messages still to expire.
        if state.ttl_dirty || (!state.timer_running && state.next_expiry().is_some()) {
            self.arm_timer(state);
        }
    }

    /// Makes sure the expiry timer runs and looks again. Outside a Tokio runtime it cannot run:
    /// messages then expire on the broker's next operation.
    fn arm_timer(&self, state: &mut State) {
        if !state.timer_running {
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                return;
            };
            state.timer_running = true;
            runtime.spawn(expiry_timer(
                Arc::downgrade(&self.inner),
                self.inner.timer.clone(),
            ));
        }
        state.ttl_dirty = false;
        self.inner.timer.notify_one();
    }
}

/// Expires queue heads when their TTL runs out, with no other activity needed; ends with the
/// broker (or its runtime, after which the next operation starts another).
async fn expiry_timer(broker: Weak<Inner>, wake: Arc<Notify>) {
    let _running = TimerRunning(broker.clone());
    loop {
        let next = {
            let Some(inner) = broker.upgrade() else {
                return;
            };
            let mut state = inner.lock();
            state.ttl_dirty = false;
            state.expire_all();
            state.next_expiry()
        };
        match next {
            Some(at) => {
                tokio::select! {
                    () = tokio::time::sleep_until(at) => {}
                    () = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
    }
}

/// Clears the broker's "timer running" flag when the timer task ends or is dropped.
struct TimerRunning(Weak<Inner>);

impl Drop for TimerRunning {
    fn drop(&mut self) {
        if let Some(inner) = self.0.upgrade() {
            inner.lock().timer_running = false;
        }
    }
}

/// A subscription to a queue. Dropping it cancels it.
pub(crate) struct MemoryConsumer {
    broker: MemoryBroker,
    id: u64,
    epoch: u64,
    queue: String,
    reply_to: bool,
    wake: Arc<Notify>,
}

impl fmt::Debug for MemoryConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryConsumer")
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

impl MemoryConsumer {
    /// The next delivery, waiting for one; `None` once the consumer was cancelled, its queue
    /// deleted or the connection lost. At most `prefetch` deliveries are unsettled at a time.
    /// Cancel-safe: a message is not lost if the future is dropped.
    pub(crate) async fn next(&mut self) -> Option<MemoryDelivery> {
        loop {
            let taken = self.broker.inner.lock().take(self.id);
            match taken {
                Take::Delivery { tag, message } => {
                    return Some(MemoryDelivery {
                        delivery_tag: tag,
                        exchange: message.exchange,
                        routing_key: message.routing_key,
                        redelivered: message.redelivered,
                        properties: message.properties,
                        body: message.body,
                        #[cfg(test)]
                        acker: MemoryAcker {
                            broker: self.broker.clone(),
                            consumer: self.id,
                            epoch: self.epoch,
                            tag,
                        },
                    });
                }
                Take::Ended => return None,
                Take::Empty => {}
            }
            self.wake.notified().await;
        }
    }

    /// Stops receiving. Messages sent ahead to this consumer but not yet returned by
    /// [`next`](Self::next) go back to the head of the queue; deliveries already returned stay
    /// unsettled until settled or the connection is lost.
    pub(crate) fn cancel(&self) {
        self.broker.with(|state| state.cancel(self.id, false));
    }

    /// The queue consumed (for direct reply-to, the private reply queue).
    #[cfg(test)]
    pub(crate) fn queue(&self) -> &str {
        &self.queue
    }

    /// Its id and connection epoch: what settling one of its deliveries needs besides the tag.
    pub(crate) fn settle_key(&self) -> (u64, u64) {
        (self.id, self.epoch)
    }

    /// For a direct reply-to consumer, the name to publish replies to (on the default
    /// exchange); routable while the consumer lives.
    pub(crate) fn reply_to(&self) -> Option<&str> {
        self.reply_to.then_some(self.queue.as_str())
    }
}

impl Drop for MemoryConsumer {
    fn drop(&mut self) {
        self.broker.with(|state| state.cancel(self.id, true));
    }
}

/// One message delivered to a consumer.
#[derive(Debug)]
pub(crate) struct MemoryDelivery {
    /// Per consumer, from 1.
    pub(crate) delivery_tag: u64,
    /// The exchange it was published (or dead-lettered) to.
    pub(crate) exchange: String,
    /// The routing key it was published (or dead-lettered) with.
    pub(crate) routing_key: String,
    /// Delivered before and not acked (a requeue or a lost connection).
    pub(crate) redelivered: bool,
    pub(crate) properties: Properties,
    pub(crate) body: Vec<u8>,
    /// Settles it (the transport settles through the broker with the consumer's key instead).
    #[cfg(test)]
    pub(crate) acker: MemoryAcker,
}

/// Settles one delivery.
#[cfg(test)]
#[derive(Clone)]
pub(crate) struct MemoryAcker {
    broker: MemoryBroker,
    consumer: u64,
    epoch: u64,
    tag: u64,
}

#[cfg(test)]
impl fmt::Debug for MemoryAcker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryAcker")
            .field("delivery_tag", &self.tag)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
impl MemoryAcker {
    /// Settles the delivery: see [`MemoryBroker::settle`].
    pub(crate) fn settle(&self, settlement: Settlement) -> Result<(), MemoryError> {
        let outcome = Outcome::of(settlement);
        self.broker
            .settle(self.consumer, self.epoch, self.tag, settlement, outcome)
    }
}
