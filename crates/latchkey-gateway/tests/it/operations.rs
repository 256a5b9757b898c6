//! What an operator sees (issue 17): one `http.request` log line per API and MCP
//! request, with the route template, status, duration, principal and server, and never
//! a path's ids in place of the template, a query string or a credential; and every
//! "everything changed" eviction (a change channel lost and resumed, a key-set change)
//! reaching open federated sessions as `notifications/tools/list_changed`.

use std::sync::Arc;
use std::time::Duration;

use latchkey_testkit::{AsConfig, ScriptedServer};
use latchkey_vault::KeySet;
use latchkey_vault::keyring::StaticKeys;
use rmcp::service::{NotificationContext, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{client, post};

const KEY: &str = "1:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
/// What the callers present: local mode does not read it; it must never be logged.
const BEARER: &str = "Bearer caller-credential-never-logged";
/// In every query string: must never be logged.
const QUERY_MARK: &str = "query-mark-never-logged";

fn keys() -> StaticKeys {
    StaticKeys(Some(KeySet::parse(KEY).unwrap()))
}

/// A server with a deposited refresh token on `base`; its id.
async fn connected(base: &str, upstream: &ScriptedServer, name: &str) -> String {
    let (status, v) = post(
        &format!("{base}/v1/servers"),
        json!({"name": name, "url": upstream.mcp_url()}),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    let (status, v) = post(
        &format!("{base}/v1/credentials"),
        json!({"server_id": id, "refresh_token": upstream.mint_refresh_token(),
               "token_endpoint": format!("{}/token", upstream.base), "client_id": "c"}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    id
}

/// The captured `http.request` lines that contain every one of `needles`.
fn request_lines(text: &str, needles: &[&str]) -> Vec<String> {
    text.lines()
        .filter(|l| l.contains("http.request") && needles.iter().all(|n| l.contains(n)))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_log_line_per_api_and_mcp_request() {
    let logs = latchkey_testkit::logs::capture();
    let upstream = ScriptedServer::start(AsConfig::default()).await.unwrap();
    let (base, dir, _store, schema) =
        super::start_on(super::Backend::Sqlite, &super::loopback_config(), keys()).await;
    let id = connected(&base, &upstream, "Logged").await;
    let (_, me, _) = super::request(
        reqwest::Method::GET,
        &format!("{base}/v1/whoami"),
        None,
        None,
    )
    .await;
    let subject = me["subject"].as_str().unwrap().to_owned();
    let http = client();

    // REST, with a query string.
    let r = http
        .get(format!("{base}/v1/servers/{id}/tools?{QUERY_MARK}=1"))
        .header("authorization", BEARER)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // The proxy.
    let r = http
        .post(format!("{base}/mcp/{id}?{QUERY_MARK}=2"))
        .header("authorization", BEARER)
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .body(
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                   "params": {"name": "echo", "arguments": {"text": "hi"}}})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let _ = r.text().await.unwrap();
    // The federated endpoint.
    let r = http
        .post(format!("{base}/mcp?{QUERY_MARK}=3"))
        .header("authorization", BEARER)
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .body(
            json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-11-25", "capabilities": {},
                "clientInfo": {"name": "logged", "version": "1"}}})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let request_id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    let _ = r.text().await.unwrap();
    // A refusal: no principal.
    let r = http
        .get(format!("{base}/v1/servers/{id}/tools"))
        .header("host", "elsewhere.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);

    // The line is written as the response head leaves; give the capture a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let text = logs.text();
    let principal = format!("principal=\"{subject}\"");
    let server = format!("server_id=\"{id}\"");
    let rest = request_lines(&text, &["route=\"/v1/servers/{id}/tools\"", &server]);
    let rest_ok: Vec<&String> = rest.iter().filter(|l| l.contains("status=200")).collect();
    assert_eq!(rest_ok.len(), 1, "{rest:#?}");
    let proxy = request_lines(&text, &["route=\"/mcp/{server}\"", &server]);
    assert_eq!(proxy.len(), 1, "{proxy:#?}");
    let federated = request_lines(&text, &[&format!("request_id=\"{request_id}\"")]);
    assert_eq!(federated.len(), 1, "{federated:#?}");
    for (line, method, route) in [
        (rest_ok[0], "method=GET", "route=\"/v1/servers/{id}/tools\""),
        (&proxy[0], "method=POST", "route=\"/mcp/{server}\""),
        (&federated[0], "method=POST", "route=\"/mcp\""),
    ] {
        for field in [method, route, "status=200", "duration_ms=", &principal] {
            assert!(line.contains(field), "{field} missing: {line}");
        }
        assert!(line.contains(" INFO "), "{line}");
    }
    assert!(!federated[0].contains("server_id"), "{}", federated[0]);
    // The refusal is logged too, without a principal.
    let refused: Vec<String> = rest
        .iter()
        .filter(|l| l.contains("status=403"))
        .cloned()
        .collect();
    assert_eq!(refused.len(), 1, "{rest:#?}");
    assert!(refused[0].contains("principal=\"-\""), "{}", refused[0]);
    // Templates only: never the raw path, its query or a credential.
    for line in text.lines().filter(|l| l.contains("http.request")) {
        assert!(!line.contains(&format!("/v1/servers/{id}")), "{line}");
        assert!(!line.contains(&format!("/mcp/{id}")), "{line}");
    }
    assert!(!text.contains(QUERY_MARK), "a query string was logged");
    assert!(!text.contains("caller-credential-never-logged"));
    for t in upstream.issued_access_tokens() {
        assert!(!text.contains(&t), "an upstream token was logged");
    }
    super::cleanup(dir, schema).await;
}

/// An MCP client that reports each `notifications/tools/list_changed`.
#[derive(Debug, Clone)]
struct Watcher(mpsc::UnboundedSender<()>);

impl ClientHandler for Watcher {
    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        let _ = self.0.send(());
    }
}

/// A 2025-11-25 session on `{base}/mcp` with its notification stream open.
async fn session(
    base: &str,
) -> (
    RunningService<RoleClient, Watcher>,
    mpsc::UnboundedReceiver<()>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(format!("{base}/mcp"))
            .auth_header("caller-credential-never-logged"),
    );
    let c = Watcher(tx).serve(transport).await.unwrap();
    assert!(!c.list_all_tools().await.unwrap().is_empty());
    // The GET stream that carries notifications opens after the handshake.
    tokio::time::sleep(Duration::from_millis(300)).await;
    (c, rx)
}

async fn changed(rx: &mut mpsc::UnboundedReceiver<()>, why: &str) {
    tokio::time::timeout(Duration::from_secs(15), rx.recv())
        .await
        .unwrap_or_else(|_| panic!("no tools/list_changed within 15 s after {why}"))
        .unwrap();
}

/// PostgreSQL's change channel breaks and comes back: the instance empties its caches
/// and tells its open federated sessions; a key-set change does the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_changed_reaches_open_federated_sessions() {
    let schema = latchkey_testkit::pg::PgSchema::new("lk_everything")
        .await
        .unwrap();
    let (cut, url) = schema.behind_netcut().await.unwrap();
    let store = latchkey_vault::store::DatabaseUrl::parse(&url)
        .unwrap()
        .open()
        .await
        .unwrap();
    let upstream = ScriptedServer::start(AsConfig::default()).await.unwrap();
    let base = super::serve(
        |base| {
            let mut cfg = super::loopback_config();
            cfg.public_url = base.to_owned();
            cfg
        },
        store.clone(),
        keys(),
        Arc::new(latchkey_core::SystemClock),
    )
    .await;
    connected(&base, &upstream, "Watched").await;
    let (c, mut rx) = session(&base).await;
    while rx.try_recv().is_ok() {}

    // The channel breaks (every connection to the database ends) and comes back.
    cut.cut();
    tokio::time::sleep(Duration::from_secs(1)).await;
    cut.restore();
    changed(&mut rx, "the change channel came back").await;
    // The session still works, and lists the same tools.
    let names: Vec<String> = c
        .list_all_tools()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    assert!(names.iter().any(|n| n == "watched__echo"), "{names:?}");

    // A key-set change (what `latchkey keys add` records and announces).
    tokio::time::sleep(Duration::from_millis(300)).await;
    while rx.try_recv().is_ok() {}
    latchkey_gateway::cluster::key_set_changed(store.as_ref())
        .await
        .unwrap();
    changed(&mut rx, "a key-set change").await;

    c.cancel().await.unwrap();
    schema.drop_schema().await.unwrap();
}

/// On SQLite (no channel) a key-set change recorded beside the serving instance is
/// read on its timer, and reaches open federated sessions too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_set_change_on_sqlite_reaches_open_federated_sessions() {
    let upstream = ScriptedServer::start(AsConfig::default()).await.unwrap();
    let (base, dir, store, schema) =
        super::start_on(super::Backend::Sqlite, &super::loopback_config(), keys()).await;
    connected(&base, &upstream, "Watched").await;
    let (c, mut rx) = session(&base).await;
    while rx.try_recv().is_ok() {}
    let v: Value = json!(store.key_set_version().await.unwrap());
    assert_eq!(v, json!(0));
    store.bump_key_set_version().await.unwrap();
    changed(&mut rx, "a key-set change read on the timer").await;
    c.cancel().await.unwrap();
    super::cleanup(dir, schema).await;
}
