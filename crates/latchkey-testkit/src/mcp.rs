//! The scripted MCP resource at `/mcp`: streamable HTTP, one JSON-RPC message per POST,
//! answered with JSON (or, when switched on, a one-event SSE stream).
//!
//! It speaks the 2025-11-25 lifecycle (`initialize` hands out an `Mcp-Session-Id`,
//! `notifications/initialized` and every other notification get a 202), `ping`,
//! `tools/list` (`echo` and `add`) and `tools/call`. One more tool, `ticks`, is callable
//! but not listed (so listings stay stable): it always answers with an SSE stream of
//! `count` `notifications/message` events `interval_ms` apart, then the result, to show
//! that a proxy passes events on as they come. Every request must carry
//! `Authorization: Bearer <access token>` (or `DPoP <access token>`) naming a token the
//! scripted authorization server issued and still considers valid: unknown, expired
//! (by `access_ttl`) or revoked tokens get a 401 with a `WWW-Authenticate` challenge
//! pointing at the protected resource metadata; a token without the required scope
//! gets a 403 `insufficient_scope`. Faults ([`McpFault`]) are applied before the token
//! is looked at. In static-header mode ([`crate::ScriptedServer::require_header`]) a
//! configured header value stands in for the token: anything else is a bare 401.
//! Prompts, resources and completions are offered only when switched on
//! ([`crate::ScriptedServer::offer_primitives`]); otherwise their methods get `-32601`.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::faults::{self, McpFault};
use crate::{Shared, TokenStatus, record};

/// The protocol versions the resource accepts in `initialize`; anything else is
/// answered with the first (latest) one.
pub const SUPPORTED_PROTOCOL_VERSIONS: [&str; 3] = ["2025-11-25", "2025-06-18", "2025-03-26"];

/// The `echo` and `add` tools as `tools/list` describes them.
pub fn tool_definitions() -> Value {
    json!([
        {
            "name": "echo",
            "description": "Returns the text it is given.",
            "inputSchema": {
                "type": "object",
                "properties": {"text": {"type": "string"}},
                "required": ["text"]
            }
        },
        {
            "name": "add",
            "description": "Adds two numbers.",
            "inputSchema": {
                "type": "object",
                "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                "required": ["a", "b"]
            }
        }
    ])
}

fn challenge_response(status: StatusCode, challenge: &str, body: &'static str) -> Response {
    let mut r = (status, body).into_response();
    if let Ok(v) = HeaderValue::from_str(challenge) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    r
}

fn resource_metadata(s: &Shared) -> String {
    format!("{}/.well-known/oauth-protected-resource/mcp", s.base)
}

/// 401 `invalid_token`; `description` is appended as `error_description` when given.
fn unauthorized(s: &Shared, required: Option<&str>, description: Option<&str>) -> Response {
    let mut challenge = format!(
        r#"Bearer error="invalid_token", resource_metadata="{}""#,
        resource_metadata(s)
    );
    if let Some(sc) = required {
        challenge.push_str(&format!(r#", scope="{sc}""#));
    }
    if let Some(d) = description {
        challenge.push_str(&format!(r#", error_description="{d}""#));
    }
    challenge_response(StatusCode::UNAUTHORIZED, &challenge, "unauthorized")
}

/// 403 `insufficient_scope`.
fn forbidden(s: &Shared, required: Option<&str>) -> Response {
    let mut challenge = String::from(r#"Bearer error="insufficient_scope""#);
    if let Some(sc) = required {
        challenge.push_str(&format!(r#", scope="{sc}""#));
    }
    challenge.push_str(&format!(
        r#", resource_metadata="{}", error_description="scripted insufficient_scope""#,
        resource_metadata(s)
    ));
    challenge_response(StatusCode::FORBIDDEN, &challenge, "forbidden")
}

/// The token of `Authorization: Bearer …` or `DPoP …` (scheme case-insensitive).
fn presented_token(auth: &str) -> Option<&str> {
    let (scheme, token) = auth.trim().split_once(' ')?;
    let ok = scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("dpop");
    let token = token.trim();
    (ok && !token.is_empty()).then_some(token)
}

fn has_scopes(granted: &str, required: &str) -> bool {
    required
        .split_ascii_whitespace()
        .all(|r| granted.split_ascii_whitespace().any(|g| g == r))
}

fn rpc_error(id: Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

fn tool_result(text: String, structured: Option<Value>) -> Value {
    let mut r = json!({"content": [{"type": "text", "text": text}], "isError": false});
    if let Some(v) = structured {
        r["structuredContent"] = v;
    }
    r
}

fn tool_error(text: &str) -> Value {
    json!({"content": [{"type": "text", "text": text}], "isError": true})
}

/// `a + b`: an integer when both are integers and the sum fits, otherwise a float.
fn sum(a: &Value, b: &Value) -> Option<Value> {
    if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64())
        && let Some(s) = x.checked_add(y)
    {
        return Some(s.into());
    }
    let s = a.as_f64()? + b.as_f64()?;
    serde_json::Number::from_f64(s).map(Value::Number)
}

/// The result (or JSON-RPC error) of `tools/call`.
fn call_tool(id: Value, params: &Value) -> Value {
    let name = params
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let args = params.get("arguments").cloned().unwrap_or(Value::Null);
    let result = match name {
        "echo" => match args.get("text").and_then(Value::as_str) {
            Some(t) => tool_result(t.to_owned(), None),
            None => tool_error("echo: `text` must be a string"),
        },
        "add" => match (args.get("a"), args.get("b")) {
            (Some(a), Some(b)) => match sum(a, b) {
                Some(s) => tool_result(s.to_string(), Some(json!({"sum": s}))),
                None => tool_error("add: `a` and `b` must be numbers"),
            },
            _ => tool_error("add: `a` and `b` must be numbers"),
        },
        other => return rpc_error(id, -32602, &format!("Unknown tool: {other}")),
    };
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

fn respond(message: &Value, sse: bool) -> Response {
    if sse {
        let event = format!("event: message\ndata: {message}\n\n");
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/event-stream")],
            event,
        )
            .into_response();
    }
    axum::Json(message.clone()).into_response()
}

/// `POST /mcp`.
pub(crate) async fn handle(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let msg: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let method = msg
        .get("method")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let mut fields = HashMap::from([("method".to_owned(), method.clone())]);
    if matches!(method.as_str(), "tools/call" | "prompts/get")
        && let Some(name) = msg.pointer("/params/name").and_then(Value::as_str)
    {
        fields.insert("name".to_owned(), name.to_owned());
    }
    if matches!(
        method.as_str(),
        "resources/read" | "resources/subscribe" | "resources/unsubscribe"
    ) && let Some(uri) = msg.pointer("/params/uri").and_then(Value::as_str)
    {
        fields.insert("uri".to_owned(), uri.to_owned());
    }
    if method == "initialize"
        && let Some(c) = msg.pointer("/params/capabilities")
    {
        fields.insert("capabilities".to_owned(), c.to_string());
    }
    if method == "logging/setLevel"
        && let Some(level) = msg.pointer("/params/level").and_then(Value::as_str)
    {
        fields.insert("level".to_owned(), level.to_owned());
    }
    record(&s, "/mcp", &headers, fields);
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (fault, required, sse, required_header, primitives) = {
        let mut st = s.lock();
        st.mcp_requests += 1;
        st.last_mcp_authorization = auth.clone();
        (
            st.mcp_fault.take(),
            st.required_scope.clone(),
            st.mcp_sse,
            st.required_header.clone(),
            st.primitives.clone(),
        )
    };
    let required = required.as_deref();
    match fault {
        McpFault::None => {}
        McpFault::Slow(d) => tokio::time::sleep(d).await,
        McpFault::Unauthorized(_) => return unauthorized(&s, required, Some("scripted fault")),
        McpFault::Forbidden => return forbidden(&s, required),
        McpFault::ServerError(code) => return faults::server_error(code),
        McpFault::ResetConnection => return faults::reset_connection(),
    }

    if let Some((name, accepted)) = required_header {
        // Static-header mode: the key, and nothing about OAuth in the refusal.
        let presented = headers.get(name.as_str()).and_then(|v| v.to_str().ok());
        if !presented.is_some_and(|v| accepted.iter().any(|a| a == v)) {
            return (StatusCode::UNAUTHORIZED, "missing or wrong API key").into_response();
        }
    } else {
        let token = auth.as_deref().and_then(presented_token);
        let granted = match token.map(|t| s.access_status(t)) {
            None | Some(TokenStatus::Unknown) => return unauthorized(&s, required, None),
            Some(TokenStatus::Expired) => {
                return unauthorized(&s, required, Some("token expired"));
            }
            Some(TokenStatus::Revoked) => {
                return unauthorized(&s, required, Some("token revoked"));
            }
            Some(TokenStatus::Valid { scope }) => scope,
        };
        if let Some(req) = required
            && !has_scopes(&granted, req)
        {
            return forbidden(&s, required);
        }
    }

    if !msg.is_object() {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(rpc_error(Value::Null, -32700, "Parse error")),
        )
            .into_response();
    }
    let session = headers.get(SESSION_HEADER).and_then(|v| v.to_str().ok());
    if method != "initialize"
        && let Some(id) = session
        && !s.lock().sessions.contains(id)
    {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(rpc_error(
                msg.get("id").cloned().unwrap_or(Value::Null),
                -32001,
                "Session not found",
            )),
        )
            .into_response();
    }

    if crate::relaying::took(&s, &msg) {
        return StatusCode::ACCEPTED.into_response();
    }
    // Notifications and client responses: accepted, nothing to answer.
    let Some(id) = msg.get("id").filter(|v| !v.is_null()).cloned() else {
        return StatusCode::ACCEPTED.into_response();
    };
    if method.is_empty() {
        return StatusCode::ACCEPTED.into_response();
    }
    let params = msg.get("params").cloned().unwrap_or(Value::Null);
    let answer = match method.as_str() {
        "initialize" => {
            let requested = params
                .get("protocolVersion")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let version = SUPPORTED_PROTOCOL_VERSIONS
                .iter()
                .find(|v| **v == requested)
                .unwrap_or(&SUPPORTED_PROTOCOL_VERSIONS[0]);
            let session_id = {
                let mut st = s.lock();
                st.next_session += 1;
                let sid = format!("session-{}", st.next_session);
                st.sessions.insert(sid.clone());
                sid
            };
            let capabilities = if primitives.is_some() {
                // Its GET stream carries whatever a test pushes, list changes included.
                json!({"tools": {"listChanged": true}, "prompts": {"listChanged": true},
                       "resources": {"subscribe": true, "listChanged": true},
                       "completions": {}, "logging": {}})
            } else {
                json!({"tools": {"listChanged": false}})
            };
            let result = json!({
                "protocolVersion": version,
                "capabilities": capabilities,
                "serverInfo": {"name": "scripted", "version": "1"},
            });
            let mut r = respond(&json!({"jsonrpc": "2.0", "id": id, "result": result}), sse);
            if let Ok(v) = HeaderValue::from_str(&session_id) {
                r.headers_mut().insert(SESSION_HEADER, v);
            }
            return r;
        }
        "ping" => json!({"jsonrpc": "2.0", "id": id, "result": {}}),
        "tools/list" => {
            let listing = json!({"tools": tool_definitions()});
            if let Some(ask) = crate::relaying::ask_in_list(&s) {
                return crate::relaying::listing(&s, id, ask, listing);
            }
            json!({"jsonrpc": "2.0", "id": id, "result": listing})
        }
        "tools/call" if params.get("name").and_then(Value::as_str) == Some("ticks") => {
            return ticks(id, &params);
        }
        "tools/call" if crate::relaying::is_tool(&params) => {
            return crate::relaying::call(&s, id, &params);
        }
        "tools/call" => call_tool(id, &params),
        m if primitives.is_some() && crate::relaying::is_primitive(m, &params) => {
            return crate::relaying::primitive(&s, id, m, &params);
        }
        m => match primitives.as_deref() {
            Some(label) => primitive(id, m, &params, label),
            None => rpc_error(id, -32601, "Method not found"),
        },
    };
    respond(&answer, sse)
}

/// `GET /mcp`: the standalone stream of a known session of a server offering primitives,
/// carrying what [`crate::ScriptedServer::push`] sends until
/// [`crate::ScriptedServer::close_streams`] (405 otherwise; a bad token 401).
pub(crate) async fn stream(State(s): State<Shared>, headers: HeaderMap) -> Response {
    record(
        &s,
        "/mcp/stream",
        &headers,
        HashMap::from([("method".to_owned(), "GET".to_owned())]),
    );
    if s.lock().primitives.is_none() {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(presented_token);
    if !matches!(
        token.map(|t| s.access_status(t)),
        Some(TokenStatus::Valid { .. })
    ) {
        return unauthorized(&s, None, None);
    }
    let known = headers
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|id| s.lock().sessions.contains(id));
    if !known {
        return StatusCode::NOT_FOUND.into_response();
    }
    let rx = s.pushes.subscribe();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(None) => return None,
                Ok(Some(m)) => {
                    let event = format!("event: message\ndata: {m}\n\n");
                    return Some((Ok::<_, std::convert::Infallible>(Bytes::from(event)), rx));
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/event-stream")],
        axum::body::Body::from_stream(stream),
    )
        .into_response()
}

/// Prompts, resources and completions (see [`crate::ScriptedServer::offer_primitives`]).
fn primitive(id: Value, method: &str, params: &Value, label: &str) -> Value {
    let ok = |result: Value| json!({"jsonrpc": "2.0", "id": id.clone(), "result": result});
    let text = |k: &str| params.get(k).and_then(Value::as_str).unwrap_or_default();
    match method {
        "prompts/list" => ok(json!({"prompts": [{
            "name": "greet",
            "description": "Greets someone.",
            "arguments": [{"name": "name", "required": true}]
        }]})),
        "prompts/get" if text("name") == "greet" => {
            match params.pointer("/arguments/name").and_then(Value::as_str) {
                Some(who) => ok(json!({"messages": [{"role": "user", "content":
                    {"type": "text", "text": format!("Hello, {who}, from {label}")}}]})),
                None => rpc_error(id, -32602, "greet: `name` is required"),
            }
        }
        "prompts/get" => rpc_error(id, -32602, "Unknown prompt"),
        "resources/list" => ok(json!({"resources": [{
            "uri": "file:///notes.txt", "name": "notes", "mimeType": "text/plain"
        }]})),
        "resources/templates/list" => ok(json!({"resourceTemplates": [{
            "uriTemplate": "file:///docs/{name}", "name": "doc", "mimeType": "text/plain"
        }]})),
        "resources/read" => {
            let uri = text("uri");
            let body = if uri == "file:///notes.txt" {
                format!("notes of {label}")
            } else if let Some(doc) = uri.strip_prefix("file:///docs/") {
                format!("doc {doc} of {label}")
            } else {
                return rpc_error(id, -32002, "Resource not found");
            };
            ok(json!({"contents": [{"uri": uri, "mimeType": "text/plain", "text": body}]}))
        }
        "resources/subscribe" | "resources/unsubscribe" if text("uri") == "file:///notes.txt" => {
            ok(json!({}))
        }
        "resources/subscribe" | "resources/unsubscribe" => {
            rpc_error(id, -32002, "Resource not found")
        }
        "logging/setLevel" => ok(json!({})),
        "completion/complete" => {
            let candidates: &[&str] = match (
                params.pointer("/ref/type").and_then(Value::as_str),
                params.pointer("/ref/name").and_then(Value::as_str),
                params.pointer("/ref/uri").and_then(Value::as_str),
            ) {
                (Some("ref/prompt"), Some("greet"), _) => &["alice", "albert", "bob"],
                (Some("ref/resource"), _, Some("file:///docs/{name}")) => &["readme", "roadmap"],
                _ => return rpc_error(id, -32602, "Unknown reference"),
            };
            let typed = params
                .pointer("/argument/value")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let values: Vec<String> = candidates
                .iter()
                .filter(|c| c.starts_with(typed))
                .map(|c| format!("{c}@{label}"))
                .collect();
            ok(json!({"completion": {"values": values, "total": values.len(), "hasMore": false}}))
        }
        _ => rpc_error(id, -32601, "Method not found"),
    }
}

/// The `ticks` tool: `count` log notifications `interval_ms` apart, then the result,
/// each written to the SSE stream the moment it is due.
fn ticks(id: Value, params: &Value) -> Response {
    let arg = |k: &str, default: u64, max: u64| {
        params
            .pointer(&format!("/arguments/{k}"))
            .and_then(Value::as_u64)
            .unwrap_or(default)
            .min(max)
    };
    let count = arg("count", 3, 100);
    let interval = std::time::Duration::from_millis(arg("interval_ms", 200, 10_000));
    let stream = futures_util::stream::unfold(0u64, move |i| {
        let id = id.clone();
        async move {
            if i > count {
                return None;
            }
            if i > 0 {
                tokio::time::sleep(interval).await;
            }
            let message = if i < count {
                json!({"jsonrpc": "2.0", "method": "notifications/message",
                       "params": {"level": "info", "data": format!("tick {i}")}})
            } else {
                json!({"jsonrpc": "2.0", "id": id,
                       "result": tool_result(format!("{count} ticks"), None)})
            };
            let event = format!("event: message\ndata: {message}\n\n");
            Some((Ok::<_, std::convert::Infallible>(Bytes::from(event)), i + 1))
        }
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/event-stream")],
        axum::body::Body::from_stream(stream),
    )
        .into_response()
}

/// `Mcp-Session-Id`, lower-case.
pub const SESSION_HEADER: &str = "mcp-session-id";
