//! End to end: builds the `orders` and `billing` examples, runs them against the RabbitMQ on
//! `RABBIT_MQ_URI` (default: the local broker, guest/guest) with queues of their own, and drives
//! the orders HTTP API: orders get billed or canceled as fraud, bad input is refused with JSON
//! errors, an order whose event the broker refuses is still accepted and kept `PENDING` (the outbox), and
//! both processes stop cleanly on SIGTERM.

// clippy.toml allows these in `#[test]` functions only; the helpers here are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lapin::options::QueueDeleteOptions;
use lapin::{Connection, ConnectionProperties};
use serde_json::{Value, json};

/// How long the HTTP server may take to answer after the process starts.
const STARTUP: Duration = Duration::from_secs(30);
/// How long an order may take to leave PENDING.
const PROCESSING: Duration = Duration::from_secs(20);
/// How long a process may take to exit after SIGTERM.
const SHUTDOWN: Duration = Duration::from_secs(10);

fn broker_uri() -> String {
    std::env::var("RABBIT_MQ_URI").unwrap_or_else(|_| rmq_bus::config::DEFAULT_URI.to_owned())
}

/// Builds both examples (debug profile) and returns their executables, as cargo reports them
/// (so any target directory setting is honoured).
fn build_examples() -> (PathBuf, PathBuf, PathBuf, PathBuf) {
    let workspace = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let output = Command::new(env!("CARGO"))
        .current_dir(workspace)
        .args([
            "build",
            "-p",
            "rmq-bus",
            "--example",
            "orders",
            "--example",
            "billing",
            "--example",
            "shop",
            "--example",
            "bench",
        ])
        .arg("--message-format=json-render-diagnostics")
        .output()
        .expect("run cargo build");
    assert!(
        output.status.success(),
        "cargo build of the examples failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let executable = |name: &str| -> PathBuf {
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|message| message["reason"] == "compiler-artifact")
            .filter(|message| message["target"]["name"] == name)
            .find_map(|message| message["executable"].as_str().map(PathBuf::from))
            .unwrap_or_else(|| panic!("cargo build reported no executable for example {name}"))
    };
    (
        executable("orders"),
        executable("billing"),
        executable("shop"),
        executable("bench"),
    )
}

/// A running example. Dropping it kills the process if it still runs, and prints its log if the
/// test is failing.
struct Service {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Service {
    fn spawn(name: &'static str, executable: &Path, env: &[(&str, String)], logs: &Path) -> Self {
        let log = logs.join(format!("{name}.log"));
        let file = File::create(&log).expect("create log file");
        let child = Command::new(executable)
            .envs(env.iter().cloned())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("clone log file"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", executable.display()));
        Self { name, child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics, with the log, if the process has exited.
    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("poll child") {
            panic!(
                "{} exited early with {status}; log:\n{}",
                self.name,
                self.log()
            );
        }
    }

    fn sigterm(&self) {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {} failed", self.name);
    }

    /// Waits for the process to exit, failing after `timeout`.
    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("poll child") {
                return status;
            }
            assert!(
                start.elapsed() < timeout,
                "{} still running {timeout:?} after SIGTERM; log:\n{}",
                self.name,
                self.log()
            );
            sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("----- {} log -----\n{}", self.name, self.log());
        }
    }
}

/// One HTTP/1.1 exchange on a fresh connection: the status and the body.
fn http(
    port: u16,
    method: &str,
    path: &str,
    body: Option<(&str, &str)>,
) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    let (content_type, content) = body.unwrap_or(("", ""));
    if body.is_some() {
        request += &format!(
            "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
            content.len()
        );
    }
    request += "\r\n";
    request += content;
    stream.write_all(request.as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no end of headers in {response:?}")))?;
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "chunked responses are not expected: {head}"
    );
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line in {head:?}")))?;
    Ok((status, body.to_owned()))
}

/// A request whose answer must be JSON.
fn http_json(port: u16, method: &str, path: &str, body: Option<(&str, &str)>) -> (u16, Value) {
    let (status, text) =
        http(port, method, path, body).unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let json = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!("{method} {path} answered {status} with non-JSON {text:?}: {e}")
    });
    (status, json)
}

fn post_order(port: u16, order: &Value) -> Value {
    let body = order.to_string();
    let (status, created) = http_json(port, "POST", "/orders", Some(("application/json", &body)));
    assert_eq!(status, 201, "POST /orders {body}: {created}");
    assert_eq!(created["status"], "PENDING", "{created}");
    assert_eq!(created["productName"], order["productName"], "{created}");
    assert_eq!(created["buyer"], order["buyer"], "{created}");
    assert_eq!(
        created["price"].as_f64(),
        order["price"].as_f64(),
        "{created}"
    );
    let id = created["orderId"].as_str().unwrap_or_default();
    assert!(!id.is_empty(), "no orderId in {created}");
    created
}

/// Polls the order until its status is `expected`.
fn await_status(port: u16, order_id: &str, expected: &str) {
    let start = Instant::now();
    let path = format!("/orders/{order_id}");
    loop {
        let (status, order) = http_json(port, "GET", &path, None);
        assert_eq!(status, 200, "GET {path}: {order}");
        if order["status"] == expected {
            return;
        }
        assert!(
            start.elapsed() < PROCESSING,
            "order {order_id} not {expected} after {PROCESSING:?}: {order}"
        );
        sleep(Duration::from_millis(100));
    }
}

/// Starts `examples` on the test's queues and a free HTTP port, and waits until orders answers
/// there: the set-up every scenario shares. Returns the port and the running services.
fn start_services(
    examples: &[(&'static str, &Path)],
    billing_queue: &str,
    orders_queue: &str,
    logs: &Path,
) -> (u16, Vec<Service>) {
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .expect("find a free port")
        .port();
    let env = [
        ("RABBIT_MQ_URI", broker_uri()),
        ("RABBIT_MQ_BILLING_QUEUE", billing_queue.to_owned()),
        ("RABBIT_MQ_ORDERS_QUEUE", orders_queue.to_owned()),
        ("PORT", port.to_string()),
    ];
    let mut services: Vec<Service> = examples
        .iter()
        .map(|(name, executable)| {
            // Each service's own database, a SQLite file removed with the logs.
            let database = format!("sqlite://{}/{name}.sqlite?mode=rwc", logs.display());
            let mut env = env.to_vec();
            env.push(("DATABASE_URL", database));
            Service::spawn(name, executable, &env, logs)
        })
        .collect();
    let start = Instant::now();
    while !matches!(http(port, "GET", "/orders", None), Ok((200, _))) {
        for service in &mut services {
            service.assert_running();
        }
        assert!(
            start.elapsed() < STARTUP,
            "orders did not answer on port {port} within {STARTUP:?}"
        );
        sleep(Duration::from_millis(100));
    }
    (port, services)
}

/// Sends SIGTERM to every service, then checks that each exits cleanly: how every scenario ends.
fn stop_cleanly(mut services: Vec<Service>) {
    for service in &services {
        service.sigterm();
    }
    for service in &mut services {
        let status = service.wait_exit(SHUTDOWN);
        assert!(
            status.success(),
            "{} exited with {status} after SIGTERM; log:\n{}",
            service.name,
            service.log()
        );
    }
}

fn scenario(
    orders_exe: &Path,
    billing_exe: &Path,
    billing_queue: &str,
    orders_queue: &str,
    logs: &Path,
) {
    let (port, services) = start_services(
        &[("orders", orders_exe), ("billing", billing_exe)],
        billing_queue,
        orders_queue,
        logs,
    );

    // 1. An ordinary order is billed.
    let book = post_order(
        port,
        &json!({"productName": "book", "price": 100, "buyer": "ada"}),
    );
    let book_id = book["orderId"].as_str().unwrap_or_default();
    // 2. An order over the fraud limit is canceled.
    let car = post_order(
        port,
        &json!({"productName": "car", "price": 50000, "buyer": "eve"}),
    );
    let car_id = car["orderId"].as_str().unwrap_or_default();
    assert_ne!(book_id, car_id, "order ids must be unique");
    await_status(port, book_id, "PROCESSED");
    await_status(port, car_id, "CANCELED_FRAUD");
    let (status, list) = http_json(port, "GET", "/orders", None);
    assert_eq!(status, 200, "{list}");
    let ids: Vec<&str> = list
        .as_array()
        .unwrap_or_else(|| panic!("GET /orders is not a list: {list}"))
        .iter()
        .filter_map(|order| order["orderId"].as_str())
        .collect();
    assert!(ids.contains(&book_id) && ids.contains(&car_id), "{list}");

    // 3. Bad bodies are refused with a JSON error.
    let bad = [
        ("application/json", r#"{"productName": 3}"#),
        ("application/json", "not json"),
        (
            "application/json",
            r#"{"productName": "pen", "buyer": "bob"}"#,
        ),
        (
            "application/json",
            r#"{"productName": "", "price": 1, "buyer": "bob"}"#,
        ),
        (
            "application/json",
            r#"{"productName": "pen", "price": -1, "buyer": "bob"}"#,
        ),
        (
            "text/plain",
            r#"{"productName": "pen", "price": 1, "buyer": "bob"}"#,
        ),
    ];
    for (content_type, body) in bad {
        let (status, answer) = http_json(port, "POST", "/orders", Some((content_type, body)));
        assert!(
            (400..500).contains(&status),
            "{body} ({content_type}) answered {status}: {answer}"
        );
        assert!(answer["error"].is_string(), "{body}: no error in {answer}");
    }

    // 4. An unknown order is a JSON 404.
    let (status, answer) = http_json(port, "GET", "/orders/no-such-order", None);
    assert_eq!(status, 404, "{answer}");
    assert!(answer["error"].is_string(), "{answer}");

    // 5. Other services ask the orders service over request/reply.
    get_order_over_the_bus(orders_queue, book_id);

    // Both stop cleanly on SIGTERM.
    stop_cleanly(services);
}

/// `send("get_order")` to the orders service: the order, or NestJS's error shape.
fn get_order_over_the_bus(orders_queue: &str, order_id: &str) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("build a runtime");
    runtime.block_on(async {
        let client =
            rmq_bus::ClientProxy::new(rmq_bus::RmqOptions::new(orders_queue).uri(broker_uri()));
        let order: Value = client
            .send("get_order", &json!({"orderId": order_id}))
            .await
            .expect("get_order answered");
        assert_eq!(order["orderId"], order_id, "{order}");
        assert_eq!(order["status"], "PROCESSED", "{order}");
        match client
            .send::<_, Value>("get_order", &json!({"orderId": "nope"}))
            .await
        {
            Err(rmq_bus::Error::Remote { error, .. }) => assert_eq!(
                error.payload(),
                &json!({"status": "error", "message": "order not found"})
            ),
            other => panic!("expected the order-not-found error, got {other:?}"),
        }
        client.close().await;
    });
}

/// A suffix no other test run uses (the process id and the time), for queue and directory names.
fn unique_suffix() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos()
    )
}

/// Runs `scenario` with a fresh log directory (`logs`), removed again whatever happened; returns
/// the scenario's outcome rather than resuming a panic, so that the test can clean up first.
fn run_with_logs(logs: &Path, scenario: impl FnOnce(&Path)) -> std::thread::Result<()> {
    std::fs::create_dir_all(logs).expect("create log directory");
    let outcome = catch_unwind(AssertUnwindSafe(|| scenario(logs)));
    let _ = std::fs::remove_dir_all(logs);
    outcome
}

/// Deletes the test's queues and their dead-letter queues, then resumes the scenario's panic, if
/// any: the broker is cleaned up whatever happened. Returns whether the queues were deleted.
fn delete_queues_then_resume(
    queues: [&str; 2],
    outcome: std::thread::Result<()>,
) -> lapin::Result<()> {
    let dead_letter_queues = queues.map(|queue| format!("{queue}.dlq"));
    let deleted = delete_queues(&[
        queues[0],
        queues[1],
        &dead_letter_queues[0],
        &dead_letter_queues[1],
    ]);
    if let Err(panic) = outcome {
        resume_unwind(panic);
    }
    deleted
}

fn delete_queues(queues: &[&str]) -> lapin::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("build a runtime");
    runtime.block_on(async {
        let connection =
            Connection::connect(&broker_uri(), ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        for queue in queues {
            channel
                .queue_delete((*queue).into(), QueueDeleteOptions::default())
                .await?;
        }
        connection.close(200, "e2e test done".into()).await
    })
}

#[test]
fn orders_and_billing_examples_work_end_to_end() {
    let (orders_exe, billing_exe, _, _) = build_examples();
    let unique = unique_suffix();
    let billing_queue = format!("e2e-billing-{unique}");
    let orders_queue = format!("e2e-orders-{unique}");
    // The services' logs, printed if the test fails.
    let logs = std::env::temp_dir().join(format!("rmq-bus-e2e-{unique}"));
    let outcome = run_with_logs(&logs, |logs| {
        scenario(
            &orders_exe,
            &billing_exe,
            &billing_queue,
            &orders_queue,
            logs,
        )
    });
    delete_queues_then_resume([&billing_queue, &orders_queue], outcome)
        .expect("delete the test's queues");
}

/// Runs `command` to its end and returns its stdout: the one place that fails the test with both
/// outputs when an example or `rabbitmqctl` fails.
fn run_to_success(command: &mut Command, what: &str) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("run {what}: {e}"));
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{what} failed: {text}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    text
}

/// The one-process demo places three orders and follows them to the end, on RabbitMQ when it
/// answers and on the in-memory transport when it does not.
#[test]
fn the_shop_demo_runs_on_both_transports() {
    let (_, _, shop, _) = build_examples();
    for (uri, transport) in [
        (broker_uri(), "running on RabbitMQ"),
        (
            "amqp://guest:guest@127.0.0.1:1/%2f".to_owned(),
            "running on the in-memory transport",
        ),
    ] {
        let text = run_to_success(
            Command::new(&shop).env("RABBIT_MQ_URI", &uri),
            &format!("the shop example on {uri}"),
        );
        assert!(text.contains(transport), "{text}");
        assert!(
            text.contains("o-2 is now CANCELED_FRAUD") && text.contains("o-1 is now PROCESSED"),
            "{text}"
        );
        assert!(
            text.contains("send(get_order o-2) → CANCELED_FRAUD"),
            "{text}"
        );
        assert!(
            !text.contains("guest:guest"),
            "the password is not printed: {text}"
        );
    }
}

/// The benchmark runs end to end with a small N and reports sane figures: every rate above 0,
/// latencies in order, CPU time and memory measured, S2 within what its prefetch allows, S4
/// drained, the latency scenarios at their rate, S3 answered. (Whether rmq-bus is fast enough is
/// for the bench's own report, not judged here.)
#[test]
fn the_benchmark_runs_with_a_small_n() {
    let (_, _, _, bench) = build_examples();
    // CPU time comes in 10 ms ticks: the rounds are sized to take several each.
    let text = run_to_success(
        Command::new(&bench)
            .env("RABBIT_MQ_URI", broker_uri())
            .envs([
                ("N", "2000"),
                ("ROUNDS", "1"),
                ("S2_N", "1000"),
                ("S3_N", "100"),
                ("S4_N", "1000"),
                ("LATENCY_S", "0.5"),
                ("SCALING_N", "200"),
            ]),
        "the bench example",
    );
    let last = text.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("S1 end_to_end ratio (rmq-bus / raw lapin expert): "),
        "{text}"
    );
    assert!(text.contains("S3 request/reply"), "{text}");

    let figures = bench_figures(&text);
    let get = |key: &str| -> f64 {
        *figures
            .get(key)
            .unwrap_or_else(|| panic!("the bench printed no figure {key}:\n{text}"))
    };
    let positive = |key: &str| -> f64 {
        let value = get(key);
        assert!(
            value.is_finite() && value > 0.0,
            "figure {key}={value}, expected a number above 0:\n{text}"
        );
        value
    };
    // Latencies are timed in ns: the 50th and the 99th percentile of a few hundred never tie,
    // unless both are one rank (as when a fraction is passed for a percent: both the minimum).
    let in_order = |p50_key: &str, p99_key: &str| {
        let (p50, p99) = (positive(p50_key), positive(p99_key));
        assert!(
            p50 < p99,
            "{p50_key}={p50} is not below {p99_key}={p99}:\n{text}"
        );
    };
    // No more than `prefetch` handlers of 5 ms run at once; 5 % for timer granularity.
    let s2_limit = positive("s2.prefetch") / (positive("s2.handler_ms") / 1e3) * 1.05;
    for scenario in ["s1", "s2"] {
        for system in ["rmq-bus", "lapin-typical", "lapin-expert"] {
            let key = |figure: &str| format!("{scenario}.{system}.{figure}");
            assert_eq!(get(&key("rounds")), 1.0, "{}:\n{text}", key("rounds"));
            positive(&key("publish_per_s"));
            let e2e = positive(&key("e2e_per_s"));
            in_order(&key("p50_ms"), &key("p99_ms"));
            positive(&key("cpu_s"));
            positive(&key("peak_rss_mib"));
            assert!(get(&key("duplicates")) >= 0.0, "{text}");
            if scenario == "s2" {
                assert!(
                    e2e <= s2_limit,
                    "{}={e2e} exceeds prefetch / 5 ms:\n{text}",
                    key("e2e_per_s")
                );
            }
        }
    }
    // S4: every system drained the backlog, each event forwarded once and confirmed.
    for system in ["rmq-bus", "lapin-expert"] {
        let key = |figure: &str| format!("s4.{system}.{figure}");
        assert_eq!(get(&key("rounds")), 1.0, "{}:\n{text}", key("rounds"));
        positive(&key("e2e_per_s"));
        positive(&key("cpu_s"));
        // The broker runs on this machine (the tests' own), so its CPU is seen.
        positive(&key("broker_cpu_us_per_msg"));
        assert_eq!(get(&key("duplicates")), 0.0, "{text}");
    }
    // The latency scenarios publish in an open loop: at their rate, not faster (5 % for the
    // first tick), and every percentile in order.
    for (scenario, rate) in [("latency1k", 1000.0), ("latency5k", 5000.0)] {
        for system in ["rmq-bus", "lapin-typical", "lapin-expert"] {
            let key = |figure: &str| format!("{scenario}.{system}.{figure}");
            let published = positive(&key("publish_per_s"));
            assert!(
                published <= rate * 1.05,
                "{}={published} is faster than the open loop's {rate}/s:\n{text}",
                key("publish_per_s")
            );
            in_order(&key("p50_ms"), &key("p99_ms"));
            assert!(
                get(&key("p99_ms")) <= get(&key("p999_ms")),
                "{} above {}:\n{text}",
                key("p99_ms"),
                key("p999_ms")
            );
        }
    }
    in_order("s3.p50_ms", "s3.p99_ms");
    positive("s3.concurrent_per_s");
    // The scaling table: every setting ran once, at the size it claims, every event on the
    // handler of its pattern (another handler fails the round: its figures would be missing).
    let settings: [(&str, &[&str]); 4] = [
        ("payload", &["230", "4096", "65536", "1048576"]),
        ("patterns", &["1", "100", "10000", "100w"]),
        ("queues", &["1", "10", "100"]),
        ("requesters", &["64", "1000"]),
    ];
    for (dimension, values) in settings {
        for (i, value) in values.iter().enumerate() {
            let key = |figure: &str| format!("scaling.{dimension}.{value}.{figure}");
            assert_eq!(get(&key("rounds")), 1.0, "{}:\n{text}", key("rounds"));
            assert_eq!(
                get(&key("duplicates")),
                0.0,
                "{}:\n{text}",
                key("duplicates")
            );
            for figure in [
                "n",
                "per_s",
                "mb_per_s",
                "peak_rss_mib",
                "rss_ratio",
                "idle_rss_mib",
            ] {
                positive(&key(figure));
            }
            // CPU comes in 10 ms ticks: a tiny round may take none.
            let cpu = get(&key("cpu_us_per_msg"));
            assert!(
                cpu.is_finite() && cpu >= 0.0,
                "{}={cpu}:\n{text}",
                key("cpu_us_per_msg")
            );
            // Ratios are to the dimension's first setting.
            if i == 0 {
                assert_eq!(get(&key("rss_ratio")), 1.0, "{}:\n{text}", key("rss_ratio"));
            }
            let bytes = positive(&key("body_bytes"));
            if dimension == "payload" {
                assert_eq!(bytes.to_string(), *value, "{}:\n{text}", key("body_bytes"));
            }
            let mb_per_s = get(&key("per_s")) * bytes / 1e6;
            assert!(
                (get(&key("mb_per_s")) - mb_per_s).abs() <= mb_per_s * 1e-9,
                "{} is not per_s × body_bytes:\n{text}",
                key("mb_per_s")
            );
        }
    }
    // A 1 MiB body costs more than 230 B (encoding, copying, decoding it), in CPU and memory.
    for figure in ["cpu_us_per_msg", "peak_rss_mib"] {
        let (small, large) = (
            get(&format!("scaling.payload.230.{figure}")),
            get(&format!("scaling.payload.1048576.{figure}")),
        );
        assert!(
            large > small,
            "{figure}: 1 MiB {large} ≤ 230 B {small}:\n{text}"
        );
    }
    // 1 MiB payloads come fewer (at least 20), the others SCALING_N each.
    assert_eq!(get("scaling.payload.1048576.n"), 20.0, "{text}");
    assert_eq!(get("scaling.patterns.10000.n"), 200.0, "{text}");
    // Each requester sends at least one request; an idle queue consumer costs some memory, and
    // not megabytes (figures from the RSS once all consume).
    assert!(get("scaling.requesters.1000.n") >= 1000.0, "{text}");
    for queues in ["10", "100"] {
        let key = format!("scaling.queues.{queues}.idle_rss_kib_per_queue");
        let kib = get(&key);
        assert!(kib.is_finite() && kib < 1024.0, "{key}={kib}:\n{text}");
    }
    for requesters in ["64", "1000"] {
        let key = format!("scaling.requesters.{requesters}.kib_per_pending");
        let kib = get(&key);
        assert!(kib.is_finite() && kib >= 0.0, "{key}={kib}:\n{text}");
    }
    let marginal = get("scaling.requesters.1000.marginal_kib_per_pending");
    assert!(marginal.is_finite(), "{text}");
    // The ordering scenario ran both forms; one key is bounded by its 5 ms handler.
    positive("ordering.unordered_per_s");
    positive("ordering.ordered_per_s");
    for key in ["ordering.one_key_per_s", "ordering.one_key_unparked_per_s"] {
        let rate = positive(key);
        assert!(
            rate <= 200.0 * 1.05,
            "{key}={rate} exceeds 1 / 5 ms:\n{text}"
        );
    }
}

/// The bench's `figure <key>=<value>` lines, by key (the format is in `examples/bench/main.rs`).
fn bench_figures(text: &str) -> std::collections::HashMap<String, f64> {
    text.lines()
        .filter_map(|line| line.strip_prefix("figure "))
        .map(|figure| {
            let (key, value) = figure
                .split_once('=')
                .unwrap_or_else(|| panic!("a figure line without '=': {figure:?}"));
            let value = value
                .parse()
                .unwrap_or_else(|_| panic!("figure {key} is not a number: {value:?}"));
            (key.to_owned(), value)
        })
        .collect()
}

/// Runs `rabbitmqctl` with `args`, failing the test with its output if it fails.
fn rabbitmqctl(args: &[&str]) -> String {
    run_to_success(
        Command::new("rabbitmqctl").args(args),
        &format!("rabbitmqctl {args:?} (the broker runs as this user)"),
    )
}

/// The policy applied to `queue` now (empty if none), and its message count; `None` while the
/// queue does not exist.
fn queue_state(queue: &str) -> Option<(String, u64)> {
    rabbitmqctl(&[
        "-q",
        "list_queues",
        "--no-table-headers",
        "name",
        "policy",
        "messages",
    ])
    .lines()
    .find_map(|line| {
        let mut fields = line.split('\t');
        (fields.next() == Some(queue)).then(|| {
            let policy = fields.next().unwrap_or_default().trim().to_owned();
            let messages = fields.next().and_then(|n| n.trim().parse().ok());
            (policy, messages.expect("a message count"))
        })
    })
}

/// The orders example while billing refuses its events: a broker policy caps the billing queue
/// at one message with `overflow: reject-publish`, so once it holds one, the broker nacks every
/// `order_created`. Orders still answers `201` (the order and its event are in its outbox), the
/// refused order stays `PENDING`, and the relay logs the refusal and tries the event later.
fn refused_scenario(
    orders_exe: &Path,
    billing_queue: &str,
    orders_queue: &str,
    policy: &str,
    logs: &Path,
) {
    // No billing: nothing takes the one event the billing queue may hold.
    let (port, services) =
        start_services(&[("orders", orders_exe)], billing_queue, orders_queue, logs);
    // Orders declared the billing queue at start (durable, no arguments, as NestJS does); the
    // policy applies to it by name, without changing its declaration. Policies apply
    // asynchronously: wait until it holds.
    let start = Instant::now();
    while queue_state(billing_queue) != Some((policy.to_owned(), 0)) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the policy never applied to the empty {billing_queue}: {:?}",
            queue_state(billing_queue)
        );
        sleep(Duration::from_millis(100));
    }

    // 1. The first order fills the billing queue.
    let first = post_order(
        port,
        &json!({"productName": "lamp", "price": 20, "buyer": "ada"}),
    );
    // 2. The second's event is refused by the broker (a publisher nack). The order was saved
    //    with its event in one transaction, so it is accepted all the same (201, PENDING): the
    //    outbox relay tries the event again later, and the refusal is logged.
    let refused = post_order(
        port,
        &json!({"productName": "refused-desk", "price": 300, "buyer": "bob"}),
    );
    let refused_id = refused["orderId"].as_str().unwrap_or_default();
    let start = Instant::now();
    while !services[0]
        .log()
        .contains("outbox row refused; trying again later")
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the relay never logged the refusal:\n{}",
            services[0].log()
        );
        sleep(Duration::from_millis(100));
    }
    assert!(
        services[0].log().contains("publisher nack"),
        "the log says the broker refused it"
    );
    let (status, list) = http_json(port, "GET", "/orders", None);
    assert_eq!(status, 200, "{list}");
    let listed: Vec<&Value> = list
        .as_array()
        .unwrap_or_else(|| panic!("GET /orders is not a list: {list}"))
        .iter()
        .filter(|order| order["productName"] == "refused-desk")
        .collect();
    assert_eq!(listed.len(), 1, "the refused order is kept: {list}");
    let (status, order) = http_json(port, "GET", &format!("/orders/{refused_id}"), None);
    assert_eq!(status, 200, "{order}");
    assert_eq!(order["status"], "PENDING", "{order}");
    // The first order is untouched, and still waits for billing.
    let first_id = first["orderId"].as_str().unwrap_or_default();
    let (status, order) = http_json(port, "GET", &format!("/orders/{first_id}"), None);
    assert_eq!(status, 200, "{order}");
    assert_eq!(order["status"], "PENDING", "{order}");
    assert_eq!(
        queue_state(billing_queue),
        Some((policy.to_owned(), 1)),
        "the billing queue holds the first order's event only"
    );

    stop_cleanly(services);
}

#[test]
fn orders_keeps_an_order_pending_when_the_broker_refuses_its_event() {
    let (orders_exe, _, _, _) = build_examples();
    let unique = unique_suffix();
    let billing_queue = format!("e2e-refusing-billing-{unique}");
    let orders_queue = format!("e2e-refusing-orders-{unique}");
    // Both queues expire if the test cannot delete them; the billing one holds one message and
    // refuses the next.
    let policy = format!("e2e-refusing-{unique}");
    rabbitmqctl(&[
        "set_policy",
        "--apply-to",
        "queues",
        "--priority",
        "1000",
        &policy,
        &format!("^e2e-refusing-(billing|orders)-{unique}$"),
        r#"{"max-length": 1, "overflow": "reject-publish", "expires": 120000}"#,
    ]);
    let logs = std::env::temp_dir().join(format!("rmq-bus-e2e-refusing-{unique}"));
    let outcome = run_with_logs(&logs, |logs| {
        refused_scenario(&orders_exe, &billing_queue, &orders_queue, &policy, logs)
    });
    let cleared = Command::new("rabbitmqctl")
        .args(["clear_policy", &policy])
        .output();
    let deleted = delete_queues_then_resume([&billing_queue, &orders_queue], outcome);
    let cleared = cleared.expect("run rabbitmqctl clear_policy");
    assert!(
        cleared.status.success(),
        "clear_policy {policy}: {}",
        String::from_utf8_lossy(&cleared.stderr)
    );
    deleted.expect("delete the test's queues");
}
