//! Retries with their delays kept on the broker, and the headers that count attempts and say why
//! a message was dead-lettered.
//!
//! A failed message is republished (confirmed) to a delay queue `<queue>.retry.<ms>ms` whose TTL
//! dead-letters it back to `<queue>`, then the original is acked: no prefetch slot is held while
//! waiting. The attempt count travels in the `x-rmq-bus-attempt` header, not `x-death` (which
//! RabbitMQ 3.13+ no longer updates for client-published messages).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// Header counting deliveries to the handler: 1 on the first, absent means 1.
pub(crate) const ATTEMPT_HEADER: &str = "x-rmq-bus-attempt";

/// How often, and how long apart, a failed handler is tried again.
///
/// ```
/// use std::time::Duration;
/// use rmq_bus::RetryPolicy;
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

/// The delay queue for `delay` in front of `queue`.
pub(crate) fn delay_queue(queue: &str, delay: Duration) -> String {
    format!("{queue}.retry.{}ms", delay.as_millis())
}

/// The declaration of that delay queue: its TTL dead-letters messages back into `queue`.
pub(crate) fn delay_queue_arguments(queue: &str, delay: Duration) -> BTreeMap<String, Value> {
    BTreeMap::from([
        (
            "x-message-ttl".to_owned(),
            Value::from(delay.as_millis() as u64),
        ),
        ("x-dead-letter-exchange".to_owned(), Value::from("")),
        ("x-dead-letter-routing-key".to_owned(), Value::from(queue)),
    ])
}

/// Now, as an RFC 3339 UTC timestamp (`2026-11-27T12:30:58Z`).
pub(crate) fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3_600,
        rest % 3_600 / 60,
        rest % 60
    )
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

    #[test]
    fn timestamps_are_rfc3339() {
        let now = now_rfc3339();
        assert_eq!(now.len(), 20, "{now}");
        assert!(
            now.starts_with("20") && now.ends_with('Z') && &now[10..11] == "T",
            "{now}"
        );
    }
}
