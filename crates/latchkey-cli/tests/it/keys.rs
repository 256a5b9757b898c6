//! `latchkey keys add` and `latchkey keys rotate` on a real SQLite file and on the
//! machine's PostgreSQL.

use std::process::{Command, Output};

use latchkey_vault::keyring::FileKeys;
use latchkey_vault::rotate::SealedTable;
use latchkey_vault::store::{CredentialRow, DatabaseUrl, ServerRow, Slot, new_id};
use latchkey_vault::{KeySource, Keyring, Store};

pub(crate) struct TempDir(pub(crate) std::path::PathBuf);

impl TempDir {
    pub(crate) fn new() -> Self {
        let p = std::env::temp_dir().join(format!("latchkey-cli-{}", new_id()));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn keys(dir: &TempDir, db: Option<&str>, args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_latchkey"));
    c.arg("keys")
        .args(args)
        .env("LATCHKEY_DATA_DIR", &dir.0)
        .env_remove("LATCHKEY_ENCRYPTION_KEYS")
        .env_remove("LATCHKEY_KEY_FILE")
        .env_remove("LATCHKEY_DATABASE_URL");
    if let Some(db) = db {
        c.env("LATCHKEY_DATABASE_URL", db);
    }
    c.output().unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "status {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Writes `n` credentials sealed with the key file's current key.
async fn seed(store: &dyn Store, keyring: &Keyring, n: usize) {
    store
        .create_server(
            &ServerRow::new("s1", "t1", "s1", "https://mcp.example/mcp"),
            0,
        )
        .await
        .unwrap();
    for i in 0..n {
        let slot = Slot {
            tenant: "t1".into(),
            server: "s1".into(),
            subject: Some(format!("u{i}")),
        };
        let mut row = CredentialRow::new(new_id(), slot, "https://as.example/token", 0);
        row.access_token = Some(keyring.encrypt(b"at", row.aad("access_token")).unwrap());
        row.refresh_token = Some(keyring.encrypt(b"rt", row.aad("refresh_token")).unwrap());
        store.upsert_credential(&row).await.unwrap();
    }
}

async fn add_then_rotate(dir: &TempDir, db: Option<&str>, database: DatabaseUrl) {
    let added = json(&keys(dir, db, &["add", "--json"]));
    assert_eq!(added["current_key"], 1);
    let file = FileKeys(dir.0.join("keys"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&file.0).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the key file is the owner's alone");
    }
    let store = database.open().await.unwrap();
    seed(store.as_ref(), &Keyring::new(file.clone()), 30).await;

    let added = json(&keys(dir, db, &["add", "--json"]));
    assert_eq!(added["current_key"], 2);
    assert_eq!(added["keys"], serde_json::json!([2, 1]));
    let secret = std::fs::read_to_string(&file.0).unwrap();
    let out = keys(dir, db, &["add"]);
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains(&secret[2..20]),
        "no key material printed"
    );
    assert_eq!(file.load().unwrap().unwrap().ids(), vec![3, 2, 1]);

    let report = json(&keys(dir, db, &["rotate", "--json", "--batch-size", "7"]));
    assert_eq!(report["target_key"], 3);
    assert_eq!(report["rows_scanned"], 31, "30 credentials and the server");
    assert_eq!(report["rows_rewrapped"], 30);
    assert_eq!(report["values_rewrapped"], 60);
    assert_eq!(report["undecryptable"], 0);
    let mut after = None;
    while let Some(page) = Some(
        store
            .sealed_page(SealedTable::Credentials, after.as_deref(), 100)
            .await
            .unwrap(),
    ) && !page.is_empty()
    {
        for row in &page {
            for v in row.values.iter().flatten() {
                assert_eq!(v[0], 3, "every value under the current key");
            }
        }
        after = page.last().map(|r| r.position.clone());
    }
    let human = keys(dir, db, &["rotate"]);
    assert!(human.status.success());
    assert!(
        String::from_utf8_lossy(&human.stdout).contains("Re-encrypted 0 values"),
        "{}",
        String::from_utf8_lossy(&human.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_add_and_rotate_on_sqlite() {
    let dir = TempDir::new();
    let db = DatabaseUrl::Sqlite(dir.0.join("latchkey.db"));
    add_then_rotate(&dir, None, db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_add_and_rotate_on_postgres() {
    let pg = super::PgSchema::new("lk_cli").await.unwrap();
    let dir = TempDir::new();
    add_then_rotate(&dir, Some(&pg.url), DatabaseUrl::parse(&pg.url).unwrap()).await;
    pg.drop_schema().await.unwrap();
}

#[test]
fn rotate_without_a_key_is_a_configuration_error() {
    let dir = TempDir::new();
    let out = keys(&dir, None, &["rotate"]);
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("key"), "{err}");
    assert!(!dir.0.join("keys").exists(), "rotate never invents a key");
}

#[test]
fn add_refuses_when_keys_come_from_the_environment() {
    let dir = TempDir::new();
    let out = Command::new(env!("CARGO_BIN_EXE_latchkey"))
        .args(["keys", "add"])
        .env("LATCHKEY_DATA_DIR", &dir.0)
        .env(
            "LATCHKEY_ENCRYPTION_KEYS",
            "1:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("LATCHKEY_ENCRYPTION_KEYS"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("0001020304"), "the key is never echoed");
}
