//! The token service against the scripted authorization server over real HTTP, on an
//! SQLite file and on the machine's PostgreSQL (a fresh schema per test); every case
//! runs on both backends.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod front;
mod token_service;

use std::sync::Arc;

use latchkey_testkit::logs::capture;
use latchkey_testkit::pg::PgSchema;
use latchkey_vault::store::new_id;
use latchkey_vault::{PgStore, SqliteStore, Store};

async fn sqlite() -> (Arc<dyn Store>, TempDir) {
    let dir = TempDir::new();
    let s = SqliteStore::open(&dir.0.join("latchkey.db")).await.unwrap();
    (Arc::new(s), dir)
}

/// A store in a schema of its own on the machine's PostgreSQL; dropped after the case.
async fn postgres() -> (Arc<dyn Store>, PgSchema) {
    let schema = PgSchema::new("lk_broker").await.unwrap();
    let opts: sqlx::postgres::PgConnectOptions = schema.url.parse().unwrap();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .connect_with(opts)
        .await
        .unwrap();
    (Arc::new(PgStore::new(pool).await.unwrap()), schema)
}

/// A temporary directory removed on drop.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new() -> Self {
        let p = std::env::temp_dir().join(format!("latchkey-broker-{}", new_id()));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs a case `async fn(Arc<dyn Store>)` once on SQLite and once on PostgreSQL.
macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {
        $(
            mod $case {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    let (store, _dir) = crate::sqlite().await;
                    super::$case(store).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    let (store, schema) = crate::postgres().await;
                    super::$case(store).await;
                    schema.drop_schema().await.unwrap();
                }
            }
        )*
    };
}
pub(crate) use on_both_backends;
