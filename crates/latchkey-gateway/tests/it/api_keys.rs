//! API keys on the `Token` scheme, over real HTTP in jwt mode: the positive cache of
//! found keys (issue 18) never outlives a deletion (on this instance or, through the
//! change channel, on another) nor an expiry.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use latchkey_core::time::ManualClock;
use latchkey_core::{Clock, SystemClock, UnixTime};
use latchkey_gateway::Config;
use latchkey_testkit::idp::{KeyAlg, ScriptedIdp};
use latchkey_vault::KeySet;
use latchkey_vault::keyring::StaticKeys;
use reqwest::Method;
use serde_json::{Value, json};

use super::Backend;

const KEY: &str = "1:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const TENANT_CLAIM: &str = "org_id";

fn keys() -> StaticKeys {
    StaticKeys(Some(KeySet::parse(KEY).unwrap()))
}

/// jwt mode for the instance at `base`: tokens from `idp`'s JWKS, the tenant from
/// [`TENANT_CLAIM`].
fn jwt_config(base: &str, idp: &ScriptedIdp) -> Config {
    let toml = format!(
        "public_url = \"{base}\"\nallow_insecure_loopback = true\n[auth]\nmode = \"jwt\"\n\
         issuer = \"{}\"\naudience = \"{base}/mcp\"\njwks_url = \"{}\"\n\
         tenant_claim = \"{TENANT_CLAIM}\"\n",
        idp.issuer(),
        idp.jwks_url()
    );
    Config::parse(&toml, &HashMap::new()).unwrap()
}

/// `Authorization: Bearer <JWT>` for `subject` of `tenant` at the instance `base`.
fn bearer(idp: &ScriptedIdp, base: &str, tenant: &str, subject: &str, admin: bool) -> String {
    let now = SystemClock.now().as_secs();
    let mut c = json!({
        "iss": idp.issuer(), "aud": format!("{base}/mcp"), "sub": subject,
        TENANT_CLAIM: tenant, "iat": now, "exp": now + 3600,
    });
    if admin {
        c["roles"] = json!(["latchkey:admin"]);
    }
    format!("Bearer {}", idp.mint(KeyAlg::Rs256, &c))
}

async fn send(method: Method, url: &str, auth: &str, body: Option<Value>) -> (u16, Value, String) {
    super::request(method, url, Some(auth), body).await
}

/// The store for `backend` (SQLite in `dir`, or a fresh PostgreSQL schema).
async fn open_store(
    backend: Backend,
    dir: &std::path::Path,
) -> (
    Arc<dyn latchkey_vault::Store>,
    Option<latchkey_testkit::pg::PgSchema>,
) {
    match backend {
        Backend::Sqlite => (
            Arc::new(
                latchkey_vault::SqliteStore::open(&dir.join("db"))
                    .await
                    .unwrap(),
            ),
            None,
        ),
        Backend::Postgres => {
            let schema = latchkey_testkit::pg::PgSchema::new("lk_keys")
                .await
                .unwrap();
            let store = latchkey_vault::store::DatabaseUrl::parse(&schema.url)
                .unwrap()
                .open()
                .await
                .unwrap();
            (store, Some(schema))
        }
    }
}

fn temp_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("lk-keys-{}", latchkey_vault::store::new_id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Mints a key as `auth` on `base` with `body`; the key as a `Token` header and its id.
async fn mint(base: &str, auth: &str, body: Value) -> (String, String) {
    let (status, v, text) = send(
        Method::POST,
        &format!("{base}/v1/api-keys"),
        auth,
        Some(body),
    )
    .await;
    assert_eq!(status, 201, "{text}");
    (
        format!("Token {}", v["key"].as_str().unwrap()),
        v["id"].as_str().unwrap().to_owned(),
    )
}

async fn whoami(base: &str, token: &str) -> u16 {
    send(Method::GET, &format!("{base}/v1/whoami"), token, None)
        .await
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_key_is_refused_at_once_on_sqlite() {
    a_deleted_key_is_refused_at_once(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_key_is_refused_at_once_on_postgres() {
    a_deleted_key_is_refused_at_once(Backend::Postgres).await;
}

/// A key used (so remembered) and then deleted is refused by the very next request on
/// the same instance; an unknown key is refused every time and never remembered.
async fn a_deleted_key_is_refused_at_once(backend: Backend) {
    let idp = ScriptedIdp::start().await.unwrap();
    let dir = temp_dir();
    let (store, schema) = open_store(backend, &dir).await;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let (base, state) = super::serve_state(|b| jwt_config(b, &idp), store, keys(), clock).await;
    let amy = bearer(&idp, &base, "tenant-a", "amy", false);
    let (token, id) = mint(&base, &amy, json!({"name": "ci"})).await;
    for _ in 0..3 {
        assert_eq!(whoami(&base, &token).await, 200);
    }
    assert_eq!(state.api_key_cache.len(), 1, "a found key is remembered");
    for _ in 0..3 {
        let unknown = "Token lk_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        assert_eq!(whoami(&base, unknown).await, 401);
    }
    assert_eq!(state.api_key_cache.len(), 1, "a miss is never remembered");

    let (status, _, _) = send(
        Method::DELETE,
        &format!("{base}/v1/api-keys/{id}"),
        &amy,
        None,
    )
    .await;
    assert_eq!(status, 204);
    assert_eq!(whoami(&base, &token).await, 401, "refused at once");
    assert!(state.api_key_cache.is_empty());
    super::cleanup(dir, schema).await;
}

/// Two instances on one PostgreSQL database: a key both have used (so both remember it)
/// and deleted on one is refused by the other within the announcement's delay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_deleted_on_one_instance_is_refused_on_the_other() {
    let idp = ScriptedIdp::start().await.unwrap();
    let dir = temp_dir();
    let (first_store, schema) = open_store(Backend::Postgres, &dir).await;
    let url = schema.as_ref().unwrap().url.clone();
    let second_store = latchkey_vault::store::DatabaseUrl::parse(&url)
        .unwrap()
        .open()
        .await
        .unwrap();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let (one, _) =
        super::serve_state(|b| jwt_config(b, &idp), first_store, keys(), clock.clone()).await;
    let (two, two_state) =
        super::serve_state(|b| jwt_config(b, &idp), second_store, keys(), clock).await;
    let amy = bearer(&idp, &one, "tenant-a", "amy", false);
    let (token, id) = mint(&one, &amy, json!({"name": "ci"})).await;
    assert_eq!(whoami(&one, &token).await, 200);
    assert_eq!(whoami(&two, &token).await, 200);
    assert_eq!(two_state.api_key_cache.len(), 1);

    let (status, _, _) = send(
        Method::DELETE,
        &format!("{one}/v1/api-keys/{id}"),
        &amy,
        None,
    )
    .await;
    assert_eq!(status, 204);
    let deleted = Instant::now();
    assert_eq!(whoami(&one, &token).await, 401);
    while whoami(&two, &token).await != 401 {
        assert!(
            deleted.elapsed() < Duration::from_secs(1),
            "the other instance still accepted the deleted key after 1 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(two_state.api_key_cache.is_empty());
    super::cleanup(dir, schema).await;
}

/// A key that expires while remembered is refused from its expiry on, though its entry
/// is younger than the cache's lifetime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_key_is_refused_though_cached() {
    let idp = ScriptedIdp::start().await.unwrap();
    let dir = temp_dir();
    let (store, schema) = open_store(Backend::Sqlite, &dir).await;
    let clock = Arc::new(ManualClock::at(UnixTime::from_secs(
        SystemClock.now().as_secs(),
    )));
    let (base, state) =
        super::serve_state(|b| jwt_config(b, &idp), store, keys(), clock.clone()).await;
    let amy = bearer(&idp, &base, "tenant-a", "amy", false);
    let (token, _) = mint(&base, &amy, json!({"name": "short", "expires_in": 60})).await;
    // 50 s on, the key is read and remembered (10 s before it expires) ...
    clock.advance(Duration::from_secs(50));
    assert_eq!(whoami(&base, &token).await, 200);
    assert_eq!(state.api_key_cache.len(), 1);
    // ... 9 s on, still served from memory ...
    clock.advance(Duration::from_secs(9));
    assert_eq!(whoami(&base, &token).await, 200);
    // ... and at its expiry, 10 s after it was remembered, refused.
    clock.advance(Duration::from_secs(1));
    assert_eq!(whoami(&base, &token).await, 401);
    assert!(
        state.api_key_cache.is_empty(),
        "the expired entry is dropped"
    );
    assert_eq!(whoami(&base, &token).await, 401);
    super::cleanup(dir, schema).await;
}

/// One JSON-RPC message to an MCP endpoint with `auth`; status, headers and the
/// response (the last `data:` of an event stream).
async fn mcp(
    url: &str,
    auth: &str,
    session: Option<&str>,
    message: Value,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut req = super::client()
        .post(url)
        .header("authorization", auth)
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .header("mcp-protocol-version", "2025-11-25")
        .body(message.to_string());
    if let Some(s) = session {
        req = req.header("mcp-session-id", s);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    let body = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .next_back()
        .map_or_else(
            || serde_json::from_str(&text).unwrap_or(Value::Null),
            |d| serde_json::from_str(d).unwrap_or(Value::Null),
        );
    (status, headers, body)
}

/// The federated endpoint as `auth`: a session opened, then the names of the tools it
/// lists, and a function-free way to call one (the session id is returned).
async fn federated_session(base: &str, auth: &str) -> (String, Vec<String>) {
    let url = format!("{base}/mcp");
    let (status, headers, v) = mcp(
        &url,
        auth,
        None,
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "keys-test", "version": "1"}}}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let sid = headers["mcp-session-id"].to_str().unwrap().to_owned();
    let (status, _, _) = mcp(
        &url,
        auth,
        Some(&sid),
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    )
    .await;
    assert_eq!(status, 202);
    let (status, _, v) = mcp(
        &url,
        auth,
        Some(&sid),
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let mut names: Vec<String> = v["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"))
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    (sid, names)
}

/// Whether a federated `tools/call` of `tool` as `auth` succeeded.
async fn federated_call_works(base: &str, auth: &str, sid: &str, tool: &str) -> bool {
    let (status, _, v) = mcp(
        &format!("{base}/mcp"),
        auth,
        Some(sid),
        json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
               "params": {"name": tool, "arguments": {"text": "hi"}}}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    v["error"].is_null() && v["result"]["isError"] != json!(true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_restricted_to_servers_on_sqlite() {
    keys_restricted_to_servers(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_restricted_to_servers_on_postgres() {
    keys_restricted_to_servers(Backend::Postgres).await;
}

/// Issue 19: a key restricted to named servers lists and calls only those (REST tool
/// calls, `/mcp/{server}`, the federated `/mcp`); the others are not found, as another
/// tenant's are. An unrestricted key sees them all. Unknown or no servers at creation
/// are a 400 on `servers`; the listing shows each key's prefix, a prefix of the key.
async fn keys_restricted_to_servers(backend: Backend) {
    use latchkey_testkit::{AsConfig, ScriptedServer};
    let idp = ScriptedIdp::start().await.unwrap();
    let dir = temp_dir();
    let (store, schema) = open_store(backend, &dir).await;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let (base, _) = super::serve_state(|b| jwt_config(b, &idp), store, keys(), clock).await;
    let alice = bearer(&idp, &base, "tenant-a", "alice", true);
    let amy = bearer(&idp, &base, "tenant-a", "amy", false);

    // Two shared servers, each connected by the admin.
    let mut ids = Vec::new();
    let mut upstreams = Vec::new();
    for name in ["alpha", "beta"] {
        let up = ScriptedServer::start(AsConfig::default()).await.unwrap();
        let (status, v, text) = send(
            Method::POST,
            &format!("{base}/v1/servers"),
            &alice,
            Some(json!({"name": name, "url": up.mcp_url(), "token_scope": "shared"})),
        )
        .await;
        assert_eq!(status, 201, "{text}");
        let id = v["id"].as_str().unwrap().to_owned();
        let (status, _, text) = send(
            Method::POST,
            &format!("{base}/v1/credentials"),
            &alice,
            Some(json!({
                "server_id": id, "refresh_token": up.mint_refresh_token(),
                "token_endpoint": format!("{}/token", up.base), "client_id": "deposit-client",
            })),
        )
        .await;
        assert_eq!(status, 200, "{text}");
        ids.push(id);
        upstreams.push(up);
    }
    let (alpha, beta) = (ids[0].clone(), ids[1].clone());

    // Bad lists are refused, naming the field.
    let keys_url = format!("{base}/v1/api-keys");
    for servers in [
        json!(["nope"]),
        json!([]),
        json!("alpha"),
        json!([7]),
        json!(["alpha", "nope"]),
    ] {
        let (status, v, _) = send(
            Method::POST,
            &keys_url,
            &amy,
            Some(json!({"name": "bad", "servers": servers})),
        )
        .await;
        assert_eq!(status, 400, "{servers}: {v}");
        assert_eq!(v["fields"][0]["field"], "servers", "{v}");
    }
    assert!(
        send(Method::GET, &keys_url, &amy, None).await.1 == json!([]),
        "nothing was created"
    );

    // Restricted by name (and again by id: one entry), unrestricted.
    let (status, minted, text) = send(
        Method::POST,
        &keys_url,
        &amy,
        Some(json!({"name": "only-alpha", "servers": ["Alpha", alpha]})),
    )
    .await;
    assert_eq!(status, 201, "{text}");
    assert_eq!(minted["servers"], json!([alpha]));
    let key = minted["key"].as_str().unwrap();
    let prefix = minted["prefix"].as_str().unwrap();
    assert_eq!(prefix.len(), 12);
    assert!(key.starts_with(prefix) && prefix.starts_with("lk_"));
    assert!(minted["last_used_at"].is_null());
    let restricted = format!("Token {key}");
    let (unrestricted, _) = mint(&base, &amy, json!({"name": "all"})).await;

    let (status, listed, text) = send(Method::GET, &keys_url, &amy, None).await;
    assert_eq!(status, 200);
    assert_eq!(listed[0]["prefix"], prefix);
    assert_eq!(listed[0]["servers"], json!([alpha]));
    assert!(listed[1]["servers"].is_null());
    assert!(unrestricted.contains(listed[1]["prefix"].as_str().unwrap()));
    for field in ["name", "created_at", "expires_at", "last_used_at"] {
        assert!(listed[0].get(field).is_some(), "{field}: {listed}");
    }
    assert!(!text.contains(&key[12..]));

    // /v1/servers lists only the key's servers; the other is not found.
    let server_ids = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let (status, v, _) = send(
        Method::GET,
        &format!("{base}/v1/servers"),
        &restricted,
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(server_ids(&v), vec![alpha.clone()]);
    let (_, v, _) = send(
        Method::GET,
        &format!("{base}/v1/servers"),
        &unrestricted,
        None,
    )
    .await;
    assert_eq!(server_ids(&v).len(), 2);
    let (status, _, _) = send(
        Method::GET,
        &format!("{base}/v1/servers/{beta}"),
        &restricted,
        None,
    )
    .await;
    assert_eq!(status, 404);

    // REST tool calls.
    let tool_call = |id: &str| format!("{base}/v1/servers/{id}/tools/echo/call");
    let body = Some(json!({"text": "hi"}));
    let (status, v, _) = send(Method::POST, &tool_call(&alpha), &restricted, body.clone()).await;
    assert_eq!(status, 200, "{v}");
    let beta_before = upstreams[1].mcp_requests();
    let (status, v, _) = send(Method::POST, &tool_call(&beta), &restricted, body.clone()).await;
    assert_eq!((status, &v["code"]), (404, &json!("not_found")), "{v}");
    let (status, _, _) = send(
        Method::GET,
        &format!("{base}/v1/servers/{beta}/tools"),
        &restricted,
        None,
    )
    .await;
    assert_eq!(status, 404);
    for id in [&alpha, &beta] {
        let (status, v, _) = send(Method::POST, &tool_call(id), &unrestricted, body.clone()).await;
        assert_eq!(status, 200, "{v}");
    }

    // /mcp/{server}.
    let echo = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                      "params": {"name": "echo", "arguments": {"text": "hi"}}});
    let (status, _, v) = mcp(
        &format!("{base}/mcp/{alpha}"),
        &restricted,
        None,
        echo.clone(),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert!(v["error"].is_null(), "{v}");
    let (status, _, v) = mcp(
        &format!("{base}/mcp/{beta}"),
        &restricted,
        None,
        echo.clone(),
    )
    .await;
    assert_eq!(status, 404, "{v}");
    let (status, _, v) = mcp(
        &format!("{base}/mcp/{beta}"),
        &unrestricted,
        None,
        echo.clone(),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert!(v["error"].is_null(), "{v}");

    // The federated /mcp: the other server's tools are neither listed nor callable.
    let (sid, names) = federated_session(&base, &restricted).await;
    assert_eq!(
        names,
        vec!["alpha__add", "alpha__echo", "latchkey_connect"],
        "only alpha's tools (and Latchkey's own)"
    );
    assert!(federated_call_works(&base, &restricted, &sid, "alpha__echo").await);
    let before = upstreams[1].mcp_requests();
    assert!(!federated_call_works(&base, &restricted, &sid, "beta__echo").await);
    assert_eq!(upstreams[1].mcp_requests(), before, "nothing reached beta");
    let (sid, names) = federated_session(&base, &unrestricted).await;
    assert!(names.iter().any(|n| n.starts_with("beta")), "{names:?}");
    assert!(federated_call_works(&base, &unrestricted, &sid, "beta__echo").await);
    assert!(upstreams[1].mcp_requests() > beta_before);

    // An admin's restricted key manages only its servers: the other is not found, and
    // it creates none (a new server would be outside its list).
    let (admin_restricted, _) = mint(
        &base,
        &alice,
        json!({"name": "ops-alpha", "servers": [alpha]}),
    )
    .await;
    let (status, _, _) = send(
        Method::PATCH,
        &format!("{base}/v1/servers/{beta}"),
        &admin_restricted,
        Some(json!({"name": "renamed"})),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _, _) = send(
        Method::DELETE,
        &format!("{base}/v1/servers/{beta}"),
        &admin_restricted,
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (status, _, _) = send(
        Method::POST,
        &format!("{base}/v1/servers"),
        &admin_restricted,
        Some(json!({"name": "gamma", "url": upstreams[0].mcp_url()})),
    )
    .await;
    assert_eq!(status, 403);
    let (status, v, _) = send(
        Method::PATCH,
        &format!("{base}/v1/servers/{alpha}"),
        &admin_restricted,
        Some(json!({"name": "alpha-renamed"})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    super::cleanup(dir, schema).await;
}
