//! Test databases: a PostgreSQL database or a SQLite file of the test's own, migrated, and
//! dropped (or removed) when the test is done, whatever happened.
#![allow(unreachable_pub, dead_code)]

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use rmq_bus::store::sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use rmq_bus::store::sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use rmq_bus::store::sqlx::{self, Executor, PgPool, Postgres, Sqlite, SqlitePool};

/// The PostgreSQL server the tests use (trust auth), without a database name.
pub fn postgres_url() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// A database of the test's own, dropped on drop.
pub struct TestPg {
    pub name: String,
    pub url: String,
}

impl TestPg {
    /// Creates a fresh database named after `prefix`.
    pub async fn create(prefix: &str) -> TestPg {
        let name = format!(
            "test_{}",
            crate::common::unique(prefix).replace(['-', '.'], "_")
        )
        .to_lowercase();
        let admin = admin_pool().await;
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "CREATE DATABASE {name} (is PostgreSQL running? scripts/test.sh starts it): {e}"
                )
            });
        admin.close().await;
        let url = format!("{}/{name}", postgres_url());
        TestPg { name, url }
    }

    /// A pool on the database, its tables migrated.
    pub async fn pool(&self, connections: u32) -> PgPool {
        let options = PgConnectOptions::from_str(&self.url).expect("postgres URL");
        let pool = PgPoolOptions::new()
            .max_connections(connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .expect("connect to the test database");
        rmq_bus::store::migrate(&pool).await.expect("migrate");
        pool
    }
}

async fn admin_pool() -> PgPool {
    PgPoolOptions::new()
        .max_connections(1)
        .connect(&format!("{}/postgres", postgres_url()))
        .await
        .expect("PostgreSQL must run on 127.0.0.1:5432 with trust auth (scripts/test.sh starts it)")
}

impl Drop for TestPg {
    fn drop(&mut self) {
        let name = self.name.clone();
        // A runtime of its own: drop may run inside (or outside) the test's runtime.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                let admin = admin_pool().await;
                admin
                    .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                    .await
                    .map(drop)
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test database {}: {dropped:?}", self.name);
        }
    }
}

/// A SQLite file of the test's own, removed on drop.
pub struct TestSqlite {
    pub path: PathBuf,
}

impl TestSqlite {
    pub fn create(prefix: &str) -> TestSqlite {
        let path = std::env::temp_dir().join(format!("{}.sqlite", crate::common::unique(prefix)));
        TestSqlite { path }
    }

    /// A pool on the file (created), its tables migrated.
    pub async fn pool(&self) -> SqlitePool {
        let options = SqliteConnectOptions::new()
            .filename(&self.path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .expect("open the test SQLite file");
        rmq_bus::store::migrate(&pool).await.expect("migrate");
        pool
    }
}

impl Drop for TestSqlite {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut path = self.path.clone().into_os_string();
            path.push(suffix);
            let _ = std::fs::remove_file(path);
        }
    }
}

/// What the tests run on either database: a statement in a transaction, a count.
pub trait Sql: rmq_bus::store::Database {
    async fn exec(tx: &mut sqlx::Transaction<'_, Self>, sql: &str);
    async fn count(pool: &sqlx::Pool<Self>, sql: &str) -> i64;
}

macro_rules! sql {
    ($db:ty) => {
        impl Sql for $db {
            async fn exec(tx: &mut sqlx::Transaction<'_, Self>, sql: &str) {
                sqlx::raw_sql(sql)
                    .execute(&mut **tx)
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
            }

            async fn count(pool: &sqlx::Pool<Self>, sql: &str) -> i64 {
                sqlx::query_scalar::<_, i64>(sql)
                    .fetch_one(pool)
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"))
            }
        }
    };
}
sql!(Postgres);
sql!(Sqlite);
