//! How a queue's deliveries are settled: who acks ([`AckMode`]), what a failed handler's message
//! becomes ([`FailurePolicy`]), and delayed retries on the broker ([`RetryPolicy`]).

use std::time::Duration;

/// Who acknowledges deliveries to the broker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum AckMode {
    /// The handler settles through [`RmqContext`](crate::RmqContext) (NestJS `noAck: false`).
    /// A handler that returns `Ok` without settling has its message acked, with a warning; a
    /// failing one has it settled by the [`FailurePolicy`].
    #[default]
    Manual,
    /// rmq-bus acks when the handler returns `Ok`, and applies the [`FailurePolicy`] otherwise.
    AfterHandler,
    /// The broker considers a message settled as soon as it is sent (NestJS `noAck: true`).
    /// At-most-once: a crash mid-handler loses the message, and bad input cannot be dead-lettered.
    NoAck,
}

/// What happens to a message whose handler returned an error or panicked without settling it,
/// when no [`RetryPolicy`] applies.
///
/// Bad input (not JSON, no pattern, unknown pattern, data of the wrong shape, too large) is
/// always dead-lettered at once: retrying cannot fix it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailurePolicy {
    /// Requeue a first delivery once; dead-letter a redelivered one (see
    /// [`RmqOptions::dead_letter_queue`](super::RmqOptions::dead_letter_queue)). A transient failure gets a second chance, a
    /// persistent one cannot loop. For more and delayed attempts, use a [`RetryPolicy`].
    #[default]
    RequeueOnce,
    /// Dead-letter straight away.
    DeadLetter,
}

/// How often, and how long apart, a failed handler is tried again.
///
/// ```
/// use std::time::Duration;
/// use rmq_bus::config::RetryPolicy;
/// // 1 try + 4 retries after 1 s, 2 s, 4 s, 5 s (capped); then the dead-letter queue.
/// let policy = RetryPolicy::exponential(5, Duration::from_secs(1), Duration::from_secs(5));
/// assert_eq!(policy.delay_before(3), Duration::from_secs(2));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    max_attempts: u32,
    initial_delay: Duration,
    max_delay: Duration,
}

impl RetryPolicy {
    /// Up to `max_attempts` deliveries in all, each retry put straight back at the tail of the queue.
    pub fn immediate(max_attempts: u32) -> Self {
        Self {
            max_attempts: max_attempts.max(1),
            initial_delay: Duration::ZERO,
            max_delay: Duration::ZERO,
        }
    }

    /// Up to `max_attempts` deliveries in all, the retries delayed by `initial_delay`, doubling
    /// each time up to `max_delay`.
    pub fn exponential(max_attempts: u32, initial_delay: Duration, max_delay: Duration) -> Self {
        Self {
            max_attempts: max_attempts.max(1),
            initial_delay,
            max_delay: max_delay.max(initial_delay),
        }
    }

    /// Deliveries in all, the first included.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The wait before delivery number `attempt` (2 for the first retry).
    pub fn delay_before(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(2).min(31);
        self.initial_delay
            .saturating_mul(1 << doublings)
            .min(self.max_delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap() {
        let policy =
            RetryPolicy::exponential(6, Duration::from_millis(100), Duration::from_millis(350));
        let delays: Vec<u128> = (2..=6)
            .map(|a| policy.delay_before(a).as_millis())
            .collect();
        assert_eq!(delays, [100, 200, 350, 350, 350]);
        assert_eq!(RetryPolicy::immediate(3).delay_before(2), Duration::ZERO);
        assert_eq!(RetryPolicy::immediate(0).max_attempts(), 1);
    }
}
