//! Several `latchkey serve` processes on one PostgreSQL database, one of them killed
//! with SIGKILL while its refresh grant is at the authorization server (issue 7's kill
//! test). The others keep serving; the killed slot's outcome is the documented window:
//! the authorization server rotated the refresh token for a process that died before
//! writing it back, so that slot (and only that slot) needs consent again, answered as
//! a typed `needs_oauth_reauth` once the dead instance's lease expires.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use latchkey_testkit::pg::PgSchema;
use latchkey_testkit::{AsConfig, ScriptedServer, TokenFault};
use serde_json::{Value, json};

const KEYS: &str = "1:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

struct Instance {
    child: Child,
    base: String,
    _dir: tempdir::Dir,
}

mod tempdir {
    /// A data directory removed on drop.
    pub(super) struct Dir(pub(super) std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `latchkey serve` on the schema at `db`; waits for its listening line.
fn instance(db: &str) -> Instance {
    let dir = std::env::temp_dir().join(format!("lk-kill-{}", latchkey_vault::store::new_id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_latchkey"))
        .arg("serve")
        .env("LATCHKEY_DATA_DIR", &dir)
        .env("LATCHKEY_LISTEN", "127.0.0.1:0")
        .env("LATCHKEY_DATABASE_URL", db)
        .env("LATCHKEY_ENCRYPTION_KEYS", KEYS)
        .env("LATCHKEY_ALLOW_INSECURE_LOOPBACK", "true")
        .env_remove("LATCHKEY_KEY_FILE")
        .env_remove("LATCHKEY_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    let mut base = None;
    for line in out.lines() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("Latchkey is listening on ") {
            base = rest.split_whitespace().next().map(str::to_owned);
            break;
        }
    }
    Instance {
        child,
        base: base.expect("a listening line"),
        _dir: tempdir::Dir(dir),
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

/// A `tools/call` through `/mcp/{server}`: the status and the JSON-RPC answer.
async fn echo(http: &reqwest::Client, base: &str, server: &str, text: &str) -> (u16, Value) {
    let r = http
        .post(format!("{base}/mcp/{server}"))
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .body(
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                   "params": {"name": "echo", "arguments": {"text": text}}})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// A server with a deposited refresh token (no access token yet), created on `base`.
async fn connected(base: &str, upstream: &ScriptedServer, name: &str) -> String {
    let (status, server) = post(
        &format!("{base}/v1/servers"),
        json!({"name": name, "url": upstream.mcp_url()}),
    )
    .await;
    assert_eq!(status, 201, "{server}");
    let id = server["id"].as_str().unwrap().to_owned();
    let (status, v) = post(
        &format!("{base}/v1/credentials"),
        json!({"server_id": id, "refresh_token": upstream.mint_refresh_token(),
               "token_endpoint": format!("{}/token", upstream.base), "client_id": "c"}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    id
}

/// Starts a refresh of `slot` on `victim` with the authorization server slowed by
/// `fault`, SIGKILLs `victim` once the grant has reached the server, and returns when.
async fn kill_mid_grant(
    victim: &mut Instance,
    upstream: &ScriptedServer,
    slot: &str,
    fault: TokenFault,
) -> Instant {
    upstream.set_token_fault(fault);
    let (base, slot) = (victim.base.clone(), slot.to_owned());
    // The caller on the killed instance gets no answer: its connection just ends.
    let pending = tokio::spawn(async move {
        let _ = reqwest::Client::new()
            .post(format!("{base}/mcp/{slot}"))
            .header("content-type", "application/json")
            .body(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"x"}}}"#)
            .send()
            .await;
    });
    let t = Instant::now();
    while upstream.token_requests() == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no grant reached the AS"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    victim.child.kill().unwrap(); // SIGKILL
    victim.child.wait().unwrap();
    let killed = Instant::now();
    let _ = pending.await;
    upstream.set_token_fault(TokenFault::None);
    killed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_killed_mid_refresh_leaves_the_others_serving() {
    let schema = PgSchema::new("lk_kill").await.unwrap();
    // Each slot on an authorization server of its own, so the counters are its own.
    let before_as = ScriptedServer::start(AsConfig::default()).await.unwrap();
    let after_as = ScriptedServer::start(AsConfig::default()).await.unwrap();
    let steady_as = ScriptedServer::start(AsConfig::default()).await.unwrap();
    let mut instances: Vec<Instance> = (0..4).map(|_| instance(&schema.url)).collect();
    let bases: Vec<String> = instances.iter().map(|i| i.base.clone()).collect();
    let survivors = &bases[2..];
    let before_slot = connected(&bases[0], &before_as, "killed-before-the-grant").await;
    let after_slot = connected(&bases[0], &after_as, "killed-after-the-grant").await;
    let steady_slot = connected(&bases[0], &steady_as, "steady").await;
    let http = reqwest::Client::new();
    for base in &bases {
        let (status, v) = echo(&http, base, &steady_slot, "warm").await;
        assert_eq!(
            (status, v["result"]["content"][0]["text"].as_str()),
            (200, Some("warm")),
            "{v}"
        );
    }

    // 1. Instance 1 dies while its grant waits at the authorization server, before the
    //    server granted anything: nothing was rotated, so a survivor refreshes with the
    //    stored refresh token once the dead instance's lease expires (<= 5 s). No
    //    consent needed.
    let killed = kill_mid_grant(
        &mut instances[0],
        &before_as,
        &before_slot,
        TokenFault::Slow(Duration::from_secs(3)),
    )
    .await;
    let (status, v) = echo(&http, &survivors[0], &before_slot, "one").await;
    assert_eq!(
        (status, v["result"]["content"][0]["text"].as_str()),
        (200, Some("one")),
        "{v}"
    );
    assert!(
        killed.elapsed() < Duration::from_secs(12),
        "{:?}",
        killed.elapsed()
    );
    let (status, v) = echo(&http, &survivors[1], &before_slot, "two").await;
    assert_eq!(
        (status, v["result"]["content"][0]["text"].as_str()),
        (200, Some("two")),
        "{v}"
    );
    assert_eq!(
        before_as.grants_served_for("refresh_token"),
        1,
        "one grant, by a survivor"
    );
    assert_eq!(before_as.reuse_detections(), 0);

    // 2. Instance 2 dies after the authorization server rotated the refresh token but
    //    before the answer reached it (the documented window): the rotated token died
    //    with the process, the stored one is now a reused token, the server revokes the
    //    family, and the slot needs consent: a typed needs_oauth_reauth on every
    //    survivor, never a hang, a 500 or a panic.
    let killed = kill_mid_grant(
        &mut instances[1],
        &after_as,
        &after_slot,
        TokenFault::SlowAnswer(Duration::from_secs(3)),
    )
    .await;
    for base in survivors {
        let (status, v) = echo(&http, base, &after_slot, "y").await;
        assert_eq!(
            (status, v["error"]["data"]["code"].as_str()),
            (200, Some("needs_oauth_reauth")),
            "{v}"
        );
    }
    assert!(
        killed.elapsed() < Duration::from_secs(12),
        "{:?}",
        killed.elapsed()
    );
    assert_eq!(after_as.reuse_detections(), 1);

    // The survivors served the steady slot throughout and still do.
    for round in 0..20 {
        for base in survivors {
            let text = format!("s{round}");
            let (status, v) = echo(&http, base, &steady_slot, &text).await;
            assert_eq!(
                (status, v["result"]["content"][0]["text"].as_str()),
                (200, Some(text.as_str())),
                "{v}"
            );
        }
    }
    // A reconnect (here a deposit) brings the second slot back on every survivor.
    let (status, v) = post(
        &format!("{}/v1/credentials", survivors[0]),
        json!({"server_id": after_slot, "refresh_token": after_as.mint_refresh_token(),
               "token_endpoint": format!("{}/token", after_as.base), "client_id": "c"}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    for base in survivors {
        let (status, v) = echo(&http, base, &after_slot, "back").await;
        assert_eq!(
            (status, v["result"]["content"][0]["text"].as_str()),
            (200, Some("back")),
            "{v}"
        );
    }
    drop(instances);
    schema.drop_schema().await.unwrap();
}
