//! API keys on both backends: stored by hash only, found by hash, listed and deleted
//! within their tenant (and owner), touched at most once a minute.

use std::sync::Arc;

use latchkey_vault::store::{API_KEY_TOUCH_SECS, new_ordered_id};
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
