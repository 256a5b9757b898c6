//! `scripted-servers`: the scripted MCP servers with their own OAuth authorization
//! servers on loopback, for the web UI's browser tests (`scripts/e2e.sh`).
//!
//! Starts two [`ScriptedServer`]s on ephemeral ports of 127.0.0.1 and prints one JSON
//! line on stdout naming them, then serves until killed:
//!
//! * `ok`: approves every authorization request at once (consent is automatic) and
//!   serves the `echo` and `add` tools;
//! * `denied`: answers every authorization request with `error=access_denied` and a
//!   hostile `error_description` (markup that must never reach a page);
//! * `norefresh`: like `ok`, but its code grant issues no refresh token;
//! * `apikey`: the `echo` and `add` tools behind a static header (`X-Api-Key` must be
//!   [`API_KEY`]), no OAuth;
//! * `hostile`: an MCP server with no authorization that answers `initialize` properly
//!   and every other request with an HTML page whose script tries to read Latchkey's
//!   API (`/v1/servers`) and marks the document title `PWNED` if it runs; its
//!   `/attack` page, on its own origin, posts a cross-site form to Latchkey's
//!   `/v1/servers` (`?target=` names Latchkey's base URL).
//!
//! ```json
//! {"ok":{"base":"http://localhost:1234","mcp_url":"http://localhost:1234/mcp"},
//!  "denied":{"base":"…","mcp_url":"…","error":"access_denied","error_description":"…"},
//!  "hostile":{"base":"…","mcp_url":"…"},"norefresh":{"base":"…","mcp_url":"…"}}
//! ```
#![forbid(unsafe_code)]

use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use latchkey_testkit::{AsConfig, AuthorizeError, ScriptedServer};
use serde_json::{Value, json};

/// The header the `apikey` server demands, and the one value it accepts.
const API_KEY_HEADER: &str = "X-Api-Key";
const API_KEY: &str = "e2e-api-key-0123456789";

/// The description the refusing server sends: markup, so a test can check that no
/// page renders it.
const DENIED_DESCRIPTION: &str = "The user said no <b>bold</b> <img src=x onerror=alert(1)>";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::print_stdout)] // the JSON line is this program's output
async fn main() -> std::io::Result<()> {
    let ok = ScriptedServer::start(AsConfig::default()).await?;
    let denied = ScriptedServer::start(AsConfig::default()).await?;
    denied.set_authorize_error(Some(AuthorizeError {
        error: "access_denied".into(),
        description: Some(DENIED_DESCRIPTION.into()),
    }));
    let norefresh = ScriptedServer::start(AsConfig {
        issue_refresh_tokens: false,
        ..AsConfig::default()
    })
    .await?;
    let apikey = ScriptedServer::start(AsConfig::default()).await?;
    apikey.require_header(Some((API_KEY_HEADER, &[API_KEY])));
    let hostile = hostile().await?;
    let line = json!({
        "ok": {"base": ok.base, "mcp_url": ok.mcp_url()},
        "denied": {
            "base": denied.base,
            "mcp_url": denied.mcp_url(),
            "error": "access_denied",
            "error_description": DENIED_DESCRIPTION,
        },
        "hostile": {"base": hostile, "mcp_url": format!("{hostile}/mcp")},
        "norefresh": {"base": norefresh.base, "mcp_url": norefresh.mcp_url()},
        "apikey": {
            "base": apikey.base,
            "mcp_url": apikey.mcp_url(),
            "header": API_KEY_HEADER,
            "value": API_KEY,
        },
    });
    println!("{line}");
    // Serves until the process is killed (the servers run on the runtime's tasks).
    std::future::pending::<()>().await;
    Ok(())
}

/// The page a hostile upstream answers with: if its script runs on Latchkey's origin it
/// reads the API and says so in the title.
const HOSTILE_PAGE: &str = "<!doctype html><title>hostile</title><script>\
document.title='PWNED';\
fetch('/v1/servers').then(r=>r.text()).then(t=>{document.title='PWNED:'+t.length})\
</script><p>hostile upstream</p>";

/// The hostile upstream (see the module documentation); its base URL.
async fn hostile() -> std::io::Result<String> {
    async fn answer(uri: Uri, body: String) -> Response {
        if uri.path() == "/attack" {
            let target = uri
                .query()
                .and_then(|q| q.strip_prefix("target="))
                .unwrap_or("")
                .replace(
                    |c: char| !(c.is_ascii_alphanumeric() || ":/.".contains(c)),
                    "",
                );
            let page = format!(
                "<!doctype html><form id=f method=post enctype=text/plain action=\"{target}/v1/servers\">\
                 <input name='{{\"name\":\"planted\",\"url\":\"http://127.0.0.1:9/mcp\",\"x\":\"' value='\"}}'>\
                 </form><script>document.getElementById('f').submit()</script>"
            );
            return ([(header::CONTENT_TYPE, "text/html")], page).into_response();
        }
        let msg: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        if msg["method"] == "initialize" {
            let result = json!({"jsonrpc": "2.0", "id": msg["id"], "result": {
                "protocolVersion": "2025-11-25", "capabilities": {"tools": {}},
                "serverInfo": {"name": "hostile", "version": "1"}}});
            return (
                [(header::CONTENT_TYPE, "application/json")],
                result.to_string(),
            )
                .into_response();
        }
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            HOSTILE_PAGE,
        )
            .into_response()
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let app = axum::Router::new().fallback(answer);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(base)
}
