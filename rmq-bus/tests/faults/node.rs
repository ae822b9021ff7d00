//! The broker under test, as the fault tests see it: where `RABBIT_MQ_URI` points (the proxy
//! forwards there, and its URIs keep the credentials and vhost), and the whole-broker faults made
//! with `rabbitmqctl` (stopping the application, a memory alarm), each undone by a guard however
//! the test ends.
#![allow(unreachable_pub, dead_code)]

use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, Instant};

/// The first broker of `RABBIT_MQ_URI` (default `amqp://guest:guest@127.0.0.1:5672/%2f`), taken
/// apart so that a proxy can stand in for its host and port.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// `user:password`, or empty.
    userinfo: String,
    pub host: String,
    pub port: u16,
    /// What follows the authority: `/vhost?query`, possibly empty.
    tail: String,
}

impl Endpoint {
    /// The broker of `RABBIT_MQ_URI` (the first, if it lists several).
    pub fn from_env() -> Endpoint {
        let all = crate::common::uri();
        let first = all
            .split(',')
            .map(str::trim)
            .find(|uri| !uri.is_empty())
            .unwrap_or_else(|| panic!("RABBIT_MQ_URI names no broker: {all:?}"));
        Endpoint::parse(first)
    }

    pub fn parse(uri: &str) -> Endpoint {
        let (scheme, rest) = uri
            .split_once("://")
            .unwrap_or_else(|| panic!("RABBIT_MQ_URI {:?} is not a URI", redact(uri)));
        assert_eq!(
            scheme,
            "amqp",
            "the fault tests put a plain TCP proxy in front of the broker, which TLS would refuse \
             (the certificate names the broker, not 127.0.0.1): point RABBIT_MQ_URI at an amqp:// \
             listener, not {:?}",
            redact(uri)
        );
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let (userinfo, host_port) = authority.rsplit_once('@').unwrap_or(("", authority));
        let (host, port) = match host_port.strip_prefix('[') {
            Some(bracketed) => {
                let (host, after) = bracketed
                    .split_once(']')
                    .unwrap_or_else(|| panic!("bad IPv6 host in {:?}", redact(uri)));
                (host, after.strip_prefix(':'))
            }
            None => match host_port.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (host_port, None),
            },
        };
        let port = port.filter(|port| !port.is_empty()).map_or(5672, |port| {
            port.parse()
                .unwrap_or_else(|_| panic!("bad port in {:?}", redact(uri)))
        });
        Endpoint {
            userinfo: userinfo.to_owned(),
            host: if host.is_empty() { "localhost" } else { host }.to_owned(),
            port,
            tail: tail.to_owned(),
        }
    }

    /// `host:port` to open a TCP connection to.
    pub fn upstream(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The same broker URI (credentials, vhost, query) with another host and port: the URI of a
    /// proxy in front of it, or of a node that does not answer.
    pub fn via(&self, host: &str, port: u16) -> String {
        let at = if self.userinfo.is_empty() { "" } else { "@" };
        format!("amqp://{}{at}{host}:{port}{}", self.userinfo, self.tail)
    }

    /// Whether the broker runs on this machine, where `rabbitmqctl` can act on it.
    pub fn is_local(&self) -> bool {
        self.host.eq_ignore_ascii_case("localhost")
            || self
                .host
                .parse::<IpAddr>()
                .is_ok_and(|address| address.is_loopback())
    }
}

/// `uri` with its password replaced by `***`, for messages.
fn redact(uri: &str) -> String {
    match (uri.find("://"), uri.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &uri[scheme_end + 3..at];
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            format!("{}{user}:***{}", &uri[..scheme_end + 3], &uri[at..])
        }
        _ => uri.to_owned(),
    }
}

/// Fails the test, clearly, unless `RABBIT_MQ_URI` points at this machine: `rabbitmqctl` stops
/// and alarms the local node, so against a remote broker the test would fault the wrong one (or
/// none) and prove nothing. A skipped test would look like a passed one: it fails instead.
pub fn require_local_broker(what: &str) {
    let endpoint = Endpoint::from_env();
    assert!(
        endpoint.is_local(),
        "this test {what} with rabbitmqctl, which acts on the local RabbitMQ node only, but \
         RABBIT_MQ_URI points at {} ({}): run the fault tests against a local broker (the \
         supported setup, see README), or leave them out (--skip whole_broker)",
        endpoint.upstream(),
        redact(&crate::common::uri()),
    );
}

/// Runs `rabbitmqctl -q <args>`; its output, or why it failed.
pub fn try_rabbitmqctl(args: &[&str]) -> Result<String, String> {
    let output = Command::new("rabbitmqctl")
        .arg("-q")
        .args(args)
        .output()
        .map_err(|error| {
            format!(
                "cannot run rabbitmqctl ({error}): the whole-broker fault tests need the \
                 RabbitMQ CLI of the local broker on PATH"
            )
        })?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    } else {
        Err(format!(
            "`rabbitmqctl -q {}` failed ({}): {}{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            String::from_utf8_lossy(&output.stdout).trim(),
        ))
    }
}

/// Runs `rabbitmqctl -q <args>` off the async workers; its output. A failure fails the test.
pub async fn rabbitmqctl(args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|arg| (*arg).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        try_rabbitmqctl(&args)
    })
    .await
    .expect("rabbitmqctl task")
    .unwrap_or_else(|error| panic!("{error}"))
}

/// Puts back, in `Drop` too, the undoing of a whole-broker fault: called from a test that fails
/// (is unwinding), it reports rather than panicking again (which would abort the process).
fn undo(what: &str, args: &[&str]) {
    if let Err(error) = try_rabbitmqctl(args) {
        let message = format!(
            "COULD NOT UNDO A FAULT ({what}): {error}. The broker is left faulted: run \
             `rabbitmqctl {}` by hand.",
            args.join(" ")
        );
        if std::thread::panicking() {
            eprintln!("{message}");
        } else {
            panic!("{message}");
        }
    }
}

/// The RabbitMQ application stopped (`rabbitmqctl stop_app`): the node runs, the broker does
/// not, every connection is closed and new ones are refused. Started again on `start`, or on
/// drop if the test failed first.
pub struct StoppedBroker {
    started: bool,
}

impl StoppedBroker {
    pub async fn stop() -> StoppedBroker {
        require_local_broker("stops the broker");
        let stopped = StoppedBroker { started: false };
        rabbitmqctl(&["stop_app"]).await;
        stopped
    }

    /// Starts the application again; returns once it takes connections, with how long that took.
    pub async fn start(mut self) -> Duration {
        let started = Instant::now();
        self.started = true;
        rabbitmqctl(&["start_app"]).await;
        started.elapsed()
    }
}

impl Drop for StoppedBroker {
    fn drop(&mut self) {
        if !self.started {
            undo("start the broker again", &["start_app"]);
        }
    }
}

/// The broker's memory high watermark: read before it is changed, checked when set, and put
/// back to exactly what it was (a fraction, or an absolute amount) however the test ends.
pub struct Watermark {
    /// What `vm_memory_monitor:get_vm_memory_high_watermark()` printed, as rabbitmqctl arguments.
    original: Vec<String>,
    restored: bool,
}

/// A watermark so low that the node is over it at once: a memory alarm.
const ALARMING: &str = "0.0000001";

impl Watermark {
    /// The current watermark, as `set_vm_memory_high_watermark` arguments (`0.4` or
    /// `absolute 1073741824`).
    pub async fn current() -> Vec<String> {
        let printed =
            rabbitmqctl(&["eval", "vm_memory_monitor:get_vm_memory_high_watermark()."]).await;
        parse_watermark(&printed)
    }

    /// Raises a memory alarm, and waits until the node reports it.
    pub async fn alarm() -> Watermark {
        require_local_broker("raises a memory alarm");
        let original = Watermark::current().await;
        assert!(
            !alarms().await.contains("memory"),
            "a memory alarm is on before the test raised one: {}; is a watermark left from a \
             killed test run? (rabbitmqctl set_vm_memory_high_watermark 0.4)",
            alarms().await
        );
        let guard = Watermark {
            original,
            restored: false,
        };
        rabbitmqctl(&["set_vm_memory_high_watermark", ALARMING]).await;
        wait_alarm(true).await;
        guard
    }

    /// The arguments that put the watermark back.
    fn restore_args(&self) -> Vec<&str> {
        let mut args = vec!["set_vm_memory_high_watermark"];
        args.extend(self.original.iter().map(String::as_str));
        args
    }

    /// Puts the original watermark back, checks it is back, and waits until the alarm is gone.
    pub async fn clear(mut self) {
        self.restored = true;
        rabbitmqctl(&self.restore_args()).await;
        assert_eq!(
            Watermark::current().await,
            self.original,
            "the watermark is restored"
        );
        wait_alarm(false).await;
    }
}

impl Drop for Watermark {
    fn drop(&mut self) {
        if !self.restored {
            undo("restore the memory watermark", &self.restore_args());
        }
    }
}

/// `0.4` → `["0.4"]`; `{absolute,1073741824}` → `["absolute", "1073741824"]`.
fn parse_watermark(printed: &str) -> Vec<String> {
    let printed = printed.trim();
    if printed.parse::<f64>().is_ok() {
        return vec![printed.to_owned()];
    }
    let absolute = printed
        .strip_prefix("{absolute,")
        .and_then(|rest| rest.strip_suffix('}'))
        .map(str::trim)
        .filter(|amount| amount.parse::<u64>().is_ok());
    match absolute {
        Some(amount) => vec!["absolute".to_owned(), amount.to_owned()],
        None => {
            panic!("unexpected memory watermark {printed:?}: cannot restore it, so not changing it")
        }
    }
}

/// The node's resource alarms, as rabbitmqctl prints them (`[]` when there are none).
pub async fn alarms() -> String {
    rabbitmqctl(&["eval", "rabbit_alarm:get_alarms()."]).await
}

/// Waits (bounded) until a memory alarm is on, or off.
async fn wait_alarm(on: bool) {
    let started = Instant::now();
    loop {
        let alarms = alarms().await;
        if alarms.contains("memory") == on {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the memory alarm is still {} after 10 s: {alarms}",
            if on { "off" } else { "on" }
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The states (`running`, `blocking`, `blocked`, …) of the broker's connections whose client
/// named them `name` (rmq-bus names its connections `rmq-bus client` and `rmq-bus microservice`).
pub async fn connection_states(name: &str) -> Vec<String> {
    let quoted = format!("\"{name}\"");
    rabbitmqctl(&[
        "--no-table-headers",
        "list_connections",
        "client_properties",
        "state",
    ])
    .await
    .lines()
    .filter(|line| line.contains(&quoted))
    .filter_map(|line| line.rsplit_once('\t'))
    .map(|(_, state)| state.trim().to_owned())
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_are_taken_apart_and_put_back_through_a_proxy() {
        let default = Endpoint::parse("amqp://guest:guest@127.0.0.1:5672/%2f");
        assert_eq!(default.upstream(), "127.0.0.1:5672");
        assert!(default.is_local());
        assert_eq!(
            default.via("127.0.0.1", 4000),
            "amqp://guest:guest@127.0.0.1:4000/%2f"
        );
        let remote = Endpoint::parse("amqp://app:s3cr@t@rabbit-1/prod?heartbeat=10");
        assert_eq!(remote.upstream(), "rabbit-1:5672");
        assert!(!remote.is_local());
        assert_eq!(
            remote.via("127.0.0.1", 1),
            "amqp://app:s3cr@t@127.0.0.1:1/prod?heartbeat=10"
        );
        let v6 = Endpoint::parse("amqp://[::1]:5673");
        assert_eq!(v6.upstream(), "[::1]:5673");
        assert!(v6.is_local());
        assert_eq!(v6.via("127.0.0.1", 9), "amqp://127.0.0.1:9");
        assert_eq!(
            redact("amqp://app:s3cr@t@rabbit-1/prod"),
            "amqp://app:***@rabbit-1/prod"
        );
    }

    #[test]
    fn watermarks_are_read_back_as_arguments() {
        assert_eq!(parse_watermark("0.4\n"), ["0.4"]);
        assert_eq!(
            parse_watermark("{absolute,20000000000}"),
            ["absolute", "20000000000"]
        );
    }
}
