//! API keys on both backends: stored by hash only, found by hash, listed and deleted
//! within their tenant (and owner), touched at most once a minute; their expiry,
//! scopes and creator's role kept as written (migration 0008, issue 15 item 12), and
//! the SQLite files private to their owner (item 13).

use std::sync::Arc;

use latchkey_vault::store::{API_KEY_PREFIX_LEN, API_KEY_TOUCH_SECS, new_ordered_id};
use latchkey_vault::{ApiKeyRow, SqliteStore, Store, StoreError};
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::NOW;

/// A random key in Latchkey's shape, and its SHA-256.
fn key() -> (String, [u8; 32]) {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    let k = format!("lk_{}", hex(&bytes));
    let h = Sha256::digest(k.as_bytes()).into();
    (k, h)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn row(tenant: &str, subject: &str, role: &str, name: &str, hash: [u8; 32], at: i64) -> ApiKeyRow {
    ApiKeyRow {
        id: new_ordered_id(),
        tenant: tenant.into(),
        subject: subject.into(),
        role: role.into(),
        name: name.into(),
        hash,
        created_at: at,
        last_used_at: None,
        expires_at: at + 86_400,
        scopes: Some(vec!["mcp".into(), "tools:read".into()]),
        creator_role: Some(role.into()),
        servers: None,
        prefix: None,
    }
}

fn ids(rows: &[ApiKeyRow]) -> Vec<&str> {
    rows.iter().map(|r| r.id.as_str()).collect()
}

async fn suite(store: Arc<dyn Store>) {
    let (_, h1) = key();
    let (_, h2) = key();
    let (_, h3) = key();
    let (_, h4) = key();
    let alice = row("t1", "alice", "member", "laptop", h1, NOW);
    let alice2 = row("t1", "alice", "member", "ci", h2, NOW + 1);
    let root = row("t1", "root", "admin", "ops", h3, NOW + 2);
    let other = row("t2", "alice", "admin", "elsewhere", h4, NOW);
    for r in [&alice, &alice2, &root, &other] {
        store.insert_api_key(r).await.unwrap();
    }

    // Found by hash, with everything it acts as.
    assert_eq!(
        store.api_key_by_hash(&h1).await.unwrap(),
        Some(alice.clone())
    );
    assert_eq!(
        store.api_key_by_hash(&h4).await.unwrap(),
        Some(other.clone())
    );
    let (_, unknown) = key();
    assert_eq!(store.api_key_by_hash(&unknown).await.unwrap(), None);
    let mut near = h1;
    near[31] ^= 1;
    assert_eq!(
        store.api_key_by_hash(&near).await.unwrap(),
        None,
        "one bit off"
    );

    // The hash is unique; so is the id.
    let dup = row("t1", "bob", "member", "dup", h1, NOW);
    assert!(matches!(
        store.insert_api_key(&dup).await,
        Err(StoreError::Conflict(_))
    ));
    let (_, h5) = key();
    let same_id = ApiKeyRow {
        hash: h5,
        ..alice.clone()
    };
    assert!(store.insert_api_key(&same_id).await.is_err());

    // Listed per owner, or per tenant (admins), oldest first; never across tenants.
    assert_eq!(
        ids(&store.list_api_keys("t1", Some("alice")).await.unwrap()),
        vec![alice.id.as_str(), alice2.id.as_str()]
    );
    assert_eq!(
        ids(&store.list_api_keys("t1", None).await.unwrap()),
        vec![alice.id.as_str(), alice2.id.as_str(), root.id.as_str()]
    );
    assert_eq!(
        ids(&store.list_api_keys("t2", Some("alice")).await.unwrap()),
        vec![other.id.as_str()]
    );
    assert!(store.list_api_keys("t3", None).await.unwrap().is_empty());

    // Touched at most once a minute.
    assert!(store.touch_api_key(&alice.id, NOW + 10).await.unwrap());
    assert!(!store.touch_api_key(&alice.id, NOW + 30).await.unwrap());
    assert!(
        !store
            .touch_api_key(&alice.id, NOW + 10 + API_KEY_TOUCH_SECS - 1)
            .await
            .unwrap()
    );
    assert_eq!(
        store
            .api_key_by_hash(&h1)
            .await
            .unwrap()
            .unwrap()
            .last_used_at,
        Some(NOW + 10)
    );
    assert!(
        store
            .touch_api_key(&alice.id, NOW + 10 + API_KEY_TOUCH_SECS)
            .await
            .unwrap()
    );
    assert_eq!(
        store
            .api_key_by_hash(&h1)
            .await
            .unwrap()
            .unwrap()
            .last_used_at,
        Some(NOW + 10 + API_KEY_TOUCH_SECS)
    );
    assert!(!store.touch_api_key("no-such-key", NOW).await.unwrap());

    // Delete: another tenant deletes nothing; another owner deletes nothing; the owner
    // does; a tenant-wide delete (admins) reaches any key of the tenant only.
    assert_eq!(
        store.delete_api_key("t2", &alice.id, None).await.unwrap(),
        None
    );
    assert_eq!(
        store
            .delete_api_key("t2", &alice.id, Some("alice"))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .delete_api_key("t1", &root.id, Some("alice"))
            .await
            .unwrap(),
        None
    );
    assert!(store.api_key_by_hash(&h1).await.unwrap().is_some());
    assert!(store.api_key_by_hash(&h3).await.unwrap().is_some());
    let gone = store
        .delete_api_key("t1", &alice.id, Some("alice"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(gone.id, alice.id);
    assert_eq!(gone.last_used_at, Some(NOW + 10 + API_KEY_TOUCH_SECS));
    assert_eq!(
        store
            .delete_api_key("t1", &alice.id, Some("alice"))
            .await
            .unwrap(),
        None,
        "already gone"
    );
    assert_eq!(store.api_key_by_hash(&h1).await.unwrap(), None);
    assert_eq!(
        store.delete_api_key("t1", &alice2.id, None).await.unwrap(),
        Some(alice2.clone())
    );
    assert_eq!(
        store.delete_api_key("t1", &other.id, None).await.unwrap(),
        None
    );
    assert_eq!(
        ids(&store.list_api_keys("t1", None).await.unwrap()),
        vec![root.id.as_str()]
    );
    assert_eq!(
        store.api_key_by_hash(&h4).await.unwrap(),
        Some(other.clone())
    );
    assert!(
        !format!("{other:?}").contains(&hex(&h4)),
        "no hash in Debug"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_on_sqlite() {
    let (store, _dir) = super::sqlite().await;
    suite(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_on_postgres() {
    let (store, schema) = super::postgres().await;
    suite(store).await;
    super::drop_schema(&schema).await;
}

/// Only the hash reaches the database file: the key itself is nowhere in it (nor in
/// the write-ahead log).
#[tokio::test]
async fn no_plaintext_api_key_in_the_sqlite_file() {
    let dir = super::tempdir::Dir::new();
    let path = dir.path().join("latchkey.db");
    let store = SqliteStore::open(&path).await.unwrap();
    let (plain, hash) = key();
    let r = row("t1", "alice", "member", "NAME-MARKER-api-key", hash, NOW);
    store.insert_api_key(&r).await.unwrap();
    assert_eq!(store.api_key_by_hash(&hash).await.unwrap(), Some(r));
    let mut bytes = std::fs::read(&path).unwrap();
    if let Ok(wal) = std::fs::read(dir.path().join("latchkey.db-wal")) {
        bytes.extend(wal);
    }
    assert!(
        bytes.windows(19).any(|w| w == b"NAME-MARKER-api-key"),
        "the scan reads the data pages"
    );
    assert!(bytes.windows(32).any(|w| w == hash), "the hash is stored");
    let needle = plain.as_bytes();
    assert!(
        !bytes.windows(needle.len()).any(|w| w == needle),
        "plaintext API key in the database file"
    );
    // Nor its random part alone, in any encoding the test used.
    let random = &needle[3..];
    assert!(!bytes.windows(random.len()).any(|w| w == random));
    store.pool().close().await;
}

/// Expiry, scopes, the creator's role, the server restriction and the prefix round-trip
/// on both backends, including a key with no scopes and one that predates them (`None`).
async fn bounds(store: Arc<dyn Store>) {
    let (_, h1) = key();
    let (_, h2) = key();
    let (_, h3) = key();
    let a = ApiKeyRow {
        expires_at: NOW + 7 * 86_400,
        role: "member".into(),
        creator_role: Some("admin".into()),
        ..row("t1", "ann", "admin", "downgraded", h1, NOW)
    };
    let b = ApiKeyRow {
        scopes: Some(Vec::new()),
        ..row("t1", "ann", "member", "no-scopes", h2, NOW)
    };
    let c = ApiKeyRow {
        scopes: None,
        creator_role: None,
        ..row("t1", "ann", "member", "legacy", h3, NOW)
    };
    // Migration 0033: a key restricted to servers, with its prefix (and one with an
    // empty list, which the API refuses but the store keeps as written).
    let (k4, h4) = key();
    let d = ApiKeyRow {
        servers: Some(vec!["srv-1".into(), "srv-2".into()]),
        prefix: Some(k4[..API_KEY_PREFIX_LEN].to_owned()),
        ..row("t1", "ann", "member", "restricted", h4, NOW)
    };
    let (_, h5) = key();
    let e = ApiKeyRow {
        servers: Some(Vec::new()),
        ..row("t1", "ann", "member", "none", h5, NOW)
    };
    for r in [&a, &b, &c, &d, &e] {
        store.insert_api_key(r).await.unwrap();
        assert_eq!(
            store.api_key_by_hash(&r.hash).await.unwrap().as_ref(),
            Some(r)
        );
    }
    let listed = store.list_api_keys("t1", Some("ann")).await.unwrap();
    assert_eq!(listed, vec![a, b, c, d, e]);
    // A longer prefix is cut to its first characters: never more of the key.
    let (k6, h6) = key();
    let long = ApiKeyRow {
        prefix: Some(k6.clone()),
        ..row("t1", "ann", "member", "long", h6, NOW)
    };
    store.insert_api_key(&long).await.unwrap();
    let stored = store.api_key_by_hash(&h6).await.unwrap().unwrap();
    assert_eq!(stored.prefix.as_deref(), Some(&k6[..API_KEY_PREFIX_LEN]));
    let bad = ApiKeyRow {
        creator_role: Some("owner".into()),
        ..row("t1", "ann", "member", "bad", key().1, NOW)
    };
    assert!(store.insert_api_key(&bad).await.is_err(), "checked role");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_bounds_on_sqlite() {
    let (store, _dir) = super::sqlite().await;
    bounds(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_bounds_on_postgres() {
    let (store, schema) = super::postgres().await;
    bounds(store).await;
    super::drop_schema(&schema).await;
}

/// Item 13: the database file SQLite creates, and its `-wal` and `-shm` files, are
/// readable by their owner only, whatever the umask.
#[cfg(unix)]
#[tokio::test]
async fn the_sqlite_files_are_created_0600() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = super::tempdir::Dir::new();
    let path = dir.path().join("latchkey.db");
    let store = SqliteStore::open(&path).await.unwrap();
    let (_, hash) = key();
    store
        .insert_api_key(&row("t1", "alice", "member", "k", hash, NOW))
        .await
        .unwrap();
    let mut seen = 0;
    for name in ["latchkey.db", "latchkey.db-wal", "latchkey.db-shm"] {
        let Ok(meta) = std::fs::metadata(dir.path().join(name)) else {
            continue;
        };
        seen += 1;
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{name}");
    }
    assert!(seen >= 2, "the database and its write-ahead log exist");
    store.pool().close().await;
}

/// Migration 0008 on keys made before it: each gets an expiry (its creation plus 7
/// days for an admin key, 30 for a member key), its role as its creator's, and no
/// recorded scopes. `migrator` is the backend's full set; only 0001–0007 run first.
async fn legacy_keys_get_an_expiry<DB>(
    pool: sqlx::Pool<DB>,
    migrator: sqlx::migrate::Migrator,
    open: impl AsyncFnOnce(sqlx::Pool<DB>) -> Arc<dyn Store>,
) where
    DB: sqlx::Database,
    <DB as sqlx::Database>::Connection: sqlx::migrate::Migrate,
    for<'q> <DB as sqlx::Database>::Arguments: sqlx::IntoArguments<DB>,
    for<'c> &'c mut <DB as sqlx::Database>::Connection: sqlx::Executor<'c, Database = DB>,
    for<'c> &'c sqlx::Pool<DB>: sqlx::Executor<'c, Database = DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> Vec<u8>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    let mut before = migrator;
    before.migrations = before
        .migrations
        .iter()
        .filter(|m| m.version <= 7)
        .cloned()
        .collect::<Vec<_>>()
        .into();
    before.run(&pool).await.unwrap();
    let (_, admin_hash) = key();
    let (_, member_hash) = key();
    for (id, role, hash) in [
        ("k-admin", "admin", admin_hash),
        ("k-member", "member", member_hash),
    ] {
        sqlx::query(
            "INSERT INTO api_keys (id, tenant_id, subject, role, name, hash, created_at, last_used_at) \
             VALUES ($1, 't1', 'ann', $2, 'old', $3, $4, NULL)",
        )
        .bind(id.to_owned())
        .bind(role.to_owned())
        .bind(hash.to_vec())
        .bind(NOW)
        .execute(&pool)
        .await
        .unwrap();
    }
    let store = open(pool).await;
    let admin = store.api_key_by_hash(&admin_hash).await.unwrap().unwrap();
    assert_eq!(
        (
            admin.expires_at,
            admin.creator_role.as_deref(),
            admin.scopes
        ),
        (NOW + 7 * 86_400, Some("admin"), None)
    );
    let member = store.api_key_by_hash(&member_hash).await.unwrap().unwrap();
    assert_eq!(
        (
            member.expires_at,
            member.creator_role.as_deref(),
            member.scopes
        ),
        (NOW + 30 * 86_400, Some("member"), None)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_api_keys_get_an_expiry_on_sqlite() {
    let dir = super::tempdir::Dir::new();
    let opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.path().join("latchkey.db"))
        .create_if_missing(true);
    let pool = sqlx::SqlitePool::connect_with(opts).await.unwrap();
    legacy_keys_get_an_expiry(pool, sqlx::migrate!("migrations/sqlite"), async |pool| {
        Arc::new(SqliteStore::new(pool).await.unwrap()) as Arc<dyn Store>
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_api_keys_get_an_expiry_on_postgres() {
    let (store, schema) = super::postgres().await;
    drop(store);
    // A second schema, empty, on the same server.
    let fresh = format!("{schema}_legacy");
    let admin = sqlx::PgPool::connect(&super::pg_url()).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {fresh}")))
        .execute(&admin)
        .await
        .unwrap();
    let opts: sqlx::postgres::PgConnectOptions = super::pg_url().parse().unwrap();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect_with(opts.options([("search_path", fresh.as_str())]))
        .await
        .unwrap();
    legacy_keys_get_an_expiry(pool, sqlx::migrate!("migrations/postgres"), async |pool| {
        Arc::new(latchkey_vault::PgStore::new(pool).await.unwrap()) as Arc<dyn Store>
    })
    .await;
    super::drop_schema(&fresh).await;
    super::drop_schema(&schema).await;
}
