//! Drives the NestJS fixture (`interop/nestjs/app.js`): a real NestJS 11 RMQ microservice that
//! prints what its handlers receive, plus a NestJS `ClientProxy` that emits and sends on command.
//! Every line it writes to stdout is JSON: events (`{"event": …}`) and command replies
//! (`{"reply": id, "ok": …}`).
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{mpsc, oneshot};

use crate::common;

/// How long the fixture gets to start (Node, Nest and two AMQP connections).
pub const READY_WAIT: Duration = Duration::from_secs(20);
/// How long a handler line or a command reply may take.
pub const WAIT: Duration = Duration::from_secs(10);

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// A running fixture process; killed when dropped.
pub struct NestApp {
    queue: String,
    child: Child,
    stdin: tokio::sync::Mutex<Option<ChildStdin>>,
    events: tokio::sync::Mutex<mpsc::UnboundedReceiver<Value>>,
    pending: Pending,
    next_id: AtomicU64,
    stderr: Arc<Mutex<String>>,
}

/// `interop/nestjs`, checked to be installed.
fn fixture_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../interop/nestjs");
    assert!(
        dir.join("node_modules/@nestjs/microservices").is_dir(),
        "the NestJS fixture is not installed in {}: run scripts/test.sh, which installs it \
         (or `npm ci --prefix interop/nestjs`; needs Node.js 20+)",
        dir.display()
    );
    dir
}

impl NestApp {
    /// Starts the fixture consuming `queue`, declared as `common::options` declares it
    /// (durable, expiring when a failed test leaves it behind), and waits until it listens.
    pub async fn start(queue: &str) -> NestApp {
        Self::start_with(queue, Some(json!({ "x-expires": common::EXPIRES_MS }))).await
    }

    /// Starts the fixture with the `x-` arguments every queue it declares gets (server and
    /// clients); `None` declares queues as Nest does by default (durable, no arguments).
    pub async fn start_with(queue: &str, queue_arguments: Option<Value>) -> NestApp {
        let dir = fixture_dir();
        let mut command = Command::new("node");
        command
            .arg("app.js")
            .current_dir(&dir)
            .env("NEST_QUEUE", queue)
            .env("RABBIT_MQ_URI", common::uri())
            .env_remove("NEST_QUEUE_ARGUMENTS")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(arguments) = queue_arguments {
            command.env("NEST_QUEUE_ARGUMENTS", arguments.to_string());
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run `node` (install Node.js 20+): {e}"));

        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err_pipe = child.stderr.take().expect("stderr piped");
        let sink = stderr.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = err_pipe.read(&mut buf).await {
                sink.lock()
                    .expect("stderr lock")
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });

        let pending: Pending = Arc::default();
        let (events_tx, events) = mpsc::unbounded_channel();
        let mut lines = BufReader::new(child.stdout.take().expect("stdout piped")).lines();
        let replies = pending.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let value: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|_| json!({ "event": "not-json", "line": line }));
                match value.get("reply").and_then(Value::as_u64) {
                    Some(id) => {
                        if let Some(tx) = replies.lock().expect("pending lock").remove(&id) {
                            let _ = tx.send(value);
                        }
                    }
                    None => {
                        let _ = events_tx.send(value);
                    }
                }
            }
            // Dropping the senders tells waiters the process is gone.
            replies.lock().expect("pending lock").clear();
        });

        let app = NestApp {
            queue: queue.to_owned(),
            stdin: tokio::sync::Mutex::new(child.stdin.take()),
            child,
            events: tokio::sync::Mutex::new(events),
            pending,
            next_id: AtomicU64::new(1),
            stderr,
        };
        let ready = app.next_event_within(READY_WAIT).await;
        assert_eq!(
            ready,
            json!({"event": "ready"}),
            "fixture did not start; stderr:\n{}",
            app.stderr()
        );
        app
    }

    /// The queue the fixture's microservice consumes.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// What the fixture wrote to stderr so far (Nest's log).
    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr lock").clone()
    }

    /// Sends a command (its `id` is filled in) and waits for its reply line.
    pub async fn command(&self, mut command: Value) -> Value {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        command["id"] = id.into();
        let (tx, rx) = oneshot::channel();
        self.pending.lock().expect("pending lock").insert(id, tx);
        {
            let mut stdin = self.stdin.lock().await;
            let pipe = stdin.as_mut().expect("fixture stdin already closed");
            let line = format!("{command}\n");
            pipe.write_all(line.as_bytes())
                .await
                .expect("write to the fixture");
            pipe.flush().await.expect("flush to the fixture");
        }
        let wait = WAIT
            + command
                .get("timeoutMs")
                .and_then(Value::as_u64)
                .map_or(Duration::ZERO, Duration::from_millis);
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => panic!(
                "fixture exited before answering {command}; stderr:\n{}",
                self.stderr()
            ),
            Err(_) => panic!(
                "no reply to {command} within {wait:?}; stderr:\n{}",
                self.stderr()
            ),
        }
    }

    /// Emits `pattern`/`data` to `queue` with a NestJS `ClientProxy`; panics unless Nest reports
    /// success.
    pub async fn emit(&self, queue: &str, pattern: Value, data: &Value) {
        let reply = self
            .command(json!({"cmd": "emit", "queue": queue, "pattern": pattern, "data": data}))
            .await;
        assert_eq!(reply["ok"], true, "NestJS emit failed: {reply}");
    }

    /// Sends a request with a NestJS `ClientProxy`: the whole reply line,
    /// `{"ok": true, "response": R}` or `{"ok": false, "error": E}`.
    pub async fn send(&self, queue: &str, pattern: Value, data: &Value, timeout_ms: u64) -> Value {
        self.command(json!({
            "cmd": "send", "queue": queue, "pattern": pattern, "data": data, "timeoutMs": timeout_ms,
        }))
        .await
    }

    /// The next line the fixture's handlers printed, waiting at most [`WAIT`].
    pub async fn next_event(&self) -> Value {
        self.next_event_within(WAIT).await
    }

    async fn next_event_within(&self, wait: Duration) -> Value {
        let mut events = self.events.lock().await;
        match tokio::time::timeout(wait, events.recv()).await {
            Ok(Some(event)) => event,
            Ok(None) => panic!("fixture exited; stderr:\n{}", self.stderr()),
            Err(_) => panic!(
                "no event from the fixture within {wait:?}; stderr:\n{}",
                self.stderr()
            ),
        }
    }

    /// Closes stdin, which makes the fixture close its clients and its microservice (so the
    /// broker returns whatever it left unacked) and exit; waits for that.
    pub async fn shutdown(mut self) {
        drop(self.stdin.lock().await.take());
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("fixture did not exit; stderr:\n{}", self.stderr()))
            .expect("wait for the fixture");
        assert!(
            status.success(),
            "fixture exited with {status}; stderr:\n{}",
            self.stderr()
        );
    }
}
