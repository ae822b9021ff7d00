//! lapin-expert: lapin as an expert would use it, handled deliveries acked in batches with one
//! `basic.ack multiple`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use lapin::Channel;
use lapin::options::BasicAckOptions;

use super::Work;
use super::raw::next_event;
use crate::DEFAULT_PREFETCH;
use crate::measure::Recorder;
use crate::workload::PREFETCH;

/// lapin-expert acks once per this many in-order handled deliveries…
const ACK_BATCH: u64 = 20;
/// …or this long after the first handled delivery left unacked.
const ACK_FLUSH: Duration = Duration::from_millis(1);

/// Which handled delivery tags can be acked with one `multiple` ack: the highest tag below
/// which every tag is handled. Tags on a channel count up from 1.
struct AckWindow {
    /// Highest tag acked so far.
    acked: u64,
    /// Highest tag with every tag up to it handled.
    handled_upto: u64,
    /// Handled flags for the tags after `handled_upto`.
    ahead: VecDeque<bool>,
}

impl AckWindow {
    fn new() -> Self {
        Self {
            acked: 0,
            handled_upto: 0,
            ahead: VecDeque::with_capacity(usize::from(DEFAULT_PREFETCH.max(PREFETCH)) * 2),
        }
    }

    fn handled(&mut self, tag: u64) {
        let Some(offset) = tag
            .checked_sub(self.handled_upto + 1)
            .and_then(|offset| usize::try_from(offset).ok())
        else {
            return;
        };
        if self.ahead.len() <= offset {
            self.ahead.resize(offset + 1, false);
        }
        self.ahead[offset] = true;
        while self.ahead.front() == Some(&true) {
            self.ahead.pop_front();
            self.handled_upto += 1;
        }
    }

    fn unacked(&self) -> u64 {
        self.handled_upto - self.acked
    }

    /// The tag to ack with `multiple` now, if any, marking it acked.
    fn take(&mut self) -> Option<u64> {
        (self.unacked() > 0).then(|| {
            self.acked = self.handled_upto;
            self.acked
        })
    }
}

async fn ack_upto(channel: Channel, tag: u64) -> Result<(), String> {
    channel
        .basic_ack(tag, BasicAckOptions { multiple: true })
        .await
        .map_err(|e| format!("basic.ack multiple: {e}"))
}

/// Handlers run as futures inside the consumer task (inline work right in its loop), and handled
/// deliveries are acked in batches with one `basic.ack multiple` per [`ACK_BATCH`] in-order
/// deliveries, or [`ACK_FLUSH`] after a smaller run began, so the prefetch window never starves.
/// Takes `recorder.n` deliveries, as the typical consumer does.
pub(super) async fn consume(
    channel: Channel,
    mut consumer: lapin::Consumer,
    recorder: Arc<Recorder>,
    work: Work,
) -> Result<(), String> {
    let mut window = AckWindow::new();
    let mut handlers = FuturesUnordered::new();
    let mut acks = FuturesUnordered::new();
    let flush = tokio::time::sleep(ACK_FLUSH);
    tokio::pin!(flush);
    let mut flush_armed = false;
    let mut received = 0;
    while received < recorder.n || !handlers.is_empty() {
        let handled_tag = tokio::select! {
            next = next_event(&mut consumer, &recorder), if received < recorder.n => {
                let (delivery, event) = next?;
                received += 1;
                let tag = delivery.delivery_tag;
                match &work {
                    Work::Inline => {
                        work.run(&recorder, &event).await;
                        tag
                    }
                    concurrent => {
                        let (recorder, work) = (recorder.clone(), concurrent.clone());
                        handlers.push(async move {
                            work.run(&recorder, &event).await;
                            tag
                        });
                        continue;
                    }
                }
            }
            Some(tag) = handlers.next(), if !handlers.is_empty() => tag,
            () = &mut flush, if flush_armed => {
                flush_armed = false;
                if let Some(tag) = window.take() {
                    acks.push(ack_upto(channel.clone(), tag));
                }
                continue;
            }
            Some(acked) = acks.next(), if !acks.is_empty() => {
                acked?;
                continue;
            }
        };
        window.handled(handled_tag);
        if window.unacked() >= ACK_BATCH {
            if let Some(tag) = window.take() {
                acks.push(ack_upto(channel.clone(), tag));
            }
            flush_armed = false;
        } else if window.unacked() > 0 && !flush_armed {
            flush
                .as_mut()
                .reset(tokio::time::Instant::now() + ACK_FLUSH);
            flush_armed = true;
        }
    }
    if let Some(tag) = window.take() {
        acks.push(ack_upto(channel.clone(), tag));
    }
    while let Some(acked) = acks.next().await {
        acked?;
    }
    Ok(())
}
