//! Scale benchmark (a scripted load run, not criterion): slot lookups and key rotation
//! on 1,000,000 credential rows, on SQLite and on PostgreSQL, in one run.
//!
//! `cargo bench -p latchkey-vault --bench store_scale`
//!
//! Environment: `LATCHKEY_BENCH_ROWS` (default 1000000), `LATCHKEY_BENCH_LOOKUPS`
//! (default 20000), `LATCHKEY_BENCH_BACKENDS` (default `sqlite,postgres`),
//! `LATCHKEY_TEST_DATABASE_URL` (default the machine's PostgreSQL, database `test`).
//! The PostgreSQL data goes into a fresh schema that is dropped at the end.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use latchkey_vault::keyring::StaticKeys;
use latchkey_vault::rotate::{NoProgress, RotateOptions, rotate};
use latchkey_vault::store::{CredentialRow, ServerRow, Slot, new_id};
use latchkey_vault::{KeySet, Keyring, PgStore, SqliteStore, Store};
use rand::Rng;

const K1: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const K2: &str = "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff000102030405060708090a0b0c0d0e0f";
/// Users per server: 1,000,000 rows are 100 servers × 10,000 users.
const USERS_PER_SERVER: usize = 10_000;

fn env_usize(k: &str, default: usize) -> usize {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn ring(spec: &str) -> Keyring {
    Keyring::new(StaticKeys(Some(KeySet::parse(spec).unwrap())))
}

/// One seeded row: key, slot and its three envelopes, as the insert statements bind them.
struct Seed {
    id: String,
    server: String,
    subject: String,
    client_secret: Vec<u8>,
    access_token: Vec<u8>,
    refresh_token: Vec<u8>,
}

fn seed_rows(k: &Keyring, from: usize, n: usize) -> Vec<Seed> {
    (from..from + n)
        .map(|i| {
            let id = new_id();
            let server = format!("srv{:03}", i / USERS_PER_SERVER);
            let subject = format!("user{:06}", i % USERS_PER_SERVER);
            // The binding the seeded columns below carry.
            let mut row = CredentialRow::new(
                id.clone(),
                Slot {
                    tenant: "t1".into(),
                    server: server.clone(),
                    subject: Some(subject.clone()),
                },
                "https://as.example/token",
                0,
            );
            row.issuer = Some("https://as.example".into());
            row.resource = Some("https://mcp.example/mcp".into());
            let aad = |c| row.aad(c);
            // Realistic sizes: a JWT-ish access token, an opaque refresh token.
            let at = format!("eyJhbGciOiJSUzI1NiJ9.{}.sig{i:0>200}", "x".repeat(400));
            let rt = format!("rt-{i:0>60}");
            Seed {
                client_secret: k
                    .encrypt(b"client-secret-0123456789", aad("client_secret"))
                    .unwrap(),
                access_token: k.encrypt(at.as_bytes(), aad("access_token")).unwrap(),
                refresh_token: k.encrypt(rt.as_bytes(), aad("refresh_token")).unwrap(),
                server,
                subject,
                id,
            }
        })
        .collect()
}

const INSERT_COLS: &str = "id, tenant_id, server_id, subject, issuer, resource, token_endpoint, client_id, \
    client_secret, auth_method, scopes, access_token, access_expires_at, refresh_token, generation, initiated_by, \
    created_at, updated_at";

async fn create_servers(store: &dyn Store, rows: usize) {
    for s in 0..rows.div_ceil(USERS_PER_SERVER) {
        store
            .create_server(
                &ServerRow::new(
                    format!("srv{s:03}"),
                    "t1",
                    format!("server {s}"),
                    format!("https://mcp{s}.example/mcp"),
                ),
                0,
            )
            .await
            .unwrap();
    }
}

/// Bulk seeding on SQLite: one transaction per 10,000 rows, multi-row inserts.
async fn seed_sqlite(store: &SqliteStore, k: &Keyring, rows: usize) {
    create_servers(store, rows).await;
    let per_stmt = 50; // 18 columns × 50 rows stays under SQLite's bind limit
    for chunk_start in (0..rows).step_by(10_000) {
        let n = 10_000.min(rows - chunk_start);
        let seeds = seed_rows(k, chunk_start, n);
        let mut tx = store.pool().begin().await.unwrap();
        for part in seeds.chunks(per_stmt) {
            let values = (0..part.len())
                .map(|r| {
                    let b = r * 7;
                    format!(
                        "(${}, 't1', ${}, ${}, 'https://as.example', 'https://mcp.example/mcp', \
                         'https://as.example/token', 'client', ${}, 'client_secret_basic', 'mcp', ${}, \
                         4102444800, ${}, 0, ${}, 0, 0)",
                        b + 1,
                        b + 2,
                        b + 3,
                        b + 4,
                        b + 5,
                        b + 6,
                        b + 7
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!("INSERT INTO credentials ({INSERT_COLS}) VALUES {values}");
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for s in part {
                q = q
                    .bind(&s.id)
                    .bind(&s.server)
                    .bind(&s.subject)
                    .bind(&s.client_secret)
                    .bind(&s.access_token)
                    .bind(&s.refresh_token)
                    .bind(&s.subject);
            }
            q.execute(&mut *tx).await.unwrap();
        }
        tx.commit().await.unwrap();
    }
}

/// Bulk seeding on PostgreSQL: one `INSERT … SELECT FROM UNNEST` per 10,000 rows.
async fn seed_pg(store: &PgStore, k: &Keyring, rows: usize) {
    create_servers(store, rows).await;
    for chunk_start in (0..rows).step_by(10_000) {
        let n = 10_000.min(rows - chunk_start);
        let seeds = seed_rows(k, chunk_start, n);
        let col = |f: fn(&Seed) -> &String| seeds.iter().map(f).cloned().collect::<Vec<_>>();
        let bytes = |f: fn(&Seed) -> &Vec<u8>| seeds.iter().map(f).cloned().collect::<Vec<_>>();
        let sql = format!(
            "INSERT INTO credentials ({INSERT_COLS}) SELECT id, 't1', server, subject, 'https://as.example', \
             'https://mcp.example/mcp', 'https://as.example/token', 'client', cs, 'client_secret_basic', 'mcp', \
             at, 4102444800, rt, 0, subject, 0, 0 \
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bytea[], $5::bytea[], $6::bytea[]) \
             AS v(id, server, subject, cs, at, rt)"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(col(|s| &s.id))
            .bind(col(|s| &s.server))
            .bind(col(|s| &s.subject))
            .bind(bytes(|s| &s.client_secret))
            .bind(bytes(|s| &s.access_token))
            .bind(bytes(|s| &s.refresh_token))
            .execute(store.pool())
            .await
            .unwrap();
    }
    sqlx::query("ANALYZE credentials")
        .execute(store.pool())
        .await
        .unwrap();
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

/// Random slot lookups through the `Store` trait, one at a time (latency), then from
/// 16 concurrent tasks (throughput).
async fn lookups(label: &str, store: Arc<dyn Store>, rows: usize, n: usize) {
    let servers = rows.div_ceil(USERS_PER_SERVER);
    let slot_of = |rng: &mut rand::rngs::ThreadRng| {
        let s = rng.gen_range(0..servers);
        let u = rng.gen_range(0..USERS_PER_SERVER.min(rows - s * USERS_PER_SERVER));
        Slot {
            tenant: "t1".into(),
            server: format!("srv{s:03}"),
            subject: Some(format!("user{u:06}")),
        }
    };
    let mut rng = rand::thread_rng();
    // Warm-up: as many lookups as are measured (a serving instance is warm).
    for _ in 0..n {
        store
            .get_credential(&slot_of(&mut rng))
            .await
            .unwrap()
            .unwrap();
    }
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let slot = slot_of(&mut rng);
        let t = Instant::now();
        let row = store.get_credential(&slot).await.unwrap();
        times.push(t.elapsed());
        assert!(row.is_some());
    }
    times.sort();
    println!(
        "{label}: slot lookup over {rows} rows, {n} sequential: p50 {}, p90 {}, p99 {}, max {}",
        us(percentile(&times, 0.50)),
        us(percentile(&times, 0.90)),
        us(percentile(&times, 0.99)),
        us(times[times.len() - 1]),
    );
    let tasks = 16;
    let t = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::from_entropy();
                for _ in 0..n / tasks {
                    let s = rng.gen_range(0..servers);
                    let u = rng.gen_range(0..USERS_PER_SERVER.min(rows - s * USERS_PER_SERVER));
                    let slot = Slot {
                        tenant: "t1".into(),
                        server: format!("srv{s:03}"),
                        subject: Some(format!("user{u:06}")),
                    };
                    store.get_credential(&slot).await.unwrap().unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.await.unwrap();
    }
    let el = t.elapsed();
    println!(
        "{label}: slot lookup, {tasks} concurrent tasks: {:.0} lookups/s",
        (n / tasks * tasks) as f64 / el.as_secs_f64()
    );
}

async fn rotation(label: &str, store: &dyn Store, rows: usize) {
    let k2 = ring(&format!("2:{K2},1:{K1}"));
    let t = Instant::now();
    let report = rotate(
        store,
        &k2,
        RotateOptions {
            batch_size: RotateOptions::DEFAULT_BATCH,
            now: 0,
        },
        &NoProgress,
    )
    .await
    .unwrap();
    let el = t.elapsed();
    assert_eq!(report.rows_rewrapped as usize, rows);
    assert_eq!(report.values_rewrapped as usize, 3 * rows);
    println!(
        "{label}: keys rotate, {rows} rows ({} values) in {:.1} s: {:.0} rows/s",
        report.values_rewrapped,
        el.as_secs_f64(),
        rows as f64 / el.as_secs_f64()
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not meaningful here.
    let rows = env_usize("LATCHKEY_BENCH_ROWS", 1_000_000);
    let n = env_usize("LATCHKEY_BENCH_LOOKUPS", 20_000);
    let backends =
        std::env::var("LATCHKEY_BENCH_BACKENDS").unwrap_or_else(|_| "sqlite,postgres".into());
    let k1 = ring(&format!("1:{K1}"));

    if backends.contains("sqlite") {
        let dir = std::env::temp_dir().join(format!("latchkey-bench-{}", new_id()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = SqliteStore::open(&dir.join("latchkey.db")).await.unwrap();
        let t = Instant::now();
        seed_sqlite(&store, &k1, rows).await;
        println!(
            "sqlite: seeded {rows} rows in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        let store: Arc<dyn Store> = Arc::new(store);
        lookups("sqlite", store.clone(), rows, n).await;
        rotation("sqlite", store.as_ref(), rows).await;
        lookups("sqlite (after rotation)", store.clone(), rows, n).await;
        let size = std::fs::metadata(dir.join("latchkey.db"))
            .map(|m| m.len())
            .unwrap_or(0);
        println!("sqlite: database file {} MiB", size / (1 << 20));
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    if backends.contains("postgres") {
        let url = std::env::var("LATCHKEY_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let schema = format!("lk_bench_{}", new_id().replace('-', ""));
        let admin = sqlx::PgPool::connect(&url).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&admin)
            .await
            .unwrap();
        let opts: sqlx::postgres::PgConnectOptions = url.parse().unwrap();
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(16)
            .connect_with(opts.options([("search_path", schema.as_str())]))
            .await
            .unwrap();
        let store = PgStore::new(pool).await.unwrap();
        let t = Instant::now();
        seed_pg(&store, &k1, rows).await;
        println!(
            "postgres: seeded {rows} rows in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        let store: Arc<dyn Store> = Arc::new(store);
        lookups("postgres", store.clone(), rows, n).await;
        rotation("postgres", store.as_ref(), rows).await;
        lookups("postgres (after rotation)", store.clone(), rows, n).await;
        drop(store);
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
            .execute(&admin)
            .await
            .unwrap();
    }
}
