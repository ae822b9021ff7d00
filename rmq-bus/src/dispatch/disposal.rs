//! Carrying out what the dispatcher decided for a delivery its handler did not settle: a retry,
//! republished to a delay queue `<queue>.retry.<ms>ms` whose TTL sends it back, or a dead letter,
//! republished to the dead-letter queue with headers saying why. Both are confirmed before the
//! original is acked, so no prefetch slot is held while waiting and nothing is lost.
//!
//! The attempt count travels in the `x-rmq-bus-attempt` header, not `x-death` (which RabbitMQ
//! 3.13+ no longer updates for client-published messages).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::Disposal;
use crate::config::{AckMode, FailurePolicy, RetryPolicy, RmqOptions};
use crate::context::RmqContext;
use crate::delivery::{Outcome, Settlement};
use crate::transport::{Publisher, Target};

/// Header counting deliveries to the handler: 1 on the first, absent means 1.
pub(super) const ATTEMPT_HEADER: &str = "x-rmq-bus-attempt";

/// Header marking a message parked behind a stuck key (see `lanes`).
pub(super) const PARKED_HEADER: &str = "x-rmq-bus-parked";

/// How one queue's deliveries are disposed of; from its [`RmqOptions`](crate::RmqOptions).
#[derive(Clone, Debug)]
pub(super) struct Policy {
    pub(super) ack_mode: AckMode,
    pub(super) on_failure: FailurePolicy,
    pub(super) max_bytes: usize,
    pub(super) retry: Option<RetryPolicy>,
    pub(super) dead_letter_queue: Option<String>,
}

impl Policy {
    /// The policy of the queue of `options`.
    pub(super) fn of(options: &RmqOptions) -> Self {
        Policy {
            ack_mode: options.ack_mode,
            on_failure: options.failure_policy,
            max_bytes: options.max_message_bytes,
            retry: options.retry.clone(),
            dead_letter_queue: options.dead_letters(),
        }
    }
}

/// Carries out a disposal: republishes for a retry or into the dead-letter queue (confirmed),
/// and returns how the original delivery is then settled, and why. Republishing failed: requeue,
/// so nothing is lost.
pub(super) async fn dispose(
    publisher: &dyn Publisher,
    policy: &Policy,
    ctx: &RmqContext,
    disposal: Disposal,
) -> (Settlement, Outcome) {
    let (info, pattern, body) = (ctx.delivery(), ctx.pattern(), ctx.body());
    let auto_acked = policy.ack_mode == AckMode::NoAck;
    let (target, properties, outcome) = match disposal {
        Disposal::Settle(settlement) => return (settlement, Outcome::of(settlement)),
        Disposal::Retry { attempt, delay } => {
            let mut properties = info.properties.clone();
            properties
                .headers
                .insert(ATTEMPT_HEADER.to_owned(), attempt.into());
            let target = if delay.is_zero() {
                Target {
                    queue: info.queue.clone(),
                    declare: None,
                }
            } else {
                Target {
                    queue: delay_queue(&info.queue, delay),
                    declare: Some(delay_queue_arguments(&info.queue, delay)),
                }
            };
            tracing::info!(attempt, ?delay, "scheduling a retry");
            (target, properties, Outcome::Retried { attempt, delay })
        }
        Disposal::Park { delay } => {
            let mut properties = info.properties.clone();
            properties
                .headers
                .insert(PARKED_HEADER.to_owned(), true.into());
            let target = Target {
                queue: delay_queue(&info.queue, delay),
                declare: Some(delay_queue_arguments(&info.queue, delay)),
            };
            tracing::info!(?delay, "its key is stuck: parking it");
            (target, properties, Outcome::Parked { delay })
        }
        Disposal::DeadLetter { reason, attempts } => {
            let Some(queue) = policy.dead_letter_queue.clone() else {
                tracing::warn!(%reason, "rejecting without requeue (dead-lettered if the queue has a DLX)");
                let outcome = Outcome::Rejected {
                    reason: Some(reason),
                };
                return (Settlement::Reject, outcome);
            };
            let mut properties = info.properties.clone();
            let headers = &mut properties.headers;
            // A message moved back from the dead-letter queue starts its retries afresh.
            headers.remove(ATTEMPT_HEADER);
            headers.insert("x-rmq-bus-error".into(), reason.as_str().into());
            headers.insert("x-rmq-bus-queue".into(), info.queue.as_str().into());
            headers.insert("x-rmq-bus-pattern".into(), pattern.into());
            headers.insert("x-rmq-bus-attempts".into(), attempts.into());
            headers.insert("x-rmq-bus-failed-at".into(), now_rfc3339().into());
            tracing::warn!(%reason, dead_letter_queue = %queue, "dead-lettering");
            let target = Target {
                queue: queue.clone(),
                declare: Some(BTreeMap::new()),
            };
            (target, properties, Outcome::DeadLettered { queue, reason })
        }
    };
    if auto_acked {
        tracing::warn!(
            "AckMode::NoAck: the broker already took the message; it is not republished"
        );
        return (Settlement::Ack, Outcome::Acked);
    }
    match publisher.republish(target, body, &properties).await {
        Ok(()) => {
            tracing::debug!(?outcome, "republished");
            (Settlement::Ack, outcome)
        }
        Err(error) => {
            tracing::error!(%error, "could not republish; requeueing the message so that it is not lost");
            (Settlement::Nack { requeue: true }, Outcome::Requeued)
        }
    }
}

/// The delay queue for `delay` in front of `queue`.
fn delay_queue(queue: &str, delay: Duration) -> String {
    format!("{queue}.retry.{}ms", delay.as_millis())
}

/// The declaration of that delay queue: its TTL dead-letters messages back into `queue`.
fn delay_queue_arguments(queue: &str, delay: Duration) -> BTreeMap<String, Value> {
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
fn now_rfc3339() -> String {
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
    fn timestamps_are_rfc3339() {
        let now = now_rfc3339();
        assert_eq!(now.len(), 20, "{now}");
        assert!(
            now.starts_with("20") && now.ends_with('Z') && &now[10..11] == "T",
            "{now}"
        );
    }

    #[test]
    fn delay_queues_send_their_messages_back() {
        let delay = Duration::from_millis(1500);
        assert_eq!(delay_queue("BILLING", delay), "BILLING.retry.1500ms");
        let arguments = delay_queue_arguments("BILLING", delay);
        assert_eq!(arguments.get("x-message-ttl"), Some(&Value::from(1500)));
        assert_eq!(
            arguments.get("x-dead-letter-routing-key"),
            Some(&Value::from("BILLING"))
        );
    }
}
