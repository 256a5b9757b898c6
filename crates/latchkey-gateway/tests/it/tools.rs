//! Tool calls through Latchkey against the scripted MCP server: the slot's Bearer
//! injected, one refresh and one retry on a 401, typed 409s, upstream failures as
//! errors, one refresh grant for many concurrent calls on an expired slot.

use latchkey_testkit::{AsConfig, McpFault, ScriptedServer};
use latchkey_vault::KeySet;
use latchkey_vault::keyring::StaticKeys;
use serde_json::{Value, json};

use super::{client, post};

pub(super) const KEY: &str = "1:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

/// Latchkey with one OAuth server on `upstream` and a deposited refresh token (no access
/// token yet: the first call refreshes).
pub(super) async fn connected(
    upstream: &ScriptedServer,
    backend: super::Backend,
) -> (
    String,
    String,
    std::path::PathBuf,
    Option<latchkey_testkit::pg::PgSchema>,
) {
    let cfg = super::loopback_config();
    let keys = StaticKeys(Some(KeySet::parse(KEY).unwrap()));
    let (base, dir, _store, schema) = super::start_on(backend, &cfg, keys).await;
    let id = super::connected_server(&base, "scripted", upstream).await;
    (base, id, dir, schema)
}

async fn get(url: &str) -> (u16, Value) {
    let r = client().get(url).send().await.unwrap();
    let status = r.status().as_u16();
    let b = r.bytes().await.unwrap();
    (status, serde_json::from_slice(&b).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_and_call_on_sqlite() {
    list_and_call(super::Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_and_call_on_postgres() {
    list_and_call(super::Backend::Postgres).await;
}

async fn list_and_call(backend: super::Backend) {
    let upstream = ScriptedServer::start(AsConfig::default()).await.unwrap();
    let (base, id, dir, schema) = connected(&upstream, backend).await;
    let (status, v) = get(&format!("{base}/v1/servers/{id}/tools")).await;
    assert_eq!(status, 200, "{v}");
    let names: Vec<&str> = v["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["echo", "add"]);
    assert_eq!(upstream.grants_served_for("refresh_token"), 1);
    let injected = upstream.last_mcp_authorization().unwrap();
    assert!(
        upstream
            .issued_access_tokens()
            .iter()
            .any(|t| injected == format!("Bearer {t}"))
    );

    let (status, v) = post(
        &format!("{base}/v1/servers/{id}/tools/add/call"),
        json!({"a": 2, "b": 3}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["structuredContent"]["sum"], 5);
    assert_eq!(
        upstream.grants_served_for("refresh_token"),
        1,
        "the cached token"
    );

    // One 401: one forced refresh, one retry, success.
    upstream.set_mcp_fault(McpFault::Unauthorized(1));
    let (status, v) = post(
        &format!("{base}/v1/servers/{id}/tools/echo/call"),
        json!({"text": "hi"}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["content"][0]["text"], "hi");
    assert_eq!(upstream.grants_served_for("refresh_token"), 2);

    // 401 again after the refresh: the user must reconnect; exactly one more refresh.
    upstream.set_mcp_fault(McpFault::Unauthorized(100));
    let (status, v) = get(&format!("{base}/v1/servers/{id}/tools")).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (409, Some("needs_oauth_reauth"))
    );
    assert_eq!(v["server_id"], id.as_str());
    assert_eq!(upstream.grants_served_for("refresh_token"), 3);
    upstream.set_mcp_fault(McpFault::None);

    // 403 insufficient_scope never refreshes.
    upstream.set_required_scope(Some("admin".into()));
    let (status, v) = get(&format!("{base}/v1/servers/{id}/tools")).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (409, Some("needs_scope_upgrade"))
    );
    assert_eq!(v["scopes"], json!(["admin"]));
    assert_eq!(upstream.grants_served_for("refresh_token"), 3);
    upstream.set_required_scope(None);

    // Upstream failure: an error, never an empty list; a 502 naming the server (503
    // is kept for Latchkey's own dependencies).
    upstream.set_mcp_fault(McpFault::ServerError(500));
    let (status, v) = get(&format!("{base}/v1/servers/{id}/tools")).await;
    assert_eq!((status, v["code"].as_str()), (502, Some("upstream_error")));
    assert_eq!(v["server_id"], id.as_str());
    upstream.set_mcp_fault(McpFault::ResetConnection);
    let (status, v) = get(&format!("{base}/v1/servers/{id}/tools")).await;
    assert_eq!((status, v["code"].as_str()), (502, Some("upstream_error")));
    upstream.set_mcp_fault(McpFault::None);

    // A bad body, an unknown server.
    let (status, _) =
        super::post_raw(&format!("{base}/v1/servers/{id}/tools/add/call"), "[1]").await;
    assert_eq!(status, 400);
    let (status, _) = get(&format!("{base}/v1/servers/nope/tools")).await;
    assert_eq!(status, 404);
    super::cleanup(dir, schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_calls_on_an_expired_slot_make_one_refresh() {
    let upstream = ScriptedServer::start(AsConfig::default()).await.unwrap();
    let (base, id, dir, _) = connected(&upstream, super::Backend::Sqlite).await;
    let url = format!("{base}/v1/servers/{id}/tools/echo/call");
    let calls: Vec<_> = (0..100)
        .map(|i| {
            let url = url.clone();
            tokio::spawn(async move { post(&url, json!({"text": format!("m{i}")})).await })
        })
        .collect();
    for c in calls {
        let (status, v) = c.await.unwrap();
        assert_eq!(status, 200, "{v}");
    }
    assert_eq!(upstream.grants_served_for("refresh_token"), 1);
    assert_eq!(upstream.reuse_detections(), 0);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_without_credentials_needs_consent() {
    let upstream = ScriptedServer::start(AsConfig::default()).await.unwrap();
    let cfg = super::loopback_config();
    let (base, dir) = super::start(&cfg, StaticKeys(Some(KeySet::parse(KEY).unwrap()))).await;
    let (_, server) = post(
        &format!("{base}/v1/servers"),
        json!({"name": "s", "url": upstream.mcp_url()}),
    )
    .await;
    let id = server["id"].as_str().unwrap();
    let probed = upstream.mcp_requests();
    let (status, v) = get(&format!("{base}/v1/servers/{id}/tools")).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (409, Some("needs_oauth_reauth"))
    );
    assert_eq!(
        upstream.mcp_requests(),
        probed,
        "no upstream call without a token"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// The authorization server misbehaving during the refresh a call needs: each fault is a
/// typed error (never a panic, never a 500), the redirect is not followed, no body or
/// secret leaks into the answer, and the stored credential survives: once the server
/// behaves again the same slot works without re-consent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_faults_are_typed_and_lose_nothing() {
    use latchkey_testkit::TokenFault;
    let upstream = ScriptedServer::start(AsConfig::default()).await.unwrap();
    let elsewhere = ScriptedServer::start(AsConfig::default()).await.unwrap();
    let (base, id, dir, _) = connected(&upstream, super::Backend::Sqlite).await;
    let url = format!("{base}/v1/servers/{id}/tools/echo/call");
    let faults = [
        ("null body", TokenFault::NullBody),
        ("10 MB body", TokenFault::Huge(10 * 1024 * 1024)),
        (
            "302 to loopback",
            TokenFault::RedirectTo(format!("{}/token", elsewhere.base)),
        ),
        ("5xx", TokenFault::ServerError(503)),
        ("garbage", TokenFault::Garbage),
    ];
    for (what, fault) in faults {
        upstream.set_token_fault(fault);
        let r = client()
            .post(&url)
            .json(&json!({"text": "x"}))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        assert!(status == 502 || status == 503, "{what}: {status} {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert!(v["code"].is_string(), "{what}: {v}");
        assert!(text.len() < 1024, "{what}: no upstream body echoed");
        for secret in upstream.issued_refresh_tokens() {
            assert!(!text.contains(&secret), "{what}: refresh token in the body");
        }
    }
    assert!(
        elsewhere.requests("/token").is_empty(),
        "the redirect was followed"
    );
    upstream.set_token_fault(TokenFault::None);
    let (status, v) = post(&url, json!({"text": "back"})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["content"][0]["text"], "back");
    assert_eq!(upstream.reuse_detections(), 0);
    let _ = std::fs::remove_dir_all(dir);
}

/// Issue 16: one upstream session per slot, kept between calls (one upstream request
/// per call in steady state), opened again when the upstream forgets it; an upstream
/// failure names the server and its status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_sessions_are_kept_between_calls() {
    let upstream = ScriptedServer::start(AsConfig::default()).await.unwrap();
    let (base, id, dir, schema) = connected(&upstream, super::Backend::Sqlite).await;
    let call = format!("{base}/v1/servers/{id}/tools/echo/call");
    // Fifty callers at once on a slot with no session yet: one session is opened and
    // every call succeeds in it (none replaces another's).
    let calls: Vec<_> = (0..50)
        .map(|n| {
            let call = call.clone();
            tokio::spawn(async move { post(&call, json!({"text": format!("first {n}")})).await })
        })
        .collect();
    for c in calls {
        let (status, v) = c.await.unwrap();
        assert_eq!(status, 200, "{v}");
    }
    assert_eq!(upstream.mcp_sessions().len(), 1, "one session opened");
    let before = upstream.mcp_requests();
    for n in 0..5 {
        let (status, v) = post(&call, json!({"text": format!("again {n}")})).await;
        assert_eq!(status, 200, "{v}");
    }
    assert_eq!(
        upstream.mcp_requests() - before,
        5,
        "one upstream request per call"
    );
    assert_eq!(upstream.mcp_sessions().len(), 1, "no new session");

    // The upstream forgets it (a restart): the next call opens a new one and succeeds.
    upstream.expire_mcp_sessions();
    let before = upstream.mcp_requests();
    let (status, v) = post(&call, json!({"text": "after a restart"})).await;
    assert_eq!(status, 200, "{v}");
    // The refused request, initialize, initialized, the request again.
    assert_eq!(upstream.mcp_requests() - before, 4);
    assert_eq!(upstream.mcp_sessions().len(), 1);

    // A failing upstream is named, with its status; 503 stays Latchkey's own.
    upstream.set_mcp_fault(McpFault::ServerError(500));
    let (status, v) = post(&call, json!({"text": "x"})).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (502, Some("upstream_error")),
        "{v}"
    );
    let msg = v["message"].as_str().unwrap();
    assert!(
        msg.contains("scripted") && msg.contains("HTTP 500"),
        "{msg}"
    );
    assert_eq!(v["server_id"], id.as_str());
    upstream.set_mcp_fault(McpFault::None);
    super::cleanup(dir, schema).await;
}

/// A loopback server stored while `allow_insecure_loopback` was on, called through an
/// instance without it (a restart without the relaxation): the tool list, a tool call
/// and the proxy answer the typed 400 naming the setting, and nothing is sent, neither
/// to the MCP server nor to its authorization server, though the slot has a credential.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loopback_server_without_the_relaxation_names_the_setting_on_every_call_path() {
    let upstream = ScriptedServer::start(AsConfig::default()).await.unwrap();
    let (relaxed, id, dir, _) = connected(&upstream, super::Backend::Sqlite).await;
    let store: std::sync::Arc<dyn latchkey_vault::Store> = std::sync::Arc::new(
        latchkey_vault::SqliteStore::open(&dir.join("db"))
            .await
            .unwrap(),
    );
    let strict = super::serve(
        |base| {
            let mut cfg =
                latchkey_gateway::Config::parse("", &std::collections::HashMap::new()).unwrap();
            cfg.public_url = base.to_owned();
            cfg
        },
        store,
        StaticKeys(Some(KeySet::parse(KEY).unwrap())),
        std::sync::Arc::new(latchkey_core::SystemClock),
    )
    .await;
    let before = upstream.mcp_requests();
    let hinted = |v: &Value, field: &str| {
        assert_eq!(v["code"], "invalid_request", "{v}");
        assert_eq!(v["fields"][0]["field"], field, "{v}");
        let said = v["fields"][0]["message"].as_str().unwrap_or_default();
        assert!(
            said.starts_with("the server's URL cannot be reached: ")
                && said.contains("set allow_insecure_loopback = true in the configuration file or LATCHKEY_ALLOW_INSECURE_LOOPBACK=true")
                && said.contains("restart `latchkey serve`"),
            "{said}"
        );
    };
    let (status, v) = get(&format!("{strict}/v1/servers/{id}/tools")).await;
    assert_eq!(status, 400, "{v}");
    hinted(&v, "server_id");
    let (status, v) = post(
        &format!("{strict}/v1/servers/{id}/tools/echo/call"),
        json!({"text": "hi"}),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    hinted(&v, "server_id");
    let (status, _, v) = super::proxy::rpc(
        &client(),
        &format!("{strict}/mcp/{id}"),
        None,
        super::proxy::call(1, "echo", json!({"text": "hi"})),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    hinted(&v, "server");
    assert_eq!(
        upstream.mcp_requests(),
        before,
        "nothing reached the server"
    );
    assert_eq!(upstream.grants_served_for("refresh_token"), 0);

    // The same slot through the instance with the relaxation: it was only the policy.
    let (status, v) = get(&format!("{relaxed}/v1/servers/{id}/tools")).await;
    assert_eq!(status, 200, "{v}");
    let _ = std::fs::remove_dir_all(dir);
}
