//! [`RmqOptions::from_env`]: options from `RABBIT_MQ_*` variables, as NestJS services read them.

use super::{RmqOptions, uri};
use crate::error::{Error, Result};

impl RmqOptions {
    /// Options for the service `name` from the process environment, as NestJS's
    /// `RmqModule.register({ name })` does:
    ///
    /// | variable | meaning | default |
    /// |---|---|---|
    /// | `RABBIT_MQ_URI` | broker URI (`amqp://` or `amqps://`), or several comma-separated (cluster nodes) | [`DEFAULT_URI`](super::DEFAULT_URI) |
    /// | `RABBIT_MQ_<NAME>_QUEUE` | the queue | `<NAME>` |
    /// | `RABBIT_MQ_PREFETCH` | prefetch, 1–65535 | [`DEFAULT_PREFETCH`](super::DEFAULT_PREFETCH) |
    /// | `RABBIT_MQ_QUEUE_TYPE` | `classic` or `quorum` | `classic` |
    /// | `RABBIT_MQ_HEARTBEAT` | seconds between AMQP heartbeats; a silent peer is given up after two ([`heartbeat`](Self::heartbeat)) | 10 |
    /// | `RABBIT_MQ_HANDSHAKE_TIMEOUT` | seconds one connection attempt may take before the next URI is tried ([`handshake_timeout`](Self::handshake_timeout)) | 5 |
    /// | `RABBIT_MQ_RECONNECT_TIMEOUT` | seconds an emit waits through an outage, and a microservice tries to connect at start ([`reconnect_timeout`](Self::reconnect_timeout)) | 30 |
    ///
    /// `RmqOptions::from_env("BILLING")` reads `RABBIT_MQ_BILLING_QUEUE`. A set but unusable
    /// value is an [`Error::InvalidEnv`] naming the variable.
    pub fn from_env(name: &str) -> Result<Self> {
        Self::from_lookup(name, |var| std::env::var(var).ok())
    }

    /// [`from_env`](Self::from_env) with another source of variables (a map in tests, a config
    /// file), so nothing has to touch the process environment.
    pub fn from_lookup(name: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let invalid = |var: &str, value: &str, reason: &str| Error::InvalidEnv {
            var: var.to_owned(),
            value: uri::redact(value),
            reason: reason.to_owned(),
        };
        let queue_var = format!("RABBIT_MQ_{}_QUEUE", name.to_uppercase());
        let queue = match lookup(&queue_var) {
            Some(value) if value.trim().is_empty() => {
                return Err(invalid(&queue_var, &value, "a queue name cannot be empty"));
            }
            Some(value) => value,
            None => name.to_owned(),
        };
        if queue.len() > 200 {
            return Err(invalid(
                &queue_var,
                &queue,
                "a queue name has at most 200 bytes (room is kept for retry queue suffixes)",
            ));
        }
        let mut options = Self::new(queue);
        if let Some(uri) = lookup("RABBIT_MQ_URI") {
            uri::check(&uri).map_err(|reason| invalid("RABBIT_MQ_URI", &uri, &reason))?;
            options.uri = uri;
        }
        if let Some(raw) = lookup("RABBIT_MQ_PREFETCH") {
            options.prefetch = match raw.trim().parse::<u16>() {
                Ok(n) if n > 0 => n,
                _ => {
                    return Err(invalid(
                        "RABBIT_MQ_PREFETCH",
                        &raw,
                        "expected a whole number from 1 to 65535",
                    ));
                }
            };
        }
        if let Some(raw) = lookup("RABBIT_MQ_QUEUE_TYPE") {
            options.queue_options = match raw.trim() {
                "classic" | "" => options.queue_options,
                "quorum" => options.queue_options.quorum(),
                _ => {
                    return Err(invalid(
                        "RABBIT_MQ_QUEUE_TYPE",
                        &raw,
                        "expected classic or quorum",
                    ));
                }
            };
        }
        if let Some(raw) = lookup("RABBIT_MQ_RECONNECT_TIMEOUT") {
            options.reconnect_timeout = seconds(&raw)
                .ok_or_else(|| invalid("RABBIT_MQ_RECONNECT_TIMEOUT", &raw, SECONDS))?;
        }
        if let Some(raw) = lookup("RABBIT_MQ_HANDSHAKE_TIMEOUT") {
            options.handshake_timeout = seconds(&raw)
                .filter(|timeout| !timeout.is_zero())
                .ok_or_else(|| invalid("RABBIT_MQ_HANDSHAKE_TIMEOUT", &raw, SECONDS))?;
        }
        if let Some(raw) = lookup("RABBIT_MQ_HEARTBEAT") {
            options.heartbeat = match raw.trim().parse::<u16>() {
                Ok(secs) => std::time::Duration::from_secs(u64::from(secs)),
                Err(_) => {
                    return Err(invalid(
                        "RABBIT_MQ_HEARTBEAT",
                        &raw,
                        "expected whole seconds from 0 (the broker's choice) to 65535, such as 10",
                    ));
                }
            };
        }
        Ok(options)
    }
}

const SECONDS: &str = "expected a number of seconds, such as 30 or 0.5";

/// A positive number of seconds, whole or not.
fn seconds(raw: &str) -> Option<std::time::Duration> {
    raw.trim()
        .parse::<f64>()
        .ok()
        .and_then(|seconds| std::time::Duration::try_from_secs_f64(seconds).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AckMode, DEFAULT_PREFETCH, DEFAULT_URI};

    fn lookup<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn env_defaults_follow_the_service_name() -> Result<()> {
        let options = RmqOptions::from_lookup("billing", lookup(&[]))?;
        assert_eq!(options.queue(), "billing");
        assert_eq!(options.uri, DEFAULT_URI);
        assert_eq!(options.prefetch, DEFAULT_PREFETCH);
        assert_eq!(options.heartbeat, crate::config::DEFAULT_HEARTBEAT);
        assert_eq!(
            options.handshake_timeout,
            crate::config::DEFAULT_HANDSHAKE_TIMEOUT
        );
        assert_eq!(options.ack_mode, AckMode::Manual);
        assert!(options.persistent);
        assert!(options.queue_options.durable);
        Ok(())
    }

    #[test]
    fn env_values_are_read() -> Result<()> {
        let vars = [
            ("RABBIT_MQ_BILLING_QUEUE", "BILLING_Q"),
            ("RABBIT_MQ_URI", "amqp://u:p@broker:5673/vh"),
            ("RABBIT_MQ_PREFETCH", "7"),
            ("RABBIT_MQ_RECONNECT_TIMEOUT", "2.5"),
            ("RABBIT_MQ_HEARTBEAT", "4"),
            ("RABBIT_MQ_HANDSHAKE_TIMEOUT", "1.5"),
        ];
        let options = RmqOptions::from_lookup("BILLING", lookup(&vars))?;
        assert_eq!(options.queue(), "BILLING_Q");
        assert_eq!(options.uri, "amqp://u:p@broker:5673/vh");
        assert_eq!(options.prefetch, 7);
        assert_eq!(
            options.reconnect_timeout,
            std::time::Duration::from_millis(2500)
        );
        assert_eq!(options.heartbeat, std::time::Duration::from_secs(4));
        assert_eq!(
            options.handshake_timeout,
            std::time::Duration::from_millis(1500)
        );
        Ok(())
    }

    #[test]
    fn bad_env_values_name_the_variable() {
        let cases = [
            ("RABBIT_MQ_PREFETCH", "lots", "RABBIT_MQ_PREFETCH=\"lots\""),
            ("RABBIT_MQ_PREFETCH", "0", "RABBIT_MQ_PREFETCH=\"0\""),
            ("RABBIT_MQ_URI", "http://x", "RABBIT_MQ_URI=\"http://x\""),
            ("RABBIT_MQ_BILLING_QUEUE", " ", "RABBIT_MQ_BILLING_QUEUE"),
            (
                "RABBIT_MQ_RECONNECT_TIMEOUT",
                "soon",
                "RABBIT_MQ_RECONNECT_TIMEOUT=\"soon\"",
            ),
            (
                "RABBIT_MQ_RECONNECT_TIMEOUT",
                "-1",
                "RABBIT_MQ_RECONNECT_TIMEOUT=\"-1\"",
            ),
            ("RABBIT_MQ_HEARTBEAT", "2.5", "RABBIT_MQ_HEARTBEAT=\"2.5\""),
            (
                "RABBIT_MQ_HEARTBEAT",
                "70000",
                "RABBIT_MQ_HEARTBEAT=\"70000\"",
            ),
            (
                "RABBIT_MQ_HANDSHAKE_TIMEOUT",
                "0",
                "RABBIT_MQ_HANDSHAKE_TIMEOUT=\"0\"",
            ),
        ];
        for (var, value, expected) in cases {
            let vars = [(var, value)];
            match RmqOptions::from_lookup("BILLING", lookup(&vars)) {
                Err(error @ Error::InvalidEnv { .. }) => {
                    assert!(error.to_string().contains(expected), "{error}")
                }
                other => panic!("{var}={value}: expected InvalidEnv, got {other:?}"),
            }
        }
    }

    #[test]
    fn several_uris_and_queue_types() -> Result<()> {
        let vars = [
            (
                "RABBIT_MQ_URI",
                "amqp://a:pw1@n1:5672/%2f, amqp://a:pw2@n2:5672/%2f",
            ),
            ("RABBIT_MQ_QUEUE_TYPE", "quorum"),
        ];
        let options = RmqOptions::from_lookup("X", lookup(&vars))?;
        let uris: Vec<&str> = options.broker_uris().collect();
        assert_eq!(
            uris,
            ["amqp://a:pw1@n1:5672/%2f", "amqp://a:pw2@n2:5672/%2f"]
        );
        assert_eq!(
            options.queue_options.arguments.get("x-queue-type"),
            Some(&serde_json::json!("quorum"))
        );
        let debug = format!("{options:?}");
        assert!(!debug.contains("pw1") && !debug.contains("pw2"), "{debug}");
        let bad = [("RABBIT_MQ_QUEUE_TYPE", "stream")];
        assert!(matches!(
            RmqOptions::from_lookup("X", lookup(&bad)),
            Err(Error::InvalidEnv { .. })
        ));
        Ok(())
    }
    #[test]
    fn passwords_never_show() {
        assert_eq!(
            uri::redact("amqp://guest:secret@h:5672/%2f"),
            "amqp://guest:***@h:5672/%2f"
        );
        assert_eq!(uri::redact("amqps://h:5671"), "amqps://h:5671");
        let vars = [("RABBIT_MQ_URI", "ftp://u:hunter2@h")];
        let error = RmqOptions::from_lookup("X", lookup(&vars))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            !error.contains("hunter2") && error.contains("***"),
            "{error}"
        );
        let debug = format!("{:?}", RmqOptions::new("q").uri("amqp://a:hunter2@h/%2f"));
        assert!(!debug.contains("hunter2"), "{debug}");
    }
}
