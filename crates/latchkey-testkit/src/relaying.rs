//! Tools of the scripted MCP resource that send messages on their call's SSE answer
//! before the result, as upstream servers do for Latchkey's relays (progress,
//! server-to-client requests, cancellation). Neither is listed by `tools/list`, so
//! listings stay stable.
//!
//! * `ask` `{method, params, cancel_after_ms?}`: `notifications/progress` (1 of 2, with
//!   the call's `_meta.progressToken`, when it has one), then a request `method` with
//!   `params` and the id `ask-<n>`; it waits (20 s at most) for the response POSTed to
//!   `/mcp`, then sends progress 2 of 2 and the result: the response's `result` or
//!   `error` as text and as `structuredContent.answer`. With `cancel_after_ms` it sends
//!   `notifications/cancelled` for its request after that long instead, and answers
//!   `cancelled`.
//! * `wait`: progress 1 of 2, then nothing for 30 s (a call to cancel); then `waited`.
//!
//! With primitives offered ([`crate::ScriptedServer::offer_primitives`]), the unlisted
//! prompt `ask` and resource `ask:///name` do the same as `ask` with a form elicitation
//! for a name, answering with it as text ([`primitive`]).
//!
//! When switched on ([`crate::ScriptedServer::ask_during_tools_list`]), `tools/list` is
//! answered the same way: a request `method` (id `ask-<n>`), up to 20 s for its answer,
//! then the listing, as a server that asks something before answering any request.
//!
//! Every client response and `notifications/cancelled` POSTed is kept for assertions
//! ([`crate::ScriptedServer::relayed_answers`], [`crate::ScriptedServer::cancellations`]),
//! as are the id and progress token of each call ([`crate::ScriptedServer::relaying_calls`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use crate::Shared;

/// The relaying tools' state of one server.
#[derive(Debug, Default)]
pub(crate) struct Relaying {
    next: Mutex<u64>,
    waiting: Mutex<HashMap<String, oneshot::Sender<Value>>>,
    pub(crate) answers: Mutex<Vec<Value>>,
    pub(crate) cancellations: Mutex<Vec<Value>>,
    pub(crate) calls: Mutex<Vec<Value>>,
    /// The method `tools/list` asks before answering (`None`: it answers at once).
    pub(crate) ask_in_list: Mutex<Option<String>>,
}

impl Relaying {
    /// A fresh id for a request of the server's.
    fn next_id(&self) -> String {
        let mut n = lock(&self.next);
        *n += 1;
        format!("ask-{n}")
    }

    /// Registers a waiter for the answer to `ask_id`.
    fn wait_for(&self, ask_id: &str) -> oneshot::Receiver<Value> {
        let (tx, rx) = oneshot::channel();
        lock(&self.waiting).insert(json!(ask_id).to_string(), tx);
        rx
    }
}

/// The method `tools/list` asks before answering, if switched on.
pub(crate) fn ask_in_list(s: &Shared) -> Option<String> {
    lock(&s.relaying.ask_in_list).clone()
}

/// Switches the question `tools/list` asks before answering.
pub(crate) fn set_ask_in_list(s: &Shared, method: Option<&str>) {
    *lock(&s.relaying.ask_in_list) = method.map(str::to_owned);
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether `params` call one of the relaying tools.
pub(crate) fn is_tool(params: &Value) -> bool {
    matches!(
        params.get("name").and_then(Value::as_str),
        Some("ask" | "wait")
    )
}

/// Takes a client response or a `notifications/cancelled` (true: answer 202).
pub(crate) fn took(s: &Shared, msg: &Value) -> bool {
    let r = &s.relaying;
    if msg.get("method").and_then(Value::as_str) == Some("notifications/cancelled") {
        lock(&r.cancellations).push(msg.get("params").cloned().unwrap_or(Value::Null));
        return true;
    }
    let is_response =
        msg.get("method").is_none() && (msg.get("result").is_some() || msg.get("error").is_some());
    if !is_response {
        return false;
    }
    lock(&r.answers).push(msg.clone());
    let id = msg.get("id").map(Value::to_string).unwrap_or_default();
    if let Some(waiter) = lock(&r.waiting).remove(&id) {
        let _ = waiter.send(msg.clone());
    }
    true
}

fn event(message: &Value) -> Bytes {
    Bytes::from(format!("event: message\ndata: {message}\n\n"))
}

/// The SSE answer of a relaying tool's call.
pub(crate) fn call(s: &Shared, id: Value, params: &Value) -> Response {
    let token = params.pointer("/_meta/progressToken").cloned();
    lock(&s.relaying.calls).push(json!({"id": id, "progressToken": token}));
    let name = params
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let args = params.get("arguments").cloned().unwrap_or(Value::Null);
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let relaying = s.relaying.clone();
    tokio::spawn(async move {
        let progress = |n: u64| {
            token.as_ref().map(|t| {
                json!({"jsonrpc": "2.0", "method": "notifications/progress",
                   "params": {"progressToken": t, "progress": n, "total": 2, "message": format!("step {n}")}})
            })
        };
        if let Some(p) = progress(1) {
            let _ = tx.send(event(&p)).await;
        }
        let result = if name == "wait" {
            tokio::time::sleep(Duration::from_secs(30)).await;
            json!({"content": [{"type": "text", "text": "waited"}], "isError": false})
        } else {
            let ask_id = relaying.next_id();
            let answer_rx = relaying.wait_for(&ask_id);
            let method = args.get("method").and_then(Value::as_str).unwrap_or("ping");
            let request = json!({"jsonrpc": "2.0", "id": ask_id, "method": method,
                "params": args.get("params").cloned().unwrap_or_else(|| json!({}))});
            let _ = tx.send(event(&request)).await;
            match args.get("cancel_after_ms").and_then(Value::as_u64) {
                Some(ms) => {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    let note = json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
                        "params": {"requestId": ask_id, "reason": "no longer needed"}});
                    let _ = tx.send(event(&note)).await;
                    json!({"content": [{"type": "text", "text": "cancelled"}], "isError": false})
                }
                None => {
                    let answer = tokio::time::timeout(Duration::from_secs(20), answer_rx)
                        .await
                        .ok()
                        .and_then(Result::ok);
                    let answer = answer
                        .and_then(|a| a.get("result").or_else(|| a.get("error")).cloned())
                        .unwrap_or(Value::Null);
                    if let Some(p) = progress(2) {
                        let _ = tx.send(event(&p)).await;
                    }
                    json!({"content": [{"type": "text", "text": answer.to_string()}],
                           "structuredContent": {"answer": answer}, "isError": false})
                }
            }
        };
        let _ = tx
            .send(event(
                &json!({"jsonrpc": "2.0", "id": id, "result": result}),
            ))
            .await;
    });
    event_stream(rx)
}

/// The resource whose `resources/read` asks first ([`primitive`]).
pub(crate) const ASK_URI: &str = "ask:///name";

/// Whether `method` with `params` is the prompt `ask` or a read of [`ASK_URI`].
pub(crate) fn is_primitive(method: &str, params: &Value) -> bool {
    match method {
        "prompts/get" => params.get("name").and_then(Value::as_str) == Some("ask"),
        "resources/read" => params.get("uri").and_then(Value::as_str) == Some(ASK_URI),
        _ => false,
    }
}

/// The SSE answer of `prompts/get ask` or `resources/read ask:///name` (neither listed):
/// a form elicitation asking for a name (id `ask-<n>`; the message is the prompt's
/// argument `message`, else `Your name?`), at most 20 s for its answer (kept like any
/// other), then the answer's `result` or `error` as JSON text: the prompt's one user
/// message, or the resource's one text content.
pub(crate) fn primitive(s: &Shared, id: Value, method: &str, params: &Value) -> Response {
    let message = params
        .pointer("/arguments/message")
        .and_then(Value::as_str)
        .unwrap_or("Your name?")
        .to_owned();
    let prompt = method == "prompts/get";
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let relaying = s.relaying.clone();
    tokio::spawn(async move {
        let ask_id = relaying.next_id();
        let answer_rx = relaying.wait_for(&ask_id);
        let request = json!({"jsonrpc": "2.0", "id": ask_id, "method": "elicitation/create",
            "params": {"mode": "form", "message": message, "requestedSchema": {"type": "object",
                "properties": {"name": {"type": "string"}}, "required": ["name"]}}});
        let _ = tx.send(event(&request)).await;
        let answer = tokio::time::timeout(Duration::from_secs(20), answer_rx)
            .await
            .ok()
            .and_then(Result::ok)
            .and_then(|a| a.get("result").or_else(|| a.get("error")).cloned())
            .unwrap_or(Value::Null)
            .to_string();
        let result = if prompt {
            json!({"messages": [{"role": "user", "content": {"type": "text", "text": answer}}]})
        } else {
            json!({"contents": [{"uri": ASK_URI, "mimeType": "application/json", "text": answer}]})
        };
        let _ = tx
            .send(event(
                &json!({"jsonrpc": "2.0", "id": id, "result": result}),
            ))
            .await;
    });
    event_stream(rx)
}

/// The SSE answer of `tools/list` when it asks `method` first: the request, at most 20 s
/// for its answer (kept like any other), then `listing` as the response to `id`.
pub(crate) fn listing(s: &Shared, id: Value, method: String, listing: Value) -> Response {
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let relaying = s.relaying.clone();
    tokio::spawn(async move {
        let ask_id = relaying.next_id();
        let answer_rx = relaying.wait_for(&ask_id);
        let request = json!({"jsonrpc": "2.0", "id": ask_id, "method": method, "params": {}});
        let _ = tx.send(event(&request)).await;
        let _ = tokio::time::timeout(Duration::from_secs(20), answer_rx).await;
        let _ = tx
            .send(event(
                &json!({"jsonrpc": "2.0", "id": id, "result": listing}),
            ))
            .await;
    });
    event_stream(rx)
}

fn event_stream(rx: mpsc::Receiver<Bytes>) -> Response {
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/event-stream")],
        axum::body::Body::from_stream(stream),
    )
        .into_response()
}
