//! `/mcp/{server}`: the transparent proxy against the scripted MCP server over real HTTP:
//! the slot's Bearer injected and the caller's never forwarded, session headers carried,
//! SSE passed on as it arrives, one refresh and one retry on a 401, typed JSON-RPC errors
//! when the slot needs consent, the tenant check first.

use std::time::{Duration, Instant};

use latchkey_testkit::{AsConfig, McpFault, ScriptedServer};
use serde_json::{Value, json};

use super::tools::connected;

/// POSTs one JSON-RPC message to `url` with the MCP headers; status, headers, body.
pub(super) async fn rpc(
    http: &reqwest::Client,
    url: &str,
    session: Option<&str>,
    message: Value,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut req = http
        .post(url)
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .header("mcp-protocol-version", "2025-11-25")
        // The caller's own credential: must never reach the upstream.
        .header("authorization", "Bearer caller-own-token")
        .body(message.to_string());
    if let Some(s) = session {
        req = req.header("mcp-session-id", s);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    let body = if headers
        .get("content-type")
        .is_some_and(|v| v.to_str().unwrap().starts_with("text/event-stream"))
    {
        // The last `data:` line holds the response.
        text.lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .next_back()
            .map_or(Value::Null, |d| serde_json::from_str(d).unwrap())
    } else {
        serde_json::from_str(&text).unwrap_or(Value::Null)
    };
    (status, headers, body)
}

fn initialize() -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "proxy-test", "version": "1"}}})
}

pub(super) fn call(id: u64, name: &str, arguments: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
           "params": {"name": name, "arguments": arguments}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_on_sqlite() {
    the_proxy(super::Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_on_postgres() {
    the_proxy(super::Backend::Postgres).await;
}

async fn the_proxy(backend: super::Backend) {
    let upstream = ScriptedServer::start(AsConfig::default()).await.unwrap();
    let (base, id, dir, schema) = connected(&upstream, backend).await;
    let url = format!("{base}/mcp/{id}");
    // One client (one connection pool) for every call, like an agent's.
    let http = super::client();

    // The handshake: the upstream's session id comes back as is.
    let (status, headers, init) = rpc(&http, &url, None, initialize()).await;
    assert_eq!(status, 200, "{init}");
    assert_eq!(init["result"]["serverInfo"]["name"], "scripted");
    let session = headers["mcp-session-id"].to_str().unwrap().to_owned();
    let (status, _, _) = rpc(
        &http,
        &url,
        Some(&session),
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    )
    .await;
    assert_eq!(status, 202);

    // A call with the slot's token, never the caller's.
    let (status, headers, v) = rpc(
        &http,
        &url,
        Some(&session),
        call(2, "echo", json!({"text": "hi"})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["result"]["content"][0]["text"], "hi");
    assert!(headers.get("www-authenticate").is_none());
    let sent = upstream.last_mcp_authorization().unwrap();
    let issued = upstream.issued_access_tokens();
    assert_eq!(sent, format!("Bearer {}", issued.last().unwrap()));
    assert!(!sent.contains("caller-own-token"));
    assert_eq!(upstream.grants_served_for("refresh_token"), 1);

    // The upstream's 401 once: one forced refresh, one retry, the caller sees success.
    upstream.set_mcp_fault(McpFault::Unauthorized(1));
    let (status, _, v) = rpc(
        &http,
        &url,
        Some(&session),
        call(3, "add", json!({"a": 2, "b": 3})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["result"]["structuredContent"]["sum"], 5);
    assert_eq!(upstream.grants_served_for("refresh_token"), 2);

    // 401 twice: a typed JSON-RPC error, HTTP 200, no challenge (the caller's own
    // credential for Latchkey is fine).
    upstream.set_mcp_fault(McpFault::Unauthorized(100));
    let (status, headers, v) = rpc(
        &http,
        &url,
        Some(&session),
        call(4, "echo", json!({"text": "x"})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["id"], 4);
    assert_eq!(
        v["error"]["code"],
        latchkey_gateway::error::JSONRPC_NEEDS_REAUTH
    );
    assert_eq!(v["error"]["data"]["code"], "needs_oauth_reauth");
    assert_eq!(v["error"]["data"]["server_id"], id.as_str());
    assert!(headers.get("www-authenticate").is_none());
    upstream.set_mcp_fault(McpFault::None);

    // A 403 insufficient_scope never refreshes.
    let grants = upstream.grants_served_for("refresh_token");
    upstream.set_required_scope(Some("files:write".into()));
    let (_, _, v) = rpc(
        &http,
        &url,
        Some(&session),
        call(5, "echo", json!({"text": "x"})),
    )
    .await;
    assert_eq!(v["error"]["data"]["code"], "needs_scope_upgrade", "{v}");
    assert_eq!(v["error"]["data"]["scopes"], json!(["files:write"]));
    assert_eq!(upstream.grants_served_for("refresh_token"), grants);
    upstream.set_required_scope(None);

    // An upstream failure is a gateway error, not a silent success.
    upstream.set_mcp_fault(McpFault::ServerError(500));
    let (status, _, v) = rpc(
        &http,
        &url,
        Some(&session),
        call(6, "echo", json!({"text": "x"})),
    )
    .await;
    // Its body is not an MCP answer, so it is not relayed: Latchkey's 502 names the
    // server and the upstream's status.
    assert_eq!(status, 502, "{v}");
    assert_eq!(v["code"], "upstream_error");
    assert!(v["message"].as_str().unwrap().contains("HTTP 500"), "{v}");
    upstream.set_mcp_fault(McpFault::None);

    super::cleanup(dir, schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_events_pass_through_as_they_arrive() {
    let upstream = ScriptedServer::start(AsConfig::default()).await.unwrap();
    let (base, id, dir, _) = connected(&upstream, super::Backend::Sqlite).await;
    let url = format!("{base}/mcp/{id}");
    let started = Instant::now();
    let mut r = super::client()
        .post(&url)
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .body(call(7, "ticks", json!({"count": 3, "interval_ms": 400})).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let first = r.chunk().await.unwrap().unwrap();
    let first_at = started.elapsed();
    assert!(String::from_utf8_lossy(&first).contains("tick 0"));
    let mut rest = Vec::new();
    while let Some(c) = r.chunk().await.unwrap() {
        rest.extend_from_slice(&c);
    }
    let done_at = started.elapsed();
    let rest = String::from_utf8(rest).unwrap();
    assert!(
        rest.contains("tick 2") && rest.contains("3 ticks"),
        "{rest}"
    );
    // The stream takes 1.2 s upstream; the first event arrived long before its end.
    assert!(done_at >= Duration::from_millis(1200));
    assert!(
        done_at - first_at >= Duration::from_millis(800),
        "first event at {first_at:?}, end at {done_at:?}: buffered"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_and_slots_without_a_token_never_reach_upstream() {
    let upstream = ScriptedServer::start(AsConfig::default()).await.unwrap();
    let (base, id, dir, _) = connected(&upstream, super::Backend::Sqlite).await;
    let url = format!("{base}/mcp/{id}");
    // One client (one connection pool) for every call, like an agent's.
    let http = super::client();

    // A request larger than the replay limit is streamed through (not refused).
    let big = "x".repeat(latchkey_gateway::proxy::REPLAY_LIMIT + 10);
    let (status, _, v) = rpc(&http, &url, None, call(8, "echo", json!({"text": big}))).await;
    assert_eq!(status, 200);
    assert_eq!(
        v["result"]["content"][0]["text"].as_str().unwrap().len(),
        big.len()
    );

    // Disconnected: the next request is a typed error and nothing goes upstream.
    let r = super::client()
        .delete(format!("{base}/v1/credentials/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let before = upstream.mcp_requests();
    let (status, _, v) = rpc(&http, &url, None, call(9, "echo", json!({"text": "x"}))).await;
    assert_eq!(
        (status, v["error"]["data"]["code"].as_str()),
        (200, Some("needs_oauth_reauth"))
    );
    // A GET (SSE stream) has no JSON-RPC id to answer: the REST error.
    let r = super::client()
        .get(&url)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    assert_eq!(upstream.mcp_requests(), before);

    // Unknown server and unsupported methods.
    let (status, _, _) = rpc(
        &http,
        &format!("{base}/mcp/nope"),
        None,
        call(10, "echo", json!({})),
    )
    .await;
    assert_eq!(status, 404);
    let r = super::client().put(&url).send().await.unwrap();
    assert_eq!(r.status(), 405);
    let _ = std::fs::remove_dir_all(dir);
}

/// R-REFRESH single flight at the front door: 1,000 concurrent calls through the proxy on
/// a slot whose access token is missing (a deposit of a refresh token only) make
/// exactly one refresh grant, and every call succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_calls_on_an_expired_slot_make_one_refresh() {
    let upstream = ScriptedServer::start(AsConfig::default()).await.unwrap();
    let (base, id, dir, _) = connected(&upstream, super::Backend::Sqlite).await;
    let url = format!("{base}/mcp/{id}");
    // One client (one connection pool) for every call, like an agent's.
    let http = super::client();
    let calls: Vec<_> = (0..1000)
        .map(|i| {
            let (url, http) = (url.clone(), http.clone());
            tokio::spawn(async move {
                rpc(
                    &http,
                    &url,
                    None,
                    call(i, "echo", json!({"text": format!("m{i}")})),
                )
                .await
            })
        })
        .collect();
    for (i, c) in calls.into_iter().enumerate() {
        let (status, _, v) = c.await.unwrap();
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["result"]["content"][0]["text"], format!("m{i}"));
    }
    assert_eq!(upstream.grants_served_for("refresh_token"), 1);
    assert_eq!(upstream.reuse_detections(), 0);
    let _ = std::fs::remove_dir_all(dir);
}

/// An upstream that reads any body, however large, and answers 200 with its length.
async fn unlimited_upstream() -> String {
    async fn sink(body: axum::body::Body) -> axum::Json<Value> {
        let n = axum::body::to_bytes(body, usize::MAX)
            .await
            .map_or(0, |b| b.len());
        axum::Json(json!({"jsonrpc": "2.0", "id": 1, "result": {"read": n}}))
    }
    let app = axum::Router::new().route("/mcp", axum::routing::post(sink));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/mcp")
}

/// A chunked upload (no length to refuse up front) crossing the proxy's limit is cut
/// off there and answered with the typed 413, even by an upstream that would read it all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_upload_over_the_limit_is_cut_off_with_a_typed_413() {
    let scripted = ScriptedServer::start(AsConfig::default()).await.unwrap();
    let (base, _, dir, _) = connected(&scripted, super::Backend::Sqlite).await;
    let (status, server) = super::post(
        &format!("{base}/v1/servers"),
        json!({"name": "sink", "url": unlimited_upstream().await, "auth_type": "none"}),
    )
    .await;
    assert_eq!(status, 201, "{server}");
    let url = format!("{base}/mcp/{}", server["id"].as_str().unwrap());
    let send = |total: usize| {
        let chunk = bytes::Bytes::from(vec![b' '; 64 * 1024]);
        let chunks = (0..total / chunk.len()).map(move |_| Ok::<_, std::io::Error>(chunk.clone()));
        super::client()
            .post(&url)
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                chunks,
            )))
            .send()
    };
    // Under the limit (and over the replay limit): streamed through, read whole.
    let r = send(2 * 1024 * 1024).await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["result"]["read"], 2 * 1024 * 1024);
    // Over it: the typed 413.
    let r = send(latchkey_gateway::proxy::BODY_LIMIT + 1024 * 1024)
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["code"], "payload_too_large");
    let _ = std::fs::remove_dir_all(dir);
}

/// `/mcp/{server}` is served outside the router's layers (issue 18: `proxy::Route`):
/// it still refuses a foreign `Host` or `Origin` with the guard's 403, a non-JSON POST
/// with the typed 415 and another method with the typed 405, before anything reaches
/// the upstream, and every answer, relayed or refused, carries `nosniff` and the
/// sandbox CSP like the rest of the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hot_path_keeps_the_guard_the_typed_refusals_and_the_headers() {
    let upstream = ScriptedServer::start(AsConfig::default()).await.unwrap();
    let (base, id, dir, schema) = connected(&upstream, super::Backend::Sqlite).await;
    let url = format!("{base}/mcp/{id}");
    let http = super::client();
    let hardened = |h: &reqwest::header::HeaderMap, what: &str| {
        assert_eq!(h["x-content-type-options"], "nosniff", "{what}");
        assert_eq!(
            h["content-security-policy"], "sandbox; default-src 'none'",
            "{what}"
        );
    };
    let message = call(1, "echo", json!({"text": "hi"})).to_string();
    let before = upstream.mcp_requests();

    for (header, value) in [
        ("host", "elsewhere.example"),
        ("origin", "https://elsewhere.example"),
    ] {
        let r = http
            .post(&url)
            .header(header, value)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(message.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 403, "{header}");
        hardened(r.headers(), header);
    }

    let r = http
        .post(&url)
        .header("content-type", "text/plain")
        .header("accept", "application/json, text/event-stream")
        .body(message.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 415);
    hardened(r.headers(), "415");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["code"], "unsupported_media_type", "{v}");

    let r = http
        .put(&url)
        .header("content-type", "application/json")
        .body(message.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
    assert_eq!(r.headers()["allow"], "GET, POST, DELETE");
    hardened(r.headers(), "405");
    // Only one segment after `/mcp/` is the proxy (the accept loop routes it ahead of
    // the router, with the router's own match): more is the API's typed 404.
    for path in [format!("{url}/more"), format!("{base}/mcp/")] {
        let r = http
            .post(&path)
            .header("content-type", "application/json")
            .body(message.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 404, "{path}");
        hardened(r.headers(), &path);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["code"], "not_found", "{v}");
    }
    assert_eq!(
        upstream.mcp_requests(),
        before,
        "a refused request reached upstream"
    );

    // A relayed answer gets the same headers.
    let (status, headers, v) = rpc(&http, &url, None, call(2, "echo", json!({"text": "hi"}))).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["result"]["content"][0]["text"], "hi");
    hardened(&headers, "relayed");
    assert_eq!(upstream.mcp_requests(), before + 1);

    super::cleanup(dir, schema).await;
}
