//! The application in-process over real HTTP: probes, the guard in front of `/v1`, and
//! the error mapping.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::collections::HashMap;
use std::sync::Arc;

use latchkey_core::SystemClock;
use latchkey_gateway::{ApiError, Config, FieldError};
use latchkey_vault::keyring::StaticKeys;
use latchkey_vault::{Keyring, SqliteStore};

mod api_keys;
mod cluster;
mod credentials;
mod faults;
mod federated;
mod flows;
mod headers;
mod hostile;
mod identity;
mod layout;
mod lifecycle;
mod naming;
mod operations;
mod proxy;
mod relaying;
mod renewal;
mod servers;
mod signin;
mod tools;
mod ui;

/// A client that never follows redirects (the tests look at each hop).
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// One request (with `auth` as the `Authorization` header when given); status, JSON
/// body (`Null` if none) and the raw text.
async fn request(
    method: reqwest::Method,
    url: &str,
    auth: Option<&str>,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value, String) {
    let mut r = client().request(method, url);
    if let Some(a) = auth {
        r = r.header("authorization", a);
    }
    if let Some(b) = body {
        r = r
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    (status, v, text)
}

/// POSTs a raw JSON text; the status and the parsed body (`Null` if not JSON).
async fn post_raw(url: &str, body: &str) -> (u16, serde_json::Value) {
    let r = client()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let bytes = r.bytes().await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

/// The next server-sent event on an open `/v1/events` stream (within 5 s): its name
/// and its JSON data.
async fn next_event(events: &mut reqwest::Response) -> (String, serde_json::Value) {
    let mut seen = String::new();
    while !seen.contains("\n\n") {
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(5), events.chunk())
            .await
            .expect("an event within 5 s")
            .unwrap()
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    let name = seen
        .lines()
        .find_map(|l| l.strip_prefix("event: "))
        .unwrap_or_default()
        .to_owned();
    let data = seen
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .map_or(serde_json::Value::Null, |d| {
            serde_json::from_str(d).unwrap()
        });
    (name, data)
}

/// POSTs a JSON value.
async fn post(url: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    post_raw(url, &body.to_string()).await
}

/// Registers `upstream` (a scripted MCP server) with the Latchkey at `base` as `name`;
/// its id.
async fn add_server(base: &str, name: &str, upstream: &latchkey_testkit::ScriptedServer) -> String {
    let (status, v) = post(
        &format!("{base}/v1/servers"),
        serde_json::json!({"name": name, "url": upstream.mcp_url()}),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    v["id"].as_str().unwrap().to_owned()
}

/// Deposits a refresh token of `upstream`'s authorization server into the caller's slot
/// of server `id`.
async fn deposit(base: &str, id: &str, upstream: &latchkey_testkit::ScriptedServer) {
    let (status, v) = post(
        &format!("{base}/v1/credentials"),
        serde_json::json!({
            "server_id": id, "refresh_token": upstream.mint_refresh_token(),
            "token_endpoint": format!("{}/token", upstream.base), "client_id": "deposit-client",
        }),
    )
    .await;
    assert_eq!(status, 200, "{v}");
}

/// [`add_server`] and [`deposit`]: a server the caller is connected to; its id.
async fn connected_server(
    base: &str,
    name: &str,
    upstream: &latchkey_testkit::ScriptedServer,
) -> String {
    let id = add_server(base, name, upstream).await;
    deposit(base, &id, upstream).await;
    id
}

/// The requests `upstream` received on `/mcp` with JSON-RPC `method`, as recorded.
fn upstream_requests(
    upstream: &latchkey_testkit::ScriptedServer,
    method: &str,
) -> Vec<HashMap<String, String>> {
    upstream
        .requests("/mcp")
        .into_iter()
        .map(|r| r.body)
        .filter(|b| b.get("method").is_some_and(|m| m == method))
        .collect()
}

/// Waits (up to 10 s) until `f` holds.
async fn eventually(what: &str, f: impl Fn() -> bool) {
    for _ in 0..100 {
        if f() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("not within 10 s: {what}");
}

async fn start(cfg: &Config, keys: StaticKeys) -> (String, std::path::PathBuf) {
    let (base, dir, _) = start_with_store(cfg, keys).await;
    (base, dir)
}

/// The configuration most tests use: local mode, outbound `http://` to loopback
/// allowed (the scripted servers listen there).
fn loopback_config() -> Config {
    Config::parse("allow_insecure_loopback = true", &HashMap::new()).unwrap()
}

/// Drops a test's PostgreSQL schema (if it had one) and its data directory.
async fn cleanup(dir: std::path::PathBuf, schema: Option<latchkey_testkit::pg::PgSchema>) {
    if let Some(schema) = schema {
        schema.drop_schema().await.unwrap();
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Which database a test runs on.
#[derive(Debug, Clone, Copy)]
enum Backend {
    Sqlite,
    Postgres,
}

async fn start_with_store(
    cfg: &Config,
    keys: StaticKeys,
) -> (String, std::path::PathBuf, Arc<dyn latchkey_vault::Store>) {
    let (base, dir, store, _) = start_on(Backend::Sqlite, cfg, keys).await;
    (base, dir, store)
}

/// A running Latchkey: base URL, data directory, store, and the PostgreSQL schema to
/// drop afterwards (if any).
type Started = (
    String,
    std::path::PathBuf,
    Arc<dyn latchkey_vault::Store>,
    Option<latchkey_testkit::pg::PgSchema>,
);

/// Latchkey in-process on `backend`; with PostgreSQL, the schema to drop afterwards.
async fn start_on(backend: Backend, cfg: &Config, keys: StaticKeys) -> Started {
    start_configured(
        backend,
        |base| {
            // The default public URL names the default port; use the one actually bound.
            let mut cfg = cfg.clone();
            if cfg.public_url == format!("http://{}", latchkey_gateway::config::DEFAULT_LISTEN) {
                cfg.public_url = base.to_owned();
            }
            cfg
        },
        keys,
    )
    .await
}

/// Like [`start_on`], with the configuration made from Latchkey's own base URL, known
/// only once the port is bound (jwt mode needs it for the public URL and audience).
async fn start_configured(
    backend: Backend,
    cfg: impl FnOnce(&str) -> Config,
    keys: StaticKeys,
) -> Started {
    let dir = std::env::temp_dir().join(format!("lk-gw-{}", latchkey_vault::store::new_id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (store, schema): (Arc<dyn latchkey_vault::Store>, _) = match backend {
        Backend::Sqlite => (
            Arc::new(SqliteStore::open(&dir.join("db")).await.unwrap()),
            None,
        ),
        Backend::Postgres => {
            let schema = latchkey_testkit::pg::PgSchema::new("lk_gw").await.unwrap();
            let store = latchkey_vault::store::DatabaseUrl::parse(&schema.url)
                .unwrap()
                .open()
                .await
                .unwrap();
            (store, Some(schema))
        }
    };
    let base = serve(cfg, store.clone(), keys, Arc::new(SystemClock)).await;
    (base, dir, store, schema)
}

/// One Latchkey instance in-process on `store`, listening for the other instances'
/// changes; its base URL.
async fn serve(
    cfg: impl FnOnce(&str) -> Config,
    store: Arc<dyn latchkey_vault::Store>,
    keys: StaticKeys,
    clock: Arc<dyn latchkey_core::Clock>,
) -> String {
    serve_state(cfg, store, keys, clock).await.0
}

/// [`serve`], with the instance's state (to look at its caches).
async fn serve_state(
    cfg: impl FnOnce(&str) -> Config,
    store: Arc<dyn latchkey_vault::Store>,
    keys: StaticKeys,
    clock: Arc<dyn latchkey_core::Clock>,
) -> (String, latchkey_gateway::AppState) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let cfg = cfg(&base);
    let state = latchkey_gateway::state(&cfg, store, Arc::new(Keyring::new(keys)), clock).unwrap();
    latchkey_gateway::cluster::start(state.clone())
        .await
        .unwrap();
    // What `latchkey serve` serves (`/mcp/{server}` routed ahead of the router), on
    // the accept loop it uses, with the configuration's limits.
    let app = latchkey_gateway::listener::app(state.clone());
    tokio::spawn(latchkey_gateway::serve(
        listener,
        app,
        cfg.limits,
        std::future::pending(),
    ));
    (base, state)
}

#[tokio::test]
async fn readiness_reports_a_missing_key_without_failing() {
    let cfg = Config::parse("", &HashMap::new()).unwrap();
    let (base, dir) = start(&cfg, StaticKeys(None)).await;
    let r = reqwest::get(format!("{base}/readyz")).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(v["checks"]["encryption_key"], "missing");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn jwt_mode_challenges_a_caller_without_a_token() {
    let toml = "public_url = \"http://127.0.0.1:9\"\n[auth]\nmode = \"jwt\"\nissuer = \"https://idp.example\"\naudience = \"http://127.0.0.1:9/mcp\"\njwks_url = \"https://idp.example/jwks\"";
    let cfg = Config::parse(toml, &HashMap::new()).unwrap();
    let (base, dir) = start(&cfg, StaticKeys(None)).await;
    let r = reqwest::Client::new()
        .get(format!("{base}/v1/whoami"))
        .header("host", "127.0.0.1:9")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert_eq!(
        challenge,
        "Bearer resource_metadata=\"http://127.0.0.1:9/.well-known/oauth-protected-resource/mcp\""
    );
    // The MCP endpoints challenge the same way, and the metadata they point at is
    // served (path-inserted and root), naming the issuer, resource verbatim.
    let r = reqwest::Client::new()
        .post(format!("{base}/mcp/some-server"))
        .header("host", "127.0.0.1:9")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(r.headers()["www-authenticate"].to_str().unwrap(), challenge);
    for path in [
        "/.well-known/oauth-protected-resource/mcp",
        "/.well-known/oauth-protected-resource",
    ] {
        let r = reqwest::Client::new()
            .get(format!("{base}{path}"))
            .header("host", "127.0.0.1:9")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{path}");
        let prm: serde_json::Value = r.json().await.unwrap();
        assert_eq!(prm["resource"], "http://127.0.0.1:9/mcp");
        assert_eq!(
            prm["authorization_servers"],
            serde_json::json!(["https://idp.example"])
        );
    }
    // Probes stay open.
    let r = reqwest::get(format!("{base}/healthz")).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn errors_have_stable_codes_and_no_secret() {
    use axum::response::IntoResponse;
    let cases = [
        (
            ApiError::EncryptionKeyMissing,
            503,
            "encryption_key_missing",
        ),
        (
            ApiError::NeedsReauth {
                server_id: "s1".into(),
                server_name: "my server".into(),
                reason: latchkey_gateway::error::Reauth::NotConnected,
            },
            409,
            "needs_oauth_reauth",
        ),
        (ApiError::Unavailable, 503, "unavailable"),
        (
            ApiError::BadRequest(vec![FieldError {
                field: "token_endpoint".into(),
                message: "required".into(),
            }]),
            400,
            "invalid_request",
        ),
    ];
    for (e, status, code) in cases {
        let resp = e.into_response();
        assert_eq!(resp.status().as_u16(), status);
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["code"], code);
        if code == "needs_oauth_reauth" {
            assert_eq!(v["server_id"], "s1");
            // Issue 17: a never-connected server says so, by its name (quoted for the
            // shell), not "needs to be reconnected"; the code stays the one clients
            // show "connect" for.
            assert_eq!(v["server_name"], "my server");
            assert_eq!(v["reason"], "not_connected");
            assert_eq!(
                v["message"],
                "my server is not connected yet: connect it with `latchkey connect 'my server'` or in Latchkey's web UI"
            );
        }
        if code == "invalid_request" {
            assert_eq!(v["fields"][0]["field"], "token_endpoint");
        }
    }
}

#[tokio::test]
async fn metrics_count_requests_by_route_template() {
    let cfg = Config::parse("", &HashMap::new()).unwrap();
    let (base, dir) = start(&cfg, StaticKeys(None)).await;
    reqwest::get(format!("{base}/healthz")).await.unwrap();
    reqwest::get(format!("{base}/v1/servers/some-id-123"))
        .await
        .unwrap();
    let r = reqwest::get(format!("{base}/metrics")).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = r.text().await.unwrap();
    assert!(
        text.contains("latchkey_http_requests_total{route=\"/healthz\",status=\"200\"}"),
        "{text}"
    );
    assert!(text.contains("route=\"/v1/servers/{id}\""), "{text}");
    assert!(!text.contains("some-id-123"), "ids never become labels");
    let _ = std::fs::remove_dir_all(dir);
}

/// Every documented path and method is routed (not the JSON 404 of the fallback), and
/// the document is served.
#[tokio::test]
async fn the_openapi_document_matches_the_routes() {
    let cfg = Config::parse("", &HashMap::new()).unwrap();
    let (base, dir) = start(&cfg, StaticKeys(None)).await;
    let served: serde_json::Value = serde_json::from_slice(
        &reqwest::get(format!("{base}/v1/openapi.json"))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    let doc: serde_json::Value = serde_json::from_str(latchkey_gateway::app::OPENAPI).unwrap();
    assert_eq!(served, doc);
    let client = reqwest::Client::new();
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in ["get", "post", "put", "patch", "delete"] {
            if item.get(method).is_none() || path == "/v1/events" {
                continue;
            }
            let url = format!(
                "{base}{}",
                path.replace("{id}", "x").replace("{server_id}", "x")
            );
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let r = client
                .request(m, &url)
                .header("content-type", "application/json")
                .body("{}")
                .send()
                .await
                .unwrap();
            assert_ne!(r.status().as_u16(), 405, "{method} {path} is not routed");
            let body = r.text().await.unwrap();
            // The resource may be absent ("x"), but the route must exist: the fallback's
            // 404 says nothing else, a handler's 404 comes after validation.
            if path.contains('{') {
                continue;
            }
            assert!(
                !body.contains("\"code\":\"not_found\""),
                "{method} {path}: {body}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 8, "{checked}");
    let _ = std::fs::remove_dir_all(dir);
}
