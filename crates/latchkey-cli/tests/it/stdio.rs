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
