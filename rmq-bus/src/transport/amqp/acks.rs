//! Coalesced acknowledgements: handlers settle one message at a time, while on the wire one
//! `basic.ack` with `multiple` covers the highest contiguous run of settled delivery tags.
//!
//! A handler's ack only records the tag; a flusher task sends the acks when enough are waiting (a
//! share of the prefetch window), when the consumer finds no delivery waiting and acks are sparse
//! (at low rates an ack held for the timer coalesces with nothing and only adds a wake-up beside
//! the next delivery), or after a short timer, so the window never starves; whatever a gap holds
//! back is acked one by one at the timer. A nack or reject goes out at once, on its own, and
//! counts as settled for the runs around it. A multiple ack is only ever sent for a tag that
//! is itself still outstanding, and every frame goes out under one lock, so the broker sees
//! settlements in a consistent order.

use std::any::Any;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use lapin::Channel;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use tokio::sync::Notify;

use crate::context::{RmqContext, Settle};
use crate::delivery::{Outcome, Settlement};
use crate::error::{Error, Result};
use crate::telemetry::{Gauge, Histogram};

/// Longest an ack waits before it is sent.
const FLUSH_INTERVAL: Duration = Duration::from_millis(1);
/// Most acks one multiple ack stands for before it is sent without waiting for the timer.
const MAX_BATCH: usize = 20;
/// An idle consumer's acks go at once if the last flush is at least this old: slower than one
/// delivery per `SPARSE`, the timer would coalesce about one ack; faster, it saves frames.
const SPARSE: Duration = Duration::from_micros(500);

/// The acks of one consumer channel.
pub(crate) struct AckBatcher {
    channel: Channel,
    state: Mutex<Batch>,
    /// Serialises frames, so a nack is on the wire before any multiple ack that passes its tag.
    send: tokio::sync::Mutex<()>,
    /// Told when acks start waiting and when they become due.
    wake: Arc<Notify>,
    /// Deliveries outstanding or acked but not sent: the prefetch window in use.
    unacked: Gauge,
    /// Deliveries per multiple ack.
    batch_sizes: Histogram,
}

#[derive(Default)]
struct Batch {
    /// Delivered and not settled by their handler yet: bounded by the prefetch window.
    outstanding: BTreeSet<u64>,
    /// Acked by their handler, not sent yet.
    unsent: BTreeSet<u64>,
    /// Set when the waiting acks are due before the timer: the batch is full, or the consumer
    /// is idle and acks are sparse. Cleared by the flush that takes them.
    due: bool,
    /// Waiting acks that make a full batch.
    batch: usize,
    /// The flusher was told since it last looked: telling it again would only wake it for
    /// nothing.
    told: bool,
    /// When acks were last taken to be sent.
    flushed: Option<Instant>,
}

/// What one flush puts on the wire.
struct Plan {
    multiple: Option<u64>,
    /// How many deliveries the multiple ack settles.
    covered: usize,
    singles: Vec<u64>,
}

impl Batch {
    fn new(batch: usize) -> Self {
        Self {
            outstanding: BTreeSet::new(),
            unsent: BTreeSet::new(),
            due: false,
            batch,
            told: false,
            flushed: None,
        }
    }

    /// Records the ack of `tag`; `true` if the flusher must hear of it: the first waiting ack
    /// starts its timer, and a full batch is due at once.
    fn ack(&mut self, tag: u64) -> bool {
        self.outstanding.remove(&tag);
        self.unsent.insert(tag);
        let first = self.unsent.len() == 1;
        let due = self.make_due(self.unsent.len() >= self.batch);
        self.tell(first || due)
    }

    /// The consumer found no delivery waiting (`now` reads the clock, only if it must): if
    /// acks are sparse, those that can go as one multiple ack are due now. `true` if the
    /// flusher must hear of it.
    fn idle(&mut self, now: impl FnOnce() -> Instant) -> bool {
        let ready = !self.due
            && self
                .unsent
                .range(..self.lowest_outstanding())
                .next()
                .is_some();
        let sparse = |flushed: Option<Instant>| {
            flushed.is_none_or(|flushed| now().saturating_duration_since(flushed) >= SPARSE)
        };
        let due = self.make_due(ready && sparse(self.flushed));
        self.tell(due)
    }

    /// Sets `due` if `now`; `true` if it was not set before.
    fn make_due(&mut self, now: bool) -> bool {
        let became = now && !self.due;
        self.due |= now;
        became
    }

    /// Whether to tell the flusher of something it `needs` to hear.
    fn tell(&mut self, needs: bool) -> bool {
        let tell = needs && !self.told;
        self.told |= tell;
        tell
    }

    /// What the flusher looks at: `None` with no ack waiting, else whether they are due.
    fn look(&mut self) -> Option<bool> {
        self.told = false;
        (!self.unsent.is_empty()).then_some(self.due)
    }

    /// Takes the acks to send: one multiple ack naming the highest waiting tag below the lowest
    /// outstanding one (every tag below that is settled, so the ack covers exactly the waiting
    /// ones) and, with `all`, single acks for the rest.
    fn plan(&mut self, all: bool) -> Plan {
        let low = self.lowest_outstanding();
        let multiple = self.unsent.range(..low).next_back().copied();
        let waiting = self.unsent.len();
        // Whatever made the acks due is in this plan.
        self.due = false;
        self.flushed = Some(Instant::now());
        self.unsent = self.unsent.split_off(&low);
        let covered = waiting - self.unsent.len();
        let singles = if all {
            std::mem::take(&mut self.unsent).into_iter().collect()
        } else {
            Vec::new()
        };
        Plan {
            multiple,
            covered,
            singles,
        }
    }

    fn unacked(&self) -> usize {
        self.outstanding.len() + self.unsent.len()
    }

    /// The tag below which every waiting ack can go as one multiple ack.
    fn lowest_outstanding(&self) -> u64 {
        self.outstanding.first().copied().unwrap_or(u64::MAX)
    }
}

impl AckBatcher {
    /// A batcher for `channel`, whose consumer has `prefetch` messages in flight at most. Its
    /// timer task ends with the batcher.
    /// `unacked` shows how much of the window is in use, `batch_sizes` how many deliveries each
    /// multiple ack settles.
    pub(crate) fn start(
        channel: Channel,
        prefetch: u16,
        unacked: Gauge,
        batch_sizes: Histogram,
    ) -> Arc<Self> {
        let batch = (usize::from(prefetch) / 4).clamp(1, MAX_BATCH);
        let batcher = Arc::new(Self {
            channel,
            state: Mutex::new(Batch::new(batch)),
            send: tokio::sync::Mutex::new(()),
            wake: Arc::new(Notify::new()),
            unacked,
            batch_sizes,
        });
        tokio::spawn(flush_on_timer(
            Arc::downgrade(&batcher),
            batcher.wake.clone(),
        ));
        batcher
    }

    /// Records delivery `tag` as outstanding until it is settled, so that no multiple ack
    /// passes it.
    pub(crate) fn track(&self, tag: u64) {
        let mut state = self.lock();
        state.outstanding.insert(tag);
        self.unacked.set(state.unacked() as f64);
    }

    /// Sends every ack still waiting (at shutdown, before the channel closes).
    pub(crate) async fn flush(&self) -> Result<()> {
        self.send_plan(true).await
    }

    /// Acks `tag`: recorded for the flusher, which sends it with the others.
    fn record_ack(&self, tag: u64) -> Result<()> {
        self.ensure_open(Settlement::Ack)?;
        if self.lock().ack(tag) {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// The consumer has no delivery waiting: the acks that can go, go now rather than at the
    /// timer.
    pub(crate) fn idle(&self) {
        if self.lock().idle(Instant::now) {
            self.wake.notify_one();
        }
    }

    /// Nacks or rejects `tag` at once, on its own.
    async fn send_refusal(&self, tag: u64, settlement: Settlement) -> Result<()> {
        self.ensure_open(settlement)?;
        let _frames = self.send.lock().await;
        let sent = match settlement {
            Settlement::Nack { requeue } => {
                let options = BasicNackOptions {
                    multiple: false,
                    requeue,
                };
                self.channel.basic_nack(tag, options).await
            }
            _ => {
                self.channel
                    .basic_reject(tag, BasicRejectOptions { requeue: false })
                    .await
            }
        };
        sent.map_err(|_| Error::ChannelClosed {
            attempted: settlement,
        })?;
        // Only now may a multiple ack pass this tag: the nack is on the wire before it.
        let mut state = self.lock();
        state.outstanding.remove(&tag);
        self.unacked.set(state.unacked() as f64);
        Ok(())
    }

    /// A settlement on a closed channel is refused: its tag means nothing on the next one.
    fn ensure_open(&self, attempted: Settlement) -> Result<()> {
        if self.channel.status().connected() {
            Ok(())
        } else {
            Err(Error::ChannelClosed { attempted })
        }
    }

    async fn send_plan(&self, all: bool) -> Result<()> {
        let _frames = self.send.lock().await;
        let plan = {
            let mut state = self.lock();
            let plan = state.plan(all);
            self.unacked.set(state.unacked() as f64);
            plan
        };
        if plan.multiple.is_some() {
            self.batch_sizes.record(plan.covered as f64);
        }
        let closed = |_| Error::ChannelClosed {
            attempted: Settlement::Ack,
        };
        if let Some(tag) = plan.multiple {
            self.channel
                .basic_ack(tag, BasicAckOptions { multiple: true })
                .await
                .map_err(closed)?;
        }
        for tag in plan.singles {
            self.channel
                .basic_ack(tag, BasicAckOptions { multiple: false })
                .await
                .map_err(closed)?;
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Batch> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// RabbitMQ keeps no record of why a delivery was settled: the outcome is not sent.
impl Settle for AckBatcher {
    fn ack(&self, tag: u64, _: Outcome) -> Result<()> {
        self.record_ack(tag)
    }

    fn refuse(&self, tag: u64, settlement: Settlement, _: Outcome) -> BoxFuture<'_, Result<()>> {
        // Boxed: lapin's frame futures are large, and every handler awaiting an ack would
        // carry one.
        Box::pin(self.send_refusal(tag, settlement))
    }
}

impl RmqContext {
    /// The lapin channel the message was delivered on, for what rmq-bus does not wrap; `None`
    /// on the in-memory transport. An escape hatch: lapin is re-exported as [`crate::lapin`], and
    /// a major version of lapin is a major version of rmq-bus.
    ///
    /// Never settle a delivery through it (NestJS's `getChannelRef().ack(msg)`): use
    /// [`ack`](Self::ack) and friends, which settle exactly once and coalesce acks; a raw ack would
    /// leave rmq-bus acking a tag the broker no longer knows, which closes the channel.
    pub fn channel(&self) -> Option<&Channel> {
        let settler: &dyn Any = self.settler();
        settler
            .downcast_ref::<AckBatcher>()
            .map(|batcher| &batcher.channel)
    }
}

/// Sends waiting acks: due ones (a full batch, or an idle consumer's) as soon as they are due,
/// the rest `FLUSH_INTERVAL` after the first of them, until the batcher is gone or its channel
/// closes. Holds no strong reference while it waits, so that the batcher can go.
async fn flush_on_timer(batcher: Weak<AckBatcher>, wake: Arc<Notify>) {
    // Whether acks were left waiting by the last flush (held back behind a gap).
    let mut left = false;
    loop {
        if !left {
            // Wakes now and then anyway, to notice a dropped batcher.
            let _ = tokio::time::timeout(Duration::from_secs(1), wake.notified()).await;
        }
        let timer = tokio::time::sleep(FLUSH_INTERVAL);
        tokio::pin!(timer);
        // Whether the timer sends everything, or acks became due and go as one multiple ack.
        let all = loop {
            let due = match batcher.upgrade() {
                None => return,
                Some(strong) => strong.lock().look(),
            };
            match due {
                None => break None,
                Some(true) => break Some(false),
                // Told again only when they become due.
                Some(false) => tokio::select! {
                    () = &mut timer => break Some(true),
                    () = wake.notified() => {}
                },
            }
        };
        let Some(all) = all else {
            left = false;
            continue;
        };
        let Some(strong) = batcher.upgrade() else {
            return;
        };
        if !strong.channel.status().connected() {
            return;
        }
        // Due acks send only their contiguous run; the timer sends everything.
        if let Err(error) = strong.send_plan(all).await {
            tracing::debug!(%error, "could not flush acks; the channel is closing");
        }
        left = !strong.lock().unsent.is_empty();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(outstanding: &[u64], unsent: &[u64]) -> Batch {
        Batch {
            outstanding: outstanding.iter().copied().collect(),
            unsent: unsent.iter().copied().collect(),
            ..Batch::new(20)
        }
    }

    #[test]
    fn an_idle_consumer_has_its_acks_sent_without_waiting_for_the_timer() {
        let mut state = batch(&[1], &[]);
        assert!(state.ack(1), "the first waiting ack tells the flusher");
        assert_eq!(state.look(), Some(false), "one ack alone waits for more");
        assert!(
            state.idle(Instant::now),
            "no delivery waiting: the flusher is told"
        );
        assert_eq!(state.look(), Some(true), "and the ack is due at once");
        let plan = state.plan(false);
        assert_eq!((plan.multiple, plan.singles), (Some(1), vec![]));
        assert_eq!(state.look(), None);
    }

    #[test]
    fn an_idle_consumer_does_not_hurry_acks_held_back_by_a_gap() {
        // 2 is still being handled: 3 can only go one by one, at the timer.
        let mut state = batch(&[2, 3], &[]);
        state.ack(3);
        assert!(!state.idle(Instant::now));
        assert_eq!(state.look(), Some(false));
    }

    #[test]
    fn an_idle_consumer_keeps_coalescing_acks_that_come_fast() {
        let mut state = batch(&[], &[1]);
        let flushed = Instant::now();
        state.flushed = Some(flushed);
        assert!(
            !state.idle(|| flushed + SPARSE / 2),
            "acks came faster than SPARSE: the timer coalesces them"
        );
        assert_eq!(state.look(), Some(false));
        assert!(state.idle(|| flushed + SPARSE), "sparse: at once");
        assert_eq!(state.look(), Some(true));
    }

    #[test]
    fn a_full_batch_is_due_and_the_flusher_is_told_once_until_it_looks() {
        let mut state = batch(&[1, 2, 3], &[]);
        state.batch = 2;
        assert!(state.ack(1), "the first ack starts the timer");
        assert!(
            !state.ack(2),
            "told already, and the flusher has not looked yet"
        );
        assert_eq!(state.look(), Some(true), "two acks make a full batch");
        assert!(!state.ack(3), "already due: nothing new to tell");
        assert_eq!(state.plan(false).multiple, Some(3));
        assert_eq!(state.look(), None);
    }

    #[test]
    fn waiting_acks_below_the_lowest_outstanding_tag_become_one_multiple_ack() {
        let mut state = batch(&[4], &[1, 2, 3, 5]);
        let plan = state.plan(false);
        assert_eq!((plan.multiple, plan.singles), (Some(3), vec![]));
        assert_eq!(
            state.unsent.iter().copied().collect::<Vec<_>>(),
            [5],
            "5 waits for 4"
        );
    }

    #[test]
    fn a_nacked_tag_in_the_middle_is_passed() {
        // 2 was nacked (sent, no longer outstanding): the multiple ack covers 1, 3 and 4.
        let mut state = batch(&[], &[1, 3, 4]);
        assert_eq!(state.plan(false).multiple, Some(4));
    }

    #[test]
    fn a_multiple_ack_never_names_a_tag_already_settled() {
        // 3 was nacked and 4 is outstanding: the ack names 2, the highest waiting one.
        let mut state = batch(&[4], &[1, 2]);
        assert_eq!(state.plan(false).multiple, Some(2));
        let mut state = batch(&[7], &[]);
        assert_eq!(state.plan(false).multiple, None);
    }

    #[test]
    fn the_timer_sends_what_a_slow_delivery_holds_back_one_by_one() {
        let mut state = batch(&[2], &[1, 3, 4]);
        let plan = state.plan(true);
        assert_eq!((plan.multiple, plan.singles), (Some(1), vec![3, 4]));
        assert!(
            state.unsent.is_empty(),
            "nothing accumulates behind the slow delivery"
        );
        // When 2 is acked at last, it goes out alone, as a multiple ack naming it.
        state.outstanding.remove(&2);
        state.unsent.insert(2);
        let plan = state.plan(false);
        assert_eq!((plan.multiple, plan.singles), (Some(2), vec![]));
    }
}
