//! Issue 15, item 15: no log line from any crate, at any level up to debug, carries a
//! state, code, verifier or token. The real binary runs the whole product (a consent
//! flow through the federated endpoint's elicitation and through the API, calls through
//! REST, `/mcp/{server}` and `/mcp`, a refresh, a disconnect) with `LATCHKEY_LOG` asking
//! for every crate at debug; every secret the run produced is then looked for in what it
//! wrote to standard error.

use std::process::Stdio;

use latchkey_testkit::{AsConfig, ScriptedServer};
use serde_json::{Value, json};

use super::keys::TempDir;
use super::serve;

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn send(method: reqwest::Method, url: &str, body: Option<Value>) -> (u16, Value) {
    let mut r = http().request(method, url);
    if let Some(b) = body {
        r = r
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// One JSON-RPC message to an MCP endpoint; the answer (the last `data:` of an SSE
/// answer) and the session id, if one came back.
async fn rpc(url: &str, session: Option<&str>, msg: Value) -> (Value, Option<String>) {
    let mut r = http()
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-11-25")
        .body(msg.to_string());
    if let Some(s) = session {
        r = r.header("mcp-session-id", s);
    }
    let r = r.send().await.unwrap();
    let sid = r
        .headers()
        .get("mcp-session-id")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = r.text().await.unwrap();
    let v = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .rfind(|d| !d.trim().is_empty())
        .map_or_else(
            || serde_json::from_str(&text).unwrap_or(Value::Null),
            |d| serde_json::from_str(d.trim()).unwrap(),
        );
    (v, sid)
}

fn initialize() -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {"elicitation": {"url": {}}},
        "clientInfo": {"name": "hostile-logs", "version": "1"}}})
}

fn call(id: u64, name: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
           "params": {"name": name, "arguments": {"text": "hi"}}})
}

/// `name=value` query parameter of `url`.
fn param(url: &str, name: &str) -> String {
    let query = url.split_once('?').unwrap().1;
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} in the URL"))
        .to_owned()
}

/// Consent at the scripted AS, then Latchkey's callback; the code it carried.
async fn consent(authorization_url: &str) -> String {
    let r = http().get(authorization_url).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 302);
    let callback = r.headers()["location"].to_str().unwrap().to_owned();
    let r = http().get(&callback).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200, "the callback page");
    param(&callback, "code")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_no_secret_in_any_log_line_with_every_crate_at_debug() {
    let up = ScriptedServer::start(AsConfig::default()).await.unwrap();
    let dir = TempDir::new();
    let log_path = dir.0.join("stderr.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut c = serve::command(&dir.0.join("data"));
    c.env("LATCHKEY_ALLOW_INSECURE_LOOPBACK", "true")
        // Every crate at debug, and a directive trying to raise one further.
        .env("LATCHKEY_LOG", "debug,hyper=trace,rmcp=trace")
        .stderr(Stdio::from(log));
    let latchkey = tokio::task::spawn_blocking(move || serve::start(c))
        .await
        .unwrap();
    let base = latchkey.base.clone();
    let mut secrets: Vec<(String, String)> = Vec::new();

    let (status, server) = send(
        reqwest::Method::POST,
        &format!("{base}/v1/servers"),
        Some(json!({"name": "scripted", "url": up.mcp_url()})),
    )
    .await;
    assert_eq!(
        (status, server["auth_type"].as_str()),
        (201, Some("oauth")),
        "{server}"
    );
    let id = server["id"].as_str().unwrap().to_owned();

    // The federated endpoint: a call to the unconnected server answers the URL-mode
    // elicitation whose URL carries a state.
    let fed = format!("{base}/mcp");
    let (init, sid) = rpc(&fed, None, initialize()).await;
    assert!(init["result"].is_object(), "{init}");
    let sid = sid.unwrap();
    let _ = rpc(
        &fed,
        Some(&sid),
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    )
    .await;
    let (answer, _) = rpc(&fed, Some(&sid), call(2, "scripted__echo")).await;
    let url = answer["error"]["data"]["elicitations"][0]["url"]
        .as_str()
        .unwrap_or_else(|| panic!("an elicitation: {answer}"))
        .to_owned();
    secrets.push(("elicitation state".into(), param(&url, "state")));
    // Consent through it.
    secrets.push(("code".into(), consent(&url).await));

    // The API's flow too (forced, so a second state and code).
    let (status, started) = send(
        reqwest::Method::POST,
        &format!("{base}/v1/oauth/start"),
        Some(json!({"server_id": id, "force": true})),
    )
    .await;
    assert_eq!(status, 200, "{started}");
    let url = started["authorization_url"].as_str().unwrap().to_owned();
    secrets.push(("state".into(), param(&url, "state")));
    secrets.push(("code".into(), consent(&url).await));

    // Calls on every path, then a refresh, then a disconnect.
    for round in 0..2 {
        let (status, v) = send(
            reqwest::Method::POST,
            &format!("{base}/v1/servers/{id}/tools/echo/call"),
            Some(json!({"text": "rest"})),
        )
        .await;
        assert_eq!(status, 200, "{v}");
        let proxy = format!("{base}/mcp/{id}");
        let (init, psid) = rpc(&proxy, None, initialize()).await;
        assert!(init["result"].is_object(), "{init}");
        let (v, _) = rpc(&proxy, psid.as_deref(), call(3, "echo")).await;
        assert!(v["result"].is_object(), "{v}");
        let (v, _) = rpc(&fed, Some(&sid), call(4, "scripted__echo")).await;
        assert!(v["result"].is_object(), "{v}");
        if round == 0 {
            up.expire_access_tokens();
        }
    }
    assert!(
        up.grants_served_for("refresh_token") >= 1,
        "a refresh happened"
    );
    let (status, _) = send(
        reqwest::Method::DELETE,
        &format!("{base}/v1/credentials/{id}"),
        None,
    )
    .await;
    assert!(status < 300, "disconnect: {status}");
    drop(latchkey);

    for r in up.requests("/token") {
        for field in ["code", "code_verifier", "refresh_token", "client_secret"] {
            if let Some(v) = r.body.get(field) {
                secrets.push((field.into(), v.clone()));
            }
        }
    }
    for t in up.issued_access_tokens() {
        secrets.push(("access token".into(), t));
    }
    for t in up.issued_refresh_tokens() {
        secrets.push(("refresh token".into(), t));
    }
    assert!(
        secrets.iter().any(|(k, _)| k == "code_verifier"),
        "the token requests were recorded"
    );

    let text = std::fs::read_to_string(&log_path).unwrap();
    // The run did log at debug, dependencies included.
    assert!(text.contains("DEBUG"), "debug lines were written");
    assert!(
        text.lines()
            .any(|l| l.contains("DEBUG") && !l.contains("latchkey")),
        "dependencies logged at debug"
    );
    // ... and never above it, whatever the directive asked.
    assert!(
        !text.contains("TRACE"),
        "no crate raised above the configured level"
    );
    for (what, value) in &secrets {
        assert!(value.len() >= 4, "{what} is long enough to search for");
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| has_word(l, value))
            .take(3)
            .collect();
        assert!(
            lines.is_empty(),
            "a {what} appears in the log:\n{}",
            lines.join("\n")
        );
    }
}

/// Whether `value` occurs in `line` as a whole word (the scripted server's codes are
/// short: `code-1` must not match inside `code-12`).
fn has_word(line: &str, value: &str) -> bool {
    let word =
        |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    line.match_indices(value).any(|(i, _)| {
        !word(line[..i].chars().next_back()) && !word(line[i + value.len()..].chars().next())
    })
}
