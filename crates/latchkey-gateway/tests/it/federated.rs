//! The federated MCP endpoint `/mcp` over real HTTP, driven by rmcp's MCP client (and by
//! raw requests where the exact wire matters), against scripted upstream servers: the
//! tools of connected servers under federated names, calls routed with the slot's
//! token, refresh and retry on a 401, the URL-mode elicitation for a slot without
//! credentials and the flow it starts, `latchkey_connect`, `tools/list_changed`,
//! stable names for same-named servers, sessions bound to their principal, and the
//! stateless 2026-07-28 wire.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use latchkey_core::{Clock, SystemClock};
use latchkey_gateway::Config;
use latchkey_testkit::idp::{KeyAlg, ScriptedIdp};
use latchkey_testkit::{AsConfig, McpFault, ScriptedServer};
use latchkey_vault::keyring::StaticKeys;
use latchkey_vault::{KeySet, Keyring};
use rmcp::model::{CallToolRequestParams, CallToolResult, ErrorData, SubscriptionFilter};
use rmcp::service::{NotificationContext, RunningService, ServiceError};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{ClientHandler, ClientServiceExt, RoleClient, ServiceExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{client, post};

const KEY: &str = "1:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
/// What the test client presents to Latchkey (local mode ignores it); it must never
/// reach an upstream server.
const CALLER_TOKEN: &str = "callers-own-credential";

fn keys() -> StaticKeys {
    StaticKeys(Some(KeySet::parse(KEY).unwrap()))
}

/// Latchkey in local mode on `backend`: its base URL and what [`super::cleanup`] takes.
async fn latchkey(
    backend: super::Backend,
) -> (
    String,
    std::path::PathBuf,
    Option<latchkey_testkit::pg::PgSchema>,
) {
    let (base, dir, _store, schema) =
        super::start_on(backend, &super::loopback_config(), keys()).await;
    (base, dir, schema)
}

/// A scripted MCP server (offering prompts and resources labelled `primitives`, when
/// given) added to Latchkey at `base` as `name`, with the caller's credential for it
/// deposited when `connected`: the server and its id.
async fn scripted(
    base: &str,
    name: &str,
    primitives: Option<&str>,
    connected: bool,
) -> (ScriptedServer, String) {
    let upstream = ScriptedServer::start(AsConfig::default()).await.unwrap();
    upstream.offer_primitives(primitives);
    let id = super::add_server(base, name, &upstream).await;
    if connected {
        super::deposit(base, &id, &upstream).await;
    }
    (upstream, id)
}

/// An MCP client that reports each `notifications/tools/list_changed`.
#[derive(Debug, Clone)]
struct Watcher(mpsc::UnboundedSender<()>);

impl ClientHandler for Watcher {
    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        let _ = self.0.send(());
    }
}

type Client = RunningService<RoleClient, Watcher>;

/// A 2025-11-25 client session on `{base}/mcp`, presenting `bearer`.
async fn connect(base: &str, bearer: &str) -> (Client, mpsc::UnboundedReceiver<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (serve_as(Watcher(tx), base, bearer, Wire::Session).await, rx)
}

async fn tool_names(c: &Client) -> Vec<String> {
    let mut names: Vec<String> = c
        .list_all_tools()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    names.sort();
    names
}

async fn call(c: &Client, name: &str, args: Value) -> Result<CallToolResult, ErrorData> {
    let Value::Object(args) = args else {
        panic!("arguments must be an object")
    };
    match c
        .call_tool(CallToolRequestParams::new(name.to_owned()).with_arguments(args))
        .await
    {
        Ok(r) => Ok(r),
        Err(ServiceError::McpError(e)) => Err(e),
        Err(other) => panic!("{other}"),
    }
}

fn text(r: &CallToolResult) -> String {
    serde_json::to_value(r).unwrap()["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Waits for one list_changed notification.
async fn changed(rx: &mut mpsc::UnboundedReceiver<()>) {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a tools/list_changed notification within 10 s")
        .unwrap();
}

/// The authorization URL of a `-32042` error, after checking its shape.
fn elicitation_url(e: &ErrorData) -> String {
    assert_eq!(e.code.0, -32042, "{e:?}");
    let data = e.data.as_ref().unwrap();
    let el = &data["elicitations"][0];
    assert_eq!(el["mode"], "url", "{data}");
    assert!(!el["elicitationId"].as_str().unwrap().is_empty());
    assert!(!el["message"].as_str().unwrap().is_empty());
    el["url"].as_str().unwrap().to_owned()
}

/// Follows an authorization URL to the scripted AS and then its redirect to Latchkey's
/// callback; the callback page must report success.
async fn consent(url: &str) {
    let r = client().get(url).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 302);
    let callback = r.headers()["location"].to_str().unwrap().to_owned();
    let r = client().get(&callback).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let html = r.text().await.unwrap();
    assert!(html.contains("\"ok\":true"), "{html}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federated_list_and_call_on_sqlite() {
    list_and_call(super::Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federated_list_and_call_on_postgres() {
    list_and_call(super::Backend::Postgres).await;
}

/// Two connected servers and one that is not: the listing, routing with each slot's own
/// token, the 401 retry, pass-through results, errors.
async fn list_and_call(backend: super::Backend) {
    let logs = latchkey_testkit::logs::capture();
    let (base, dir, schema) = latchkey(backend).await;
    let (alpha, _) = scripted(&base, "Alpha", None, true).await;
    let (beta, _) = scripted(&base, "Beta", None, true).await;
    let (gamma, _) = scripted(&base, "Gamma", None, false).await;

    let (c, _rx) = connect(&base, CALLER_TOKEN).await;
    assert_eq!(
        tool_names(&c).await,
        vec![
            "alpha__add",
            "alpha__echo",
            "beta__add",
            "beta__echo",
            "latchkey_connect"
        ],
        "gamma has no credentials, so no tools"
    );
    assert_eq!(
        gamma.mcp_requests(),
        1,
        "only the probe: no call without a token"
    );

    // Routed to beta with beta's slot token.
    let r = call(&c, "beta__add", json!({"a": 2, "b": 3}))
        .await
        .unwrap();
    assert_eq!(r.structured_content, Some(json!({"sum": 5})));
    assert_eq!(r.is_error, Some(false));
    let injected = beta.last_mcp_authorization().unwrap();
    assert!(
        beta.issued_access_tokens()
            .iter()
            .any(|t| injected == format!("Bearer {t}")),
        "{injected}"
    );
    for upstream in [&alpha, &beta, &gamma] {
        for r in upstream.requests("/mcp") {
            let auth = r.headers.get("authorization").cloned().unwrap_or_default();
            assert!(
                !auth.contains(CALLER_TOKEN),
                "the caller's credential went upstream"
            );
        }
    }
    let r = call(&c, "alpha__echo", json!({"text": "hi"}))
        .await
        .unwrap();
    assert_eq!(text(&r), "hi");
    let injected = alpha.last_mcp_authorization().unwrap();
    assert!(
        alpha
            .issued_access_tokens()
            .iter()
            .any(|t| injected == format!("Bearer {t}"))
    );

    // An upstream 401: one forced refresh, one retry, success.
    let refreshes = alpha.grants_served_for("refresh_token");
    alpha.set_mcp_fault(McpFault::Unauthorized(1));
    let r = call(&c, "alpha__echo", json!({"text": "again"}))
        .await
        .unwrap();
    assert_eq!(text(&r), "again");
    assert_eq!(alpha.grants_served_for("refresh_token"), refreshes + 1);

    // The upstream's own tool error passes through.
    let r = call(&c, "alpha__echo", json!({})).await.unwrap();
    assert_eq!(r.is_error, Some(true));
    assert_eq!(text(&r), "echo: `text` must be a string");

    // A 403 insufficient_scope: a tool error naming the scopes, no refresh.
    let refreshes = alpha.grants_served_for("refresh_token");
    alpha.set_required_scope(Some("admin".into()));
    let r = call(&c, "alpha__echo", json!({"text": "x"})).await.unwrap();
    assert_eq!(r.is_error, Some(true));
    assert!(text(&r).contains("admin"), "{}", text(&r));
    assert_eq!(alpha.grants_served_for("refresh_token"), refreshes);
    alpha.set_required_scope(None);

    // Unknown tools: the standard JSON-RPC error.
    for name in ["nope", "alpha__nope", "delta__echo"] {
        let e = call(&c, name, json!({})).await.unwrap_err();
        assert_eq!(e.code.0, -32602, "{name}: {e:?}");
    }

    // The server without credentials: the URL elicitation pointing at its AS.
    let e = call(&c, "gamma__echo", json!({"text": "x"}))
        .await
        .unwrap_err();
    let url = elicitation_url(&e);
    assert!(
        url.starts_with(&format!("{}/authorize?", gamma.base)),
        "{url}"
    );
    assert!(url.contains("code_challenge_method=S256"));

    c.cancel().await.unwrap();
    let text = logs.text();
    for event in [
        "mcp.request.start",
        "mcp.request.auth",
        "mcp.request.complete",
    ] {
        assert!(text.contains(event), "{event} is logged");
    }
    assert!(text.contains("auth_source=local"));
    assert!(
        !text.contains(CALLER_TOKEN),
        "the caller's token is never logged"
    );
    for upstream in [&alpha, &beta] {
        for t in upstream.issued_access_tokens() {
            assert!(
                !text.contains(&format!("Bearer {t}")),
                "no upstream token in the logs"
            );
        }
    }
    super::cleanup(dir, schema).await;
}

/// A call to a server that is not connected starts a flow; completing it in the browser
/// connects the server, the session is told, and the tool works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_through_the_elicitation_url_then_the_tool_works() {
    let cfg = super::loopback_config();
    let (base, dir) = super::start(&cfg, keys()).await;
    let (upstream, id) = scripted(&base, "Linear (prod)", None, false).await;
    let (c, mut rx) = connect(&base, CALLER_TOKEN).await;
    assert_eq!(tool_names(&c).await, vec!["latchkey_connect"]);

    let e = call(&c, "linear-prod__echo", json!({"text": "x"}))
        .await
        .unwrap_err();
    let url = elicitation_url(&e);
    assert!(url.starts_with(&format!("{}/authorize?", upstream.base)));
    assert_eq!(e.data.as_ref().unwrap()["server_id"], id.as_str());

    // latchkey_connect gives a link too (a new flow replaces the caller's earlier one).
    let e = call(&c, "latchkey_connect", json!({"server": "linear (prod)"}))
        .await
        .unwrap_err();
    let url = elicitation_url(&e);
    consent(&url).await;
    changed(&mut rx).await;

    assert_eq!(
        tool_names(&c).await,
        vec!["latchkey_connect", "linear-prod__add", "linear-prod__echo"]
    );
    let r = call(&c, "linear-prod__echo", json!({"text": "connected"}))
        .await
        .unwrap();
    assert_eq!(text(&r), "connected");
    assert_eq!(upstream.grants_served_for("authorization_code"), 1);
    let r = call(&c, "latchkey_connect", json!({"server": "linear-prod"}))
        .await
        .unwrap();
    assert_eq!(r.is_error, Some(false));
    assert!(text(&r).contains("already connected"), "{}", text(&r));
    let r = call(&c, "latchkey_connect", json!({"server": "nothing"}))
        .await
        .unwrap();
    assert_eq!(r.is_error, Some(true));
    let e = call(&c, "latchkey_connect", json!({})).await.unwrap_err();
    assert_eq!(e.code.0, -32602);

    // A refused refresh (the AS revoked the family): -32042 again, though a refresh
    // token is stored.
    upstream.set_token_fault(latchkey_testkit::TokenFault::OAuthError {
        status: 400,
        error: "invalid_grant".into(),
    });
    upstream.expire_access_tokens();
    let e = call(&c, "linear-prod__echo", json!({"text": "x"}))
        .await
        .unwrap_err();
    elicitation_url(&e);
    upstream.set_token_fault(latchkey_testkit::TokenFault::None);
    c.cancel().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

/// Deposit and delete reach a live session as `notifications/tools/list_changed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_changed_on_connect_and_disconnect() {
    let cfg = super::loopback_config();
    let (base, dir) = super::start(&cfg, keys()).await;
    let (upstream, id) = scripted(&base, "scripted", None, false).await;
    let (c, mut rx) = connect(&base, CALLER_TOKEN).await;
    assert_eq!(tool_names(&c).await, vec!["latchkey_connect"]);
    // The GET stream that carries notifications opens after the handshake.
    tokio::time::sleep(Duration::from_millis(300)).await;

    super::deposit(&base, &id, &upstream).await;
    changed(&mut rx).await;
    assert_eq!(
        tool_names(&c).await,
        vec!["latchkey_connect", "scripted__add", "scripted__echo"]
    );

    let r = client()
        .delete(format!("{base}/v1/credentials/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    changed(&mut rx).await;
    assert_eq!(tool_names(&c).await, vec!["latchkey_connect"]);
    c.cancel().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

/// Same-named servers get distinct names that depend on nothing but the servers: a
/// second gateway over the same database (a restart) names them the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_named_servers_get_distinct_stable_names() {
    let cfg = super::loopback_config();
    let (base, dir, store) = super::start_with_store(&cfg, keys()).await;
    let (one, _) = scripted(&base, "Scripted", None, true).await;
    let (two, _) = scripted(&base, "scripted", None, true).await;
    let (c, _rx) = connect(&base, CALLER_TOKEN).await;
    let names = tool_names(&c).await;
    c.cancel().await.unwrap();
    assert_eq!(names.len(), 5, "{names:?}");
    let prefixes: std::collections::BTreeSet<&str> = names
        .iter()
        .filter_map(|n| n.split_once("__").map(|(p, _)| p))
        .collect();
    assert_eq!(prefixes.len(), 2, "{names:?}");
    assert!(prefixes.iter().all(|p| p.starts_with("scripted-")));
    assert!(names.iter().all(|n| n.len() <= 64));

    // Which prefix is whose: a call lands on that server.
    let echo = names
        .iter()
        .find(|n| n.ends_with("__echo"))
        .unwrap()
        .clone();
    let (c, _rx) = connect(&base, CALLER_TOKEN).await;
    let before = (one.mcp_requests(), two.mcp_requests());
    call(&c, &echo, json!({"text": "x"})).await.unwrap();
    assert!(
        (one.mcp_requests() > before.0) ^ (two.mcp_requests() > before.1),
        "exactly one server was called"
    );
    c.cancel().await.unwrap();

    // "Restart": a new gateway over the same database.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base2 = format!("http://{}", listener.local_addr().unwrap());
    let mut cfg2 = cfg.clone();
    cfg2.public_url = base2.clone();
    let app = latchkey_gateway::router(
        latchkey_gateway::state(
            &cfg2,
            store,
            Arc::new(Keyring::new(keys())),
            Arc::new(SystemClock),
        )
        .unwrap(),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    let (c, _rx) = connect(&base2, CALLER_TOKEN).await;
    assert_eq!(tool_names(&c).await, names);
    // The new instance resolves a name it has not listed itself.
    let (c2, _rx2) = connect(&base2, CALLER_TOKEN).await;
    call(&c2, &echo, json!({"text": "y"})).await.unwrap();
    c.cancel().await.unwrap();
    c2.cancel().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

/// The 2026-07-28 wire: no `initialize`, every request self-contained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stateless_2026_07_28_requests() {
    let cfg = super::loopback_config();
    let (base, dir) = super::start(&cfg, keys()).await;
    let (upstream, id) = scripted(&base, "scripted", None, true).await;

    let meta = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
    });
    let send = |method: &'static str, name: Option<&'static str>, params: Value| {
        let base = base.clone();
        async move {
            let mut req = client()
                .post(format!("{base}/mcp"))
                .header("content-type", "application/json")
                .header("accept", "application/json, text/event-stream")
                .header("mcp-protocol-version", "2026-07-28")
                .header("mcp-method", method)
                .json(&json!({"jsonrpc": "2.0", "id": 7, "method": method, "params": params}));
            if let Some(n) = name {
                req = req.header("mcp-name", n);
            }
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            assert!(r.headers().get("mcp-session-id").is_none(), "no session");
            let body: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
            (status, body)
        }
    };
    let (status, v) = send("tools/list", None, json!({"_meta": meta})).await;
    assert_eq!(status, 200, "{v}");
    let names: Vec<&str> = v["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"scripted__echo"), "{v}");
    // Complete results of the 2026-07-28 revision (its schema requires `resultType`).
    assert_eq!(v["result"]["resultType"], "complete", "{v}");
    let (status, v) = send(
        "tools/call",
        Some("scripted__add"),
        json!({"_meta": meta, "name": "scripted__add", "arguments": {"a": 1, "b": 41}}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["result"]["structuredContent"]["sum"], 42, "{v}");
    // Relayed from an upstream on 2025-11-25, which sends no `resultType`.
    assert_eq!(v["result"]["resultType"], "complete", "{v}");
    assert!(v["result"]["content"].is_array(), "{v}");
    // Steady state: one upstream request per federated call (the upstream session is
    // kept between calls).
    let before = upstream.mcp_requests();
    for _ in 0..3 {
        let (status, v) = send(
            "tools/call",
            Some("scripted__add"),
            json!({"_meta": meta, "name": "scripted__add", "arguments": {"a": 2, "b": 2}}),
        )
        .await;
        assert_eq!(status, 200, "{v}");
    }
    assert_eq!(upstream.mcp_requests() - before, 3);
    // Without the `_meta` keys the 2026-07-28 request is refused.
    let (status, v) = send("tools/list", None, json!({})).await;
    assert_eq!(status, 400, "{v}");

    // A server without credentials. 2026-07-28 has no -32042: a client that declared
    // URL elicitation gets an `input_required` result carrying the link ...
    let (other, _) = scripted(&base, "other", None, false).await;
    let mut url_meta = meta.clone();
    url_meta["io.modelcontextprotocol/clientCapabilities"] = json!({"elicitation": {"url": {}}});
    let (status, v) = send(
        "tools/call",
        Some("other__echo"),
        json!({"_meta": url_meta, "name": "other__echo", "arguments": {"text": "x"}}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["result"]["resultType"], "input_required", "{v}");
    let ask = &v["result"]["inputRequests"]["connect"];
    assert_eq!(ask["method"], "elicitation/create", "{v}");
    assert_eq!(ask["params"]["mode"], "url", "{v}");
    let url = ask["params"]["url"].as_str().unwrap().to_owned();
    assert!(
        url.starts_with(&format!("{}/authorize?", other.base)),
        "{url}"
    );
    // ... its retry before the user finished is told so (no second flow) ...
    let retry = json!({"_meta": url_meta, "name": "other__echo", "arguments": {"text": "x"},
        "inputResponses": {"connect": {"action": "accept"}}});
    let (status, v) = send("tools/call", Some("other__echo"), retry.clone()).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["result"]["isError"], true, "{v}");
    assert_eq!(other.requests("/authorize").len(), 0);
    // ... and once the flow is done the retry runs the tool.
    consent(&url).await;
    let (status, v) = send("tools/call", Some("other__echo"), retry).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["result"]["content"][0]["text"], "x", "{v}");
    // A client that did not declare URL elicitation: -32021 naming it.
    let (_third, _) = scripted(&base, "third", None, false).await;
    let (status, v) = send(
        "tools/call",
        Some("third__echo"),
        json!({"_meta": meta, "name": "third__echo", "arguments": {"text": "x"}}),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], -32021, "{v}");
    assert!(
        v["error"]["data"]["requiredCapabilities"]["elicitation"]["url"].is_object(),
        "{v}"
    );

    // rmcp's client on the discover lifecycle, with a subscriptions/listen stream.
    let c = connect_on(&base, Wire::Stateless).await;
    let tools = c.list_all_tools().await.unwrap();
    assert!(tools.iter().any(|t| t.name == "scripted__add"));
    let mut sub = c
        .listen(SubscriptionFilter::builder().tools_list_changed().build())
        .await
        .unwrap();
    assert_eq!(sub.acknowledged().tools_list_changed, Some(true));
    let r = client()
        .delete(format!("{base}/v1/credentials/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let n = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("a notification within 10 s")
        .unwrap()
        .unwrap();
    assert!(
        matches!(
            n,
            rmcp::model::ServerNotification::ToolListChangedNotification(_)
        ),
        "{n:?}"
    );
    let tools = c.list_all_tools().await.unwrap();
    assert!(!tools.iter().any(|t| t.name == "scripted__add"));
    drop(sub);
    c.cancel().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

/// Sessions belong to the principal that created them: another user's credential on
/// the session id gets a 404, on every method.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_cannot_be_used_by_another_user() {
    let logs = latchkey_testkit::logs::capture();
    let idp = ScriptedIdp::start().await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let toml = format!(
        "allow_insecure_loopback = true\npublic_url = \"{base}\"\n[auth]\nmode = \"jwt\"\nissuer = \"{}\"\naudience = \"{base}/mcp\"\njwks_url = \"{}\"",
        idp.issuer(),
        idp.jwks_url()
    );
    let cfg = Config::parse(&toml, &HashMap::new()).unwrap();
    let dir = std::env::temp_dir().join(format!("lk-gw-{}", latchkey_vault::store::new_id()));
    std::fs::create_dir_all(&dir).unwrap();
    let store: Arc<dyn latchkey_vault::Store> = Arc::new(
        latchkey_vault::SqliteStore::open(&dir.join("db"))
            .await
            .unwrap(),
    );
    let app = latchkey_gateway::router(
        latchkey_gateway::state(
            &cfg,
            store,
            Arc::new(Keyring::new(keys())),
            Arc::new(SystemClock),
        )
        .unwrap(),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    let now = SystemClock.now().as_secs();
    let token = |sub: &str| {
        idp.mint(
            KeyAlg::Es256,
            &json!({"iss": idp.issuer(), "aud": format!("{base}/mcp"), "sub": sub, "tenant": "t", "exp": now + 600}),
        )
    };
    let (alice, bob) = (token("alice"), token("bob"));

    let rpc = |bearer: &str, session: Option<&str>, body: Value| {
        let mut req = client()
            .post(format!("{base}/mcp"))
            .bearer_auth(bearer)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .json(&body);
        if let Some(s) = session {
            req = req
                .header("mcp-session-id", s)
                .header("mcp-protocol-version", "2025-11-25");
        }
        req.send()
    };
    let r = rpc(
        &alice,
        None,
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "raw", "version": "1"}}}),
    )
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let sid = r.headers()["mcp-session-id"].to_str().unwrap().to_owned();
    let _ = r.bytes().await;
    let r = rpc(
        &alice,
        Some(&sid),
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    )
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});

    // Bob, with a valid credential of his own, cannot use, read or end Alice's session.
    let r = rpc(&bob, Some(&sid), list.clone()).await.unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let r = client()
        .get(format!("{base}/mcp"))
        .bearer_auth(&bob)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &sid)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let r = client()
        .delete(format!("{base}/mcp"))
        .bearer_auth(&bob)
        .header("mcp-session-id", &sid)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);

    // Alice still can.
    let r = rpc(&alice, Some(&sid), list.clone()).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let body = r.text().await.unwrap();
    assert!(body.contains("latchkey_connect"), "{body}");

    // Without a credential: the guard's challenge, before anything else.
    let r = client()
        .post(format!("{base}/mcp"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .json(&list)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert!(r.headers().contains_key("www-authenticate"));

    let text = logs.text();
    assert!(text.contains("session_owner_mismatch"));
    assert!(text.contains("missing_authorization"));
    assert!(text.contains("auth_source=jwt"));
    assert!(
        !text.contains(&alice) && !text.contains(&bob),
        "no token logged"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// The wire a federated test client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wire {
    /// 2025-11-25: `initialize` and an `Mcp-Session-Id` session.
    Session,
    /// 2026-07-28: stateless requests (rmcp's discover lifecycle).
    Stateless,
}

/// An rmcp client with `handler` on `{base}/mcp`, presenting `bearer`, speaking `wire`.
pub(super) async fn serve_as<H: ClientHandler>(
    handler: H,
    base: &str,
    bearer: &str,
    wire: Wire,
) -> RunningService<RoleClient, H> {
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(format!("{base}/mcp")).auth_header(bearer),
    );
    match wire {
        Wire::Session => handler.serve(transport).await.unwrap(),
        Wire::Stateless => handler
            .serve_with_lifecycle(
                transport,
                rmcp::ClientLifecycleMode::Discover {
                    preferred_versions: vec![rmcp::model::ProtocolVersion::V_2026_07_28],
                },
            )
            .await
            .unwrap(),
    }
}

/// A client without a handler on `{base}/mcp` speaking `wire`.
async fn connect_on(base: &str, wire: Wire) -> RunningService<RoleClient, ()> {
    serve_as((), base, CALLER_TOKEN, wire).await
}

/// The JSON-RPC error of a failed client request.
fn rpc_error<T: std::fmt::Debug>(r: Result<T, ServiceError>) -> ErrorData {
    match r {
        Err(ServiceError::McpError(e)) => e,
        other => panic!("expected a JSON-RPC error, got {other:?}"),
    }
}

/// The methods of the MCP requests `upstream` received.
fn upstream_methods(upstream: &ScriptedServer) -> Vec<String> {
    upstream
        .requests("/mcp")
        .into_iter()
        .filter_map(|r| r.body.get("method").cloned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federated_prompts_resources_completions_on_the_session_wire() {
    prompts_resources_completions(super::Backend::Sqlite, Wire::Session).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federated_prompts_resources_completions_on_the_stateless_wire() {
    prompts_resources_completions(super::Backend::Postgres, Wire::Stateless).await;
}

/// Two servers whose prompt names and resource URIs are the same, one that offers
/// tools only, one that is not connected and a static-header one without its value
/// (then with it): each primitive listed once per usable
/// server under its own name, got, read and completed from the right server with the
/// original name or URI.
async fn prompts_resources_completions(backend: super::Backend, wire: Wire) {
    use rmcp::model::{
        ArgumentInfo, CompleteRequestParams, GetPromptRequestParams, ReadResourceRequestParams,
        Reference, ResourceContents,
    };
    let (base, dir, schema) = latchkey(backend).await;
    let (alpha, a) = scripted(&base, "Alpha", Some("alpha"), true).await;
    let (beta, _) = scripted(&base, "Beta", Some("beta"), true).await;
    let (tools_only, _) = scripted(&base, "Tools only", None, true).await;
    let (absent, _) = scripted(&base, "Absent", Some("absent"), false).await;
    let keyed = ScriptedServer::start(AsConfig::default()).await.unwrap();
    keyed.require_header(Some(("X-Api-Key", &["k-1"])));
    keyed.offer_primitives(Some("keyed"));
    // A static-header server whose value is not set yet.
    let (status, v) = post(
        &format!("{base}/v1/servers"),
        json!({"name": "Keyed", "url": keyed.mcp_url(), "header_names": ["X-Api-Key"]}),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let k = v["id"].as_str().unwrap().to_owned();
    let c = connect_on(&base, wire).await;

    // Advertised whatever is connected.
    let caps = &c.peer_info().unwrap().capabilities;
    assert!(caps.prompts.is_some() && caps.resources.is_some() && caps.completions.is_some());

    // Prompts: one per server, same upstream name, distinct federated names.
    let mut prompts: Vec<String> = c
        .list_all_prompts()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    prompts.sort();
    assert_eq!(prompts, vec!["alpha__greet", "beta__greet"]);
    let mut args = serde_json::Map::new();
    args.insert("name".into(), json!("Ann"));
    let before = beta.requests("/mcp").len();
    let r = c
        .get_prompt(GetPromptRequestParams::new("beta__greet").with_arguments(args.clone()))
        .await
        .unwrap();
    let message = serde_json::to_value(&r.messages[0]).unwrap();
    assert_eq!(
        message["content"]["text"], "Hello, Ann, from beta",
        "{message}"
    );
    let sent = &beta.requests("/mcp")[before..];
    assert_eq!(sent.len(), 1, "one upstream request in steady state");
    assert_eq!(sent[0].body["method"], "prompts/get");
    assert_eq!(
        sent[0].body["name"], "greet",
        "the original name goes upstream"
    );
    // The upstream's own error passes through; unknown names are invalid params.
    let e = rpc_error(
        c.get_prompt(GetPromptRequestParams::new("alpha__greet"))
            .await,
    );
    assert_eq!(e.code.0, -32602, "{e:?}");
    assert!(e.message.contains("`name` is required"), "{e:?}");
    // Like a tool call: an upstream 401 is one refresh and one retry; a failure below
    // JSON-RPC is typed, naming the server and the stable code.
    let refreshes = alpha.grants_served_for("refresh_token");
    alpha.set_mcp_fault(McpFault::Unauthorized(1));
    let r = c
        .get_prompt(GetPromptRequestParams::new("alpha__greet").with_arguments(args.clone()))
        .await
        .unwrap();
    let message = serde_json::to_value(&r.messages[0]).unwrap();
    assert_eq!(
        message["content"]["text"], "Hello, Ann, from alpha",
        "{message}"
    );
    assert_eq!(alpha.grants_served_for("refresh_token"), refreshes + 1);
    alpha.set_mcp_fault_for(McpFault::ServerError(503), 1);
    let e = rpc_error(
        c.get_prompt(GetPromptRequestParams::new("alpha__greet").with_arguments(args.clone()))
            .await,
    );
    assert_eq!(e.code.0, -32603, "{e:?}");
    let data = e.data.clone().unwrap();
    assert_eq!(data["code"], "upstream_error", "{e:?}");
    assert_eq!(data["server_id"], a.as_str(), "{e:?}");
    assert!(e.message.contains("Alpha"), "{e:?}");
    for name in ["greet", "alpha__nope", "tools-only__greet", "delta__greet"] {
        let e = rpc_error(c.get_prompt(GetPromptRequestParams::new(name)).await);
        assert_eq!(e.code.0, -32602, "{name}: {e:?}");
    }

    // Resources and templates: the same upstream URIs, distinct federated ones.
    let mut uris: Vec<String> = c
        .list_all_resources()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.uri)
        .collect();
    uris.sort();
    assert_eq!(
        uris,
        vec![
            "latchkey://alpha/file:///notes.txt",
            "latchkey://beta/file:///notes.txt"
        ]
    );
    let mut templates: Vec<String> = c
        .list_all_resource_templates()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.uri_template)
        .collect();
    templates.sort();
    assert_eq!(
        templates,
        vec![
            "latchkey://alpha/file:///docs/{name}",
            "latchkey://beta/file:///docs/{name}"
        ]
    );
    let read = |uri: &'static str| {
        let c = &c;
        async move {
            c.read_resource(ReadResourceRequestParams::new(uri))
                .await
                .map(|r| match &r.contents[0] {
                    ResourceContents::TextResourceContents { uri, text, .. } => {
                        (uri.clone(), text.clone())
                    }
                    other => panic!("{other:?}"),
                })
        }
    };
    let before = alpha.requests("/mcp").len();
    let (uri, text) = read("latchkey://alpha/file:///notes.txt").await.unwrap();
    assert_eq!(text, "notes of alpha");
    assert_eq!(
        uri, "latchkey://alpha/file:///notes.txt",
        "the URI asked for"
    );
    let sent = &alpha.requests("/mcp")[before..];
    assert_eq!(sent.len(), 1, "one upstream request in steady state");
    assert_eq!(sent[0].body["uri"], "file:///notes.txt");
    // A template expanded by the client maps back to the upstream's expansion.
    let (uri, text) = read("latchkey://beta/file:///docs/read%20me")
        .await
        .unwrap();
    assert_eq!(text, "doc read%20me of beta");
    assert_eq!(uri, "latchkey://beta/file:///docs/read%20me");
    for missing in [
        "latchkey://beta/file:///missing",
        "file:///notes.txt",
        "latchkey://delta/file:///notes.txt",
        "latchkey://tools-only/file:///notes.txt",
    ] {
        let e = rpc_error(read(missing).await);
        // 2026-07-28 moved resource-not-found to invalid params (rmcp maps it).
        let expected = if wire == Wire::Session {
            -32002
        } else {
            -32602
        };
        assert_eq!(e.code.0, expected, "{missing}: {e:?}");
    }

    // Completions, asked of the owner of the prompt or template, with the original.
    let complete = |r: Reference, value: &'static str| {
        let c = &c;
        async move {
            c.complete(CompleteRequestParams::new(
                r,
                ArgumentInfo::new("name", value),
            ))
            .await
            .map(|r| r.completion.values)
        }
    };
    assert_eq!(
        complete(Reference::for_prompt("alpha__greet"), "al")
            .await
            .unwrap(),
        vec!["alice@alpha", "albert@alpha"]
    );
    assert_eq!(
        complete(
            Reference::for_resource("latchkey://beta/file:///docs/{name}"),
            "r"
        )
        .await
        .unwrap(),
        vec!["readme@beta", "roadmap@beta"]
    );
    let e = rpc_error(complete(Reference::for_prompt("nope__greet"), "a").await);
    assert_eq!(e.code.0, -32602, "{e:?}");

    // The server without prompts or resources was never asked for them.
    let asked = upstream_methods(&tools_only);
    for m in ["prompts/list", "resources/list", "resources/templates/list"] {
        assert!(!asked.iter().any(|x| x == m), "{m} sent: {asked:?}");
    }

    // A server that declared prompts and resources but answers -32601 now (its session
    // still says it offers them): skipped, not an error.
    alpha.offer_primitives(None);
    let prompts: Vec<String> = c
        .list_all_prompts()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(prompts, vec!["beta__greet"]);
    assert_eq!(c.list_all_resources().await.unwrap().len(), 1);
    assert_eq!(c.list_all_resource_templates().await.unwrap().len(), 1);
    assert!(
        complete(
            Reference::for_resource("latchkey://alpha/file:///docs/{name}"),
            "r"
        )
        .await
        .unwrap()
        .is_empty()
    );
    let e = rpc_error(
        c.get_prompt(GetPromptRequestParams::new("alpha__greet"))
            .await,
    );
    assert_eq!(e.code.0, -32602, "{e:?}");

    // The server that is not connected: hidden, and a get or read aimed at it answers
    // as a tool call does.
    assert_eq!(absent.mcp_requests(), 1, "only the probe");
    match wire {
        Wire::Session => {
            let e = rpc_error(
                c.get_prompt(
                    GetPromptRequestParams::new("absent__greet").with_arguments(args.clone()),
                )
                .await,
            );
            let url = elicitation_url(&e);
            assert!(
                url.starts_with(&format!("{}/authorize?", absent.base)),
                "{url}"
            );
            let e = rpc_error(read("latchkey://absent/file:///notes.txt").await);
            elicitation_url(&e);
        }
        Wire::Stateless => {
            // This client did not declare URL elicitation: -32021 naming it.
            let e = rpc_error(read("latchkey://absent/file:///notes.txt").await);
            assert_eq!(e.code.0, -32021, "{e:?}");
            // One that did gets an `input_required` result carrying the link.
            let uri = "latchkey://absent/file:///notes.txt";
            let meta = json!({
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": {"elicitation": {"url": {}}},
                "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
            });
            let r = client()
                .post(format!("{base}/mcp"))
                .header("accept", "application/json, text/event-stream")
                .header("mcp-protocol-version", "2026-07-28")
                .header("mcp-method", "resources/read")
                .header("mcp-name", uri)
                .json(
                    &json!({"jsonrpc": "2.0", "id": 1, "method": "resources/read",
                              "params": {"_meta": meta, "uri": uri}}),
                )
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 200);
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["result"]["resultType"], "input_required", "{v}");
            let ask = &v["result"]["inputRequests"]["connect"]["params"];
            assert_eq!(ask["mode"], "url", "{v}");
            let url = ask["url"].as_str().unwrap();
            assert!(
                url.starts_with(&format!("{}/authorize?", absent.base)),
                "{url}"
            );
        }
    }
    assert!(
        complete(Reference::for_prompt("absent__greet"), "a")
            .await
            .unwrap()
            .is_empty(),
        "a completion starts no sign-in"
    );
    assert_eq!(absent.mcp_requests(), 1);

    // The static-header server: hidden without its value, a get says how to set it;
    // once set, its prompts are listed and got with the value sent.
    let e = rpc_error(
        c.get_prompt(GetPromptRequestParams::new("keyed__greet").with_arguments(args.clone()))
            .await,
    );
    assert!(e.message.contains("set-headers"), "{e:?}");
    let r = client()
        .put(format!("{base}/v1/servers/{k}/headers"))
        .json(&json!({"values": {"X-Api-Key": "k-1"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let mut prompts: Vec<String> = c
        .list_all_prompts()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    prompts.sort();
    assert_eq!(prompts, vec!["beta__greet", "keyed__greet"]);
    let r = c
        .get_prompt(GetPromptRequestParams::new("keyed__greet").with_arguments(args))
        .await
        .unwrap();
    let message = serde_json::to_value(&r.messages[0]).unwrap();
    assert_eq!(
        message["content"]["text"], "Hello, Ann, from keyed",
        "{message}"
    );
    c.cancel().await.unwrap();
    super::cleanup(dir, schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_level_and_subscriptions_reach_their_servers_on_sqlite() {
    set_level_and_subscriptions(super::Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_level_and_subscriptions_reach_their_servers_on_postgres() {
    set_level_and_subscriptions(super::Backend::Postgres).await;
}

/// `logging/setLevel` goes to every usable server that declared `logging` and to no
/// other; `resources/subscribe` and `resources/unsubscribe` go to the server owning the
/// federated URI, with the original URI (2025-11-25: the 2026-07-28 wire retired both).
// The client's requests for logging and subscriptions are deprecated in rmcp.
#[allow(deprecated)]
async fn set_level_and_subscriptions(backend: super::Backend) {
    use rmcp::model::{
        LoggingLevel, SetLevelRequestParams, SubscribeRequestParams, UnsubscribeRequestParams,
    };
    let (base, dir, schema) = latchkey(backend).await;
    let (alpha, _) = scripted(&base, "Alpha", Some("alpha"), true).await;
    let (beta, _) = scripted(&base, "Beta", Some("beta"), true).await;
    let (tools_only, _) = scripted(&base, "Tools only", None, true).await;
    let (absent, _) = scripted(&base, "Absent", Some("absent"), false).await;
    let c = connect_on(&base, Wire::Session).await;

    let caps = &c.peer_info().unwrap().capabilities;
    assert!(caps.logging.is_some(), "{caps:?}");
    assert_eq!(
        caps.resources.as_ref().and_then(|r| r.subscribe),
        Some(true),
        "{caps:?}"
    );

    // setLevel: to both servers declaring logging, not to the tools-only one (which
    // has a session but declared no logging), nor to the one that is not connected.
    c.set_level(SetLevelRequestParams::new(LoggingLevel::Debug))
        .await
        .unwrap();
    for upstream in [&alpha, &beta] {
        let sent = super::upstream_requests(upstream, "logging/setLevel");
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert_eq!(sent[0]["level"], "debug");
    }
    assert!(super::upstream_requests(&tools_only, "logging/setLevel").is_empty());
    assert!(super::upstream_requests(&absent, "logging/setLevel").is_empty());
    assert_eq!(absent.mcp_requests(), 1, "only the probe");

    // subscribe / unsubscribe: to the owner only, with the original URI.
    c.subscribe(SubscribeRequestParams::new(
        "latchkey://beta/file:///notes.txt",
    ))
    .await
    .unwrap();
    let sent = super::upstream_requests(&beta, "resources/subscribe");
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0]["uri"], "file:///notes.txt");
    assert!(super::upstream_requests(&alpha, "resources/subscribe").is_empty());
    c.unsubscribe(UnsubscribeRequestParams::new(
        "latchkey://beta/file:///notes.txt",
    ))
    .await
    .unwrap();
    let sent = super::upstream_requests(&beta, "resources/unsubscribe");
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0]["uri"], "file:///notes.txt");
    assert!(super::upstream_requests(&alpha, "resources/unsubscribe").is_empty());

    // The owner's own error passes on; a URI no server owns is not found, unsent.
    let e = rpc_error(
        c.subscribe(SubscribeRequestParams::new(
            "latchkey://alpha/file:///missing",
        ))
        .await,
    );
    assert_eq!(e.code.0, -32002, "{e:?}");
    let e = rpc_error(
        c.subscribe(SubscribeRequestParams::new(
            "latchkey://delta/file:///notes.txt",
        ))
        .await,
    );
    assert_eq!(e.code.0, -32002, "{e:?}");
    assert_eq!(
        super::upstream_requests(&alpha, "resources/subscribe").len(),
        1
    );
    // Aimed at the server that is not connected: its consent elicitation.
    let e = rpc_error(
        c.subscribe(SubscribeRequestParams::new(
            "latchkey://absent/file:///notes.txt",
        ))
        .await,
    );
    let url = elicitation_url(&e);
    assert!(
        url.starts_with(&format!("{}/authorize?", absent.base)),
        "{url}"
    );

    c.cancel().await.unwrap();
    super::cleanup(dir, schema).await;
}

/// An MCP client that reports the resource updates and log messages relayed to it.
#[derive(Debug, Clone)]
struct Listener(mpsc::UnboundedSender<String>);

// Log messages are deprecated in rmcp (SEP-2577) but part of 2025-11-25.
#[allow(deprecated)]
impl ClientHandler for Listener {
    async fn on_resource_updated(
        &self,
        params: rmcp::model::ResourceUpdatedNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        let _ = self.0.send(format!("updated {}", params.uri));
    }

    async fn on_logging_message(
        &self,
        params: rmcp::model::LoggingMessageNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        let _ = self.0.send(format!("log {}", params.data));
    }
}

/// A 2025-11-25 [`Listener`] session on `{base}/mcp`, presenting `bearer`.
async fn listener(
    base: &str,
    bearer: &str,
) -> (
    RunningService<RoleClient, Listener>,
    mpsc::UnboundedReceiver<String>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        serve_as(Listener(tx), base, bearer, Wire::Session).await,
        rx,
    )
}

/// What a scripted server pushes when the resource `uri` (its own URI) changed.
fn updated(uri: &str) -> Value {
    json!({"jsonrpc": "2.0", "method": "notifications/resources/updated",
           "params": {"uri": uri}})
}

/// The next message relayed to a [`Listener`], within 10 s.
async fn relayed(rx: &mut mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a relayed notification within 10 s")
        .unwrap()
}

/// Resource updates reach the client session that subscribed, with the federated URI,
/// and log messages the session that set a level; neither reaches another session. One
/// upstream GET stream per upstream session, closed when its client sessions end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(deprecated)]
async fn updates_and_log_messages_reach_only_the_session_that_asked() {
    use rmcp::model::{LoggingLevel, SetLevelRequestParams, SubscribeRequestParams};
    let (base, dir, schema) = latchkey(super::Backend::Sqlite).await;
    let (alpha, _) = scripted(&base, "Alpha", Some("alpha"), true).await;
    let (beta, _) = scripted(&base, "Beta", Some("beta"), true).await;
    let (session_a, mut rx_a) = listener(&base, CALLER_TOKEN).await;
    let (session_b, mut rx_b) = listener(&base, CALLER_TOKEN).await;

    // A subscribes to Beta's notes; B to Alpha's and sets a level (on both servers).
    session_a
        .subscribe(SubscribeRequestParams::new(
            "latchkey://beta/file:///notes.txt",
        ))
        .await
        .unwrap();
    assert_eq!(beta.open_streams(), 1);
    session_b
        .subscribe(SubscribeRequestParams::new(
            "latchkey://alpha/file:///notes.txt",
        ))
        .await
        .unwrap();
    session_b
        .set_level(SetLevelRequestParams::new(LoggingLevel::Info))
        .await
        .unwrap();
    assert_eq!(alpha.open_streams(), 1);
    assert_eq!(beta.open_streams(), 1, "one stream per upstream session");

    let log = json!({"jsonrpc": "2.0", "method": "notifications/message",
                     "params": {"level": "info", "data": "hello"}});
    assert_eq!(beta.push(updated("file:///notes.txt")), 1);
    assert_eq!(
        relayed(&mut rx_a).await,
        "updated latchkey://beta/file:///notes.txt"
    );
    assert_eq!(alpha.push(updated("file:///notes.txt")), 1);
    beta.push(updated("file:///other.txt"));
    beta.push(log);
    // B gets Alpha's update and Beta's log message, not Beta's updates (which Beta's
    // stream delivered before the log message).
    let mut got = vec![relayed(&mut rx_b).await, relayed(&mut rx_b).await];
    got.sort();
    assert_eq!(
        got,
        vec![
            "log \"hello\"".to_owned(),
            "updated latchkey://alpha/file:///notes.txt".to_owned()
        ]
    );
    // A got neither the update it did not subscribe to nor the log message: the next
    // thing it gets is the next update of its resource.
    beta.push(updated("file:///notes.txt"));
    assert_eq!(
        relayed(&mut rx_a).await,
        "updated latchkey://beta/file:///notes.txt"
    );
    assert!(rx_a.try_recv().is_err());

    // The streams close with the client sessions.
    session_a.cancel().await.unwrap();
    session_b.cancel().await.unwrap();
    for _ in 0..50 {
        if alpha.open_streams() == 0 && beta.open_streams() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!((alpha.open_streams(), beta.open_streams()), (0, 0));
    super::cleanup(dir, schema).await;
}

/// Latchkey in JWT mode (tenant `t`) with two users: Alice, a tenant admin, who added
/// one server from `upstream` as `name` and deposited her credential for it, and Bob,
/// who is no admin (and deposited his too when `bob_too`).
pub(super) struct TwoUsers {
    pub(super) base: String,
    pub(super) dir: std::path::PathBuf,
    pub(super) schema: Option<latchkey_testkit::pg::PgSchema>,
    /// The server's id.
    pub(super) id: String,
    /// Alice's and Bob's tokens.
    pub(super) alice: String,
    pub(super) bob: String,
    /// Kept running: it serves the keys the tokens are checked with.
    _idp: ScriptedIdp,
}

pub(super) async fn two_users(
    backend: super::Backend,
    name: &str,
    upstream: &ScriptedServer,
    bob_too: bool,
) -> TwoUsers {
    let idp = ScriptedIdp::start().await.unwrap();
    let (issuer, jwks) = (idp.issuer(), idp.jwks_url());
    let (base, dir, _store, schema) = super::start_configured(
        backend,
        |base| {
            let toml = format!(
                "public_url = \"{base}\"\nallow_insecure_loopback = true\n[auth]\nmode = \"jwt\"\n\
                 issuer = \"{issuer}\"\naudience = \"{base}/mcp\"\njwks_url = \"{jwks}\"\n"
            );
            Config::parse(&toml, &HashMap::new()).unwrap()
        },
        keys(),
    )
    .await;
    let now = SystemClock.now().as_secs();
    let jwt = |sub: &str, admin: bool| {
        let mut claims = json!({"iss": idp.issuer(), "aud": format!("{base}/mcp"), "sub": sub,
                                "tenant": "t", "exp": now + 600});
        if admin {
            claims["roles"] = json!(["latchkey:admin"]);
        }
        idp.mint(KeyAlg::Es256, &claims)
    };
    let (alice, bob) = (jwt("alice", true), jwt("bob", false));
    let (status, v, _) = super::request(
        reqwest::Method::POST,
        &format!("{base}/v1/servers"),
        Some(&format!("Bearer {alice}")),
        Some(json!({"name": name, "url": upstream.mcp_url()})),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    let depositors = if bob_too {
        vec![&alice, &bob]
    } else {
        vec![&alice]
    };
    for user in depositors {
        let (status, v, _) = super::request(
            reqwest::Method::POST,
            &format!("{base}/v1/credentials"),
            Some(&format!("Bearer {user}")),
            Some(json!({
                "server_id": id, "refresh_token": upstream.mint_refresh_token(),
                "token_endpoint": format!("{}/token", upstream.base), "client_id": "deposit-client",
            })),
        )
        .await;
        assert_eq!(status, 200, "{v}");
    }
    TwoUsers {
        base,
        dir,
        schema,
        id,
        alice,
        bob,
        _idp: idp,
    }
}

/// Two users of one tenant with their own slots of one server: each has its own
/// upstream session and stream, and neither gets what the other asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(deprecated)]
async fn relays_never_cross_users() {
    use rmcp::model::{LoggingLevel, SetLevelRequestParams, SubscribeRequestParams};
    let beta = ScriptedServer::start(AsConfig::default()).await.unwrap();
    beta.offer_primitives(Some("beta"));
    let TwoUsers {
        base,
        dir,
        schema,
        alice,
        bob,
        ..
    } = two_users(super::Backend::Sqlite, "Beta", &beta, true).await;
    let (session_a, mut rx_a) = listener(&base, &alice).await;
    let (session_b, mut rx_b) = listener(&base, &bob).await;
    session_a
        .subscribe(SubscribeRequestParams::new(
            "latchkey://beta/file:///notes.txt",
        ))
        .await
        .unwrap();
    session_b
        .set_level(SetLevelRequestParams::new(LoggingLevel::Info))
        .await
        .unwrap();
    assert_eq!(beta.open_streams(), 2, "one upstream session per user");

    // The scripted server sends every message on every stream: the filter is ours.
    beta.push(updated("file:///notes.txt"));
    beta.push(json!({"jsonrpc": "2.0", "method": "notifications/message",
                     "params": {"level": "info", "data": "hello"}}));
    assert_eq!(
        relayed(&mut rx_a).await,
        "updated latchkey://beta/file:///notes.txt"
    );
    assert_eq!(
        relayed(&mut rx_b).await,
        "log \"hello\"",
        "not Alice's update"
    );
    beta.push(updated("file:///notes.txt"));
    assert_eq!(
        relayed(&mut rx_a).await,
        "updated latchkey://beta/file:///notes.txt",
        "not Bob's log message"
    );
    session_a.cancel().await.unwrap();
    session_b.cancel().await.unwrap();
    super::cleanup(dir, schema).await;
}

/// An MCP client that reports each list change (`tools`, `prompts`, `resources`) and
/// resource update relayed to it.
#[derive(Debug, Clone)]
struct Lists(mpsc::UnboundedSender<String>);

impl ClientHandler for Lists {
    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        let _ = self.0.send("tools".into());
    }

    async fn on_prompt_list_changed(&self, _context: NotificationContext<RoleClient>) {
        let _ = self.0.send("prompts".into());
    }

    async fn on_resource_list_changed(&self, _context: NotificationContext<RoleClient>) {
        let _ = self.0.send("resources".into());
    }

    async fn on_resource_updated(
        &self,
        params: rmcp::model::ResourceUpdatedNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        let _ = self.0.send(format!("updated {}", params.uri));
    }
}

/// A 2025-11-25 [`Lists`] session on `{base}/mcp`, presenting `bearer`.
async fn lists_session(
    base: &str,
    bearer: &str,
) -> (
    RunningService<RoleClient, Lists>,
    mpsc::UnboundedReceiver<String>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    (serve_as(Lists(tx), base, bearer, Wire::Session).await, rx)
}

/// The next `n` notifications a [`Lists`] client got (each within 10 s), sorted.
async fn next_sorted(rx: &mut mpsc::UnboundedReceiver<String>, n: usize) -> Vec<String> {
    let mut got = Vec::new();
    for _ in 0..n {
        got.push(relayed(rx).await);
    }
    got.sort();
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_lists_change_on_connect_and_disconnect_on_sqlite() {
    all_lists_change_on_connect_and_disconnect(super::Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_lists_change_on_connect_and_disconnect_on_postgres() {
    all_lists_change_on_connect_and_disconnect(super::Backend::Postgres).await;
}

/// A deposit and a delete reach a live session as the list changes of tools, prompts
/// and resources alike (the server's prompts and resources come and go with its tools).
async fn all_lists_change_on_connect_and_disconnect(backend: super::Backend) {
    let (base, dir, schema) = latchkey(backend).await;
    let (upstream, id) = scripted(&base, "scripted", Some("scripted"), false).await;
    let (c, mut rx) = lists_session(&base, CALLER_TOKEN).await;
    assert!(c.list_all_prompts().await.unwrap().is_empty());
    // The GET stream that carries notifications opens after the handshake.
    tokio::time::sleep(Duration::from_millis(300)).await;

    super::deposit(&base, &id, &upstream).await;
    assert_eq!(
        next_sorted(&mut rx, 3).await,
        vec!["prompts", "resources", "tools"]
    );
    assert!(!c.list_all_prompts().await.unwrap().is_empty());
    assert!(!c.list_all_resources().await.unwrap().is_empty());

    let r = client()
        .delete(format!("{base}/v1/credentials/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    assert_eq!(
        next_sorted(&mut rx, 3).await,
        vec!["prompts", "resources", "tools"]
    );
    assert!(c.list_all_prompts().await.unwrap().is_empty());
    assert!(c.list_all_resources().await.unwrap().is_empty());
    c.cancel().await.unwrap();
    super::cleanup(dir, schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstreams_list_changes_reach_the_sessions_that_listed_on_sqlite() {
    upstream_list_changes(super::Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstreams_list_changes_reach_the_sessions_that_listed_on_postgres() {
    upstream_list_changes(super::Backend::Postgres).await;
}

/// An upstream's own `…/list_changed` reaches the client sessions that listed from it
/// (through one GET stream of its upstream session), and neither a session of the
/// same user that did not list nor another user's session (who has no credential for
/// the server, so no upstream session).
async fn upstream_list_changes(backend: super::Backend) {
    let beta = ScriptedServer::start(AsConfig::default()).await.unwrap();
    beta.offer_primitives(Some("beta"));
    let TwoUsers {
        base,
        dir,
        schema,
        alice,
        bob,
        ..
    } = two_users(backend, "Beta", &beta, false).await;

    let (listed, mut rx_listed) = lists_session(&base, &alice).await;
    let (idle, mut rx_idle) = lists_session(&base, &alice).await;
    let (other, mut rx_other) = lists_session(&base, &bob).await;
    assert!(!listed.list_all_prompts().await.unwrap().is_empty());
    super::eventually("the listing session's relay stream", || {
        beta.open_streams() == 1
    })
    .await;
    // Listing again, and listing tools, open no second stream.
    let tools = listed.list_all_tools().await.unwrap();
    assert!(tools.iter().any(|t| t.name == "beta__echo"), "{tools:?}");
    assert!(other.list_all_prompts().await.unwrap().is_empty());

    for (method, seen) in [
        ("notifications/prompts/list_changed", "prompts"),
        ("notifications/tools/list_changed", "tools"),
        ("notifications/resources/list_changed", "resources"),
    ] {
        assert_eq!(beta.push(json!({"jsonrpc": "2.0", "method": method})), 1);
        assert_eq!(relayed(&mut rx_listed).await, seen);
    }
    // The federated tables were dropped: the next call lists the server again.
    let before = upstream_methods(&beta)
        .iter()
        .filter(|m| *m == "tools/list")
        .count();
    let r = listed
        .call_tool(
            CallToolRequestParams::new("beta__echo")
                .with_arguments(json!({"text": "hi"}).as_object().unwrap().clone()),
        )
        .await
        .unwrap();
    assert_eq!(r.is_error, Some(false), "{r:?}");
    let after = upstream_methods(&beta)
        .iter()
        .filter(|m| *m == "tools/list")
        .count();
    assert_eq!(after, before + 1, "the stale table is not used");
    assert_eq!(beta.open_streams(), 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(rx_idle.try_recv().is_err(), "a session that did not list");
    assert!(rx_other.try_recv().is_err(), "another user's session");
    for c in [listed, idle, other] {
        c.cancel().await.unwrap();
    }
    super::eventually("the stream closed with its sessions", || {
        beta.open_streams() == 0
    })
    .await;
    super::cleanup(dir, schema).await;
}

/// An upstream that ends its GET stream gets it reopened (after the backoff's first
/// second), and later resource updates still reach the subscribed session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(deprecated)]
async fn a_relay_stream_that_ended_is_reopened() {
    use rmcp::model::SubscribeRequestParams;
    let (base, dir, schema) = latchkey(super::Backend::Sqlite).await;
    let (beta, _) = scripted(&base, "Beta", Some("beta"), true).await;
    let (c, mut rx) = lists_session(&base, CALLER_TOKEN).await;
    c.subscribe(SubscribeRequestParams::new(
        "latchkey://beta/file:///notes.txt",
    ))
    .await
    .unwrap();
    assert_eq!(beta.open_streams(), 1);
    let update = updated("file:///notes.txt");
    beta.push(update.clone());
    assert_eq!(
        relayed(&mut rx).await,
        "updated latchkey://beta/file:///notes.txt"
    );

    assert_eq!(beta.close_streams(), 1);
    super::eventually("a second GET stream", || {
        beta.requests("/mcp/stream").len() == 2 && beta.open_streams() == 1
    })
    .await;
    assert_eq!(beta.push(update), 1);
    assert_eq!(
        relayed(&mut rx).await,
        "updated latchkey://beta/file:///notes.txt"
    );
    c.cancel().await.unwrap();
    super::eventually("the stream closed with the session", || {
        beta.open_streams() == 0
    })
    .await;
    super::cleanup(dir, schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stateless_listen_gets_list_changes_and_updates_on_sqlite() {
    stateless_listen(super::Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stateless_listen_gets_list_changes_and_updates_on_postgres() {
    stateless_listen(super::Backend::Postgres).await;
}

/// A client that declares URL-mode elicitation (and nothing else).
#[derive(Debug, Clone)]
struct UrlCapable;

impl ClientHandler for UrlCapable {
    fn get_info(&self) -> rmcp::model::ClientConfig {
        let mut info = rmcp::model::ClientConfig::default();
        info.capabilities = serde_json::from_value(json!({"elicitation": {"url": {}}})).unwrap();
        info
    }
}

/// 2026-07-28: `subscriptions/listen` with the prompts and resources list-change
/// filters and a resource subscription gets the upstream's own list changes and the
/// resource's updates (with its federated URI), and all three list changes when the
/// server is disconnected. A URI of a server that is not connected starts no sign-in.
async fn stateless_listen(backend: super::Backend) {
    use rmcp::model::ServerNotification as N;
    let (base, dir, schema) = latchkey(backend).await;
    let (beta, id) = scripted(&base, "Beta", Some("beta"), true).await;
    let (absent, _) = scripted(&base, "Absent", Some("absent"), false).await;
    // A client that could open a sign-in link: still, listening starts none.
    let c = serve_as(UrlCapable, &base, CALLER_TOKEN, Wire::Stateless).await;
    let uri = "latchkey://beta/file:///notes.txt";
    let unconnected = "latchkey://absent/file:///notes.txt";
    let mut sub = c
        .listen(
            SubscriptionFilter::builder()
                .tools_list_changed()
                .prompts_list_changed()
                .resources_list_changed()
                .resource_subscription(uri)
                .resource_subscription(unconnected)
                .build(),
        )
        .await
        .unwrap();
    let ack = sub.acknowledged().clone();
    assert_eq!(ack.prompts_list_changed, Some(true), "{ack:?}");
    assert_eq!(ack.resources_list_changed, Some(true), "{ack:?}");
    assert_eq!(
        ack.resource_subscriptions,
        Some(vec![uri.to_owned(), unconnected.to_owned()])
    );
    super::eventually("one relay stream for the listen request", || {
        beta.open_streams() == 1
    })
    .await;
    assert_eq!(
        super::upstream_requests(&beta, "resources/subscribe")
            .iter()
            .filter_map(|r| r.get("uri"))
            .collect::<Vec<_>>(),
        vec!["file:///notes.txt"]
    );
    assert!(absent.requests("/register").is_empty(), "no flow started");
    assert!(absent.requests("/authorize").is_empty());
    assert_eq!(absent.open_streams(), 0);
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("a notification within 10 s")
            .unwrap()
            .unwrap()
    };
    beta.push(json!({"jsonrpc": "2.0", "method": "notifications/prompts/list_changed"}));
    let n = next().await;
    assert!(matches!(n, N::PromptListChangedNotification(_)), "{n:?}");
    beta.push(updated("file:///other.txt"));
    beta.push(updated("file:///notes.txt"));
    let n = next().await;
    match &n {
        N::ResourceUpdatedNotification(u) => assert_eq!(u.params.uri, uri),
        other => panic!("{other:?}"),
    }
    beta.push(json!({"jsonrpc": "2.0", "method": "notifications/resources/list_changed"}));
    let n = next().await;
    assert!(matches!(n, N::ResourceListChangedNotification(_)), "{n:?}");

    let r = client()
        .delete(format!("{base}/v1/credentials/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let mut kinds = Vec::new();
    for _ in 0..3 {
        kinds.push(match next().await {
            N::ToolListChangedNotification(_) => "tools",
            N::PromptListChangedNotification(_) => "prompts",
            N::ResourceListChangedNotification(_) => "resources",
            other => panic!("{other:?}"),
        });
    }
    kinds.sort();
    assert_eq!(kinds, vec!["prompts", "resources", "tools"]);
    drop(sub);
    c.cancel().await.unwrap();
    super::eventually("the stream closed with the listen request", || {
        beta.open_streams() == 0
    })
    .await;
    super::cleanup(dir, schema).await;
}
