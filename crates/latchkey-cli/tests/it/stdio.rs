//! `latchkey stdio SERVER` driven over its standard input and output: by rmcp's MCP
//! client (a child-process transport, as a local-only MCP client runs it), and by hand
//! for what a client library hides (framing, error answers, a clean exit).

use std::io::{BufRead, BufReader, Write as _};
use std::process::Stdio;

use rmcp::ServiceExt as _;
use rmcp::model::CallToolRequestParams;
use rmcp::transport::TokioChildProcess;
use serde_json::{Value, json};

use super::commands::{Env, assert_fails, connect_via_api, latchkey_command};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_mcp_client_uses_the_server_through_the_bridge() {
    let env = Env::start().await;
    let id = env.add_server("scripted").await;
    connect_via_api(&env.base(), &id).await;

    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_latchkey"));
    cmd.args(["stdio", "scripted", "--url", &env.base()])
        .env_remove("LATCHKEY_TOKEN")
        .stderr(Stdio::null());
    let transport = TokioChildProcess::new(cmd).unwrap();
    let client = ().serve(transport).await.unwrap();
    let info = client.peer_info().unwrap();
    assert_eq!(info.server_info.as_ref().unwrap().name, "scripted");

    let tools = client.list_all_tools().await.unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    assert_eq!(names, ["echo", "add"]);

    let args = json!({"a": 20, "b": 22}).as_object().unwrap().clone();
    let result = client
        .call_tool(CallToolRequestParams::new("add").with_arguments(args))
        .await
        .unwrap();
    assert_eq!(result.is_error, Some(false));
    assert_eq!(result.structured_content, Some(json!({"sum": 42})));
    let text = serde_json::to_value(&result.content).unwrap();
    assert_eq!(text[0]["text"], "42");

    let args = json!({"text": "through latchkey"})
        .as_object()
        .unwrap()
        .clone();
    let result = client
        .call_tool(CallToolRequestParams::new("echo").with_arguments(args))
        .await
        .unwrap();
    assert_eq!(
        serde_json::to_value(&result.content).unwrap()[0]["text"],
        "through latchkey"
    );
    // Every upstream call carried the slot's token, injected by Latchkey.
    assert!(
        env.upstream
            .last_mcp_authorization()
            .unwrap()
            .starts_with("Bearer at-")
    );
    client.cancel().await.unwrap();
}

/// Writes `lines` to a `latchkey stdio` and closes its input; its exit status, the
/// lines it wrote to standard output, and its standard error.
async fn bridge(base: &str, server: &str, lines: Vec<String>) -> (Option<i32>, Vec<Value>, String) {
    let mut c = latchkey_command(base);
    c.args(["stdio", server])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    tokio::task::spawn_blocking(move || {
        let mut child = c.spawn().unwrap();
        let mut input = child.stdin.take().unwrap();
        let out = child.stdout.take().unwrap();
        let mut reader = BufReader::new(out).lines();
        let mut seen = Vec::new();
        for l in lines {
            writeln!(input, "{l}").unwrap();
            input.flush().unwrap();
            let request = serde_json::from_str::<Value>(&l)
                .ok()
                .is_none_or(|v| v.get("id").is_some());
            if request {
                // One answer per request, in order: wait for it before the next.
                let answer = reader.next().unwrap().unwrap();
                seen.push(serde_json::from_str::<Value>(&answer).unwrap());
            }
        }
        drop(input);
        for rest in reader {
            seen.push(serde_json::from_str::<Value>(&rest.unwrap()).unwrap());
        }
        let out = child.wait_with_output().unwrap();
        (
            out.status.code(),
            seen,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_by_hand() {
    let env = Env::start().await;
    let id = env.add_server("scripted").await;
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "by-hand", "version": "1"}}});
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let call = json!({"jsonrpc": "2.0", "id": "c", "method": "tools/call",
        "params": {"name": "echo", "arguments": {"text": "x"}}});

    // Not connected: the request is answered with the JSON-RPC error Latchkey sends.
    let (code, seen, _) = bridge(&env.base(), &id, vec![init.to_string()]).await;
    assert_eq!(code, Some(0));
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["id"], 1);
    assert_eq!(seen[0]["error"]["code"], -32001, "{seen:?}");

    connect_via_api(&env.base(), &id).await;
    env.upstream.set_mcp_sse(true);
    let (code, seen, stderr) = bridge(
        &env.base(),
        &id,
        vec![
            init.to_string(),
            initialized.to_string(),
            "this is not json".into(),
            call.to_string(),
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(seen.len(), 3, "one line per answer, nothing else: {seen:?}");
    assert_eq!(seen[0]["result"]["protocolVersion"], "2025-11-25");
    assert_eq!(seen[1]["error"]["code"], -32700);
    assert_eq!(seen[2]["id"], "c");
    assert_eq!(seen[2]["result"]["content"][0]["text"], "x");
    // The upstream saw the messages in order, and the call carried the session the
    // bridge opened and the negotiated version.
    let calls = env.upstream.requests("/mcp");
    let methods: Vec<&str> = calls.iter().map(|r| r.body["method"].as_str()).collect();
    assert_eq!(
        &methods[methods.len() - 3..],
        ["initialize", "notifications/initialized", "tools/call"]
    );
    let last = calls.last().unwrap();
    assert!(
        last.headers.contains_key("mcp-session-id"),
        "{:?}",
        last.headers
    );
    assert_eq!(last.headers["mcp-protocol-version"], "2025-11-25");

    // Errors before any message is read: an unknown server (66), no Latchkey (69).
    let run = |base: String, server: &'static str| {
        tokio::task::spawn_blocking(move || {
            latchkey_command(&base)
                .args(["stdio", server])
                .stdin(Stdio::null())
                .output()
                .unwrap()
        })
    };
    let out = run("http://127.0.0.1:1".into(), "scripted").await.unwrap();
    assert_fails(&out, 69, "cannot reach Latchkey");
    assert!(out.stdout.is_empty());
    let out = run(env.base(), "nope").await.unwrap();
    assert_fails(&out, 66, "no server");
    assert!(
        out.stdout.is_empty(),
        "nothing on stdout but protocol messages"
    );
}

/// Issue 17: a server that needs consent is refused per message (the JSON-RPC error
/// goes to the client each time), but the sign-in URL is printed on standard error
/// once, with what is wrong in Latchkey's words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sign_in_url_is_printed_once() {
    let env = Env::start().await;
    env.add_server("scripted").await;
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "by-hand", "version": "1"}}});
    let list = |id: u32| json!({"jsonrpc": "2.0", "id": id, "method": "tools/list"}).to_string();
    let (code, seen, stderr) = bridge(
        &env.base(),
        "scripted",
        vec![init.to_string(), list(2), list(3), list(4)],
    )
    .await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(seen.len(), 4, "{seen:?}");
    for answer in &seen {
        assert_eq!(answer["error"]["code"], -32001, "{seen:?}");
        assert_eq!(
            answer["error"]["message"],
            "scripted is not connected yet: connect it with `latchkey connect scripted` or in Latchkey's web UI"
        );
        assert_eq!(answer["error"]["data"]["code"], "needs_oauth_reauth");
        assert_eq!(answer["error"]["data"]["reason"], "not_connected");
    }
    let urls: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("http"))
        .collect();
    assert_eq!(urls.len(), 1, "one sign-in URL: {stderr}");
    assert!(urls[0].starts_with(&env.upstream.base), "{stderr}");
    assert!(urls[0].contains("code_challenge_method=S256"), "{stderr}");
    assert_eq!(
        stderr.matches("scripted is not connected yet").count(),
        1,
        "{stderr}"
    );
    assert!(
        stderr.contains("To connect scripted, open this URL in a browser"),
        "{stderr}"
    );
    // The URL works: consent there, and the same bridge command works.
    super::commands::consent(urls[0]).await;
    let (code, seen, stderr) = bridge(&env.base(), "scripted", vec![init.to_string()]).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        seen[0]["result"]["serverInfo"]["name"], "scripted",
        "{seen:?}"
    );
    assert!(!stderr.contains("http"), "{stderr}");
}

/// A scripted MCP server without authentication whose standalone GET stream sends one
/// notification and stays open; it records the session id each GET carried.
mod pushy {
    use std::sync::{Arc, Mutex};

    use axum::Router;
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::{IntoResponse, Response};
    use axum::routing::post;
    use serde_json::{Value, json};

    pub(super) const NOTE: &str = "hello from the server";

    #[derive(Clone, Default)]
    pub(super) struct Seen(pub(super) Arc<Mutex<Vec<Option<String>>>>);

    pub(super) async fn start(stream: bool) -> (String, Seen) {
        let seen = Seen::default();
        let recorded = seen.clone();
        let mcp = post(answer).get(move |h: HeaderMap| events(h, recorded.clone(), stream));
        let app = Router::new().route("/mcp", mcp);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://127.0.0.1:{}/mcp",
            listener.local_addr().unwrap().port()
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, seen)
    }

    async fn answer(body: axum::body::Bytes) -> Response {
        let msg: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let Some(id) = msg.get("id").cloned() else {
            return StatusCode::ACCEPTED.into_response();
        };
        let result = if msg["method"] == "initialize" {
            json!({"protocolVersion": "2025-11-25", "capabilities": {},
                   "serverInfo": {"name": "pushy", "version": "1"}})
        } else {
            json!({})
        };
        (
            [
                ("content-type", "application/json"),
                ("mcp-session-id", "pushy-1"),
            ],
            json!({"jsonrpc": "2.0", "id": id, "result": result}).to_string(),
        )
            .into_response()
    }

    /// The standalone stream, or (`stream` false) the 405 of a server without one.
    async fn events(h: HeaderMap, seen: Seen, stream: bool) -> Response {
        let session = h
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        seen.0.lock().unwrap().push(session);
        if !stream {
            return StatusCode::METHOD_NOT_ALLOWED.into_response();
        }
        let note = json!({"jsonrpc": "2.0", "method": "notifications/message",
            "params": {"level": "info", "data": NOTE}});
        let first = futures_util::stream::once(async move {
            Ok::<_, std::convert::Infallible>(format!("data: {note}\n\n"))
        });
        // Then open, silent, until the client goes away.
        let body = axum::body::Body::from_stream(futures_util::StreamExt::chain(
            first,
            futures_util::stream::pending(),
        ));
        ([("content-type", "text/event-stream")], body).into_response()
    }
}

/// Runs `latchkey stdio SERVER`: initialize, `notifications/initialized` and a `ping`,
/// then reads standard output until `done` says so (at most 20 s), then ends the input.
/// The lines written and standard error.
fn drive_stdio(base: &str, server: &str, done: impl Fn(&[Value]) -> bool) -> (Vec<Value>, String) {
    let mut c = latchkey_command(base);
    c.args(["stdio", server])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    let reader = std::thread::spawn(move || {
        for l in BufReader::new(out).lines() {
            let Ok(l) = l else { break };
            if tx.send(serde_json::from_str(&l).unwrap()).is_err() {
                break;
            }
        }
    });
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "by-hand", "version": "1"}}});
    writeln!(input, "{init}").unwrap();
    let mut seen = vec![rx.recv_timeout(std::time::Duration::from_secs(20)).unwrap()];
    writeln!(
        input,
        "{}",
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"})
    )
    .unwrap();
    writeln!(
        input,
        "{}",
        json!({"jsonrpc": "2.0", "id": 2, "method": "ping"})
    )
    .unwrap();
    input.flush().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !done(&seen) && std::time::Instant::now() < deadline {
        if let Ok(v) = rx.recv_timeout(std::time::Duration::from_millis(50)) {
            seen.push(v);
        }
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    reader.join().unwrap();
    seen.extend(rx.try_iter());
    assert_eq!(out.status.code(), Some(0));
    (seen, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Issue 17: server-initiated messages reach the client: after `initialized` the
/// bridge opens the standalone GET stream (in the session it opened) and writes what
/// arrives to standard output; a server without one (405) is quietly fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_initiated_messages_are_relayed() {
    let env = Env::start().await;
    let (url, gets) = pushy::start(true).await;
    let out = env
        .run(&["servers", "add", "pushy", &url, "--auth-type", "none"])
        .await;
    assert!(out.status.success(), "{}", super::commands::stderr(&out));
    let base = env.base();
    let is_note = |v: &Value| v["method"] == "notifications/message";
    let (seen, stderr) = tokio::task::spawn_blocking(move || {
        drive_stdio(&base, "pushy", |seen| {
            seen.iter().any(is_note) && seen.iter().any(|v| v["id"] == 2)
        })
    })
    .await
    .unwrap();
    assert_eq!(seen[0]["result"]["serverInfo"]["name"], "pushy", "{seen:?}");
    let notes: Vec<&Value> = seen.iter().filter(|v| is_note(v)).collect();
    assert_eq!(notes.len(), 1, "{seen:?}\n{stderr}");
    assert_eq!(notes[0]["params"]["data"], pushy::NOTE);
    assert!(
        seen.iter().any(|v| v["id"] == 2),
        "the ping was answered: {seen:?}"
    );
    assert_eq!(
        *gets.0.lock().unwrap(),
        [Some("pushy-1".to_owned())],
        "one GET, in the bridge's session"
    );

    // Without a standalone stream (405): nothing on standard error, nothing extra out.
    let (url, gets) = pushy::start(false).await;
    let out = env
        .run(&["servers", "add", "quiet", &url, "--auth-type", "none"])
        .await;
    assert!(out.status.success(), "{}", super::commands::stderr(&out));
    let base = env.base();
    let asked = gets.clone();
    let (seen, stderr) = tokio::task::spawn_blocking(move || {
        drive_stdio(&base, "quiet", |seen| {
            seen.iter().any(|v| v["id"] == 2) && !asked.0.lock().unwrap().is_empty()
        })
    })
    .await
    .unwrap();
    assert_eq!(
        gets.0.lock().unwrap().len(),
        1,
        "the stream was asked for once"
    );
    assert_eq!(seen.len(), 2, "the two answers only: {seen:?}");
    assert!(stderr.trim().is_empty(), "quiet: {stderr}");
}
