//! The `orders` and `billing` examples through broker outages and crashes, on PostgreSQL and on
//! SQLite: orders are accepted (`201`) while the broker is down, processes are killed (SIGKILL)
//! after a commit and before the relay, after a publish and before the row is removed, and in
//! billing after its commit and before its ack. Every order ends PROCESSED and is billed once.
//!
//! The broker is "down" for orders through a TCP proxy that refuses connections (the fault
//! tests' [`Proxy`]): the same outage as a stopped broker from the service's side, without
//! stopping the broker every other test on the machine uses.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "common/db.rs"]
mod db;
mod faults {
    pub mod node;
    pub mod proxy;
}

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use db::TestPg;
use faults::proxy::Proxy;
use rmq_bus::store::sqlx::{self, PgPool, SqlitePool};
use serde_json::{Value, json};

/// How long an order may take to reach its final state, outages and restarts included.
const PROCESSING: Duration = Duration::from_secs(30);

/// Builds the two examples; their executables.
fn build() -> (PathBuf, PathBuf) {
    let workspace = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let status = Command::new(env!("CARGO"))
        .current_dir(workspace)
        .args([
            "build",
            "-q",
            "-p",
            "rmq-bus",
            "--example",
            "orders",
            "--example",
            "billing",
        ])
        .status()
        .expect("run cargo build");
    assert!(status.success(), "cargo build of the examples failed");
    // Examples land next to the test executable's directory: target/<profile>/examples.
    let examples = std::env::current_exe()
        .expect("test executable")
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .join("examples");
    (examples.join("orders"), examples.join("billing"))
}

/// A running example, killed if still running when dropped; its log printed if the test fails.
struct Service {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Service {
    fn spawn(name: &str, exe: &Path, env: &[(&str, String)], logs: &Path) -> Service {
        let log = logs.join(format!("{name}.log"));
        let file = File::create(&log).unwrap();
        let child = Command::new(exe)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        Service {
            name: name.to_owned(),
            child,
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no shutdown of any kind.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then a clean exit within 10 s.
    fn stop(mut self) {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let started = Instant::now();
        while self.child.try_wait().unwrap().is_none() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{} ignores SIGTERM",
                self.name
            );
            sleep(Duration::from_millis(50));
        }
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "{} exited with {status}:\n{}",
            self.name,
            self.log()
        );
    }

    /// Waits until the log has `text`.
    fn await_log(&mut self, text: &str) {
        let started = Instant::now();
        while !self.log().contains(text) {
            assert!(
                self.child.try_wait().unwrap().is_none(),
                "{} exited:\n{}",
                self.name,
                self.log()
            );
            assert!(
                started.elapsed() < PROCESSING,
                "{} never logged {text:?}:\n{}",
                self.name,
                self.log()
            );
            sleep(Duration::from_millis(100));
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

/// One HTTP exchange: status and JSON body.
fn http(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> std::io::Result<(u16, Value)> {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let content = body.map(Value::to_string).unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{content}",
        content.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, serde_json::from_str(body).unwrap_or(Value::Null)))
}

/// Starts orders on `port` and waits until it answers.
fn start_orders(name: &str, exe: &Path, env: &[(&str, String)], logs: &Path, port: u16) -> Service {
    let mut orders = Service::spawn(name, exe, env, logs);
    let started = Instant::now();
    while !matches!(http(port, "GET", "/orders", None), Ok((200, _))) {
        assert!(
            orders.child.try_wait().unwrap().is_none(),
            "orders exited:\n{}",
            orders.log()
        );
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "orders never answered"
        );
        sleep(Duration::from_millis(100));
    }
    orders
}

/// Places an order; `201` is required, whatever the broker's state. Returns its id.
fn post_order(port: u16, product: &str) -> String {
    let order = json!({"productName": product, "price": 25, "buyer": "ada"});
    let started = Instant::now();
    let (status, created) = http(port, "POST", "/orders", Some(&order)).unwrap();
    assert_eq!(status, 201, "{created}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered at once, not after an emit"
    );
    assert_eq!(created["status"], "PENDING");
    created["orderId"].as_str().unwrap().to_owned()
}

fn status_of(port: u16, id: &str) -> Value {
    let (status, order) = http(port, "GET", &format!("/orders/{id}"), None).unwrap();
    assert_eq!(status, 200, "{order}");
    order["status"].clone()
}

fn await_processed(port: u16, ids: &[String]) {
    let started = Instant::now();
    for id in ids {
        while status_of(port, id) != "PROCESSED" {
            assert!(
                started.elapsed() < PROCESSING,
                "order {id} is {}",
                status_of(port, id)
            );
            sleep(Duration::from_millis(100));
        }
    }
}

/// A database both the test and a service open: its URL for `DATABASE_URL`, and a pool.
struct Db {
    url: String,
    pool: Pool,
    _pg: Option<TestPg>,
}

enum Pool {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

impl Db {
    async fn open(postgres: bool, name: &str, logs: &Path) -> Db {
        if postgres {
            let pg = TestPg::create(name).await;
            let pool = PgPool::connect(&pg.url).await.unwrap();
            return Db {
                url: pg.url.clone(),
                pool: Pool::Postgres(pool),
                _pg: Some(pg),
            };
        }
        let url = format!("sqlite://{}/{name}.sqlite?mode=rwc", logs.display());
        let pool = SqlitePool::connect(&url).await.unwrap();
        Db {
            url,
            pool: Pool::Sqlite(pool),
            _pg: None,
        }
    }

    async fn count(&self, sql: &str) -> i64 {
        let counted = match &self.pool {
            Pool::Postgres(pool) => sqlx::query_scalar::<_, i64>(sql).fetch_one(pool).await,
            Pool::Sqlite(pool) => sqlx::query_scalar::<_, i64>(sql).fetch_one(pool).await,
        };
        counted.unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    async fn exec(&self, sql: &str) {
        let done = match &self.pool {
            Pool::Postgres(pool) => sqlx::raw_sql(sql).execute(pool).await.map(drop),
            Pool::Sqlite(pool) => sqlx::raw_sql(sql).execute(pool).await.map(drop),
        };
        done.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    async fn close(&self) {
        match &self.pool {
            Pool::Postgres(pool) => pool.close().await,
            Pool::Sqlite(pool) => pool.close().await,
        }
    }
}

/// Makes every delete from orders' outbox fail, as if the relay died between its publish and
/// its delete; `SQL_RELEASE` undoes it.
const HOLD_PG: &str = "CREATE FUNCTION test_hold() RETURNS trigger LANGUAGE plpgsql AS $$ \
    BEGIN RAISE EXCEPTION 'held by the test'; END $$; \
    CREATE TRIGGER test_hold BEFORE DELETE ON rmq_bus_outbox FOR EACH ROW EXECUTE FUNCTION test_hold();";
const HOLD_SQLITE: &str = "CREATE TRIGGER test_hold BEFORE DELETE ON rmq_bus_outbox \
    BEGIN SELECT RAISE(ABORT, 'held by the test'); END;";
const RELEASE: &str = "DROP TRIGGER test_hold ON rmq_bus_outbox";
const RELEASE_SQLITE: &str = "DROP TRIGGER test_hold";

fn outages_and_crashes(postgres: bool) {
    let (orders_exe, billing_exe) = build();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let unique = common::unique("outbox-e2e");
    let logs = std::env::temp_dir().join(&unique);
    std::fs::create_dir_all(&logs).unwrap();
    let (billing_queue, orders_queue) = (format!("{unique}-billing"), format!("{unique}-orders"));
    let proxy = runtime.block_on(Proxy::start());
    let orders_db = runtime.block_on(Db::open(postgres, "orders", &logs));
    let billing_db = runtime.block_on(Db::open(postgres, "billing", &logs));
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let env = |uri: String, db: &Db| {
        vec![
            ("RABBIT_MQ_URI", uri),
            ("RABBIT_MQ_BILLING_QUEUE", billing_queue.clone()),
            ("RABBIT_MQ_ORDERS_QUEUE", orders_queue.clone()),
            ("PORT", port.to_string()),
            ("DATABASE_URL", db.url.clone()),
        ]
    };
    let orders_env = env(proxy.uri(), &orders_db);
    let billing_env = env(common::uri(), &billing_db);

    let billing = Service::spawn("billing", &billing_exe, &billing_env, &logs);
    let orders = start_orders("orders", &orders_exe, &orders_env, &logs, port);
    let mut ids = vec![post_order(port, "before")];
    await_processed(port, &ids);

    // 1. The broker is down for orders: orders are still accepted, and wait as PENDING.
    proxy.refuse(true);
    runtime.block_on(proxy.cut_and_wait());
    let down: Vec<String> = (0..3)
        .map(|n| post_order(port, &format!("down-{n}")))
        .collect();
    sleep(Duration::from_secs(1));
    for id in &down {
        assert_eq!(status_of(port, id), "PENDING");
    }
    // 2. Killed after the commits, before the relay could send anything.
    orders.kill();
    proxy.refuse(false);
    let orders = start_orders("orders-2", &orders_exe, &orders_env, &logs, port);
    await_processed(port, &down);
    ids.extend(down);

    // 3. Killed after publishing, before removing the row: the row goes out again on restart,
    //    and billing's inbox absorbs the duplicate.
    let (hold, release) = if postgres {
        (HOLD_PG, RELEASE)
    } else {
        (HOLD_SQLITE, RELEASE_SQLITE)
    };
    runtime.block_on(orders_db.exec(hold));
    let held = post_order(port, "held");
    await_processed(port, std::slice::from_ref(&held));
    let mut billing = billing;
    billing.await_log("already handled (a redelivery)");
    orders.kill();
    runtime.block_on(orders_db.exec(release));
    let orders = start_orders("orders-3", &orders_exe, &orders_env, &logs, port);
    let started = Instant::now();
    while runtime.block_on(orders_db.count("SELECT count(*) FROM rmq_bus_outbox")) != 0 {
        assert!(
            started.elapsed() < PROCESSING,
            "the held row never went out"
        );
        sleep(Duration::from_millis(100));
    }
    ids.push(held);

    // 4. Billing killed after its commit, before its ack: the redelivery is acked, not billed.
    billing.kill();
    let mut slow_env = billing_env.clone();
    slow_env.push(("BILLING_ACK_DELAY_MS", "60000".into()));
    let slow = Service::spawn("billing-slow", &billing_exe, &slow_env, &logs);
    let unacked = post_order(port, "unacked");
    let bill = format!("SELECT count(*) FROM bills WHERE order_id = '{unacked}'");
    let started = Instant::now();
    while runtime.block_on(billing_db.count(&bill)) == 0 {
        assert!(
            started.elapsed() < PROCESSING,
            "billing never billed {unacked}"
        );
        sleep(Duration::from_millis(50));
    }
    slow.kill();
    let mut billing = Service::spawn("billing-2", &billing_exe, &billing_env, &logs);
    billing.await_log("already handled (a redelivery)");
    await_processed(port, std::slice::from_ref(&unacked));
    ids.push(unacked);

    // Nothing lost, nobody billed twice.
    let listed = format!(
        "SELECT count(*) FROM bills WHERE order_id IN ({})",
        ids.iter()
            .map(|id| format!("'{id}'"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    assert_eq!(
        runtime.block_on(billing_db.count(&listed)),
        ids.len() as i64
    );
    assert_eq!(
        runtime.block_on(billing_db.count("SELECT count(*) FROM bills")),
        ids.len() as i64
    );
    for id in &ids {
        assert_eq!(status_of(port, id), "PROCESSED");
    }
    orders.stop();
    billing.stop();
    runtime.block_on(async {
        orders_db.close().await;
        billing_db.close().await;
        let broker = common::Broker::connect().await;
        for queue in [&billing_queue, &orders_queue] {
            broker.forget_later(queue);
            broker.forget_later(&format!("{queue}.dlq"));
        }
        broker.cleanup().await;
    });
    drop((orders_db, billing_db));
    let _ = std::fs::remove_dir_all(&logs);
}

#[test]
fn orders_survive_outages_and_crashes_on_postgres() {
    outages_and_crashes(true);
}

#[test]
fn orders_survive_outages_and_crashes_on_sqlite() {
    outages_and_crashes(false);
}
