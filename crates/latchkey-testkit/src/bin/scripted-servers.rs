//! `scripted-servers`: the scripted MCP servers with their own OAuth authorization
//! servers on loopback, for the web UI's browser tests (`scripts/e2e.sh`).
//!
//! Starts two [`ScriptedServer`]s on ephemeral ports of 127.0.0.1 and prints one JSON
//! line on stdout naming them, then serves until killed:
//!
//! * `ok`: approves every authorization request at once (consent is automatic) and
//!   serves the `echo` and `add` tools;
//! * `denied`: answers every authorization request with `error=access_denied` and a
//!   hostile `error_description` (markup that must never reach a page).
//!
//! ```json
//! {"ok":{"base":"http://localhost:1234","mcp_url":"http://localhost:1234/mcp"},
//!  "denied":{"base":"…","mcp_url":"…","error":"access_denied","error_description":"…"}}
//! ```
#![forbid(unsafe_code)]

use latchkey_testkit::{AsConfig, AuthorizeError, ScriptedServer};
use serde_json::json;

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
    let line = json!({
        "ok": {"base": ok.base, "mcp_url": ok.mcp_url()},
        "denied": {
            "base": denied.base,
            "mcp_url": denied.mcp_url(),
            "error": "access_denied",
            "error_description": DENIED_DESCRIPTION,
        },
    });
    println!("{line}");
    // Serves until the process is killed (the servers run on the runtime's tasks).
    std::future::pending::<()>().await;
    Ok(())
}
