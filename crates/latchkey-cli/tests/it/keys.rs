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

// Issue 15, item 8: a lost or wrong key is never replaced silently.

const KA: &str = "1:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const KB: &str = "1:f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff000102030405060708090a0b0c0d0e0f";
const K2: &str = "2:a0a1a2a3a4a5a6a7a8a9aaabacadaeaf000102030405060708090a0b0c0d0e0f";

/// A data directory whose database holds `n` credentials sealed under `spec`, and no
/// key file.
async fn sealed_database(dir: &TempDir, spec: &str, n: usize) {
    let data = dir.0.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let store = latchkey_vault::SqliteStore::open(&data.join("latchkey.db"))
        .await
        .unwrap();
    let keyring = Keyring::new(latchkey_vault::keyring::StaticKeys(Some(
        latchkey_vault::KeySet::parse(spec).unwrap(),
    )));
    seed(&store, &keyring, n).await;
    store.pool().close().await;
}

/// Runs `latchkey serve` and expects it to stop by itself within 30 s.
fn serve_exits(c: &mut Command) -> Output {
    let mut child = c.spawn().unwrap();
    for _ in 0..300 {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    panic!(
        "serve kept running: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn hostile_a_lost_key_stops_start_up_naming_the_key_ids() {
    let dir = TempDir::new();
    sealed_database(&dir, KA, 3).await;
    let data = dir.0.join("data");
    let out = serve_exits(&mut super::serve::command(&data));
    assert_eq!(out.status.code(), Some(78), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("key id(s) 1"), "{err}");
    assert!(
        err.contains(&data.join("keys").display().to_string()),
        "where keys were looked for: {err}"
    );
    assert!(
        !data.join("keys").exists(),
        "no key file is made while the database holds sealed values"
    );
    // A key from the environment that is not one the database needs.
    let out = serve_exits(super::serve::command(&data).env("LATCHKEY_ENCRYPTION_KEYS", K2));
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("key id(s) 1") && err.contains("LATCHKEY_ENCRYPTION_KEYS"),
        "{err}"
    );
    assert!(!err.contains("a0a1a2a3"), "the key is never echoed");
}

#[tokio::test]
async fn hostile_a_wrong_key_with_the_right_id_stops_start_up() {
    let dir = TempDir::new();
    sealed_database(&dir, KA, 3).await;
    let data = dir.0.join("data");
    std::fs::write(data.join("keys"), format!("{KB}\n")).unwrap();
    set_mode(&data.join("keys"), 0o600);
    let out = serve_exits(&mut super::serve::command(&data));
    assert_eq!(out.status.code(), Some(78), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("key id 1") && err.contains("opens none"),
        "{err}"
    );
}

#[test]
fn hostile_garbage_key_settings_stop_start_up() {
    for (env, file) in [
        (Some("garbage"), None),
        (Some("1:abc"), None),
        (None, Some("not a key\n")),
        (None, Some(&format!("{}:{}\n", &KA[2..], &KA[2..])[..])),
    ] {
        let dir = TempDir::new();
        let data = dir.0.join("data");
        let mut c = super::serve::command(&data);
        if let Some(v) = env {
            c.env("LATCHKEY_ENCRYPTION_KEYS", v);
        }
        if let Some(v) = file {
            std::fs::create_dir_all(&data).unwrap();
            std::fs::write(data.join("keys"), v).unwrap();
        }
        let out = serve_exits(&mut c);
        assert_eq!(out.status.code(), Some(78), "{env:?} {file:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("invalid encryption key configuration"),
            "{err}"
        );
        assert!(
            !err.contains("0001020304"),
            "the key is never echoed: {err}"
        );
    }
}

fn set_mode(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Starts serve, reads stdout to the listening line, returns the base URL and the
/// child (whose standard error is still to be read).
fn start_reading(mut c: Command) -> (String, std::process::Child) {
    use std::io::BufRead as _;
    let mut child = c.spawn().unwrap();
    let out = std::io::BufReader::new(child.stdout.take().unwrap());
    for line in out.lines() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("Latchkey is listening on ") {
            let base = rest.split_whitespace().next().unwrap().to_owned();
            return (base, child);
        }
    }
    let out = child.wait_with_output().unwrap();
    panic!(
        "no listening line: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_readyz_is_not_ready_while_stored_values_need_a_missing_key() {
    let dir = TempDir::new();
    // Values under key 1 and under key 2; only key 2 is configured, in a file that
    // group and others can read.
    sealed_database(&dir, KA, 2).await;
    let data = dir.0.join("data");
    {
        let store = latchkey_vault::SqliteStore::open(&data.join("latchkey.db"))
            .await
            .unwrap();
        let keyring = Keyring::new(latchkey_vault::keyring::StaticKeys(Some(
            latchkey_vault::KeySet::parse(K2).unwrap(),
        )));
        let slot = Slot {
            tenant: "t1".into(),
            server: "s1".into(),
            subject: Some("k2-user".into()),
        };
        let mut row = CredentialRow::new(new_id(), slot, "https://as.example/token", 0);
        row.refresh_token = Some(keyring.encrypt(b"rt", row.aad("refresh_token")).unwrap());
        store.upsert_credential(&row).await.unwrap();
        store.pool().close().await;
    }
    std::fs::write(data.join("keys"), format!("{K2}\n")).unwrap();
    set_mode(&data.join("keys"), 0o644);
    let (base, mut child) = tokio::task::spawn_blocking({
        let data = data.clone();
        move || start_reading(super::serve::command(&data))
    })
    .await
    .unwrap();
    let r = reqwest::get(format!("{base}/readyz")).await.unwrap();
    assert_eq!(r.status().as_u16(), 503);
    let body: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(body["checks"]["encryption_key"], "unopenable", "{body}");
    assert_eq!(body["checks"]["missing_key_ids"], serde_json::json!([1]));
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("keys.file_permissions")
            && err.contains(&data.join("keys").display().to_string()),
        "a warning names the shared key file: {err}"
    );
    assert!(!err.contains("a0a1a2a3"), "never its contents");
}
