//! The scripted MCP resource: lifecycle, tools, token validation and faults.

use std::time::{Duration, Instant};

use latchkey_testkit::{AsConfig, McpFault, ScriptedServer};
use serde_json::{Value, json};

use super::{client, start, token_json};

/// POSTs a JSON-RPC message with an optional bearer token and session.
async fn post(
    server: &ScriptedServer,
    token: Option<&str>,
    session: Option<&str>,
    msg: &Value,
) -> reqwest::Response {
    let mut req = client()
        .post(server.mcp_url())
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(serde_json::to_vec(msg).unwrap());
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    if let Some(s) = session {
        req = req.header("mcp-session-id", s);
    }
    req.send().await.unwrap()
}

pub(crate) async fn ping(server: &ScriptedServer, token: &str) -> reqwest::Response {
    post(
        server,
        Some(token),
        None,
        &json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}),
    )
    .await
}

async fn json_of(r: reqwest::Response) -> Value {
    serde_json::from_slice(&r.bytes().await.unwrap()).unwrap()
}

fn www_authenticate(r: &reqwest::Response) -> String {
    r.headers()["www-authenticate"].to_str().unwrap().to_owned()
}

async fn call(server: &ScriptedServer, token: &str, name: &str, args: Value) -> Value {
    let r = post(
        server,
        Some(token),
        None,
        &json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": name, "arguments": args}}),
    )
    .await;
    assert_eq!(r.status(), 200);
    json_of(r).await
}

#[tokio::test]
async fn lifecycle_and_tools() {
    let server = start(AsConfig::default()).await;
    let at = server.mint_access_token("mcp:read");

    let r = post(
        &server,
        Some(&at),
        None,
        &json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "t", "version": "0"}}}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let session = r.headers()["mcp-session-id"].to_str().unwrap().to_owned();
    let init = json_of(r).await;
    assert_eq!(init["id"], 1);
    assert_eq!(init["result"]["protocolVersion"], "2025-11-25");
    assert!(init["result"]["capabilities"]["tools"].is_object());
    assert_eq!(server.mcp_sessions(), vec![session.clone()]);

    let r = post(
        &server,
        Some(&at),
        Some(&session),
        &json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    )
    .await;
    assert_eq!(r.status(), 202);
    assert!(r.bytes().await.unwrap().is_empty());

    let list = json_of(
        post(
            &server,
            Some(&at),
            Some(&session),
            &json!({"jsonrpc": "2.0", "id": "l", "method": "tools/list"}),
        )
        .await,
    )
    .await;
    assert_eq!(list["id"], "l");
    let tools = list["result"]["tools"].as_array().unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["echo", "add"]);
    assert_eq!(
        tools[0]["inputSchema"]["properties"]["text"]["type"],
        "string"
    );
    assert_eq!(tools[1]["inputSchema"]["properties"]["b"]["type"], "number");

    let echo = call(&server, &at, "echo", json!({"text": "héllo"})).await;
    assert_eq!(echo["id"], 7);
    assert_eq!(echo["result"]["content"][0]["type"], "text");
    assert_eq!(echo["result"]["content"][0]["text"], "héllo");
    assert_eq!(echo["result"]["isError"], false);

    let add = call(&server, &at, "add", json!({"a": 2, "b": 3})).await;
    assert_eq!(add["result"]["content"][0]["text"], "5");
    assert_eq!(add["result"]["structuredContent"]["sum"], 5);
    let add = call(&server, &at, "add", json!({"a": 1.5, "b": 2})).await;
    assert_eq!(add["result"]["content"][0]["text"], "3.5");
    let bad = call(&server, &at, "add", json!({"a": "1", "b": 2})).await;
    assert_eq!(bad["result"]["isError"], true);
    let unknown = call(&server, &at, "nope", json!({})).await;
    assert_eq!(unknown["error"]["code"], -32602);

    let pong = json_of(ping(&server, &at).await).await;
    assert_eq!(pong, json!({"jsonrpc": "2.0", "id": 1, "result": {}}));
    let r = post(
        &server,
        Some(&at),
        None,
        &json!({"jsonrpc": "2.0", "id": 9, "method": "resources/list"}),
    )
    .await;
    assert_eq!(json_of(r).await["error"]["code"], -32601);

    // Sessions: an unknown one is a 404; expiring them makes the old one unknown.
    let r = post(
        &server,
        Some(&at),
        Some("session-x"),
        &json!({"jsonrpc": "2.0", "id": 2, "method": "ping"}),
    )
    .await;
    assert_eq!(r.status(), 404);
    server.expire_mcp_sessions();
    let r = post(
        &server,
        Some(&at),
        Some(&session),
        &json!({"jsonrpc": "2.0", "id": 2, "method": "ping"}),
    )
    .await;
    assert_eq!(r.status(), 404);

    let recorded = server.requests("/mcp");
    assert_eq!(recorded.len(), server.mcp_requests());
    assert_eq!(recorded[0].body["method"], "initialize");
    assert!(
        recorded
            .iter()
            .any(|r| r.body.get("name").map(String::as_str) == Some("add"))
    );
    assert_eq!(
        server.last_mcp_authorization(),
        Some(format!("Bearer {at}"))
    );
}

#[tokio::test]
async fn initialize_negotiates_the_version() {
    let server = start(AsConfig::default()).await;
    let at = server.mint_access_token("");
    for (asked, answered) in [
        ("2025-06-18", "2025-06-18"),
        ("2026-07-28", "2025-11-25"),
        ("1999-01-01", "2025-11-25"),
    ] {
        let r = post(
            &server,
            Some(&at),
            None,
            &json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": asked}}),
        )
        .await;
        assert_eq!(json_of(r).await["result"]["protocolVersion"], answered);
    }
    assert_eq!(server.mcp_sessions().len(), 3);
}

#[tokio::test]
async fn tokens_must_be_issued_and_still_valid() {
    let server = start(AsConfig::default()).await;
    let rm = format!(
        r#"resource_metadata="{}/.well-known/oauth-protected-resource/mcp""#,
        server.base
    );

    let r = post(
        &server,
        None,
        None,
        &json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}),
    )
    .await;
    assert_eq!(r.status(), 401);
    assert!(www_authenticate(&r).starts_with("Bearer "));
    assert!(www_authenticate(&r).contains(&rm));
    assert_eq!(server.last_mcp_authorization(), None);

    let r = ping(&server, "at-forged").await;
    assert_eq!(r.status(), 401);
    assert_eq!(
        server.last_mcp_authorization().as_deref(),
        Some("Bearer at-forged")
    );

    // Issued through the token endpoint, then revoked through /revoke.
    let (_, body) = token_json(&server, super::CC).await;
    let at = body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(ping(&server, &at).await.status(), 200);
    let r = client()
        .post(format!("{}/revoke", server.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={at}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = ping(&server, &at).await;
    assert_eq!(r.status(), 401);
    assert!(www_authenticate(&r).contains("invalid_token"));
    assert!(www_authenticate(&r).contains(&rm));
    assert!(www_authenticate(&r).contains("revoked"));

    // Expired on demand.
    let at2 = server.mint_access_token("");
    assert_eq!(ping(&server, &at2).await.status(), 200);
    server.expire_access_tokens();
    let r = ping(&server, &at2).await;
    assert_eq!(r.status(), 401);
    assert!(www_authenticate(&r).contains("expired"));
    let at3 = server.mint_access_token("");
    assert_eq!(
        ping(&server, &at3).await.status(),
        200,
        "new tokens are fine"
    );

    // DPoP-scheme tokens are looked up the same way.
    let r = client()
        .post(server.mcp_url())
        .header("authorization", format!("DPoP {at3}"))
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn access_ttl_expires_tokens() {
    let server = start(AsConfig {
        access_ttl: 1,
        ..AsConfig::default()
    })
    .await;
    let at = server.mint_access_token("");
    assert_eq!(ping(&server, &at).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = ping(&server, &at).await;
    assert_eq!(r.status(), 401);
    assert!(www_authenticate(&r).contains("expired"));

    let server = start(AsConfig {
        access_ttl: 0,
        ..AsConfig::default()
    })
    .await;
    let (_, body) = token_json(&server, super::CC).await;
    assert_eq!(body["expires_in"], 0);
    let at = body["access_token"].as_str().unwrap();
    assert_eq!(ping(&server, at).await.status(), 401);
}

#[tokio::test]
async fn required_scope_gives_403_insufficient_scope() {
    let server = start(AsConfig {
        required_scope: Some("mcp:read mcp:write".into()),
        ..AsConfig::default()
    })
    .await;
    let weak = server.mint_access_token("mcp:read");
    let strong = server.mint_access_token("mcp:write offline_access mcp:read");
    let r = ping(&server, &weak).await;
    assert_eq!(r.status(), 403);
    let ch = www_authenticate(&r);
    assert!(
        ch.starts_with(r#"Bearer error="insufficient_scope""#),
        "{ch}"
    );
    assert!(ch.contains(r#"scope="mcp:read mcp:write""#), "{ch}");
    assert!(ch.contains("resource_metadata="), "{ch}");
    assert_eq!(ping(&server, &strong).await.status(), 200);

    // The 401 challenge names the scope too.
    let r = ping(&server, "at-unknown").await;
    assert!(www_authenticate(&r).contains(r#"scope="mcp:read mcp:write""#));

    server.set_required_scope(Some("admin".into()));
    assert_eq!(ping(&server, &strong).await.status(), 403);
    server.set_required_scope(None);
    assert_eq!(ping(&server, &weak).await.status(), 200);
}

#[tokio::test]
async fn unauthorized_fault_for_n_requests() {
    let server = start(AsConfig::default()).await;
    let at = server.mint_access_token("");
    server.set_mcp_fault(McpFault::Unauthorized(2));
    for _ in 0..2 {
        let r = ping(&server, &at).await;
        assert_eq!(r.status(), 401);
        assert!(www_authenticate(&r).contains("resource_metadata="));
    }
    assert_eq!(ping(&server, &at).await.status(), 200);
    assert_eq!(server.mcp_requests(), 3);
    assert_eq!(
        server.last_mcp_authorization(),
        Some(format!("Bearer {at}"))
    );

    server.set_mcp_fault_for(McpFault::ServerError(502), 1);
    assert_eq!(ping(&server, &at).await.status(), 502);
    assert_eq!(ping(&server, &at).await.status(), 200);
}

#[tokio::test]
async fn forbidden_server_error_and_slow_faults() {
    let server = start(AsConfig::default()).await;
    let at = server.mint_access_token("");

    server.set_mcp_fault(McpFault::Forbidden);
    for _ in 0..2 {
        let r = ping(&server, &at).await;
        assert_eq!(r.status(), 403);
        assert!(www_authenticate(&r).contains("insufficient_scope"));
    }

    server.set_mcp_fault(McpFault::ServerError(503));
    let r = ping(&server, &at).await;
    assert_eq!(r.status(), 503);
    assert!(r.bytes().await.unwrap().len() < 100);

    server.set_mcp_fault(McpFault::Slow(Duration::from_millis(300)));
    let t = Instant::now();
    let r = ping(&server, &at).await;
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert_eq!(r.status(), 200);
    // Slow still validates the token.
    assert_eq!(ping(&server, "at-nope").await.status(), 401);

    server.set_mcp_fault(McpFault::None);
    assert_eq!(ping(&server, &at).await.status(), 200);
}

#[tokio::test]
async fn reset_connection_breaks_the_response() {
    let server = start(AsConfig::default()).await;
    let at = server.mint_access_token("");
    server.set_mcp_fault(McpFault::ResetConnection);
    let req = client()
        .post(server.mcp_url())
        .header("authorization", format!("Bearer {at}"))
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#);
    let failed = match req.send().await {
        Err(_) => true,
        Ok(r) => r.bytes().await.is_err(),
    };
    assert!(failed, "the response must not complete");
    assert_eq!(server.mcp_requests(), 1);

    server.set_mcp_fault(McpFault::None);
    assert_eq!(ping(&server, &at).await.status(), 200);
}

#[tokio::test]
async fn sse_mode_wraps_the_response_in_one_event() {
    let server = start(AsConfig::default()).await;
    let at = server.mint_access_token("");
    server.set_mcp_sse(true);
    let r = ping(&server, &at).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let text = r.text().await.unwrap();
    let data = text.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
    let v: Value = serde_json::from_str(data).unwrap();
    assert_eq!(v["id"], 1);
    assert_eq!(v["result"], json!({}));
}
