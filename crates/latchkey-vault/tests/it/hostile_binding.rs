//! Issue 15, items 6 and 7, on both backends: a sealed value is bound to what it
//! belongs to (tenant, server, slot subject, issuer, resource, endpoints), so a row
//! edited or moved in the database no longer opens; values sealed before the binding
//! existed (to their row id only) are re-sealed by the rotation machinery, after which
//! an old row-id-only value is refused. Plus the key ids in use (item 8).

use std::collections::BTreeSet;

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use hkdf::Hkdf;
use latchkey_vault::keyring::{HKDF_INFO, StaticKeys};
use latchkey_vault::rotate::{NoProgress, RotateOptions, SealedTable, rotate};
use latchkey_vault::store::{RegisteredClientRow, new_id};
use latchkey_vault::{
    CredentialRow, KeySet, Keyring, KeyringError, PgStore, SqliteStore, Store, WriteBack,
};
use sha2::Sha256;

use super::{NOW, credential, flow, server, slot, tempdir};

pub(super) const K1: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
pub(super) const K2: &str = "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff000102030405060708090a0b0c0d0e0f";

pub(super) fn ring(spec: &str) -> Keyring {
    Keyring::new(StaticKeys(Some(KeySet::parse(spec).unwrap())))
}

/// Runs `sql` against the database behind the store, as an attacker with write access
/// to the database would.
pub(super) enum Db {
    Sqlite(SqliteStore, #[allow(dead_code)] tempdir::Dir),
    Pg(PgStore, String),
}

impl Db {
    pub(super) async fn sqlite() -> Self {
        let dir = tempdir::Dir::new();
        let s = SqliteStore::open(&dir.path().join("latchkey.db"))
            .await
            .unwrap();
        Db::Sqlite(s, dir)
    }

    pub(super) async fn postgres() -> Self {
        let (store, schema) = super::pg_store("lk_hostile", 4).await;
        Db::Pg(store, schema)
    }

    pub(super) fn store(&self) -> &dyn Store {
        match self {
            Db::Sqlite(s, _) => s,
            Db::Pg(s, _) => s,
        }
    }

    pub(super) async fn exec(&self, sql: &str) {
        match self {
            Db::Sqlite(s, _) => {
                sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
                    .execute(s.pool())
                    .await
                    .unwrap();
            }
            Db::Pg(s, _) => {
                sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
                    .execute(s.pool())
                    .await
                    .unwrap();
            }
        }
    }

    pub(super) async fn drop(self) {
        if let Db::Pg(s, schema) = self {
            s.pool().close().await;
            super::drop_schema(&schema).await;
        }
    }
}

fn open(
    k: &Keyring,
    env: Option<&[u8]>,
    aad: latchkey_vault::Aad<'_>,
) -> Result<String, KeyringError> {
    k.open(env.unwrap(), aad).map(|s| s.expose().to_owned())
}

/// A credential of alice's slot on `t1/s1`, every value sealed with its binding.
async fn seed_alice(db: &Db, k: &Keyring) -> CredentialRow {
    let store = db.store();
    store.create_server(&server("t1", "s1"), NOW).await.unwrap();
    store.create_server(&server("t2", "s2"), NOW).await.unwrap();
    let mut c = credential(&slot("t1", "s1", Some("alice")), b"");
    c.revocation_endpoint = Some("https://as.example/revoke".into());
    c.client_secret = Some(k.encrypt(b"cs-alice", c.aad("client_secret")).unwrap());
    c.access_token = Some(k.encrypt(b"at-alice", c.aad("access_token")).unwrap());
    c.refresh_token = Some(k.encrypt(b"rt-alice", c.aad("refresh_token")).unwrap());
    store.upsert_credential(&c).await.unwrap();
    c
}

/// Every sealed value of the row `slot` now holds fails to open under its binding.
async fn assert_refused(db: &Db, k: &Keyring, s: &latchkey_vault::Slot, what: &str) {
    let row = db.store().get_credential(s).await.unwrap().unwrap();
    for (col, env) in [
        ("client_secret", row.client_secret.as_deref()),
        ("access_token", row.access_token.as_deref()),
        ("refresh_token", row.refresh_token.as_deref()),
    ] {
        if env.is_none() {
            continue;
        }
        assert_eq!(
            open(k, env, row.aad(col)),
            Err(KeyringError::Undecryptable),
            "{what}: {col} still opens"
        );
    }
}

async fn edited_or_moved_credentials_do_not_open(db: Db) {
    let k = ring(&format!("1:{K1}"));
    let c = seed_alice(&db, &k).await;
    let alice = c.slot.clone();
    let row = db.store().get_credential(&alice).await.unwrap().unwrap();
    assert_eq!(
        open(&k, row.refresh_token.as_deref(), row.aad("refresh_token")).unwrap(),
        "rt-alice"
    );
    let id = &c.id;

    // Each edit alone makes the row unopenable; each is undone before the next.
    let edits: [(&str, &str, &str); 5] = [
        (
            "token_endpoint",
            "'https://evil.example/token'",
            "'https://as.example/token'",
        ),
        ("issuer", "'https://evil.example'", "'https://as.example'"),
        (
            "revocation_endpoint",
            "'https://evil.example/revoke'",
            "'https://as.example/revoke'",
        ),
        (
            "resource",
            "'https://evil.example/mcp'",
            "'https://mcp.example/mcp'",
        ),
        ("issuer", "NULL", "'https://as.example'"),
    ];
    for (column, evil, good) in edits {
        db.exec(&format!(
            "UPDATE credentials SET {column} = {evil} WHERE id = '{id}'"
        ))
        .await;
        assert_refused(&db, &k, &alice, &format!("{column} edited")).await;
        db.exec(&format!(
            "UPDATE credentials SET {column} = {good} WHERE id = '{id}'"
        ))
        .await;
        let row = db.store().get_credential(&alice).await.unwrap().unwrap();
        assert!(
            open(&k, row.refresh_token.as_deref(), row.aad("refresh_token")).is_ok(),
            "{column} restored"
        );
    }

    // Moved to another user's slot: mallory's slot holds alice's token, which does not
    // open there.
    db.exec(&format!(
        "UPDATE credentials SET subject = 'mallory' WHERE id = '{id}'"
    ))
    .await;
    let mallory = slot("t1", "s1", Some("mallory"));
    assert_refused(&db, &k, &mallory, "moved to another subject").await;
    // To the shared slot.
    db.exec(&format!(
        "UPDATE credentials SET subject = NULL WHERE id = '{id}'"
    ))
    .await;
    assert_refused(&db, &k, &slot("t1", "s1", None), "moved to the shared slot").await;
    // With its server to another tenant.
    db.exec(&format!("UPDATE credentials SET subject = 'alice', tenant_id = 't2', server_id = 's2' WHERE id = '{id}'")).await;
    assert_refused(
        &db,
        &k,
        &slot("t2", "s2", Some("alice")),
        "moved to another tenant",
    )
    .await;

    // A write-back seals to the row as read: still bound, still opens only there.
    db.exec(&format!(
        "UPDATE credentials SET tenant_id = 't1', server_id = 's1' WHERE id = '{id}'"
    ))
    .await;
    let row = db.store().get_credential(&alice).await.unwrap().unwrap();
    let at = k.encrypt(b"at-2", row.aad("access_token")).unwrap();
    assert!(
        db.store()
            .write_back(&WriteBack {
                tenant: "t1".into(),
                id: row.id.clone(),
                generation: row.generation,
                access_token: at,
                access_expires_at: Some(NOW + 60),
                refresh_token: None,
                now: NOW,
            })
            .await
            .unwrap()
    );
    db.exec(&format!(
        "UPDATE credentials SET subject = 'mallory' WHERE id = '{id}'"
    ))
    .await;
    assert_refused(&db, &k, &mallory, "written back, then moved").await;
    db.drop().await;
}

async fn other_sealed_tables_are_bound(db: Db) {
    let k = ring(&format!("1:{K1}"));
    let store = db.store();
    let mut srv = server("t1", "s1");
    srv.client_id = Some("pre".into());
    srv.issuer = Some("https://as.example".into());
    srv.client_secret = Some(k.encrypt(b"pre-secret", srv.secret_aad()).unwrap());
    store.create_server(&srv, NOW).await.unwrap();
    store.create_server(&server("t2", "s2"), NOW).await.unwrap();
    let mut rc = RegisteredClientRow {
        id: new_id(),
        tenant: "t1".into(),
        server: "s1".into(),
        issuer: "https://as.example".into(),
        client_id: "dcr".into(),
        client_secret: None,
        auth_method: "client_secret_basic".into(),
        client_secret_expires_at: None,
        obtained_by: "dcr".into(),
        created_at: NOW,
    };
    rc.client_secret = Some(k.encrypt(b"dcr-secret", rc.secret_aad()).unwrap());
    store.put_registered_client(&rc).await.unwrap();
    let mut f = flow(&slot("t1", "s1", Some("alice")), "hash-1", NOW);
    f.verifier = k.encrypt(b"verifier-1", f.verifier_aad()).unwrap();
    store.insert_flow(&f).await.unwrap();

    // The server's pre-registered secret is bound to its issuer and tenant.
    db.exec("UPDATE servers SET issuer = 'https://evil.example' WHERE id = 's1'")
        .await;
    let s = store.get_server("t1", "s1").await.unwrap().unwrap();
    assert_eq!(
        open(&k, s.client_secret.as_deref(), s.secret_aad()),
        Err(KeyringError::Undecryptable)
    );
    db.exec("UPDATE servers SET issuer = 'https://as.example', tenant_id = 't2' WHERE id = 's1'")
        .await;
    let s = store.get_server("t2", "s1").await.unwrap().unwrap();
    assert_eq!(
        open(&k, s.client_secret.as_deref(), s.secret_aad()),
        Err(KeyringError::Undecryptable)
    );
    db.exec("UPDATE servers SET tenant_id = 't1' WHERE id = 's1'")
        .await;
    let s = store.get_server("t1", "s1").await.unwrap().unwrap();
    assert_eq!(
        open(&k, s.client_secret.as_deref(), s.secret_aad()).unwrap(),
        "pre-secret"
    );

    // A registered client's secret, re-keyed to another issuer or server.
    db.exec("UPDATE registered_clients SET issuer = 'https://evil.example'")
        .await;
    let c = store
        .get_registered_client("t1", "s1", "https://evil.example")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        open(&k, c.client_secret.as_deref(), c.secret_aad()),
        Err(KeyringError::Undecryptable)
    );
    db.exec("UPDATE registered_clients SET issuer = 'https://as.example', tenant_id = 't2', server_id = 's2'").await;
    let c = store
        .get_registered_client("t2", "s2", "https://as.example")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        open(&k, c.client_secret.as_deref(), c.secret_aad()),
        Err(KeyringError::Undecryptable)
    );

    // A pending flow's verifier, moved to another user's slot.
    db.exec("UPDATE oauth_flows SET subject = 'mallory'").await;
    let f = store.consume_flow("hash-1").await.unwrap().unwrap();
    assert_eq!(
        open(&k, Some(&f.verifier), f.verifier_aad()),
        Err(KeyringError::Undecryptable)
    );
    db.drop().await;
}

/// An envelope as Latchkey wrote it before the binding existed: AAD
/// `latchkey-aad-v1 | key id | table | column | row`, length-prefixed.
fn v1_envelope(
    master_hex: &str,
    key_id: u8,
    table: &str,
    column: &str,
    row: &str,
    plain: &[u8],
) -> Vec<u8> {
    let master: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(&master_hex[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let mut okm = [0u8; 32];
    Hkdf::<Sha256>::new(None, &master)
        .expand(HKDF_INFO, &mut okm)
        .unwrap();
    let cipher = Aes256Gcm::new_from_slice(&okm).unwrap();
    let mut aad = b"latchkey-aad-v1".to_vec();
    aad.push(key_id);
    for f in [table, column, row] {
        aad.extend_from_slice(&(f.len() as u32).to_be_bytes());
        aad.extend_from_slice(f.as_bytes());
    }
    let iv = [7u8; 12];
    let mut buf = plain.to_vec();
    let tag = cipher
        .encrypt_in_place_detached(&Nonce::from(iv), &aad, &mut buf)
        .unwrap();
    let mut out = vec![key_id];
    out.extend_from_slice(&iv);
    out.extend_from_slice(&tag);
    out.extend_from_slice(&buf);
    out
}

async fn legacy_values_are_resealed_then_bound(db: Db) {
    let k = ring(&format!("1:{K1}"));
    let store = db.store();
    store.create_server(&server("t1", "s1"), NOW).await.unwrap();
    // Rows written by an earlier version: sealed to their row id only.
    let mut ids = Vec::new();
    for user in ["alice", "bob", "carol"] {
        let mut c = credential(&slot("t1", "s1", Some(user)), b"");
        let cred = SealedTable::Credentials.name();
        c.access_token = Some(v1_envelope(
            K1,
            1,
            cred,
            "access_token",
            &c.id,
            format!("at-{user}").as_bytes(),
        ));
        c.refresh_token = Some(v1_envelope(
            K1,
            1,
            cred,
            "refresh_token",
            &c.id,
            format!("rt-{user}").as_bytes(),
        ));
        store.upsert_credential(&c).await.unwrap();
        ids.push(c.id);
    }
    store.set_aad_version(1).await.unwrap();
    let alice = slot("t1", "s1", Some("alice"));
    let old = store.get_credential(&alice).await.unwrap().unwrap();
    // Still read while the re-seal is pending (nothing breaks on upgrade).
    assert_eq!(
        open(&k, old.refresh_token.as_deref(), old.aad("refresh_token")).unwrap(),
        "rt-alice"
    );

    // The re-seal: the rotation machinery, with no new key.
    let report = rotate(
        store,
        &k,
        RotateOptions {
            batch_size: 2,
            now: NOW,
        },
        &NoProgress,
    )
    .await
    .unwrap();
    assert_eq!(report.values_rewrapped, 6, "{report:?}");
    assert_eq!(report.undecryptable, 0);
    assert_eq!(store.aad_version().await.unwrap(), 2);
    let new = store.get_credential(&alice).await.unwrap().unwrap();
    assert_eq!(
        new.generation, old.generation,
        "a re-seal never bumps the generation"
    );
    assert_ne!(new.refresh_token, old.refresh_token);
    assert_eq!(
        open(&k, new.refresh_token.as_deref(), new.aad("refresh_token")).unwrap(),
        "rt-alice"
    );

    // Now bound: moving the row to bob's slot (after removing bob's) serves nothing.
    db.exec(&format!("DELETE FROM credentials WHERE id = '{}'", ids[1]))
        .await;
    db.exec(&format!(
        "UPDATE credentials SET subject = 'bob' WHERE id = '{}'",
        ids[0]
    ))
    .await;
    assert_refused(
        &db,
        &k,
        &slot("t1", "s1", Some("bob")),
        "re-sealed, then moved",
    )
    .await;
    // And an old row-id-only copy put back into the row is refused too (the keyring
    // stops reading row-id-only values once the re-seal is done).
    db.exec(&format!(
        "UPDATE credentials SET subject = 'alice' WHERE id = '{}'",
        ids[0]
    ))
    .await;
    let env = old.refresh_token.clone().unwrap();
    assert_eq!(
        k.open(&env, old.aad("refresh_token")).map(|_| ()),
        Err(KeyringError::Undecryptable)
    );
    // A second pass has nothing left to re-seal.
    let again = rotate(
        store,
        &k,
        RotateOptions {
            batch_size: 2,
            now: NOW,
        },
        &NoProgress,
    )
    .await
    .unwrap();
    assert_eq!(again.values_rewrapped, 0);
    db.drop().await;
}

async fn key_ids_in_use_are_read_from_the_envelopes(db: Db) {
    let store = db.store();
    assert_eq!(store.key_ids_in_use().await.unwrap(), BTreeSet::new());
    assert_eq!(
        store.aad_version().await.unwrap(),
        2,
        "an empty database needs no re-seal"
    );
    let k1 = ring(&format!("1:{K1}"));
    seed_alice(&db, &k1).await;
    let k2 = ring(&format!("2:{K2},1:{K1}"));
    let mut f = flow(&slot("t1", "s1", Some("bob")), "hash-2", NOW);
    f.verifier = k2.encrypt(b"v", f.verifier_aad()).unwrap();
    store.insert_flow(&f).await.unwrap();
    assert_eq!(
        store.key_ids_in_use().await.unwrap(),
        BTreeSet::from([1, 2])
    );
    db.drop().await;
}

#[tokio::test]
async fn hostile_binding_on_sqlite() {
    edited_or_moved_credentials_do_not_open(Db::sqlite().await).await;
    other_sealed_tables_are_bound(Db::sqlite().await).await;
    legacy_values_are_resealed_then_bound(Db::sqlite().await).await;
    key_ids_in_use_are_read_from_the_envelopes(Db::sqlite().await).await;
}

#[tokio::test]
async fn hostile_binding_on_postgres() {
    edited_or_moved_credentials_do_not_open(Db::postgres().await).await;
    other_sealed_tables_are_bound(Db::postgres().await).await;
    legacy_values_are_resealed_then_bound(Db::postgres().await).await;
    key_ids_in_use_are_read_from_the_envelopes(Db::postgres().await).await;
}
