//! The `orders` and `billing` examples observed from outside: their `/metrics` after a few
//! orders, read by the Prometheus parser, and their `/health` through a broker stop.
#![allow(dead_code, unreachable_pub)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::prometheus::{self, Sample, value};
use crate::common;
use crate::faults::lock::FaultLock;
use crate::faults::node::{StoppedBroker, require_local_broker};

/// Orders placed.
const N: usize = 5;

/// An example running in a process of its own, killed on drop (its log printed if the test
/// failed).
struct Running {
    name: &'static str,
    child: Child,
    log: PathBuf,
    /// Its own SQLite database (the examples keep orders, bills, outbox and inbox there).
    database: PathBuf,
}

impl Running {
    fn start(name: &'static str, env: &[(&str, String)]) -> Running {
        let executable = example(name);
        let log = std::env::temp_dir().join(format!("{}.log", common::unique(name)));
        let file = std::fs::File::create(&log).expect("log file");
        let database = std::env::temp_dir().join(format!("{}.sqlite", common::unique(name)));
        let child = Command::new(&executable)
            .env(
                "DATABASE_URL",
                format!("sqlite://{}?mode=rwc", database.display()),
            )
            .envs(env.iter().cloned())
            .env("RUST_LOG", "info,lapin=error")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", executable.display()));
        Running {
            name,
            child,
            log,
            database,
        }
    }

    /// Asks it to stop (SIGTERM) and waits for a clean exit.
    fn stop(mut self) {
        let pid = self.child.id().to_string();
        let signalled = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(signalled.is_ok_and(|status| status.success()), "kill {pid}");
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "{} did not stop",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(status.success(), "{} exited with {status}", self.name);
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("----- {} -----\n{log}", self.name);
        }
        let _ = std::fs::remove_file(&self.log);
        for suffix in ["", "-wal", "-shm"] {
            let mut file = self.database.clone().into_os_string();
            file.push(suffix);
            let _ = std::fs::remove_file(file);
        }
    }
}

/// Builds example `name` and returns its executable, as cargo reports it.
fn example(name: &str) -> PathBuf {
    let output = Command::new(env!("CARGO"))
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .args(["build", "-p", "rmq-bus", "--example", name])
        .arg("--message-format=json-render-diagnostics")
        .output()
        .expect("cargo build");
    assert!(
        output.status.success(),
        "cargo build --example {name} failed"
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|message| message["target"]["name"] == name)
        .find_map(|message| message["executable"].as_str().map(PathBuf::from))
        .unwrap_or_else(|| panic!("no executable for example {name}"))
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// One HTTP/1.1 request on a fresh connection: the status and the body.
fn request(
    port: u16,
    method: &str,
    path: &str,
    json: Option<&Value>,
) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let body = json.map(Value::to_string).unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_owned()))
}

/// Waits (at most `within`) until `path` on `port` answers `status`; the last body.
fn until_status(port: u16, path: &str, status: u16, within: Duration) -> String {
    let started = Instant::now();
    loop {
        let answer = request(port, "GET", path, None);
        if let Ok((seen, body)) = &answer
            && *seen == status
        {
            return body.clone();
        }
        assert!(
            started.elapsed() < within,
            "GET :{port}{path} did not answer {status} within {within:?}: {answer:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn scrape(port: u16) -> Vec<Sample> {
    let exposition = until_status(port, "/metrics", 200, Duration::from_secs(5));
    prometheus::parse(&exposition)
}

const SYSTEM: (&str, &str) = ("messaging_system", "rabbitmq");

fn sent_to(queue: &str) -> [(&str, &str); 5] {
    [
        SYSTEM,
        ("messaging_operation_name", "send"),
        ("messaging_operation_type", "send"),
        ("messaging_destination_name", queue),
        ("messaging_rabbitmq_destination_routing_key", queue),
    ]
}

fn processed<'a>(queue: &'a str, pattern: &'a str) -> [(&'a str, &'a str); 6] {
    [
        SYSTEM,
        ("messaging_operation_name", "process"),
        ("messaging_operation_type", "process"),
        ("messaging_destination_name", queue),
        ("messaging_rabbitmq_destination_routing_key", queue),
        ("rmq_bus_pattern", pattern),
    ]
}

/// The whole scenario: N orders, both `/metrics`, then `/health` through a broker stop.
pub fn metrics_and_health(buckets: &[f64]) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let _lock = runtime.block_on(FaultLock::acquire());
    require_local_broker("stops the broker");
    let billing_queue = common::unique("obs-billing");
    let orders_queue = common::unique("obs-orders");
    let (port, metrics_port) = (free_port(), free_port());
    let env = [
        ("RABBIT_MQ_URI", common::uri()),
        ("RABBIT_MQ_BILLING_QUEUE", billing_queue.clone()),
        ("RABBIT_MQ_ORDERS_QUEUE", orders_queue.clone()),
        ("PORT", port.to_string()),
        ("METRICS_PORT", metrics_port.to_string()),
    ];
    let billing = Running::start("billing", &env);
    let orders = Running::start("orders", &env);
    let startup = Duration::from_secs(60);
    until_status(metrics_port, "/health", 200, startup);
    until_status(port, "/health", 200, startup);

    let ids: Vec<String> = (0..N)
        .map(|n| {
            let order =
                json!({"productName": format!("book {n}"), "price": 10 + n, "buyer": "ada"});
            let (status, body) = request(port, "POST", "/orders", Some(&order)).expect("POST");
            assert_eq!(status, 201, "{body}");
            let created: Value = serde_json::from_str(&body).expect("JSON");
            created["orderId"].as_str().expect("orderId").to_owned()
        })
        .collect();
    for id in &ids {
        let started = Instant::now();
        while !until_status(port, &format!("/orders/{id}"), 200, startup).contains("PROCESSED") {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "order {id} not processed"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    let n = N as f64;
    let at_orders = scrape(port);
    assert_eq!(
        value(
            &at_orders,
            "messaging_client_sent_messages_total",
            &sent_to(&billing_queue)
        ),
        n
    );
    let processed_here = processed(&orders_queue, "order_processed");
    assert_eq!(
        value(
            &at_orders,
            "messaging_client_consumed_messages_total",
            &processed_here
        ),
        n
    );
    assert_eq!(
        value(
            &at_orders,
            "messaging_process_duration_seconds_count",
            &processed_here
        ),
        n
    );
    let at_billing = scrape(metrics_port);
    assert_eq!(
        value(
            &at_billing,
            "messaging_client_sent_messages_total",
            &sent_to(&orders_queue)
        ),
        n
    );
    let billed = processed(&billing_queue, "order_created");
    assert_eq!(
        value(
            &at_billing,
            "messaging_client_consumed_messages_total",
            &billed
        ),
        n
    );
    assert_eq!(
        value(
            &at_billing,
            "messaging_process_duration_seconds_count",
            &billed
        ),
        n
    );
    let acked = [
        SYSTEM,
        ("messaging_destination_name", billing_queue.as_str()),
        ("rmq_bus_settlement", "ack"),
    ];
    assert_eq!(
        value(&at_billing, "rmq_bus_consumer_settlements_total", &acked),
        n
    );
    // The durations are histograms with OpenTelemetry's buckets, the last one +Inf.
    let buckets_seen = at_billing
        .iter()
        .filter(|sample| sample.name == "messaging_process_duration_seconds_bucket")
        .filter(|sample| {
            sample.labels.get("rmq_bus_pattern").map(String::as_str) == Some("order_created")
        })
        .count();
    assert_eq!(
        buckets_seen,
        buckets.len() + 1,
        "one sample per bucket and +Inf"
    );
    assert!(
        at_billing
            .iter()
            .all(|sample| sample.kind != "untyped" && sample.kind != "unknown")
    );

    // The broker stops: both services turn unready; it starts: both are ready again.
    let stopped = runtime.block_on(StoppedBroker::stop());
    let outage = Duration::from_secs(30);
    let down = until_status(metrics_port, "/health", 503, outage);
    assert!(down.contains("\"unavailable\""), "{down}");
    until_status(port, "/health", 503, outage);
    runtime.block_on(stopped.start());
    let up = until_status(metrics_port, "/health", 200, Duration::from_secs(60));
    assert!(up.contains("\"consuming\":true"), "{up}");
    until_status(port, "/health", 200, Duration::from_secs(60));
    let at_billing = scrape(metrics_port);
    assert_eq!(
        value(
            &at_billing,
            "rmq_bus_connection_reconnects_total",
            &[SYSTEM, ("rmq_bus_connection_role", "microservice")]
        ),
        1.0
    );

    let mut seen = scrape(port);
    seen.extend(at_billing);
    dashboard_queries_name_what_is_exported(&seen);

    orders.stop();
    billing.stop();
    runtime.block_on(async {
        let broker = common::Broker::connect().await;
        broker.forget_later(&billing_queue);
        broker.forget_later(&orders_queue);
        broker.cleanup().await;
    });
}

/// Every metric the Grafana dashboard (`examples/grafana/rmq-bus.json`) queries is one the
/// services export, so that the dashboard cannot drift from the names.
fn dashboard_queries_name_what_is_exported(samples: &[Sample]) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/grafana/rmq-bus.json"
    );
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("the dashboard")).expect("JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10, "{} panels", panels.len());
    for panel in panels {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            let names = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|word| word.starts_with("messaging_") || word.starts_with("rmq_bus_"))
                .filter(|word| !word.ends_with("_name") && !word.ends_with("_type"))
                .filter(|word| {
                    !["rmq_bus_pattern", "rmq_bus_settlement", "rmq_bus_reason"].contains(word)
                        && !word.starts_with("rmq_bus_connection_role")
                        && !word.starts_with("messaging_rabbitmq_destination")
                });
            for name in names {
                assert!(
                    samples.iter().any(|sample| sample.name == name),
                    "panel {:?} queries {name}, which no service exports",
                    panel["title"]
                );
            }
        }
    }
}
