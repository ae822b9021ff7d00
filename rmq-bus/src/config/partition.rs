//! Partitioned queues: one logical queue split into N queues behind a consistent-hash exchange,
//! each consumed by one instance at a time, so that per-key order holds across instances.

use super::{DeadLetters, Exchange, ExchangeKind, RmqOptions};
use crate::error::{Error, Result};

impl RmqOptions {
    /// Splits the queue into `count` partition queues, `<queue>.0` … `<queue>.<count-1>`, bound
    /// to a consistent-hash exchange named `<queue>` that hashes each message's ordering key
    /// ([`KEY_HEADER`](crate::ordering::KEY_HEADER)), so that one key always lands in one
    /// partition. Each partition queue has `x-single-active-consumer`: any number of instances of
    /// a service consume all partitions, one instance is active on each at a time, and when it
    /// stops another takes over. With [ordered handlers](crate::handler::Route::ordered_by) this
    /// keeps each key's order across instances.
    ///
    /// A [`ClientProxy`](crate::ClientProxy) made from the same options publishes to the
    /// exchange, the key in the header: automatically for a contract that names its key
    /// ([`Event::ORDERED_BY`](crate::contract::Event::ORDERED_BY)), or with
    /// [`emit_keyed`](crate::ClientProxy::emit_keyed); a plain `emit` spreads by correlation id.
    /// Needs RabbitMQ's `rabbitmq_consistent_hash_exchange` plugin (shipped with the broker:
    /// `rabbitmq-plugins enable rabbitmq_consistent_hash_exchange`). The dead-letter queue stays
    /// `<queue>.dlq`, shared by the partitions. `count` 0 is taken as 1.
    ///
    /// ```
    /// use rmq_bus::RmqOptions;
    /// let orders = RmqOptions::new("ORDERS").partitions(4); // ORDERS.0 … ORDERS.3
    /// ```
    pub fn partitions(mut self, count: u16) -> Self {
        self.partitions = Some(count.max(1));
        self.exchange = Some(Exchange::new(
            self.queue.clone(),
            ExchangeKind::ConsistentHash,
        ));
        self
    }

    /// The queues a microservice consumes for these options: the queue itself, or its partitions.
    pub(crate) fn consumed_queues(&self) -> Vec<RmqOptions> {
        let Some(count) = self.partitions else {
            return vec![self.clone()];
        };
        let dead_letters = match self.dead_letters() {
            Some(queue) => DeadLetters::Named(queue),
            None => self.dead_letters.clone(),
        };
        (0..count)
            .map(|partition| {
                let mut options = self.clone();
                options.queue = format!("{}.{partition}", self.queue);
                options.queue_options = options
                    .queue_options
                    .argument("x-single-active-consumer", true);
                options.dead_letters = dead_letters.clone();
                options.partitions = None;
                options
            })
            .collect()
    }

    /// A partitioned queue routes through its own consistent-hash exchange.
    pub(super) fn validate_partitions(&self) -> Result<()> {
        let Some(_) = self.partitions else {
            return Ok(());
        };
        match &self.exchange {
            Some(exchange)
                if exchange.kind == ExchangeKind::ConsistentHash && exchange.name == self.queue =>
            {
                Ok(())
            }
            _ => Err(Error::Config(format!(
                "queue {:?} is partitioned: it routes through the consistent-hash exchange of its name; set no other exchange",
                self.queue
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_single_active_queues_sharing_a_dead_letter_queue() {
        let options = RmqOptions::new("ORDERS").partitions(3);
        assert!(options.validate().is_ok());
        let queues = options.consumed_queues();
        let names: Vec<&str> = queues.iter().map(|o| o.queue()).collect();
        assert_eq!(names, ["ORDERS.0", "ORDERS.1", "ORDERS.2"]);
        for queue in &queues {
            assert_eq!(
                queue
                    .queue_options
                    .arguments
                    .get("x-single-active-consumer"),
                Some(&true.into())
            );
            assert_eq!(queue.dead_letters().as_deref(), Some("ORDERS.dlq"));
            assert_eq!(
                queue.exchange.as_ref().map(|e| e.name.as_str()),
                Some("ORDERS")
            );
        }
        let other = options.exchange(Exchange::topic("events"));
        assert!(other.validate().is_err());
    }
}
