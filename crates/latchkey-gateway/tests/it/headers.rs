//! Static-header servers (auth type `headers`, issue 17) over real HTTP against the
//! scripted MCP server in static-header mode: the probe at add (a wrong key is the
//! 422 naming the status), the values set, shown only as set / not set, and sent on
//! every call path (REST tools, `/mcp/{server}`, `/mcp`), the two typed errors (no
//! value yet, values refused: never `needs_oauth_reauth`, never a refresh), per-user
//! and shared slots, a URL change that purges them (the new host receives nothing),
//! and the cache of opened values dropped on every instance.

use std::collections::HashMap;
use std::time::Duration;

use latchkey_core::{Clock, SystemClock};
use latchkey_gateway::Config;
use latchkey_testkit::idp::{KeyAlg, ScriptedIdp};
use latchkey_testkit::{AsConfig, ScriptedServer};
use latchkey_vault::KeySet;
use latchkey_vault::keyring::StaticKeys;
use latchkey_vault::store::Slot;
use reqwest::Method;
use serde_json::{Value, json};

use super::proxy::{call, rpc};
use super::{Backend, client, request};

const KEY: &str = "1:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
/// The value the scripted server accepts.
pub(super) const API_KEY: &str = "api-key-0f3c9a71-never-logged";

pub(super) fn keys() -> StaticKeys {
    StaticKeys(Some(KeySet::parse(KEY).unwrap()))
}

/// A scripted MCP server that takes `X-Api-Key` with one of `values`.
pub(super) async fn api_key_server(values: &[&str]) -> ScriptedServer {
    let up = ScriptedServer::start(AsConfig::default()).await.unwrap();
    up.require_header(Some(("X-Api-Key", values)));
    up
}

/// Every header value `up` received on `/mcp`.
pub(super) fn received_values(up: &ScriptedServer) -> Vec<String> {
    up.requests("/mcp")
        .into_iter()
        .flat_map(|r| r.headers.into_values())
        .collect()
}

/// One request on a fresh 2025-11-25 session of the federated endpoint `fed`: the
/// JSON-RPC answer.
pub(super) async fn fed_call(fed: &str, method: &str, params: Value) -> Value {
    let http = client();
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "headers-test", "version": "1"}}});
    let (status, headers, v) = rpc(&http, fed, None, init).await;
    assert_eq!(status, 200, "{v}");
    let sid = headers["mcp-session-id"].to_str().unwrap().to_owned();
    let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    rpc(&http, fed, Some(&sid), note).await;
    let msg = json!({"jsonrpc": "2.0", "id": 2, "method": method, "params": params});
    rpc(&http, fed, Some(&sid), msg).await.2
}

/// The answers a test read, to check that none carries a value.
#[derive(Default)]
struct Seen(Vec<String>);

impl Seen {
    async fn send(&mut self, method: Method, url: &str, body: Option<Value>) -> (u16, Value) {
        self.send_as(method, url, None, body).await
    }

    async fn send_as(
        &mut self,
        method: Method,
        url: &str,
        auth: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let (status, v, text) = request(method, url, auth, body).await;
        self.0.push(text);
        (status, v)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_servers_work_on_every_call_path_on_sqlite() {
    every_call_path(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_servers_work_on_every_call_path_on_postgres() {
    every_call_path(Backend::Postgres).await;
}

async fn every_call_path(backend: Backend) {
    let logs = latchkey_testkit::logs::capture();
    let up = api_key_server(&[API_KEY]).await;
    let (base, dir, store, schema) =
        super::start_on(backend, &super::loopback_config(), keys()).await;
    let servers = format!("{base}/v1/servers");
    let mut seen = Seen::default();

    // The probe at add sends the values: a wrong key is caught, nothing is saved.
    let (status, v) = seen
        .send(
            Method::POST,
            &servers,
            Some(json!({"name": "api", "url": up.mcp_url(),
                        "header_names": ["X-Api-Key"],
                        "header_values": {"X-Api-Key": "wrong-key"}})),
        )
        .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (422, Some("probe_failed")),
        "{v}"
    );
    assert!(v["message"].as_str().unwrap().contains("HTTP 401"), "{v}");
    let (_, listed) = seen.send(Method::GET, &servers, None).await;
    assert_eq!(listed, json!([]));
    // Probed without names: the server's bare 401 says it takes static headers.
    let (status, v) = seen
        .send(
            Method::POST,
            &servers,
            Some(json!({"name": "api", "url": up.mcp_url()})),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["fields"][0]["field"], "header_names");
    assert!(
        v["fields"][0]["message"]
            .as_str()
            .unwrap()
            .contains("it takes static headers"),
        "{v}"
    );
    // Names that cannot be headers are refused, each by its path.
    let (status, v) = seen
        .send(
            Method::POST,
            &servers,
            Some(json!({"name": "api", "url": up.mcp_url(),
                        "header_names": ["Host", "X-Api-Key", "x-api-key"]})),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    let fields: Vec<&str> = v["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["header_names[0]", "header_names[2]"], "{v}");

    // Without values the probe's 401 is the expected verdict: added, nothing set.
    let (status, server) = seen
        .send(
            Method::POST,
            &servers,
            Some(json!({"name": "api", "url": up.mcp_url(), "header_names": ["X-Api-Key"]})),
        )
        .await;
    assert_eq!(status, 201, "{server}");
    assert_eq!(server["auth_type"], "headers");
    assert_eq!(server["header_names"], json!(["X-Api-Key"]));
    assert_eq!(server["headers"], json!({"X-Api-Key": "not set"}));
    let id = server["id"].as_str().unwrap().to_owned();
    let one = format!("{servers}/{id}");

    // No value yet: the typed error naming the header and what to do.
    let (status, v) = seen.send(Method::GET, &format!("{one}/tools"), None).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (409, Some("headers_not_set")),
        "{v}"
    );
    assert_eq!(
        v["message"],
        "api has no value for X-Api-Key yet: set it with `latchkey servers set-headers api --header 'X-Api-Key: …'` or in Latchkey's web UI"
    );

    // Setting them: every configured name, no other, by its path.
    let headers_url = format!("{one}/headers");
    let (status, v) = seen
        .send(
            Method::PUT,
            &headers_url,
            Some(json!({"values": {"X-Other": "v"}})),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    let mut fields: Vec<&str> = v["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    fields.sort_unstable();
    assert_eq!(fields, ["values.X-Api-Key", "values.X-Other"]);
    let (status, v) = seen
        .send(
            Method::PUT,
            &headers_url,
            Some(json!({"values": {"x-api-key": API_KEY}})),
        )
        .await;
    assert_eq!(
        (status, &v),
        (200, &json!({"headers": {"X-Api-Key": "set"}}))
    );
    let (_, v) = seen.send(Method::GET, &one, None).await;
    assert_eq!(v["headers"], json!({"X-Api-Key": "set"}));
    let (_, v) = seen
        .send(Method::GET, &format!("{base}/v1/oauth/status/{id}"), None)
        .await;
    assert_eq!(v["headers"], json!({"X-Api-Key": "set"}), "{v}");

    // REST tools: list and call. (What reached the server so far were the probes.)
    let probes = up.requests("/mcp").len();
    let (status, v) = seen.send(Method::GET, &format!("{one}/tools"), None).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["tools"].as_array().unwrap().len(), 2);
    let (status, v) = seen
        .send(
            Method::POST,
            &format!("{one}/tools/echo/call"),
            Some(json!({"text": "hello"})),
        )
        .await;
    assert_eq!(
        (status, v["content"][0]["text"].as_str()),
        (200, Some("hello")),
        "{v}"
    );

    // `/mcp/{server}`: the value goes upstream; the caller's own header of that name
    // and its Authorization do not.
    let http = client();
    let r = http
        .post(format!("{base}/mcp/{id}"))
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .header("authorization", "Bearer caller-own-token")
        .header("x-api-key", "callers-own-key")
        .body(call(7, "echo", json!({"text": "proxied"})).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["result"]["content"][0]["text"], "proxied", "{v}");
    let (status, _, v) = rpc(
        &http,
        &format!("{base}/mcp/{id}"),
        None,
        call(8, "add", json!({"a": 2, "b": 3})),
    )
    .await;
    assert_eq!(
        (status, v["result"]["structuredContent"]["sum"].as_i64()),
        (200, Some(5))
    );

    // `/mcp`: listed and callable.
    let fed = format!("{base}/mcp");
    let v = fed_call(&fed, "tools/list", json!({})).await;
    let names: Vec<&str> = v["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"api__echo"), "{v}");
    let v = fed_call(
        &fed,
        "tools/call",
        json!({"name": "api__echo", "arguments": {"text": "federated"}}),
    )
    .await;
    assert_eq!(v["result"]["content"][0]["text"], "federated", "{v}");

    // Every request upstream carried the value and nothing else of a credential.
    let recorded = up.requests("/mcp");
    assert!(recorded.len() >= probes + 6);
    for r in &recorded[probes..] {
        assert_eq!(
            r.headers.get("x-api-key").map(String::as_str),
            Some(API_KEY)
        );
        assert!(!r.headers.contains_key("authorization"), "{:?}", r.headers);
    }
    assert!(
        !received_values(&up)
            .iter()
            .any(|v| v.contains("callers-own")),
        "the caller's own header crossed"
    );

    // A value the server refuses: the typed error, no refresh, never a reconnect.
    let (status, _) = seen
        .send(
            Method::PUT,
            &headers_url,
            Some(json!({"values": {"X-Api-Key": "revoked-key"}})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, v) = seen.send(Method::GET, &format!("{one}/tools"), None).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (409, Some("headers_refused")),
        "{v}"
    );
    assert_eq!(
        v["message"],
        "api refused its header values (HTTP 401); set new ones with `latchkey servers set-headers api` or in Latchkey's web UI"
    );
    let (status, _, v) = rpc(
        &http,
        &format!("{base}/mcp/{id}"),
        None,
        call(9, "echo", json!({"text": "x"})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(v["error"]["data"]["code"], "headers_refused", "{v}");
    assert_eq!(up.token_requests(), 0, "no refresh for a headers server");

    // Cleared: hidden from `/mcp`, and a call says how to set them.
    let (status, v) = seen.send(Method::DELETE, &headers_url, None).await;
    assert_eq!(
        (status, &v),
        (200, &json!({"headers": {"X-Api-Key": "not set"}}))
    );
    let v = fed_call(&fed, "tools/list", json!({})).await;
    assert!(!v.to_string().contains("api__echo"), "{v}");
    let v = fed_call(
        &fed,
        "tools/call",
        json!({"name": "api__echo", "arguments": {"text": "x"}}),
    )
    .await;
    assert_eq!(v["result"]["isError"], true, "{v}");
    assert!(
        v["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("has no value for X-Api-Key yet"),
        "{v}"
    );
    let v = fed_call(
        &fed,
        "tools/call",
        json!({"name": "latchkey_connect", "arguments": {"server": "api"}}),
    )
    .await;
    assert!(v.to_string().contains("set-headers"), "{v}");

    // Audited by name, never by value.
    let actions: Vec<(String, Option<String>)> = store
        .audit_log("default")
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.action.starts_with("headers."))
        .map(|e| (e.action, e.detail))
        .collect();
    assert_eq!(
        actions,
        vec![
            ("headers.set".into(), Some("X-Api-Key".into())),
            ("headers.set".into(), Some("X-Api-Key".into())),
            ("headers.cleared".into(), Some("X-Api-Key".into())),
        ]
    );

    // No value in any answer or log line.
    for text in &seen.0 {
        assert!(
            !text.contains(API_KEY) && !text.contains("revoked-key"),
            "{text}"
        );
    }
    let logged = logs.text();
    assert!(!logged.is_empty(), "the log capture is installed");
    assert!(!logged.contains(API_KEY), "a header value was logged");
    assert!(!logged.contains("revoked-key"), "a header value was logged");
    super::cleanup(dir, schema).await;
}

/// Latchkey in jwt mode (tokens from `idp`), for per-user tests.
async fn start_jwt(idp: &ScriptedIdp) -> (String, std::path::PathBuf) {
    let (issuer, jwks) = (idp.issuer(), idp.jwks_url());
    let (base, dir, _, _) = super::start_configured(
        Backend::Sqlite,
        |base| {
            let toml = format!(
                "public_url = \"{base}\"\nallow_insecure_loopback = true\n[auth]\nmode = \"jwt\"\n\
                 issuer = \"{issuer}\"\naudience = \"{base}/mcp\"\njwks_url = \"{jwks}\"\n\
                 tenant_claim = \"org_id\"\n"
            );
            Config::parse(&toml, &HashMap::new()).unwrap()
        },
        keys(),
    )
    .await;
    (base, dir)
}

fn bearer(idp: &ScriptedIdp, base: &str, subject: &str, admin: bool) -> String {
    let now = SystemClock.now().as_secs();
    let mut c = json!({
        "iss": idp.issuer(), "aud": format!("{base}/mcp"), "sub": subject,
        "org_id": "acme", "iat": now, "exp": now + 3600,
    });
    if admin {
        c["roles"] = json!(["latchkey:admin"]);
    }
    format!("Bearer {}", idp.mint(KeyAlg::Rs256, &c))
}

/// Each user's own values on a per-user server (A's never used for B); one set for
/// everyone on a shared server, set by an admin only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_user_values_stay_with_their_user_and_shared_ones_are_set_by_admins() {
    let idp = ScriptedIdp::start().await.unwrap();
    let up = api_key_server(&["key-of-alice", "key-of-amy", "key-shared"]).await;
    let (base, dir) = start_jwt(&idp).await;
    let alice = bearer(&idp, &base, "alice", true);
    let amy = bearer(&idp, &base, "amy", false);
    let mut seen = Seen::default();
    let servers = format!("{base}/v1/servers");
    let (status, v) = seen
        .send_as(
            Method::POST,
            &servers,
            Some(&alice),
            Some(
                json!({"name": "mine", "url": up.mcp_url(), "header_names": ["X-Api-Key"],
                        "header_values": {"X-Api-Key": "key-of-alice"}}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(
        v["headers"],
        json!({"X-Api-Key": "set"}),
        "deposited into alice's slot"
    );
    let mine = v["id"].as_str().unwrap().to_owned();

    // Amy sees the server with nothing set, and alice's value is not used for her.
    let (_, v) = seen
        .send_as(Method::GET, &format!("{servers}/{mine}"), Some(&amy), None)
        .await;
    assert_eq!(v["headers"], json!({"X-Api-Key": "not set"}));
    let before = up.mcp_requests();
    let (status, v) = seen
        .send_as(
            Method::GET,
            &format!("{servers}/{mine}/tools"),
            Some(&amy),
            None,
        )
        .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (409, Some("headers_not_set")),
        "{v}"
    );
    assert_eq!(up.mcp_requests(), before, "nothing was sent for amy");
    let (status, _) = seen
        .send_as(
            Method::PUT,
            &format!("{servers}/{mine}/headers"),
            Some(&amy),
            Some(json!({"values": {"X-Api-Key": "key-of-amy"}})),
        )
        .await;
    assert_eq!(status, 200);
    for (who, key) in [(&amy, "key-of-amy"), (&alice, "key-of-alice")] {
        let (status, v) = seen
            .send_as(
                Method::POST,
                &format!("{servers}/{mine}/tools/echo/call"),
                Some(who),
                Some(json!({"text": "hi"})),
            )
            .await;
        assert_eq!(status, 200, "{v}");
        let last = up.requests("/mcp").pop().unwrap();
        assert_eq!(last.headers["x-api-key"], key);
    }

    // Shared: one set, by an admin; a member may not set it but uses it.
    let (status, v) = seen
        .send_as(
            Method::POST,
            &servers,
            Some(&alice),
            Some(
                json!({"name": "team", "url": up.mcp_url(), "header_names": ["X-Api-Key"],
                        "token_scope": "shared"}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    let team = v["id"].as_str().unwrap().to_owned();
    let (status, v) = seen
        .send_as(
            Method::PUT,
            &format!("{servers}/{team}/headers"),
            Some(&amy),
            Some(json!({"values": {"X-Api-Key": "key-of-amy"}})),
        )
        .await;
    assert_eq!((status, v["code"].as_str()), (403, Some("forbidden")));
    let (status, _) = seen
        .send_as(
            Method::PUT,
            &format!("{servers}/{team}/headers"),
            Some(&alice),
            Some(json!({"values": {"X-Api-Key": "key-shared"}})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, v) = seen
        .send_as(
            Method::POST,
            &format!("{servers}/{team}/tools/echo/call"),
            Some(&amy),
            Some(json!({"text": "hi"})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        up.requests("/mcp").pop().unwrap().headers["x-api-key"],
        "key-shared"
    );
    let (status, _) = seen
        .send_as(
            Method::DELETE,
            &format!("{servers}/{team}/headers"),
            Some(&amy),
            None,
        )
        .await;
    assert_eq!(status, 403);
    for text in &seen.0 {
        assert!(
            !text.contains("key-of-") && !text.contains("key-shared"),
            "{text}"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// A change of URL purges the values; the new host receives none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_change_purges_the_values_and_the_new_host_gets_nothing() {
    let up = api_key_server(&[API_KEY]).await;
    let elsewhere = api_key_server(&["only-its-own-key"]).await;
    let (base, dir, store) = super::start_with_store(&super::loopback_config(), keys()).await;
    let servers = format!("{base}/v1/servers");
    let (status, v) = super::post(
        &servers,
        json!({"name": "api", "url": up.mcp_url(), "header_names": ["X-Api-Key"],
               "header_values": {"X-Api-Key": API_KEY}}),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    // A call, so the opened values are cached.
    let (status, _, _) = request(Method::GET, &format!("{servers}/{id}/tools"), None, None).await;
    assert_eq!(status, 200);

    let (status, v, _) = request(
        Method::PATCH,
        &format!("{servers}/{id}"),
        None,
        Some(json!({"url": elsewhere.mcp_url()})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["headers"], json!({"X-Api-Key": "not set"}));
    let slot = Slot {
        tenant: "default".into(),
        server: id.clone(),
        subject: Some("local".into()),
    };
    assert!(
        store.get_header_values(&slot).await.unwrap().is_none(),
        "purged"
    );
    let (status, v, _) = request(Method::GET, &format!("{servers}/{id}/tools"), None, None).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (409, Some("headers_not_set")),
        "{v}"
    );
    let (status, _, v) = rpc(
        &client(),
        &format!("{base}/mcp/{id}"),
        None,
        call(1, "echo", json!({"text": "x"})),
    )
    .await;
    assert_eq!(
        (status, v["error"]["data"]["code"].as_str()),
        (200, Some("headers_not_set"))
    );
    assert!(
        !received_values(&elsewhere)
            .iter()
            .any(|v| v.contains(API_KEY)),
        "a value reached the new host"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// Values cached on one instance are dropped there when another instance clears them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleared_values_stop_on_every_instance() {
    let schema = latchkey_testkit::pg::PgSchema::new("lk_headers")
        .await
        .unwrap();
    let up = api_key_server(&[API_KEY]).await;
    let mut bases = Vec::new();
    for _ in 0..2 {
        let store = latchkey_vault::store::DatabaseUrl::parse(&schema.url)
            .unwrap()
            .open()
            .await
            .unwrap();
        bases.push(
            super::serve(
                |base| {
                    let mut cfg = super::loopback_config();
                    cfg.public_url = base.to_owned();
                    cfg
                },
                store,
                keys(),
                std::sync::Arc::new(SystemClock),
            )
            .await,
        );
    }
    let (status, v) = super::post(
        &format!("{}/v1/servers", bases[0]),
        json!({"name": "api", "url": up.mcp_url(), "header_names": ["X-Api-Key"],
               "header_values": {"X-Api-Key": API_KEY}}),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    let tools = format!("{}/v1/servers/{id}/tools", bases[1]);
    let (status, _, _) = request(Method::GET, &tools, None, None).await;
    assert_eq!(status, 200, "instance 2 opened and cached the values");
    let (status, _, _) = request(
        Method::DELETE,
        &format!("{}/v1/servers/{id}/headers", bases[0]),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (status, v, _) = request(Method::GET, &tools, None, None).await;
        if status == 409 {
            assert_eq!(v["code"], "headers_not_set");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "instance 2 still sends the cleared values"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    schema.drop_schema().await.unwrap();
}
