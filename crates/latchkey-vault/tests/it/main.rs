//! The same store suite against SQLite (a file) and the PostgreSQL server of the
//! machine (a fresh schema per run), plus the keyring against a real database file.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod api_keys;
mod headers;
mod hostile_binding;
mod rotation;
mod sessions;
mod wal;

use std::sync::Arc;

use latchkey_vault::keyring::StaticKeys;
use latchkey_vault::store::{FLOW_TTL_SECS, flow_is_live, new_id};
use latchkey_vault::{
    CredentialRow, FlowRow, KeySet, Keyring, PgStore, ServerRow, Slot, SqliteStore, Store,
    WriteBack,
};

const NOW: i64 = 1_800_000_000;

async fn sqlite() -> (Arc<dyn Store>, tempdir::Dir) {
    let dir = tempdir::Dir::new();
    let s = SqliteStore::open(&dir.path().join("latchkey.db"))
        .await
        .unwrap();
    (Arc::new(s), dir)
}

fn pg_url() -> String {
    std::env::var("LATCHKEY_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A store in a schema of its own on the machine's PostgreSQL, so runs never collide.
/// Returns the schema name for [`drop_schema`].
async fn postgres() -> (Arc<dyn Store>, String) {
    let (store, schema) = pg_store("lk_test", 16).await;
    (Arc::new(store), schema)
}

/// [`postgres`] as the concrete store (tests that reach its pool), in a schema named
/// `prefix_…`, with at most `connections` connections.
async fn pg_store(prefix: &str, connections: u32) -> (PgStore, String) {
    let url = pg_url();
    let schema = format!("{prefix}_{}", new_id().replace('-', ""));
    let admin = sqlx::PgPool::connect(&url)
        .await
        .expect("PostgreSQL at LATCHKEY_TEST_DATABASE_URL");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let opts: sqlx::postgres::PgConnectOptions = url.parse().unwrap();
    let opts = opts.options([("search_path", schema.as_str())]);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(connections)
        .connect_with(opts)
        .await
        .unwrap();
    (PgStore::new(pool).await.unwrap(), schema)
}

async fn drop_schema(schema: &str) {
    let admin = sqlx::PgPool::connect(&pg_url()).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(&admin)
        .await
        .unwrap();
}

mod tempdir {
    /// A temporary directory removed on drop.
    pub(crate) struct Dir(std::path::PathBuf);
    impl Dir {
        pub(crate) fn new() -> Self {
            let p = std::env::temp_dir().join(format!("latchkey-vault-{}", uuid_like()));
            std::fs::create_dir_all(&p).unwrap();
            Self(p)
        }
        pub(crate) fn path(&self) -> &std::path::Path {
            &self.0
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    fn uuid_like() -> String {
        latchkey_vault::store::new_id()
    }
}

fn server(tenant: &str, id: &str) -> ServerRow {
    ServerRow::new(
        id,
        tenant,
        format!("server {id}"),
        "https://mcp.example/mcp",
    )
}

fn slot(tenant: &str, server: &str, subject: Option<&str>) -> Slot {
    Slot {
        tenant: tenant.into(),
        server: server.into(),
        subject: subject.map(str::to_owned),
    }
}

fn credential(slot: &Slot, refresh: &[u8]) -> CredentialRow {
    CredentialRow {
        id: new_id(),
        slot: slot.clone(),
        issuer: Some("https://as.example".into()),
        resource: Some("https://mcp.example/mcp".into()),
        token_endpoint: "https://as.example/token".into(),
        revocation_endpoint: None,
        client_id: Some("c".into()),
        client_secret: None,
        auth_method: Some("none".into()),
        scopes: Some("mcp:read".into()),
        access_token: Some(b"at-envelope".to_vec()),
        access_expires_at: Some(NOW + 3600),
        refresh_token: Some(refresh.to_vec()),
        generation: 0,
        initiated_by: Some("alice".into()),
        created_at: NOW,
        updated_at: NOW,
        grant_type: None,
        needs_consent: None,
    }
}

fn flow(slot: &Slot, state_hash: &str, created: i64) -> FlowRow {
    FlowRow {
        state_hash: state_hash.into(),
        slot: slot.clone(),
        initiated_by: "alice".into(),
        state_created_at: created,
        verifier: b"verifier-envelope".to_vec(),
        issuer: "https://as.example".into(),
        resource: "https://mcp.example/mcp".into(),
        redirect_uri: "https://latchkey.example/v1/oauth/callback".into(),
        client_id: "c".into(),
        scopes: None,
        iss_required: true,
    }
}

/// The behaviour both backends must share.
async fn suite(store: Arc<dyn Store>) {
    servers(store.as_ref()).await;
    store.create_server(&server("t1", "s1"), NOW).await.unwrap();
    store.create_server(&server("t2", "s2"), NOW).await.unwrap();

    // Shared slot: two upserts leave one row, with the second's id (NULL-distinct trap).
    let shared = slot("t1", "s1", None);
    let first = credential(&shared, b"rt-1");
    store.upsert_credential(&first).await.unwrap();
    let second = credential(&shared, b"rt-2");
    store.upsert_credential(&second).await.unwrap();
    let got = store.get_credential(&shared).await.unwrap().unwrap();
    assert_eq!(got.id, second.id, "upsert assigns the new row id");
    assert_eq!(got.refresh_token.as_deref(), Some(&b"rt-2"[..]));
    assert_eq!(got.generation, 0);

    // Per-user slots are separate from the shared one and from each other.
    let alice = slot("t1", "s1", Some("alice"));
    let bob = slot("t1", "s1", Some("bob"));
    store
        .upsert_credential(&credential(&alice, b"rt-a"))
        .await
        .unwrap();
    store
        .upsert_credential(&credential(&alice, b"rt-a2"))
        .await
        .unwrap();
    store
        .upsert_credential(&credential(&bob, b"rt-b"))
        .await
        .unwrap();
    assert_eq!(
        store
            .get_credential(&alice)
            .await
            .unwrap()
            .unwrap()
            .refresh_token
            .unwrap(),
        b"rt-a2"
    );
    assert_eq!(
        store
            .get_credential(&bob)
            .await
            .unwrap()
            .unwrap()
            .refresh_token
            .unwrap(),
        b"rt-b"
    );
    assert_eq!(
        store.get_credential(&shared).await.unwrap().unwrap().id,
        second.id
    );

    // CAS write-back: succeeds once, then loses to its own stale generation.
    let row = store.get_credential(&alice).await.unwrap().unwrap();
    let wb = WriteBack {
        tenant: "t1".into(),
        id: row.id.clone(),
        generation: row.generation,
        access_token: b"at-new".to_vec(),
        access_expires_at: Some(NOW + 7200),
        refresh_token: Some(b"rt-rotated".to_vec()),
        now: NOW + 1,
    };
    assert!(store.write_back(&wb).await.unwrap());
    assert!(!store.write_back(&wb).await.unwrap(), "stale generation");
    let after = store.get_credential(&alice).await.unwrap().unwrap();
    assert_eq!(after.generation, 1);
    assert_eq!(after.refresh_token.as_deref(), Some(&b"rt-rotated"[..]));
    // A write-back without a new refresh token keeps the stored one.
    let keep = WriteBack {
        generation: 1,
        refresh_token: None,
        ..wb.clone()
    };
    assert!(store.write_back(&keep).await.unwrap());
    assert_eq!(
        store
            .get_credential(&alice)
            .await
            .unwrap()
            .unwrap()
            .refresh_token
            .unwrap(),
        b"rt-rotated"
    );

    // CAS loses to a concurrent re-deposit (new row id) and never reverts it.
    let before = store.get_credential(&bob).await.unwrap().unwrap();
    let redeposit = CredentialRow {
        scopes: Some("mcp:read mcp:write".into()),
        ..credential(&bob, b"rt-b-new")
    };
    store.upsert_credential(&redeposit).await.unwrap();
    let late = WriteBack {
        id: before.id.clone(),
        generation: before.generation,
        ..wb.clone()
    };
    assert!(!store.write_back(&late).await.unwrap());
    let now_bob = store.get_credential(&bob).await.unwrap().unwrap();
    assert_eq!(now_bob.refresh_token.unwrap(), b"rt-b-new");
    assert_eq!(now_bob.scopes.as_deref(), Some("mcp:read mcp:write"));

    // CAS loses to a delete and never resurrects the row.
    let row = store.get_credential(&bob).await.unwrap().unwrap();
    assert!(store.delete_credential(&bob).await.unwrap());
    assert!(!store.delete_credential(&bob).await.unwrap(), "idempotent");
    let ghost = WriteBack {
        id: row.id,
        generation: row.generation,
        ..wb.clone()
    };
    assert!(!store.write_back(&ghost).await.unwrap());
    assert!(store.get_credential(&bob).await.unwrap().is_none());

    // Tenant isolation: another tenant sees nothing, deletes nothing, writes nothing.
    let foreign = slot("t2", "s1", Some("alice"));
    assert!(store.get_credential(&foreign).await.unwrap().is_none());
    assert!(!store.delete_credential(&foreign).await.unwrap());
    let row = store.get_credential(&alice).await.unwrap().unwrap();
    let cross = WriteBack {
        tenant: "t2".into(),
        id: row.id.clone(),
        generation: row.generation,
        ..wb.clone()
    };
    assert!(!store.write_back(&cross).await.unwrap());
    assert!(!store.delete_server("t2", "s1").await.unwrap());
    assert!(store.get_credential(&alice).await.unwrap().is_some());

    // A credential for an unknown server is refused by the foreign key.
    assert!(
        store
            .upsert_credential(&credential(&slot("t1", "nope", None), b"x"))
            .await
            .is_err()
    );

    // Flows: consumed exactly once under 50 concurrent callbacks.
    store
        .insert_flow(&flow(&alice, "hash-1", NOW))
        .await
        .unwrap();
    let pending = store.flows_for_slot(&alice).await.unwrap();
    assert_eq!(
        pending,
        vec![flow(&alice, "hash-1", NOW)],
        "a slot's pending flows"
    );
    assert!(
        store
            .flows_for_slot(&slot("t2", "s1", Some("alice")))
            .await
            .unwrap()
            .is_empty(),
        "tenant scoped"
    );
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            s.consume_flow("hash-1").await.unwrap()
        }));
    }
    let mut winners = 0;
    for t in tasks {
        if let Some(f) = t.await.unwrap() {
            winners += 1;
            assert_eq!(f.slot, alice);
            assert_eq!(f.verifier, b"verifier-envelope");
        }
    }
    assert_eq!(winners, 1);
    assert!(
        store.consume_flow("hash-1").await.unwrap().is_none(),
        "replay gets nothing"
    );

    // TTL anchored to state_created_at: a token refresh at minute 9 does not keep the
    // flow alive at minute 11.
    store
        .insert_flow(&flow(&alice, "hash-2", NOW))
        .await
        .unwrap();
    let row = store.get_credential(&alice).await.unwrap().unwrap();
    let refresh_at_9 = WriteBack {
        id: row.id,
        generation: row.generation,
        now: NOW + 9 * 60,
        ..wb.clone()
    };
    assert!(store.write_back(&refresh_at_9).await.unwrap());
    let f = store.consume_flow("hash-2").await.unwrap().unwrap();
    assert_eq!(f.state_created_at, NOW);
    assert!(!flow_is_live(f.state_created_at, NOW + 11 * 60));
    assert!(flow_is_live(f.state_created_at, NOW + FLOW_TTL_SECS - 1));

    // Cascade: deleting the server removes its credentials and flows.
    store
        .insert_flow(&flow(&shared, "hash-3", NOW))
        .await
        .unwrap();
    assert!(store.delete_server("t1", "s1").await.unwrap());
    assert!(store.get_credential(&shared).await.unwrap().is_none());
    assert!(store.get_credential(&alice).await.unwrap().is_none());
    assert!(store.consume_flow("hash-3").await.unwrap().is_none());
    assert!(
        store
            .get_registered_client("t1", "s1", "https://as1.example")
            .await
            .unwrap()
            .is_none()
    );
}

/// Server settings: stored, listed per tenant, updated only within the tenant.
async fn servers(store: &dyn Store) {
    let mut s = server("ta", "srv-a");
    s.auth_type = "oauth".into();
    s.token_scope = "shared".into();
    s.client_id = Some("pre".into());
    s.client_secret = Some(b"envelope".to_vec());
    s.scopes = Some("mcp:read".into());
    s.unprefixed = true;
    store.create_server(&s, NOW).await.unwrap();
    store
        .create_server(&server("ta", "srv-b"), NOW)
        .await
        .unwrap();
    store
        .create_server(&server("tb", "srv-c"), NOW)
        .await
        .unwrap();
    assert_eq!(
        store.get_server("ta", "srv-a").await.unwrap(),
        Some(s.clone())
    );
    assert_eq!(
        store.get_server("tb", "srv-a").await.unwrap(),
        None,
        "tenant scoped"
    );
    let listed: Vec<String> = store
        .list_servers("ta")
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(listed, vec!["srv-a", "srv-b"]);
    let mut edit = s.clone();
    edit.url = "https://other.example/mcp".into();
    edit.client_secret = None;
    // Migration 0034: the naming setting is written and read back, off by default.
    edit.unprefixed = false;
    assert!(!server("ta", "srv-b").unprefixed);
    assert!(store.update_server(&edit, NOW + 1).await.unwrap());
    assert_eq!(
        store.get_server("ta", "srv-a").await.unwrap(),
        Some(edit.clone())
    );
    let mut foreign = edit.clone();
    foreign.tenant = "tb".into();
    assert!(
        !store.update_server(&foreign, NOW + 2).await.unwrap(),
        "no cross-tenant edit"
    );
    assert!(store.delete_server("ta", "srv-b").await.unwrap());
    assert!(store.delete_server("ta", "srv-a").await.unwrap());
    assert!(store.delete_server("tb", "srv-c").await.unwrap());
    assert!(format!("{edit:?}").contains("has_client_secret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_suite_on_sqlite() {
    let (store, _dir) = sqlite().await;
    suite(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_suite_on_postgres() {
    let (store, schema) = postgres().await;
    suite(store).await;
    drop_schema(&schema).await;
}

#[tokio::test]
async fn migrations_are_idempotent() {
    let dir = tempdir::Dir::new();
    let path = dir.path().join("m.db");
    SqliteStore::open(&path).await.unwrap();
    SqliteStore::open(&path).await.unwrap();
}

#[tokio::test]
async fn no_plaintext_token_in_the_sqlite_file() {
    let dir = tempdir::Dir::new();
    let path = dir.path().join("latchkey.db");
    let store = SqliteStore::open(&path).await.unwrap();
    let keyring = Keyring::new(StaticKeys(Some(
        KeySet::parse("1:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")
            .unwrap(),
    )));
    store.create_server(&server("t1", "s1"), NOW).await.unwrap();
    let token = b"rt-PLAINTEXT-MARKER-7f3a9c";
    let mut c = credential(&slot("t1", "s1", Some("alice")), b"");
    c.refresh_token = Some(keyring.encrypt(token, c.aad("refresh_token")).unwrap());
    c.access_token = Some(
        keyring
            .encrypt(b"at-PLAINTEXT-MARKER", c.aad("access_token"))
            .unwrap(),
    );
    store.upsert_credential(&c).await.unwrap();
    let row = store.get_credential(&c.slot).await.unwrap().unwrap();
    let back = keyring
        .decrypt(
            row.refresh_token.as_deref().unwrap(),
            row.aad("refresh_token"),
        )
        .unwrap();
    assert_eq!(&back[..], token);
    store.pool().close().await;
    let mut bytes = std::fs::read(&path).unwrap();
    if let Ok(wal) = std::fs::read(dir.path().join("latchkey.db-wal")) {
        bytes.extend(wal);
    }
    assert!(
        bytes.windows(8).any(|w| w == b"https://"),
        "the scan reads the data pages"
    );
    assert!(
        !bytes.windows(token.len()).any(|w| w == token),
        "plaintext refresh token in the database file"
    );
    assert!(!bytes.windows(19).any(|w| w == b"at-PLAINTEXT-MARKER"));
}
