//! Operations, as an operator sees them (issue 17): the log of a `latchkey serve` whose
//! MCP clients go away mid-answer (no ERROR line), shutdown said in the log at info, and
//! key changes reaching every instance on one PostgreSQL database without a restart.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use latchkey_testkit::pg::PgSchema;
use latchkey_testkit::{AsConfig, McpFault, ScriptedServer};
use latchkey_vault::keyring::FileKeys;
use latchkey_vault::rotate::SealedTable;
use latchkey_vault::store::DatabaseUrl;
use latchkey_vault::{KeySet, Store};
use serde_json::{Value, json};

use super::keys::TempDir;

const K1: &str = "1:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

/// A `latchkey serve` with its standard error collected.
struct Serve {
    child: Child,
    base: String,
    log: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Serve {
    /// Starts `latchkey serve` with `envs` (data directory, database, keys), logging at
    /// `info`; waits for its listening line.
    fn start(data: &std::path::Path, envs: &[(&str, &str)]) -> Self {
        let mut c = Command::new(env!("CARGO_BIN_EXE_latchkey"));
        c.arg("serve")
            .env("LATCHKEY_DATA_DIR", data)
            .env("LATCHKEY_LISTEN", "127.0.0.1:0")
            .env("LATCHKEY_ALLOW_INSECURE_LOOPBACK", "true")
            .env("LATCHKEY_LOG", "info")
            .env_remove("LATCHKEY_ENCRYPTION_KEYS")
            .env_remove("LATCHKEY_KEY_FILE")
            .env_remove("LATCHKEY_DATABASE_URL")
            .env_remove("LATCHKEY_CONFIG")
            .env_remove("NO_COLOR")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in envs {
            c.env(k, v);
        }
        let mut child = c.spawn().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().unwrap();
        let sink = log.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let out = BufReader::new(child.stdout.take().unwrap());
        let mut base = None;
        for line in out.lines() {
            let line = line.unwrap();
            if let Some(rest) = line.strip_prefix("Latchkey is listening on ") {
                base = rest.split_whitespace().next().map(str::to_owned);
                break;
            }
        }
        Self {
            child,
            base: base.unwrap_or_else(|| panic!("no listening line: {}", log.lock().unwrap())),
            log,
            reader: Some(reader),
        }
    }

    /// SIGTERM, then everything it logged once it has exited.
    fn terminate(mut self) -> String {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{status:?}");
        if let Some(r) = self.reader.take() {
            r.join().unwrap();
        }
        self.log.lock().unwrap().clone()
    }
}

async fn post(url: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// A server named `name` on `base` for `upstream`, with a deposited refresh token.
async fn connected(base: &str, upstream: &ScriptedServer, name: &str) -> String {
    let (status, server) = post(
        &format!("{base}/v1/servers"),
        json!({"name": name, "url": upstream.mcp_url()}),
    )
    .await;
    assert_eq!(status, 201, "{server}");
    let id = server["id"].as_str().unwrap().to_owned();
    deposit(base, &id, upstream).await;
    id
}

async fn deposit(base: &str, id: &str, upstream: &ScriptedServer) {
    let (status, v) = post(
        &format!("{base}/v1/credentials"),
        json!({"server_id": id, "refresh_token": upstream.mint_refresh_token(),
               "token_endpoint": format!("{}/token", upstream.base), "client_id": "c"}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
}

/// A JSON-RPC message POSTed to `/mcp`, with the session header when given.
fn mcp_post(
    http: &reqwest::Client,
    base: &str,
    session: Option<&str>,
    body: &Value,
) -> reqwest::RequestBuilder {
    let mut r = http
        .post(format!("{base}/mcp"))
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .header("mcp-protocol-version", "2025-11-25")
        .body(body.to_string());
    if let Some(s) = session {
        r = r.header("mcp-session-id", s);
    }
    r
}

/// Clients of `/mcp` that go away while their `tools/call` is still being answered (a
/// session deleted, a connection dropped) leave no ERROR line in the log, at `info`;
/// SIGTERM is logged at info, stopping and stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_going_away_log_no_error_and_shutdown_is_logged() {
    let upstream = ScriptedServer::start(AsConfig::default()).await.unwrap();
    let dir = TempDir::new();
    let s = tokio::task::spawn_blocking({
        let data = dir.0.clone();
        move || Serve::start(&data, &[])
    })
    .await
    .unwrap();
    connected(&s.base, &upstream, "Echo").await;
    // Every upstream request is slow from now on, so each call is still being answered
    // when its client goes away.
    upstream.set_mcp_fault_for(McpFault::Slow(Duration::from_millis(700)), 100);

    let http = reqwest::Client::new();
    for round in 0..2 {
        let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "leaver", "version": "1"}}});
        let r = mcp_post(&http, &s.base, None, &init).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let session = r.headers()["mcp-session-id"].to_str().unwrap().to_owned();
        let _ = r.text().await.unwrap();
        let r = mcp_post(
            &http,
            &s.base,
            Some(&session),
            &json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        )
        .send()
        .await
        .unwrap();
        assert_eq!(r.status().as_u16(), 202);
        let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                          "params": {"name": "echo__echo", "arguments": {"text": "x"}}});
        // The client reads the answer's head (an event stream) and goes away before
        // the answer itself.
        let r = mcp_post(&http, &s.base, Some(&session), &call)
            .timeout(Duration::from_millis(300))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert!(
            r.bytes().await.is_err(),
            "the answer outlived the client's patience"
        );
        if round == 0 {
            // …and ends its session while the call is still under way.
            let r = http
                .delete(format!("{}/mcp", s.base))
                .header("mcp-session-id", &session)
                .header("mcp-protocol-version", "2025-11-25")
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{}", r.status());
        }
    }
    // The abandoned calls finish upstream, and their answers find nobody.
    tokio::time::sleep(Duration::from_secs(4)).await;
    upstream.set_mcp_fault(McpFault::None);

    // A sign-in prompt: connecting a server that has no credential yet.
    let other = ScriptedServer::start(AsConfig::default()).await.unwrap();
    let (status, v) = post(
        &format!("{}/v1/servers", s.base),
        json!({"name": "Gamma", "url": other.mcp_url()}),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {"elicitation": {"url": {}}},
        "clientInfo": {"name": "stayer", "version": "1"}}});
    let r = mcp_post(&http, &s.base, None, &init).send().await.unwrap();
    let session = r.headers()["mcp-session-id"].to_str().unwrap().to_owned();
    let _ = r.text().await.unwrap();
    mcp_post(
        &http,
        &s.base,
        Some(&session),
        &json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    )
    .send()
    .await
    .unwrap();
    let prompt = mcp_post(
        &http,
        &s.base,
        Some(&session),
        &json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                "params": {"name": "latchkey_connect", "arguments": {"server": "Gamma"}}}),
    )
    .send()
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    assert!(prompt.contains(&other.base), "a sign-in link: {prompt}");

    let log = tokio::task::spawn_blocking(move || s.terminate())
        .await
        .unwrap();
    assert!(
        log.contains("mcp.request.start"),
        "the log was collected at info: {log}"
    );
    let errors: Vec<&str> = log.lines().filter(|l| l.contains(" ERROR ")).collect();
    assert!(errors.is_empty(), "ERROR lines: {errors:#?}");
    // Nothing here is the operator's problem: no warnings either (the sign-in prompt
    // is logged at info).
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains(" WARN ")).collect();
    assert!(warnings.is_empty(), "WARN lines: {warnings:#?}");
    assert!(log.contains("mcp.federated.consent_required"), "{log}");
    for event in ["serve.stopping", "serve.stopped"] {
        let line = log
            .lines()
            .find(|l| l.contains(&format!("event=\"{event}\"")) || l.contains(event))
            .unwrap_or_else(|| panic!("no {event} line: {log}"));
        assert!(line.contains(" INFO "), "{line}");
    }
}

/// The key ids of every sealed credential value in the store.
async fn credential_key_ids(store: &dyn Store) -> Vec<u8> {
    let page = store
        .sealed_page(SealedTable::Credentials, None, 100)
        .await
        .unwrap();
    page.iter()
        .flat_map(|r| r.values.iter().flatten().map(|v| v[0]))
        .collect()
}

/// The tools of server `id` as `base` lists them (through the slot's credential).
async fn tools(base: &str, id: &str) -> (u16, Value) {
    let r = reqwest::get(format!("{base}/v1/servers/{id}/tools"))
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Deposits through `base` until the stored credential is sealed under `key` (the
/// instance reloads its keys asynchronously); fails after 15 s.
async fn deposit_until_sealed_under(
    base: &str,
    id: &str,
    upstream: &ScriptedServer,
    store: &dyn Store,
    key: u8,
) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        deposit(base, id, upstream).await;
        let ids = credential_key_ids(store).await;
        if !ids.is_empty() && ids.iter().all(|k| *k == key) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{base} still seals under {ids:?}, not key {key}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Two instances on one PostgreSQL database and one key file: `latchkey keys add`
/// makes both write under the new key and open what the other sealed under it, with
/// no restart; `keys rotate` then leaves nothing under the old key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_change_reaches_every_instance_without_a_restart() {
    let pg = PgSchema::new("lk_keychange").await.unwrap();
    let upstream = ScriptedServer::start(AsConfig::default()).await.unwrap();
    let shared = TempDir::new();
    let key_file = shared.0.join("keys");
    FileKeys(key_file.clone())
        .write(&KeySet::parse(K1).unwrap())
        .unwrap();
    let key_path = key_file.to_str().unwrap().to_owned();
    let envs = [
        ("LATCHKEY_DATABASE_URL", pg.url.as_str()),
        ("LATCHKEY_KEY_FILE", key_path.as_str()),
    ];
    let (da, db) = (TempDir::new(), TempDir::new());
    let (a, b) = tokio::task::spawn_blocking({
        let (pa, pb) = (da.0.clone(), db.0.clone());
        let envs: Vec<(String, String)> = envs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move || {
            let envs: Vec<(&str, &str)> =
                envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            (Serve::start(&pa, &envs), Serve::start(&pb, &envs))
        }
    })
    .await
    .unwrap();
    let store = DatabaseUrl::parse(&pg.url).unwrap().open().await.unwrap();
    let id = connected(&a.base, &upstream, "Echo").await;
    let before = credential_key_ids(store.as_ref()).await;
    assert!(
        !before.is_empty() && before.iter().all(|k| *k == 1),
        "{before:?}"
    );
    assert_eq!(tools(&b.base, &id).await.0, 200);

    let out = tokio::task::spawn_blocking({
        let (url, key_path) = (pg.url.clone(), key_path.clone());
        move || {
            Command::new(env!("CARGO_BIN_EXE_latchkey"))
                .args(["keys", "add", "--json"])
                .env("LATCHKEY_DATABASE_URL", url)
                .env("LATCHKEY_KEY_FILE", key_path)
                .env_remove("LATCHKEY_ENCRYPTION_KEYS")
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let added: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(added["current_key"], 2);
    assert_eq!(added["announced"], true);
    assert_eq!(store.key_set_version().await.unwrap(), 1);

    // A writes under key 2; B, never restarted, opens it and calls with it.
    deposit_until_sealed_under(&a.base, &id, &upstream, store.as_ref(), 2).await;
    let (status, listed) = tools(&b.base, &id).await;
    assert_eq!(
        status, 200,
        "B opens a value A sealed under the new key: {listed}"
    );
    assert!(listed.to_string().contains("echo"), "{listed}");
    // And the other way round.
    deposit_until_sealed_under(&b.base, &id, &upstream, store.as_ref(), 2).await;
    let (status, listed) = tools(&a.base, &id).await;
    assert_eq!(status, 200, "{listed}");

    let log_a = tokio::task::spawn_blocking(move || (a.terminate(), b.terminate()))
        .await
        .unwrap();
    for log in [&log_a.0, &log_a.1] {
        assert!(log.contains("vault.keys_reloaded"), "{log}");
        assert!(!log.contains(" ERROR "), "{log}");
    }
    pg.drop_schema().await.unwrap();
}

/// On SQLite no channel joins `keys add` to the one `latchkey serve` beside it: the
/// serving process reads the key-set version on a timer and writes under the new key
/// within seconds, with no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_change_reaches_a_serve_on_sqlite_without_a_restart() {
    let upstream = ScriptedServer::start(AsConfig::default()).await.unwrap();
    let dir = TempDir::new();
    let s = tokio::task::spawn_blocking({
        let data = dir.0.clone();
        move || Serve::start(&data, &[])
    })
    .await
    .unwrap();
    let store = DatabaseUrl::Sqlite(dir.0.join("latchkey.db"))
        .open()
        .await
        .unwrap();
    let id = connected(&s.base, &upstream, "Echo").await;
    let before = credential_key_ids(store.as_ref()).await;
    assert!(
        !before.is_empty() && before.iter().all(|k| *k == 1),
        "{before:?}"
    );
    let out = tokio::task::spawn_blocking({
        let data = dir.0.clone();
        move || {
            Command::new(env!("CARGO_BIN_EXE_latchkey"))
                .args(["keys", "add", "--json"])
                .env("LATCHKEY_DATA_DIR", data)
                .env_remove("LATCHKEY_DATABASE_URL")
                .env_remove("LATCHKEY_KEY_FILE")
                .env_remove("LATCHKEY_ENCRYPTION_KEYS")
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let added: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (added["current_key"].as_u64(), added["announced"].as_bool()),
        (Some(2), Some(true)),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    deposit_until_sealed_under(&s.base, &id, &upstream, store.as_ref(), 2).await;
    let (status, listed) = tools(&s.base, &id).await;
    assert_eq!(status, 200, "{listed}");
    let log = tokio::task::spawn_blocking(move || s.terminate())
        .await
        .unwrap();
    assert!(log.contains("vault.keys_reloaded"), "{log}");
}
