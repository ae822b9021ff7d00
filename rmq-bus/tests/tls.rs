//! TLS against a real broker: a second local RabbitMQ node with a TLS listener
//! (`scripts/tls-broker.sh`, started here if it is not running), its certificate signed by a
//! private CA made at test time with openssl, for the name `localhost` only.
//!
//! - an `amqps://` round trip, the broker verified against the private CA (given with
//!   `RmqOptions::tls_ca_file`, or `SSL_CERT_FILE`);
//! - a CA that did not sign the certificate, and a host name the certificate does not list, each
//!   failing with an error that says so;
//! - the password never in an error or a log line, on this path too.
//!
//! The tests use their own user on that node, with a random password, and look for it in every
//! error and in everything rmq-bus logged (at debug level) during the run.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::unique;
use rmq_bus::{ClientProxy, Error, Microservice, Payload, RmqContext, RmqOptions};
use tokio::sync::mpsc;

/// The TLS node, as `scripts/tls-broker.sh start` left it.
struct TlsNode {
    dir: PathBuf,
    port: u16,
    user: String,
    password: String,
}

impl TlsNode {
    /// Starts the node (once per test process; quick when it already runs).
    fn get() -> &'static TlsNode {
        static NODE: OnceLock<TlsNode> = OnceLock::new();
        NODE.get_or_init(|| {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/tls-broker.sh");
            let output = std::process::Command::new("bash")
                .arg(&script)
                .arg("start")
                .output()
                .expect("run scripts/tls-broker.sh");
            assert!(
                output.status.success(),
                "scripts/tls-broker.sh start failed: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            let dir = PathBuf::from(
                std::env::var("RMQ_TLS_DIR").unwrap_or_else(|_| "/tmp/rmq-bus-tls".to_owned()),
            );
            let read = |name: &str| {
                std::fs::read_to_string(dir.join(name))
                    .unwrap_or_else(|error| panic!("{}/{name}: {error}", dir.display()))
                    .trim()
                    .to_owned()
            };
            TlsNode {
                port: read("port").parse().expect("port"),
                user: read("user"),
                password: read("password"),
                dir,
            }
        })
    }

    /// `amqps://user:password@host:port/%2f`.
    fn uri(&self, host: &str) -> String {
        format!(
            "amqps://{}:{}@{host}:{}/%2f",
            self.user, self.password, self.port
        )
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// Everything rmq-bus logs in this test process, to look for passwords in.
fn logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("debug"))
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one subscriber");
        logs
    })
    .clone()
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("logs").extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Fails if `text` (an error, the logs) shows `password`.
fn assert_hidden(password: &str, what: &str, text: &str) {
    if let Some(line) = text.lines().find(|line| line.contains(password)) {
        panic!(
            "the password shows in {what}: {}",
            line.replace(password, "<THE PASSWORD>")
        );
    }
}

fn assert_logs_hide(password: &str) {
    let logs = String::from_utf8_lossy(&logs().lock().expect("logs")).into_owned();
    assert!(
        !logs.is_empty(),
        "rmq-bus logged nothing: is the capture working?"
    );
    assert_hidden(password, "the logs", &logs);
}

/// Options for a fresh queue on the TLS node at `host`, trying once (no waiting on failures).
fn tls_options(node: &TlsNode, host: &str, queue: &str) -> RmqOptions {
    RmqOptions::new(queue)
        .uri(node.uri(host))
        .durable(false)
        .reconnect_timeout(Duration::ZERO)
        .handshake_timeout(Duration::from_secs(10))
}

/// An event over amqps, both ways: a microservice consumes what a client emits.
async fn round_trip(options: RmqOptions) -> rmq_bus::Result<()> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let service = Microservice::new(options.clone())
        .on_event("ping", move |Payload(n): Payload<u32>, ctx: RmqContext| {
            let tx = tx.clone();
            async move {
                tx.send(n).ok();
                ctx.ack().await
            }
        })
        .start()
        .await?;
    let client = ClientProxy::new(options);
    client.emit("ping", &7).await?;
    let got = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await;
    assert_eq!(got.ok().flatten(), Some(7), "the event came back over TLS");
    client.close().await;
    service.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_amqps_round_trip_verifies_the_broker_against_a_private_ca() {
    let logs = logs();
    let node = TlsNode::get();
    let queue = unique("tls");
    let options = tls_options(node, "localhost", &queue).tls_ca_file(node.file("ca.pem"));
    assert_hidden(
        &node.password,
        "the options' Debug",
        &format!("{options:?}"),
    );
    round_trip(options).await.expect("round trip over amqps");
    let logged = String::from_utf8_lossy(&logs.lock().expect("logs")).into_owned();
    assert!(
        logged.contains(&format!(
            "amqps://{}:***@localhost:{}",
            node.user, node.port
        )),
        "the connection is logged, its password redacted"
    );
    assert_logs_hide(&node.password);
}

/// `SSL_CERT_FILE` (read by rustls-native-certs) replaces the system's CAs with the private one:
/// run in a child process of its own, as the variable holds for the whole process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_cert_file_names_the_private_ca() {
    let node = TlsNode::get();
    let output = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "ssl_cert_file_child",
            "--include-ignored",
            "--nocapture",
        ])
        .env("SSL_CERT_FILE", node.file("ca.pem"))
        .output()
        .expect("run the child test");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "the child test failed: {printed}");
    assert!(
        printed.contains("1 passed"),
        "the child test ran: {printed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by ssl_cert_file_names_the_private_ca, with SSL_CERT_FILE set"]
async fn ssl_cert_file_child() {
    assert!(
        std::env::var_os("SSL_CERT_FILE").is_some(),
        "SSL_CERT_FILE is set"
    );
    let node = TlsNode::get();
    let queue = unique("tls-env");
    round_trip(tls_options(node, "localhost", &queue))
        .await
        .expect("round trip over amqps, trusting SSL_CERT_FILE");
}

/// Connects with `options`, which must fail; the error, checked to hide the password.
async fn failed_connect(options: RmqOptions, password: &str) -> String {
    let client = ClientProxy::new(options);
    let error = match tokio::time::timeout(Duration::from_secs(20), client.connect()).await {
        Ok(Err(error @ Error::Connect { .. })) => error,
        other => panic!("expected a Connect error, got {other:?}"),
    };
    let text = format!("{error} / {error:?}");
    println!("refused as expected: {error}");
    assert_hidden(password, "the error", &text);
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_is_refused_saying_so() {
    let _logs = logs();
    let node = TlsNode::get();
    let options =
        tls_options(node, "localhost", &unique("tls-ca")).tls_ca_file(node.file("other-ca.pem"));
    let error = failed_connect(options, &node.password).await;
    assert!(
        error.contains("not signed by a trusted CA") && error.contains("SSL_CERT_FILE"),
        "the error says the CA is not trusted, and what to do: {error}"
    );
    // With no CA given at all, the system's CAs do not know the private one either.
    let error = failed_connect(tls_options(node, "localhost", "q"), &node.password).await;
    assert!(error.contains("not signed by a trusted CA"), "{error}");
    assert_logs_hide(&node.password);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_name_the_certificate_does_not_list_is_refused_saying_so() {
    let _logs = logs();
    let node = TlsNode::get();
    // The certificate names localhost; 127.0.0.1 is the same node, by another name.
    let options =
        tls_options(node, "127.0.0.1", &unique("tls-name")).tls_ca_file(node.file("ca.pem"));
    let error = failed_connect(options, &node.password).await;
    assert!(
        error.contains("not valid for the host name") && error.contains("127.0.0.1"),
        "the error says the name does not match: {error}"
    );
    assert_logs_hide(&node.password);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_login_over_tls_shows_no_password() {
    let _logs = logs();
    let node = TlsNode::get();
    let wrong = "wrong-pw-4b1d";
    let options = RmqOptions::new(unique("tls-login"))
        .uri(format!(
            "amqps://{}:{wrong}@localhost:{}/%2f",
            node.user, node.port
        ))
        .reconnect_timeout(Duration::ZERO)
        .tls_ca_file(node.file("ca.pem"));
    let error = failed_connect(options, wrong).await;
    assert!(
        error.contains(&format!("{}:***@localhost", node.user)),
        "{error}"
    );
    assert_logs_hide(wrong);
    assert_logs_hide(&node.password);
}
