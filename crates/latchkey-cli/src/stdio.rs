//! `latchkey stdio SERVER`: a stdio MCP server for local-only MCP clients, bridged to
//! Latchkey's `POST {url}/mcp/{server_id}` (streamable HTTP), which injects the user's
//! token for that server.
//!
//! Standard input carries newline-delimited JSON-RPC; each message is POSTed as it is
//! (`Accept: application/json, text/event-stream`, with the `Mcp-Session-Id` and
//! `MCP-Protocol-Version` learnt from earlier answers). A JSON answer is written to
//! standard output as one line; an SSE answer is streamed, each `data:` event a line
//! as it arrives; a 202 (notifications, responses) writes nothing. `initialize`,
//! notifications and responses are forwarded one at a time, in order; requests run
//! concurrently, so a slow tool call holds nothing up. A request whose answer never
//! comes (Latchkey unreachable, an HTTP error without a JSON-RPC body) gets a JSON-RPC
//! error, so the client never waits forever. On end of input the session is closed
//! with a `DELETE`. Standard output carries protocol messages only; diagnostics go to
//! standard error.
//!
//! Server-initiated messages: once the client has sent `notifications/initialized`, the
//! bridge opens the standalone stream (`GET {url}/mcp/{server_id}`, `Accept:
//! text/event-stream`) and writes each message that arrives on it to standard output;
//! a 405 means the server offers none, which is fine and said nowhere. A stream that
//! ends is opened again after a pause (1 s, doubling up to 30 s).
//!
//! Consent: when Latchkey answers that the server needs the user's consent (JSON-RPC
//! error -32001), the answer goes to the client as it is, and the bridge starts the
//! managed flow once (`POST /v1/oauth/start`) and prints its sign-in URL on standard
//! error, once per run, however many messages are refused meanwhile.
//!
//! Written by hand rather than with rmcp: a bridge must be transparent, passing every
//! message through whatever its method or protocol version (batches, responses to the
//! server's requests, methods newer than any SDK's model), and all it needs is line
//! framing, two headers and SSE decoding; an SDK would parse and re-encode each
//! message into its own types and could only relay what those types know.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt as _;
use reqwest::Method;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderName, HeaderValue};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;

use crate::api::{Api, Connection, Failure, error_chain, segment};
use crate::servers;

const SESSION: HeaderName = HeaderName::from_static("mcp-session-id");
const VERSION: HeaderName = HeaderName::from_static("mcp-protocol-version");

/// JSON-RPC code for a request the bridge could not get answered (server error range).
const BRIDGE_ERROR: i64 = -32000;

/// JSON-RPC code of Latchkey's "the server needs your consent" answer
/// (`latchkey_gateway::error::JSONRPC_NEEDS_REAUTH`).
const NEEDS_CONSENT: i64 = latchkey_gateway::error::JSONRPC_NEEDS_REAUTH;

/// The longest pause before the standalone stream is opened again.
const STREAM_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Arguments of `latchkey stdio`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Server id or unique name.
    server: String,
}

struct Bridge {
    api: Api,
    /// The server's id and the name the user knows it by.
    server_id: String,
    name: String,
    path: String,
    session: Mutex<Option<HeaderValue>>,
    version: Mutex<Option<HeaderValue>>,
    out: mpsc::UnboundedSender<String>,
    /// Whether the sign-in URL was printed (or tried): once per run.
    consent_shown: AtomicBool,
    /// The task printing it, awaited before the bridge exits.
    signing_in: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

fn log(msg: impl std::fmt::Display) {
    eprintln!("latchkey stdio: {msg}");
}

pub(crate) async fn run(a: Args, conn: &Connection) -> anyhow::Result<ExitCode> {
    let api = Api::new(conn)?;
    // Resolved before any message is read, so a wrong name fails at once with its code.
    let server = servers::resolve(&api, &a.server).await?;
    let id = servers::id_of(&server);
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let writer = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        while let Some(line) = rx.recv().await {
            let mut bytes = line.into_bytes();
            bytes.push(b'\n');
            if stdout.write_all(&bytes).await.is_err() || stdout.flush().await.is_err() {
                break;
            }
        }
    });
    let bridge = Arc::new(Bridge {
        api,
        path: format!("/mcp/{}", segment(&id)),
        name: crate::output::text(&server, "name"),
        server_id: id,
        session: Mutex::new(None),
        version: Mutex::new(None),
        out: tx,
        consent_shown: AtomicBool::new(false),
        signing_in: Mutex::new(None),
    });
    // The standalone stream of server-initiated messages, opened once initialized.
    let mut listener: Option<tokio::task::JoinHandle<()>> = None;

    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
    let mut tasks = tokio::task::JoinSet::new();
    let mut buf = Vec::new();
    loop {
        // Finished forwards are reaped as we go, so a long session does not pile them up.
        while tasks.try_join_next().is_some() {}
        buf.clear();
        match stdin.read_until(b'\n', &mut buf).await {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                log(format!("cannot read standard input: {e}"));
                break;
            }
        }
        let line = buf.trim_ascii();
        if line.is_empty() {
            continue;
        }
        let Ok(msg) = serde_json::from_slice::<Value>(line) else {
            bridge.emit(
                json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32700, "message": "Parse error"}})
                    .to_string(),
            );
            continue;
        };
        let body = line.to_vec();
        // In order: `initialize` (the session comes with its answer), and notifications
        // and responses (answered at once with a 202), so that e.g.
        // `notifications/initialized` reaches the server before the requests after it.
        // Requests run concurrently: a slow tool call does not hold up the rest.
        let inline =
            (bridge.session().is_none() && is_initialize(&msg)) || request_ids(&msg).is_empty();
        let initialized = is_initialized(&msg);
        if inline {
            bridge.forward(body, msg).await;
        } else {
            let b = bridge.clone();
            tasks.spawn(async move { b.forward(body, msg).await });
        }
        if initialized && listener.is_none() && bridge.version().is_some() {
            let b = bridge.clone();
            listener = Some(tokio::spawn(async move { b.listen().await }));
        }
    }
    while tasks.join_next().await.is_some() {}
    if let Some(l) = listener {
        l.abort();
        let _ = l.await;
    }
    let signing_in = bridge.signing_in.lock().ok().and_then(|mut t| t.take());
    if let Some(t) = signing_in {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    bridge.close().await;
    drop(bridge);
    let _ = writer.await;
    Ok(ExitCode::SUCCESS)
}

fn is_initialize(msg: &Value) -> bool {
    msg.get("method").and_then(Value::as_str) == Some("initialize")
}

fn is_initialized(msg: &Value) -> bool {
    msg.get("method").and_then(Value::as_str) == Some("notifications/initialized")
}

/// The first "needs consent" error in a message or a batch: Latchkey's words, and
/// whether a new consent must be forced (the stored credential still looks usable
/// but was refused: any `reason` but `not_connected` and `consent_refused`).
fn consent_needed(msg: &Value) -> Option<(String, bool)> {
    let one = |m: &Value| {
        let e = m.get("error")?;
        (e.get("code").and_then(Value::as_i64) == Some(NEEDS_CONSENT)).then(|| {
            let why = e
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("the server needs your consent")
                .to_owned();
            let reason = e.pointer("/data/reason").and_then(Value::as_str);
            let force = reason.is_some_and(|r| r != "not_connected" && r != "consent_refused");
            (why, force)
        })
    };
    match msg {
        Value::Array(items) => items.iter().find_map(one),
        m => one(m),
    }
}

/// The ids of the requests in a message or a batch (notifications and responses have
/// none to wait for).
fn request_ids(msg: &Value) -> Vec<Value> {
    let one = |m: &Value| {
        m.get("method")?;
        m.get("id").filter(|i| !i.is_null()).cloned()
    };
    match msg {
        Value::Array(items) => items.iter().filter_map(one).collect(),
        m => one(m).into_iter().collect(),
    }
}

/// The ids answered by a message or a batch.
fn answered_ids(msg: &Value) -> Vec<Value> {
    let one = |m: &Value| {
        if m.get("result").is_some() || m.get("error").is_some() {
            m.get("id").cloned()
        } else {
            None
        }
    };
    match msg {
        Value::Array(items) => items.iter().filter_map(one).collect(),
        m => one(m).into_iter().collect(),
    }
}

impl Bridge {
    fn session(&self) -> Option<HeaderValue> {
        self.session.lock().ok().and_then(|s| s.clone())
    }

    fn version(&self) -> Option<HeaderValue> {
        self.version.lock().ok().and_then(|s| s.clone())
    }

    fn set(slot: &Mutex<Option<HeaderValue>>, v: HeaderValue) {
        if let Ok(mut s) = slot.lock() {
            *s = Some(v);
        }
    }

    fn emit(&self, line: String) {
        let _ = self.out.send(line);
    }

    /// Writes one JSON-RPC message (or batch) from the server as one line; returns the
    /// ids it answers. An `initialize` result fixes the protocol version to send when
    /// the server did not say it in a header.
    fn relay(&self, data: &str) -> Vec<Value> {
        let parsed = serde_json::from_str::<Value>(data).ok();
        let line = match &parsed {
            // One line whatever the server's formatting.
            Some(v) if data.contains(['\n', '\r']) => v.to_string(),
            _ => data.to_owned(),
        };
        self.emit(line);
        let Some(v) = parsed else { return Vec::new() };
        if let Some((why, force)) = consent_needed(&v) {
            self.consent_needed(why, force);
        }
        if let Some(pv) = v.pointer("/result/protocolVersion").and_then(Value::as_str)
            && v.pointer("/result/serverInfo").is_some()
            && self.version().is_none()
            && let Ok(h) = HeaderValue::from_str(pv)
        {
            Self::set(&self.version, h);
        }
        answered_ids(&v)
    }

    async fn forward(&self, body: Vec<u8>, msg: Value) {
        let waiting = request_ids(&msg);
        let mut r = self
            .api
            .request(Method::POST, &self.path)
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "application/json, text/event-stream")
            .body(body);
        if let Some(s) = self.session() {
            r = r.header(SESSION, s);
        }
        if let Some(v) = self.version() {
            r = r.header(VERSION, v);
        }
        let resp = match self.api.execute(r).await {
            Ok(r) => r,
            Err(f) => {
                log(&f);
                self.fail(&waiting, &f.message, None);
                return;
            }
        };
        if let Some(s) = resp.headers().get(&SESSION) {
            Self::set(&self.session, s.clone());
        }
        if let Some(v) = resp.headers().get(&VERSION) {
            Self::set(&self.version, v.clone());
        }
        let status = resp.status();
        let sse = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("text/event-stream"));
        let mut answered = Vec::new();
        let mut problem = None;
        if sse {
            let mut events = sse_stream::SseByteStream::new(resp.bytes_stream());
            while let Some(item) = events.next().await {
                match item {
                    Ok(ev) => {
                        if let Some(data) = ev.data.as_deref().filter(|d| !d.trim().is_empty()) {
                            answered.extend(self.relay(data));
                        }
                    }
                    Err(e) => {
                        problem = Some(format!("the answer stream broke: {}", error_chain(&e)));
                        break;
                    }
                }
            }
        } else {
            match resp.bytes().await {
                Ok(bytes) => {
                    let v = serde_json::from_slice::<Value>(&bytes).ok();
                    let is_rpc = match &v {
                        Some(Value::Array(_)) => true,
                        Some(Value::Object(m)) => m.contains_key("jsonrpc"),
                        _ => false,
                    };
                    if is_rpc {
                        answered.extend(self.relay(&String::from_utf8_lossy(&bytes)));
                    } else if !status.is_success() {
                        problem = Some(Failure::from_answer(status.as_u16(), &bytes).message);
                    }
                }
                Err(e) => {
                    problem = Some(format!("reading the answer failed: {}", error_chain(&e)));
                }
            }
        }
        let missing: Vec<Value> = waiting
            .into_iter()
            .filter(|id| !answered.contains(id))
            .collect();
        if missing.is_empty() && problem.is_none() {
            return;
        }
        let why = problem.unwrap_or_else(|| {
            if status.is_success() {
                "Latchkey's answer held no response to this request".into()
            } else {
                format!("Latchkey answered HTTP {}", status.as_u16())
            }
        });
        log(&why);
        self.fail(&missing, &why, Some(status.as_u16()));
    }

    /// Latchkey said the server needs the user's consent (`why`, its words): the first
    /// time, a managed flow is started and its sign-in URL printed on standard error
    /// (in a task of its own: the answer is relayed meanwhile).
    fn consent_needed(&self, why: String, force: bool) {
        if self.consent_shown.swap(true, Ordering::SeqCst) {
            return;
        }
        let api = self.api.clone();
        let (id, name) = (self.server_id.clone(), self.name.clone());
        let task = tokio::spawn(async move { sign_in(&api, &id, &name, &why, force).await });
        if let Ok(mut t) = self.signing_in.lock() {
            *t = Some(task);
        }
    }

    /// Relays the server-initiated messages of the standalone stream until the bridge
    /// ends; opened again after a pause when it ends, given up on a refusal.
    async fn listen(&self) {
        let mut pause = Duration::from_secs(1);
        loop {
            let mut r = self
                .api
                .request(Method::GET, &self.path)
                .header(ACCEPT, "text/event-stream");
            if let Some(s) = self.session() {
                r = r.header(SESSION, s);
            }
            if let Some(v) = self.version() {
                r = r.header(VERSION, v);
            }
            let resp = match self.api.execute(r).await {
                Ok(r) => r,
                Err(f) => {
                    log(format!("the server's message stream failed: {f}"));
                    return;
                }
            };
            let status = resp.status();
            // 405: the server sends nothing on its own, which is fine.
            if status == reqwest::StatusCode::METHOD_NOT_ALLOWED {
                return;
            }
            if !status.is_success() {
                let body = resp.bytes().await.unwrap_or_default();
                log(format!(
                    "the server's message stream is not available: {}",
                    Failure::from_answer(status.as_u16(), &body).message
                ));
                return;
            }
            let mut events = sse_stream::SseByteStream::new(resp.bytes_stream());
            let mut got = false;
            while let Some(Ok(ev)) = events.next().await {
                if let Some(data) = ev.data.as_deref().filter(|d| !d.trim().is_empty()) {
                    self.relay(data);
                    got = true;
                }
            }
            if got {
                pause = Duration::from_secs(1);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(STREAM_BACKOFF_MAX);
        }
    }

    /// Answers each of `ids` with a JSON-RPC error.
    fn fail(&self, ids: &[Value], why: &str, status: Option<u16>) {
        for id in ids {
            self.emit(
                json!({"jsonrpc": "2.0", "id": id, "error": {
                    "code": BRIDGE_ERROR,
                    "message": why,
                    "data": {"http_status": status},
                }})
                .to_string(),
            );
        }
    }

    /// Ends the session, best-effort.
    async fn close(&self) {
        let Some(s) = self.session() else { return };
        let mut r = self
            .api
            .request(Method::DELETE, &self.path)
            .header(SESSION, s)
            .timeout(Duration::from_secs(5));
        if let Some(v) = self.version() {
            r = r.header(VERSION, v);
        }
        if let Err(f) = self.api.execute(r).await {
            log(format!("closing the session failed: {f}"));
        }
    }
}

/// Starts the managed flow for the server and prints its sign-in URL on standard error
/// (the URL is for the person at the terminal; it is never logged).
async fn sign_in(api: &Api, id: &str, name: &str, why: &str, force: bool) {
    let body = if force {
        json!({"server_id": id, "force": true})
    } else {
        json!({"server_id": id})
    };
    match api.call(Method::POST, "/v1/oauth/start", Some(&body)).await {
        Ok(v) => match v.get("authorization_url").and_then(Value::as_str) {
            Some(url) => log(format!(
                "{why}.\nTo connect {name}, open this URL in a browser and approve the access, \
                 then retry:\n  {url}"
            )),
            // Connected meanwhile (or a client credentials grant): a retry works.
            None => log(format!("{why}.\n{name} is connected now: retry")),
        },
        // Latchkey's own words say how to connect; why this bridge could not start it.
        Err(f) => log(format!(
            "{why}.\n(Starting the sign-in failed: {})",
            f.message
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_credential_forces_a_new_consent() {
        let answer = |reason: &str| {
            json!({"jsonrpc": "2.0", "id": 1, "error": {"code": -32001, "message": "m",
                "data": {"code": "needs_oauth_reauth", "reason": reason}}})
        };
        assert_eq!(
            consent_needed(&answer("not_connected")),
            Some(("m".into(), false))
        );
        assert_eq!(
            consent_needed(&answer("consent_refused")),
            Some(("m".into(), false))
        );
        assert_eq!(
            consent_needed(&answer("token_rejected")),
            Some(("m".into(), true))
        );
        let batch = json!([{"jsonrpc": "2.0", "id": 2, "result": {}}, answer("other_resource")]);
        assert_eq!(consent_needed(&batch), Some(("m".into(), true)));
        assert_eq!(
            consent_needed(&json!({"jsonrpc": "2.0", "id": 1, "error": {"code": -32603}})),
            None
        );
    }

    #[test]
    fn ids_of_requests_and_answers() {
        let batch = json!([
            {"jsonrpc": "2.0", "id": 1, "method": "a"},
            {"jsonrpc": "2.0", "method": "notifications/x"},
            {"jsonrpc": "2.0", "id": 2, "result": {}},
        ]);
        assert_eq!(request_ids(&batch), vec![json!(1)]);
        assert_eq!(answered_ids(&batch), vec![json!(2)]);
        assert!(request_ids(&json!({"jsonrpc": "2.0", "method": "n"})).is_empty());
        assert_eq!(
            answered_ids(&json!({"jsonrpc": "2.0", "id": "x", "error": {}})),
            vec![json!("x")]
        );
    }
}
