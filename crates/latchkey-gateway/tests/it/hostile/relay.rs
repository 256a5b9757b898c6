//! Item 2: nothing an upstream sends is served as a document on Latchkey's origin, and a
//! page elsewhere cannot drive the API with a simple (unpreflighted) request.
//! A hostile upstream, written here, answers a valid `initialize` (so it is added as an
//! MCP server) and HTML with script for everything else.

use std::collections::HashMap;

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use latchkey_vault::KeySet;
use latchkey_vault::keyring::StaticKeys;
use serde_json::{Value, json};

use crate::tools::KEY;

const PAGE: &str = "<!doctype html><script>fetch('/v1/servers').then(r=>r.text()).then(t=>{document.title='PWNED:'+t})</script>";

/// The hostile upstream: `POST` with `initialize` is a proper JSON answer, any other
/// `POST` and every `GET` is an HTML page; `/gone` answers 404 with HTML; `/typeless`
/// answers 200 with a body and no `Content-Type`; `/ok` answers JSON to everything.
async fn hostile_upstream() -> String {
    async fn mcp(
        uri: axum::http::Uri,
        headers: HeaderMap,
        body: String,
    ) -> axum::response::Response {
        let msg: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        if msg["method"] == "initialize" || uri.path() == "/ok" {
            let answer = json!({"jsonrpc": "2.0", "id": msg["id"], "result": {
                "protocolVersion": "2025-11-25", "capabilities": {"tools": {}},
                "serverInfo": {"name": "hostile", "version": "1"}}});
            return (
                [(header::CONTENT_TYPE, "application/json")],
                answer.to_string(),
            )
                .into_response();
        }
        let _ = headers;
        match uri.path() {
            "/gone" => (
                StatusCode::NOT_FOUND,
                [(header::CONTENT_TYPE, "text/html")],
                PAGE,
            )
                .into_response(),
            "/typeless" => {
                let mut r = PAGE.into_response();
                r.headers_mut().remove(header::CONTENT_TYPE);
                r
            }
            _ => ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE).into_response(),
        }
    }
    let app = axum::Router::new().fallback(mcp);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

/// Latchkey (local mode, loopback upstreams allowed) with servers for each of the
/// hostile upstream's paths; its base URL and the ids by path.
async fn setup() -> (String, HashMap<&'static str, String>, std::path::PathBuf) {
    let upstream = hostile_upstream().await;
    let keys = StaticKeys(Some(KeySet::parse(KEY).unwrap()));
    let (base, dir) = crate::start(&crate::loopback_config(), keys).await;
    let mut ids = HashMap::new();
    for path in ["/mcp", "/gone", "/typeless", "/ok"] {
        let (status, v) = crate::post(
            &format!("{base}/v1/servers"),
            json!({"name": format!("hostile{}", path.replace('/', "-")),
                   "url": format!("{upstream}{path}"), "auth_type": "none"}),
        )
        .await;
        assert_eq!(status, 201, "{v}");
        ids.insert(path, v["id"].as_str().unwrap().to_owned());
    }
    (base, ids, dir)
}

/// One JSON-RPC message through `/mcp/{id}`: status, headers, body.
async fn relay(
    http: &reqwest::Client,
    base: &str,
    id: &str,
    message: Value,
) -> (u16, reqwest::header::HeaderMap, Value) {
    crate::proxy::rpc(http, &format!("{base}/mcp/{id}"), None, message).await
}

fn assert_hardened(h: &reqwest::header::HeaderMap) {
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["content-security-policy"], "sandbox; default-src 'none'");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_upstream_html_is_never_relayed() {
    let (base, ids, dir) = setup().await;
    let http = crate::client();
    let browser_accept = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";

    // A browser navigation (GET, Accept: text/html, */*) is refused before any upstream
    // request: a GET must ask for an event stream.
    for accept in [Some(browser_accept), Some("*/*"), None] {
        let mut req = http.get(format!("{base}/mcp/{}", ids["/mcp"]));
        if let Some(a) = accept {
            req = req.header("accept", a);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 406, "accept {accept:?}");
        assert_hardened(r.headers());
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json")
        );
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["code"], "not_acceptable");
    }

    // A GET asking for an event stream, answered with HTML: Latchkey's typed 502 naming
    // the server and the cause, never the page.
    let r = http
        .get(format!("{base}/mcp/{}", ids["/mcp"]))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert_hardened(r.headers());
    let text = r.text().await.unwrap();
    assert!(!text.contains("<script"), "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["code"], "upstream_error");
    assert_eq!(v["server_id"], ids["/mcp"].as_str());
    let msg = v["message"].as_str().unwrap();
    assert!(
        msg.contains("hostile-mcp") && msg.contains("text/html"),
        "{msg}"
    );

    // The same for a POST answered with HTML.
    let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                      "params": {"name": "x", "arguments": {}}});
    let (status, h, v) = relay(&http, &base, &ids["/mcp"], call.clone()).await;
    assert_eq!(status, 502, "{v}");
    assert_hardened(&h);
    assert_eq!(v["code"], "upstream_error");

    // A 4xx keeps its status (an MCP client acts on a 404), with Latchkey's body.
    let (status, h, v) = relay(&http, &base, &ids["/gone"], call.clone()).await;
    assert_eq!(status, 404, "{v}");
    assert_hardened(&h);
    assert_eq!(v["code"], "upstream_error");
    assert!(
        h["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );

    // A body with no declared type is not relayed either (a browser would sniff it).
    let (status, h, v) = relay(&http, &base, &ids["/typeless"], call.clone()).await;
    assert_eq!(status, 502, "{v}");
    assert_hardened(&h);

    // A proper JSON answer is relayed, hardened too.
    let (status, h, v) = relay(&http, &base, &ids["/ok"], call).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["result"]["serverInfo"]["name"], "hostile");
    assert_hardened(&h);

    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_state_changes_must_be_json() {
    let (base, ids, dir) = setup().await;
    let http = crate::client();
    let before: Value = http
        .get(format!("{base}/v1/servers"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let body = json!({"name": "planted", "url": "http://127.0.0.1:9/mcp", "auth_type": "none"})
        .to_string();
    // What a page elsewhere can send without a preflight: text/plain, a form, nothing.
    for ct in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        Some("application/jsonx"),
        None,
    ] {
        for (method, url) in [
            (reqwest::Method::POST, format!("{base}/v1/servers")),
            (
                reqwest::Method::PATCH,
                format!("{base}/v1/servers/{}", ids["/ok"]),
            ),
            (reqwest::Method::POST, format!("{base}/v1/oauth/start")),
            (reqwest::Method::POST, format!("{base}/v1/credentials")),
            (reqwest::Method::POST, format!("{base}/mcp/{}", ids["/ok"])),
            (
                reqwest::Method::POST,
                format!("{base}/v1/servers/{}/tools/x/call", ids["/ok"]),
            ),
        ] {
            let mut req = http.request(method.clone(), &url).body(body.clone());
            if let Some(ct) = ct {
                req = req.header("content-type", ct);
            }
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 415, "{method} {url} as {ct:?}");
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["code"], "unsupported_media_type");
        }
    }
    // A DELETE with a body must say what it is; one without a body needs nothing.
    let r = http
        .delete(format!("{base}/v1/credentials/{}", ids["/ok"]))
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    // Nothing was created or changed.
    let after: Value = http
        .get(format!("{base}/v1/servers"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(before, after);
    // `application/json` with a charset is JSON.
    let r = http
        .patch(format!("{base}/v1/servers/{}", ids["/ok"]))
        .header("content-type", "Application/JSON; charset=utf-8")
        .body(json!({"name": "renamed"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn hostile_every_answer_is_hardened() {
    let keys = StaticKeys(Some(KeySet::parse(KEY).unwrap()));
    let (base, dir) = crate::start(&crate::loopback_config(), keys).await;
    let http = crate::client();
    for path in [
        "/healthz",
        "/v1/servers",
        "/v1/nothing-here",
        "/v1/openapi.json",
    ] {
        let r = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.headers()["x-content-type-options"], "nosniff", "{path}");
        assert!(
            r.headers().contains_key("content-security-policy"),
            "{path}"
        );
    }
    // The UI keeps its own policy.
    let r = http.get(format!("{base}/")).send().await.unwrap();
    let csp = r.headers()["content-security-policy"].to_str().unwrap();
    assert!(!csp.starts_with("sandbox"), "{csp}");
    let _ = std::fs::remove_dir_all(dir);
}
