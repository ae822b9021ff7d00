//! What the outbox relay needs of a client: where it publishes, as a name that outlives the
//! process, and a batch of stored events published at once, their confirms awaited together (one
//! round trip per batch, not per event).

use std::time::Instant;

use super::ClientProxy;
use crate::delivery::Properties;
use crate::error::{Error, Result};
use crate::pattern::Pattern;
use crate::telemetry::Started;
use crate::transport::Confirm;

/// An event as the outbox stored it, ready to publish again with the same message id.
pub(crate) struct Prepared {
    pub(crate) pattern: Pattern,
    pub(crate) body: Vec<u8>,
    pub(crate) properties: Properties,
}

impl ClientProxy {
    /// Where this client publishes, as stored with each outbox row: `queue:NAME` or
    /// `exchange:NAME`.
    pub(crate) fn destination(&self) -> String {
        match &self.inner.options.exchange {
            Some(exchange) => format!("exchange:{}", exchange.name),
            None => format!("queue:{}", self.inner.options.queue),
        }
    }

    /// The largest body this client publishes.
    pub(crate) fn max_message_bytes(&self) -> usize {
        self.inner.options.max_message_bytes
    }

    /// The properties of an event emitted now: the running handler's correlation id and
    /// traceparent (or fresh ones), and `message_id`.
    pub(crate) fn event_properties(&self, message_id: String) -> Properties {
        let mut properties = self.properties(None, self.inner.options.persistent);
        properties.message_id = Some(message_id);
        properties
    }

    /// The delivery mode this client publishes with, for properties made elsewhere.
    pub(crate) fn delivery_mode(&self) -> u8 {
        if self.inner.options.persistent { 2 } else { 1 }
    }

    /// A live connection, opened in one attempt if there is none: the relay waits out outages
    /// by itself, with its own backoff.
    pub(crate) async fn ready(&self) -> Result<()> {
        self.link(Instant::now()).await.map(drop)
    }

    /// Publishes `batch` in order on the current connection, then waits for the confirms, all
    /// within one [`confirm_timeout`](crate::RmqOptions::confirm_timeout). One result per event
    /// handed over, in order; the events after a lost connection are not handed over, and have
    /// no result.
    pub(crate) async fn publish_batch(&self, batch: &[Prepared]) -> Vec<Result<()>> {
        let started = Started::now();
        let link = match self.live_link() {
            Some((link, _)) => link,
            None => match self.link(Instant::now()).await {
                Ok((link, _)) => link,
                Err(error) => return vec![Err(error)],
            },
        };
        if link.blocked() {
            return vec![Err(Error::Blocked {
                waited: std::time::Duration::ZERO,
            })];
        }
        let timer = tokio::time::sleep(self.inner.options.confirm_timeout);
        tokio::pin!(timer);
        let mut handed: Vec<Result<Confirm>> = Vec::with_capacity(batch.len());
        for event in batch {
            let publish = self.publish_on(&link, &event.pattern, &event.body, &event.properties);
            let published = tokio::select! {
                biased;
                published = publish => published,
                () = &mut timer => Err(self.confirm_timeout(&event.pattern)),
            };
            let lost = matches!(
                published,
                Err(Error::Disconnected { .. } | Error::ConfirmTimeout { .. })
            );
            handed.push(published);
            if lost {
                break;
            }
        }
        let mut results = Vec::with_capacity(handed.len());
        for (published, event) in handed.into_iter().zip(batch) {
            let mut confirm = match published {
                Ok(confirm) => confirm,
                Err(error) => {
                    results.push(Err(error));
                    continue;
                }
            };
            let confirmed = tokio::select! {
                biased;
                confirmation = &mut confirm => confirmation.map_err(|error| self.name_nack(error, &event.pattern)),
                () = &mut timer => {
                    confirm.detach();
                    Err(self.confirm_timeout(&event.pattern))
                }
            };
            results.push(confirmed);
        }
        if results
            .iter()
            .any(|result| matches!(result, Err(Error::Disconnected { .. })))
        {
            self.forget_dead_link();
        }
        // Counted as `emit`s are: each event handed over, confirmed or not.
        for (result, event) in results.iter().zip(batch) {
            let (exchange, routing_key) = self.address(&event.pattern);
            let sent = self.inner.sent.to(exchange, routing_key);
            sent.published(started, result.as_ref().err());
        }
        results
    }
}
