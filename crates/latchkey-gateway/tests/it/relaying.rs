//! Request-scoped relays on `/mcp` (issue 20): what an upstream sends on a request's
//! SSE answer before the result — progress, elicitation, sampling and roots requests,
//! cancellation — reaches the client session that made the request and no other, and
//! the client's answers go back to the upstream in its session (with a refreshed token
//! when the upstream refused the one the request had). Real HTTP throughout:
//! rmcp clients with handlers on Latchkey's `/mcp`, the scripted upstream's `ask` and
//! `wait` tools ([`latchkey_testkit::ScriptedServer::relaying_calls`]), one OAuth
//! server with a deposited credential, set unprefixed so its unlisted tools route.

// Sampling and roots are deprecated in rmcp (SEP-2577) but part of 2025-11-25.
#![allow(deprecated)]

use std::time::Duration;

use latchkey_testkit::{AsConfig, ScriptedServer};
use latchkey_vault::KeySet;
use latchkey_vault::keyring::StaticKeys;
use rmcp::model::{
    ClientConfig, ClientRequest, CreateMessageRequestParams, CreateMessageResult,
    ElicitRequestParams, ElicitResult, ErrorData, ListRootsResult, ProgressNotificationParam,
    ServerResult,
};
use rmcp::service::{NotificationContext, PeerRequestOptions, RequestContext, RunningService};
use rmcp::{ClientHandler, RoleClient};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::federated::{TwoUsers, Wire, serve_as, two_users};
use super::{client, post};

const KEY: &str = "1:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

fn keys() -> StaticKeys {
    StaticKeys(Some(KeySet::parse(KEY).unwrap()))
}

/// Told by `an_answer_refused_with_401_on_the_session_wire_is_sent_again` once the
/// tokens have expired: its client's answer to "give me a second" waits for it.
static EXPIRED: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// A client that answers the relayed requests and reports everything it is sent.
#[derive(Debug, Clone)]
struct Answering {
    tx: mpsc::UnboundedSender<String>,
    /// Declares elicitation, sampling and roots.
    capable: bool,
}

impl ClientHandler for Answering {
    fn get_info(&self) -> ClientConfig {
        let mut info = ClientConfig::default();
        if self.capable {
            info.capabilities = serde_json::from_value(
                json!({"elicitation": {"form": {}}, "sampling": {}, "roots": {}}),
            )
            .unwrap();
        }
        info
    }

    async fn create_elicitation(
        &self,
        request: ElicitRequestParams,
        context: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, ErrorData> {
        let v = serde_json::to_value(&request).unwrap();
        let _ = self.tx.send(format!("elicit {}", v["message"]));
        if v["message"] == "wait for me" {
            tokio::select! {
                () = context.ct.cancelled() => {
                    let _ = self.tx.send("elicitation cancelled".into());
                }
                () = tokio::time::sleep(Duration::from_secs(10)) => {}
            }
            return Ok(serde_json::from_value(json!({"action": "decline"})).unwrap());
        }
        if v["message"] == "give me a second" {
            // Answers once the test has expired the upstream's tokens after the report.
            EXPIRED.notified().await;
        }
        if v["message"] == "take your time" {
            // Longer than the egress request timeout (15 s).
            tokio::time::sleep(Duration::from_secs(17)).await;
        }
        Ok(
            serde_json::from_value(json!({"action": "accept", "content": {"name": "Ada"}}))
                .unwrap(),
        )
    }

    async fn create_message(
        &self,
        _params: CreateMessageRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<CreateMessageResult, ErrorData> {
        let _ = self.tx.send("sample".into());
        Ok(
            serde_json::from_value(json!({"model": "test-model", "role": "assistant",
            "content": {"type": "text", "text": "sampled"}, "stopReason": "endTurn"}))
            .unwrap(),
        )
    }

    async fn list_roots(
        &self,
        _context: RequestContext<RoleClient>,
    ) -> Result<ListRootsResult, ErrorData> {
        let _ = self.tx.send("roots".into());
        Ok(
            serde_json::from_value(json!({"roots": [{"uri": "file:///work", "name": "work"}]}))
                .unwrap(),
        )
    }

    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        let token = serde_json::to_value(&params.progress_token).unwrap();
        let _ = self
            .tx
            .send(format!("progress {token} {}", params.progress));
    }
}

type Session = RunningService<RoleClient, Answering>;

/// What the test clients present to Latchkey (local mode ignores it).
const BEARER: &str = "callers-own-credential";

/// An [`Answering`] client on `{base}/mcp` speaking `wire` and what its handler reports.
async fn connect(
    base: &str,
    wire: Wire,
    capable: bool,
) -> (Session, mpsc::UnboundedReceiver<String>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        serve_as(Answering { tx, capable }, base, BEARER, wire).await,
        rx,
    )
}

/// The next report of a session's handler, within 10 s.
async fn next(rx: &mut mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a report within 10 s")
        .unwrap()
}

/// Latchkey with one connected OAuth server (a scripted one, offering prompts and
/// resources named `primitives` when given), unprefixed: the server, Latchkey's base
/// URL, the server's id, and what [`super::cleanup`] takes.
async fn setup(
    backend: super::Backend,
    primitives: Option<&str>,
) -> (
    ScriptedServer,
    String,
    String,
    std::path::PathBuf,
    Option<latchkey_testkit::pg::PgSchema>,
) {
    let upstream = ScriptedServer::start(AsConfig::default()).await.unwrap();
    upstream.offer_primitives(primitives);
    let cfg = super::loopback_config();
    let (base, dir, _store, schema) = super::start_on(backend, &cfg, keys()).await;
    let id = super::connected_server(&base, "Relay", &upstream).await;
    let r = client()
        .patch(format!("{base}/v1/servers/{id}"))
        .header("content-type", "application/json")
        .body(json!({"unprefixed": true}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    (upstream, base, id, dir, schema)
}

/// `tools/call` of `name` with `arguments` from `s`, with the progress token rmcp gives
/// every request: the result (or JSON-RPC error) and that token.
async fn call(s: &Session, name: &str, arguments: Value) -> (Result<Value, ErrorData>, Value) {
    let request: ClientRequest = serde_json::from_value(
        json!({"method": "tools/call", "params": {"name": name, "arguments": arguments}}),
    )
    .unwrap();
    let handle = s
        .peer()
        .send_cancellable_request(request, PeerRequestOptions::no_options())
        .await
        .unwrap();
    let token = serde_json::to_value(&handle.progress_token).unwrap();
    let result = match handle.await_response().await {
        Ok(ServerResult::CallToolResult(r)) => Ok(serde_json::to_value(r).unwrap()),
        Ok(other) => panic!("not a tool result: {other:?}"),
        Err(rmcp::service::ServiceError::McpError(e)) => Err(e),
        Err(e) => panic!("{e}"),
    };
    (result, token)
}

/// The `ask` tool's arguments for a `sampling/createMessage` request.
fn sampling() -> Value {
    json!({"method": "sampling/createMessage", "params": {
        "messages": [{"role": "user", "content": {"type": "text", "text": "hi"}}],
        "maxTokens": 10
    }})
}

/// Where the `ask` tool's result has the upstream's answer (or JSON-RPC error).
const ANSWER: &str = "/structuredContent/answer";

/// Asserts that the JSON-RPC error at `at` in `v` has `code` and a message saying `says`.
fn assert_error(v: &Value, at: &str, code: i64, says: &str) {
    let e = v
        .pointer(at)
        .unwrap_or_else(|| panic!("no error at {at}: {v}"));
    assert_eq!(e["code"], code, "{v}");
    let message = e["message"].as_str().unwrap_or_default();
    assert!(message.contains(says), "not {says:?}: {v}");
}

/// The `ask` tool's arguments for a form-mode `elicitation/create` request.
fn elicitation(message: &str) -> Value {
    json!({"method": "elicitation/create", "params": {
        "mode": "form",
        "message": message,
        "requestedSchema": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    }})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_and_elicitation_reach_the_session_that_asked_on_sqlite() {
    progress_and_elicitation(super::Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_and_elicitation_reach_the_session_that_asked_on_postgres() {
    progress_and_elicitation(super::Backend::Postgres).await;
}

/// Progress with the client's own token, an elicitation answered by the client and its
/// answer in the tool's result; another session of the same user sees none of it.
async fn progress_and_elicitation(backend: super::Backend) {
    let (upstream, base, _id, dir, schema) = setup(backend, None).await;
    let (asking, mut rx) = connect(&base, Wire::Session, true).await;
    let (other, mut other_rx) = connect(&base, Wire::Session, true).await;

    let (result, token) = call(&asking, "ask", elicitation("Your name?")).await;
    let result = result.unwrap();
    assert_eq!(
        result["structuredContent"]["answer"],
        json!({"action": "accept", "content": {"name": "Ada"}}),
        "{result}"
    );
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(next(&mut rx).await);
    }
    assert_eq!(
        seen,
        vec![
            format!("progress {token} 1"),
            "elicit \"Your name?\"".to_owned(),
            format!("progress {token} 2"),
        ],
        "progress with the client's token around the elicitation, in order"
    );
    // The upstream was given a token of Latchkey's, not the client's; it got the answer
    // with its own request id, in its session, with the slot's Bearer.
    let calls = upstream.relaying_calls();
    assert_eq!(calls.len(), 1);
    let upstream_token = calls[0]["progressToken"].as_str().unwrap();
    assert!(upstream_token.starts_with("latchkey-"), "{calls:?}");
    let answers = upstream.relayed_answers();
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert_eq!(answers[0]["id"], "ask-1");
    assert_eq!(answers[0]["result"]["action"], "accept");
    let posted = upstream
        .requests("/mcp")
        .into_iter()
        .filter(|r| r.body.get("method").is_some_and(String::is_empty))
        .collect::<Vec<_>>();
    assert_eq!(posted.len(), 1);
    assert!(posted[0].headers["authorization"].starts_with("Bearer "));
    assert!(posted[0].headers.contains_key("mcp-session-id"));
    // Latchkey declared what it relays when it opened the upstream session (servers
    // check it before asking).
    // (The last initialize: the first is the probe when the server was added.)
    let init = upstream
        .requests("/mcp")
        .into_iter()
        .rev()
        .find(|r| r.body.get("method").map(String::as_str) == Some("initialize"))
        .unwrap();
    let declared: Value = serde_json::from_str(&init.body["capabilities"]).unwrap();
    assert_eq!(
        declared,
        json!({"elicitation": {"form": {}, "url": {}}, "sampling": {}, "roots": {}})
    );

    // The other session was asked nothing and sent no progress.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(other_rx.try_recv().is_err());
    let _ = other.cancel().await;
    let _ = asking.cancel().await;
    super::cleanup(dir, schema).await;
}

/// Sampling and roots are relayed and answered as elicitation is; a client that did
/// not declare the capabilities is not asked, and the upstream gets `-32601` saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_and_roots_are_relayed_and_missing_capabilities_refused() {
    let (_upstream, base, _id, dir, schema) = setup(super::Backend::Sqlite, None).await;
    let (capable, mut rx) = connect(&base, Wire::Session, true).await;

    let sampling = sampling();
    let (result, _) = call(&capable, "ask", sampling.clone()).await;
    let answer = &result.unwrap()["structuredContent"]["answer"];
    assert_eq!(answer["model"], "test-model", "{answer}");
    assert_eq!(answer["content"]["text"], "sampled");
    let (result, _) = call(&capable, "ask", json!({"method": "roots/list"})).await;
    let answer = &result.unwrap()["structuredContent"]["answer"];
    assert_eq!(answer["roots"][0]["uri"], "file:///work", "{answer}");
    let mut seen = Vec::new();
    while let Ok(m) = rx.try_recv() {
        if !m.starts_with("progress") {
            seen.push(m);
        }
    }
    assert_eq!(seen, vec!["sample".to_owned(), "roots".to_owned()]);

    let (plain, mut plain_rx) = connect(&base, Wire::Session, false).await;
    for args in [
        elicitation("Your name?"),
        sampling,
        json!({"method": "roots/list"}),
    ] {
        let (result, _) = call(&plain, "ask", args).await;
        let says = "the client does not support it";
        assert_error(&result.unwrap(), ANSWER, -32601, says);
    }
    while let Ok(m) = plain_rx.try_recv() {
        assert!(m.starts_with("progress"), "the client was asked: {m}");
    }
    let _ = capable.cancel().await;
    let _ = plain.cancel().await;
    super::cleanup(dir, schema).await;
}

/// The client cancels its call: the upstream gets `notifications/cancelled` naming its
/// own request id. The upstream cancels its elicitation: the client's handler is
/// cancelled and no answer goes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_both_ways() {
    let (upstream, base, _id, dir, schema) = setup(super::Backend::Sqlite, None).await;
    let (s, mut rx) = connect(&base, Wire::Session, true).await;

    let request: ClientRequest = serde_json::from_value(
        json!({"method": "tools/call", "params": {"name": "wait", "arguments": {}}}),
    )
    .unwrap();
    let handle = s
        .peer()
        .send_cancellable_request(request, PeerRequestOptions::no_options())
        .await
        .unwrap();
    let client_id = serde_json::to_value(&handle.id).unwrap();
    assert!(
        next(&mut rx).await.starts_with("progress"),
        "the call is under way"
    );
    handle.cancel(Some("changed my mind".into())).await.unwrap();
    let mut cancelled = Vec::new();
    for _ in 0..100 {
        cancelled = upstream.cancellations();
        if !cancelled.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let upstream_id = upstream.relaying_calls()[0]["id"].clone();
    assert_eq!(cancelled.len(), 1, "{cancelled:?}");
    assert_eq!(cancelled[0]["requestId"], upstream_id);
    assert_ne!(
        upstream_id, client_id,
        "the upstream's id, not the client's (they differ here)"
    );

    let mut args = elicitation("wait for me");
    args["cancel_after_ms"] = json!(500);
    let (result, _) = call(&s, "ask", args).await;
    assert_eq!(result.unwrap()["content"][0]["text"], "cancelled");
    let mut seen = Vec::new();
    for _ in 0..3 {
        let m = next(&mut rx).await;
        if !m.starts_with("progress") {
            seen.push(m);
        }
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(
        seen,
        vec![
            "elicit \"wait for me\"".to_owned(),
            "elicitation cancelled".to_owned()
        ]
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        upstream.relayed_answers().is_empty(),
        "no answer to a cancelled request"
    );
    let _ = s.cancel().await;
    super::cleanup(dir, schema).await;
}

/// A REST tool call has no client behind it: the upstream's elicitation gets `-32601`
/// at once and the call completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_calls_refuse_relayed_requests() {
    let (_upstream, base, id, dir, schema) = setup(super::Backend::Sqlite, None).await;
    let (status, v) = post(
        &format!("{base}/v1/servers/{id}/tools/ask/call"),
        elicitation("Your name?"),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_error(&v, ANSWER, -32601, "no client to relay");
    super::cleanup(dir, schema).await;
}

/// On the stateless 2026-07-28 wire a client that declared no capability a relayed
/// request needs is not asked: the upstream's elicitation gets `-32601` saying so, and
/// the call completes; its progress reaches the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stateless_wire_refuses_relayed_requests_to_a_client_that_declared_none() {
    let (_upstream, base, _id, dir, schema) = setup(super::Backend::Sqlite, None).await;
    let (s, mut rx) = connect(&base, Wire::Stateless, false).await;
    let (result, _) = call(&s, "ask", elicitation("Your name?")).await;
    assert_error(&result.unwrap(), ANSWER, -32601, "did not declare");
    // Progress still reaches the client, on the request's stream.
    let mut seen = Vec::new();
    for _ in 0..2 {
        seen.push(next(&mut rx).await);
    }
    assert!(seen.iter().all(|m| m.starts_with("progress")), "{seen:?}");
    let _ = s.cancel().await;
    super::cleanup(dir, schema).await;
}

/// One raw stateless 2026-07-28 `tools/call` of `name` on `{base}/mcp` with `bearer`,
/// declaring `capabilities`, with `extra` params (`requestState`, `inputResponses`):
/// the JSON-RPC answer (the last message of an SSE answer).
async fn stateless_call(
    base: &str,
    bearer: &str,
    name: &str,
    arguments: Value,
    capabilities: Value,
    extra: Value,
) -> Value {
    let params = json!({"name": name, "arguments": arguments});
    stateless_request(
        base,
        bearer,
        "tools/call",
        name,
        params,
        capabilities,
        extra,
    )
    .await
}

/// `method` with `params` (plus `extra`'s members) on the stateless 2026-07-28 wire,
/// `mcp_name` its `Mcp-Name` header: the JSON-RPC answer.
async fn stateless_request(
    base: &str,
    bearer: &str,
    method: &str,
    mcp_name: &str,
    mut params: Value,
    capabilities: Value,
    extra: Value,
) -> Value {
    params["_meta"] = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": capabilities,
        "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
    });
    for (k, v) in extra.as_object().unwrap() {
        params[k] = v.clone();
    }
    let r = client()
        .post(format!("{base}/mcp"))
        .header("authorization", format!("Bearer {bearer}"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", method)
        .header("mcp-name", mcp_name)
        .json(&json!({"jsonrpc": "2.0", "id": 7, "method": method, "params": params}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    assert!(r.headers().get("mcp-session-id").is_none(), "no session");
    let text = r.text().await.unwrap();
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).unwrap_or_else(|_| {
        text.lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
            .rfind(|m| m.get("id") == Some(&json!(7)))
            .unwrap_or_else(|| panic!("no answer in {text}"))
    })
}

/// The stateless 2026-07-28 wire relays the upstream's elicitation as a multi-round-trip
/// request (SEP-2322): the call is answered `input_required` with the elicitation and a
/// `requestState`; the retry with `inputResponses` and that `requestState` hands the
/// answer to the upstream (under the upstream's own request id) and gets the tool's
/// result. The `requestState` is single use and the caller's own: another user's retry
/// with it, and its replay, are refused (`-32602`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stateless_wire_relays_requests_as_input_required_rounds() {
    let upstream = ScriptedServer::start(AsConfig::default()).await.unwrap();
    let TwoUsers {
        base,
        dir,
        schema,
        id,
        alice,
        bob,
        ..
    } = two_users(super::Backend::Sqlite, "Relay", &upstream, false).await;
    let (status, v, _) = super::request(
        reqwest::Method::PATCH,
        &format!("{base}/v1/servers/{id}"),
        Some(&format!("Bearer {alice}")),
        Some(json!({"unprefixed": true})),
    )
    .await;
    assert_eq!(status, 200, "{v}");

    let ask_as = async |who: &str, extra: Value| {
        let capable = json!({"elicitation": {"form": {}}});
        stateless_call(&base, who, "ask", elicitation("Your name?"), capable, extra).await
    };
    let v = ask_as(&alice, json!({})).await;
    let result = &v["result"];
    assert_eq!(result["resultType"], "input_required", "{v}");
    let request = &result["inputRequests"]["r1"];
    assert_eq!(request["method"], "elicitation/create", "{v}");
    assert_eq!(request["params"]["message"], "Your name?", "{v}");
    let state = result["requestState"].as_str().unwrap().to_owned();
    assert!(state.len() >= 22, "at least 128 bits: {state}");
    assert!(
        upstream.relayed_answers().is_empty(),
        "the upstream still waits"
    );

    let answer = json!({"action": "accept", "content": {"name": "Ada"}});
    let retry = json!({"requestState": state, "inputResponses": {"r1": answer}});
    // Another user's retry with it is refused; the exchange stays its owner's.
    let v = ask_as(&bob, retry.clone()).await;
    assert_error(&v, "/error", -32602, "another principal");

    let v = ask_as(&alice, retry.clone()).await;
    let result = &v["result"];
    assert_eq!(result["resultType"], "complete", "{v}");
    assert_eq!(result["structuredContent"]["answer"], answer, "{v}");
    let answers = upstream.relayed_answers();
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert!(
        answers[0]["id"].as_str().unwrap().starts_with("ask-"),
        "{answers:?}"
    );
    assert_eq!(answers[0]["result"], answer, "{answers:?}");

    // Used: a replay is refused, and nothing more reaches the upstream.
    let v = ask_as(&alice, retry).await;
    assert_error(&v, "/error", -32602, "unknown requestState");
    assert_eq!(upstream.relayed_answers().len(), 1);
    super::cleanup(dir, schema).await;
}

/// A `requestState` is bound to the whole request (SEP-2322: the retry is the same
/// request with `inputResponses` added): a retry of the same tool with other arguments
/// (or none) is refused with `-32602` and does not get the first request's answer; the
/// exchange stays parked, and the retry with the request's own arguments gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_state_is_refused_for_other_arguments() {
    let (upstream, base, _id, dir, schema) = setup(super::Backend::Sqlite, None).await;
    let ask_with = |arguments: Value, extra: Value| {
        let capable = json!({"elicitation": {"form": {}}});
        stateless_call(&base, BEARER, "ask", arguments, capable, extra)
    };
    let v = ask_with(elicitation("Your name?"), json!({})).await;
    assert_eq!(v["result"]["resultType"], "input_required", "{v}");
    let state = v["result"]["requestState"].as_str().unwrap().to_owned();

    let answer = json!({"action": "accept", "content": {"name": "Ada"}});
    let retry = json!({"requestState": state, "inputResponses": {"r1": answer}});
    for other in [elicitation("Your password?"), json!({})] {
        let v = ask_with(other, retry.clone()).await;
        assert_error(&v, "/error", -32602, "another request");
    }
    assert!(
        upstream.relayed_answers().is_empty(),
        "the refused retries reached the upstream"
    );

    let v = ask_with(elicitation("Your name?"), retry).await;
    assert_eq!(v["result"]["resultType"], "complete", "{v}");
    assert_eq!(v["result"]["structuredContent"]["answer"], answer, "{v}");
    let answers = upstream.relayed_answers();
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert_eq!(answers[0]["result"], answer, "{answers:?}");
    super::cleanup(dir, schema).await;
}

/// `prompts/get` and `resources/read` take the same rounds as a `tools/call` on the
/// stateless wire: an upstream's elicitation during either is answered `input_required`
/// (not `-32601`), the retry hands the answer to the upstream under its own request id
/// and gets the prompt or the contents built from it; the `requestState` of one is
/// refused for the other, and a prompt's for the prompt with other arguments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stateless_prompts_and_reads_relay_requests_as_input_required_rounds() {
    let (upstream, base, _id, dir, schema) = setup(super::Backend::Sqlite, Some("relay")).await;
    let capable = json!({"elicitation": {"form": {}}});
    let requests = [
        (
            "prompts/get",
            "ask",
            json!({"name": "ask", "arguments": {"message": "Who are you?"}}),
            "Who are you?",
        ),
        (
            "resources/read",
            "ask:///name",
            json!({"uri": "ask:///name"}),
            "Your name?",
        ),
    ];
    let mut states = Vec::new();
    for (method, name, params, question) in &requests {
        let v = stateless_request(
            &base,
            BEARER,
            method,
            name,
            params.clone(),
            capable.clone(),
            json!({}),
        )
        .await;
        let result = &v["result"];
        assert_eq!(result["resultType"], "input_required", "{method}: {v}");
        let request = &result["inputRequests"]["r1"];
        assert_eq!(request["method"], "elicitation/create", "{v}");
        assert_eq!(request["params"]["message"], *question, "{v}");
        let state = result["requestState"].as_str().unwrap().to_owned();
        assert!(
            upstream.relayed_answers().is_empty(),
            "the upstream still waits"
        );
        states.push(state);
    }
    // A prompt's requestState is not a read's.
    let answer = |who: &str| json!({"action": "accept", "content": {"name": who}});
    let (method, name, params, _) = &requests[1];
    let v = stateless_request(
        &base,
        BEARER,
        method,
        name,
        params.clone(),
        capable.clone(),
        json!({"requestState": states[0], "inputResponses": {"r1": answer("Ada")}}),
    )
    .await;
    assert_eq!(v["error"]["code"], -32602, "{v}");
    // Nor the same prompt's with other arguments.
    let v = stateless_request(
        &base,
        BEARER,
        "prompts/get",
        "ask",
        json!({"name": "ask", "arguments": {"message": "Who else?"}}),
        capable.clone(),
        json!({"requestState": states[0], "inputResponses": {"r1": answer("Ada")}}),
    )
    .await;
    assert_eq!(v["error"]["code"], -32602, "{v}");

    for (n, ((method, name, params, _), state)) in requests.iter().zip(&states).enumerate() {
        let who = ["Ada", "Grace"][n];
        let v = stateless_request(
            &base,
            BEARER,
            method,
            name,
            params.clone(),
            capable.clone(),
            json!({"requestState": state, "inputResponses": {"r1": answer(who)}}),
        )
        .await;
        let result = &v["result"];
        assert_eq!(result["resultType"], "complete", "{method}: {v}");
        let text = if *method == "prompts/get" {
            &result["messages"][0]["content"]["text"]
        } else {
            assert_eq!(result["contents"][0]["uri"], "ask:///name", "{v}");
            &result["contents"][0]["text"]
        };
        let got: Value = serde_json::from_str(text.as_str().unwrap()).unwrap();
        assert_eq!(got, answer(who), "{method}: {v}");
        let answers = upstream.relayed_answers();
        assert_eq!(answers.len(), n + 1, "{answers:?}");
        assert!(answers[n]["id"].as_str().unwrap().starts_with("ask-"));
        assert_eq!(answers[n]["result"], answer(who), "{answers:?}");
    }
    super::cleanup(dir, schema).await;
}

/// rmcp's own 2026-07-28 client drives the rounds with its handler (`call_tool`
/// fulfils `input_required` and retries): elicitation, sampling and roots asked by the
/// upstream reach it and their answers the upstream; the upstream's progress reaches
/// the client on the request that is waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rmcp_stateless_client_answers_relayed_requests_in_rounds() {
    let (upstream, base, _id, dir, schema) = setup(super::Backend::Sqlite, None).await;
    let (s, mut rx) = connect(&base, Wire::Stateless, true).await;
    let sampling = sampling();
    let mut answers = Vec::new();
    for args in [
        elicitation("Your name?"),
        sampling,
        json!({"method": "roots/list"}),
    ] {
        let params = rmcp::model::CallToolRequestParams::new("ask")
            .with_arguments(args.as_object().unwrap().clone());
        let result = tokio::time::timeout(Duration::from_secs(10), s.call_tool(params))
            .await
            .expect("within 10 s")
            .unwrap();
        answers.push(serde_json::to_value(result).unwrap()["structuredContent"]["answer"].clone());
    }
    assert_eq!(answers[0]["content"]["name"], "Ada", "{answers:?}");
    assert_eq!(answers[1]["content"]["text"], "sampled", "{answers:?}");
    assert_eq!(answers[2]["roots"][0]["uri"], "file:///work", "{answers:?}");
    let mut seen = Vec::new();
    while let Ok(m) = rx.try_recv() {
        seen.push(m);
    }
    let asked: Vec<&String> = seen.iter().filter(|m| !m.starts_with("progress")).collect();
    assert_eq!(
        asked,
        ["elicit \"Your name?\"", "sample", "roots"],
        "{seen:?}"
    );
    assert!(seen.iter().any(|m| m.starts_with("progress")), "{seen:?}");
    let relayed = upstream.relayed_answers();
    assert_eq!(relayed.len(), 3, "{relayed:?}");
    let _ = s.cancel().await;
    super::cleanup(dir, schema).await;
}

/// The request timeout does not run while the client is being asked (a person may be
/// answering): an answer after 17 s still reaches the upstream and the call completes.
/// An upstream that stalls without asking anything is still cut off after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timeout_waits_for_the_client_but_not_for_a_stalled_upstream() {
    let (_upstream, base, id, dir, schema) = setup(super::Backend::Sqlite, None).await;
    let (s, _rx) = connect(&base, Wire::Session, true).await;
    let stalled = {
        let base = base.clone();
        let id = id.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let (status, v) = post(
                &format!("{base}/v1/servers/{id}/tools/wait/call"),
                json!({}),
            )
            .await;
            (status, v, started.elapsed())
        })
    };
    let (result, _) = call(&s, "ask", elicitation("take your time")).await;
    let result = result.unwrap();
    assert_eq!(
        result["structuredContent"]["answer"]["action"], "accept",
        "{result}"
    );
    let (status, v, took) = stalled.await.unwrap();
    assert_eq!(status, 502, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap_or_default()
            .contains("timed out"),
        "{v}"
    );
    assert!(took < Duration::from_secs(25), "{took:?}");
    let _ = s.cancel().await;
    super::cleanup(dir, schema).await;
}

/// A listing is not relayed, yet the upstream may ask during it (Latchkey's upstream
/// `initialize` declares elicitation): its request gets `-32601` at once and the
/// listing completes well within the request timeout (15 s), through `/mcp` (the
/// client, though capable, is not asked) and the REST listing alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_refuses_the_upstreams_requests_at_once() {
    let (upstream, base, id, dir, schema) = setup(super::Backend::Sqlite, None).await;
    upstream.ask_during_tools_list(Some("elicitation/create"));
    let (s, mut rx) = connect(&base, Wire::Session, true).await;

    let started = std::time::Instant::now();
    let tools = tokio::time::timeout(Duration::from_secs(5), s.peer().list_tools(None))
        .await
        .expect("tools/list on /mcp within 5 s")
        .unwrap();
    let names: Vec<&str> = tools.tools.iter().map(|t| t.name.as_ref()).collect();
    assert!(names.contains(&"echo"), "{names:?}");
    let (status, v, _) = tokio::time::timeout(
        Duration::from_secs(5),
        super::request(
            reqwest::Method::GET,
            &format!("{base}/v1/servers/{id}/tools"),
            None,
            None,
        ),
    )
    .await
    .expect("the REST listing within 5 s");
    assert_eq!(status, 200, "{v}");
    assert!(
        v["tools"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "echo"),
        "{v}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    let answers = upstream.relayed_answers();
    assert_eq!(answers.len(), 2, "one question per listing: {answers:?}");
    for a in &answers {
        assert!(a["id"].as_str().unwrap().starts_with("ask-"), "{a}");
        assert_eq!(a["error"]["code"], -32601, "{a}");
    }
    assert!(rx.try_recv().is_err(), "the client was asked");
    let _ = s.cancel().await;
    super::cleanup(dir, schema).await;
}

/// The first round of a stateless `ask` (an elicitation) on Latchkey with `setup`'s
/// server: the `requestState` of its `input_required` answer, and the retry that
/// answers it with the name Ada.
async fn first_round(base: &str) -> (Value, Value) {
    let capable = json!({"elicitation": {"form": {}}});
    let v = stateless_call(
        base,
        BEARER,
        "ask",
        elicitation("Your name?"),
        capable,
        json!({}),
    )
    .await;
    assert_eq!(v["result"]["resultType"], "input_required", "{v}");
    let state = v["result"]["requestState"].clone();
    let answer = json!({"action": "accept", "content": {"name": "Ada"}});
    let retry = json!({"requestState": state, "inputResponses": {"r1": answer.clone()}});
    (retry, answer)
}

/// The client's answer may come long after the call (minutes on the stateless wire),
/// when the slot's access token has expired: the upstream refuses the answer's POST
/// with 401, and Latchkey refreshes the token once and POSTs the same answer again
/// with it, so the call completes with the upstream's result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_refused_with_401_is_sent_again_with_a_refreshed_token() {
    let (upstream, base, _id, dir, schema) = setup(super::Backend::Sqlite, None).await;
    let (retry, answer) = first_round(&base).await;
    let refreshes = upstream.grants_served_for("refresh_token");
    // The client takes its time: the token the call was made with expires meanwhile.
    upstream.expire_access_tokens();

    let capable = json!({"elicitation": {"form": {}}});
    let started = std::time::Instant::now();
    let v = stateless_call(
        &base,
        BEARER,
        "ask",
        elicitation("Your name?"),
        capable,
        retry,
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(10), "{v}");
    assert_eq!(v["result"]["resultType"], "complete", "{v}");
    assert_eq!(v["result"]["structuredContent"]["answer"], answer, "{v}");
    assert_eq!(
        upstream.grants_served_for("refresh_token"),
        refreshes + 1,
        "one forced refresh"
    );
    // The answer was POSTed twice, in the same session: with the expired token (refused,
    // so not taken) and with the fresh one.
    let posted = upstream
        .requests("/mcp")
        .into_iter()
        .filter(|r| r.body.get("method").is_some_and(String::is_empty))
        .collect::<Vec<_>>();
    assert_eq!(posted.len(), 2, "{posted:?}");
    assert_ne!(
        posted[0].headers["authorization"],
        posted[1].headers["authorization"]
    );
    assert_eq!(
        posted[0].headers["mcp-session-id"],
        posted[1].headers["mcp-session-id"]
    );
    let answers = upstream.relayed_answers();
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert_eq!(answers[0]["result"], answer, "{answers:?}");
    super::cleanup(dir, schema).await;
}

/// The same on the session wire: the client answers the elicitation after the access
/// token expired; the answer reaches the upstream with a refreshed one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_refused_with_401_on_the_session_wire_is_sent_again() {
    let (upstream, base, _id, dir, schema) = setup(super::Backend::Sqlite, None).await;
    let (s, mut rx) = connect(&base, Wire::Session, true).await;
    let (result, refreshes) = tokio::join!(
        tokio::time::timeout(
            Duration::from_secs(10),
            call(&s, "ask", elicitation("give me a second"))
        ),
        async {
            // Asked: the client answers once the token has expired.
            while next(&mut rx).await != "elicit \"give me a second\"" {}
            let refreshes = upstream.grants_served_for("refresh_token");
            upstream.expire_access_tokens();
            EXPIRED.notify_one();
            refreshes
        }
    );
    let result = result.expect("within 10 s").0.unwrap();
    assert_eq!(
        result["structuredContent"]["answer"]["content"]["name"], "Ada",
        "{result}"
    );
    assert_eq!(
        upstream.grants_served_for("refresh_token"),
        refreshes + 1,
        "one forced refresh"
    );
    assert_eq!(upstream.relayed_answers().len(), 1);
    let _ = s.cancel().await;
    super::cleanup(dir, schema).await;
}

/// When no fresh token can be had (the refresh token is refused), the answer refused
/// with 401 ends the call at once, as needing the user to connect again (a sign-in link
/// for a client that takes one), rather than after the request timeout (15 s) the
/// upstream would otherwise run into.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_refused_with_401_and_no_fresh_token_ends_the_call_at_once() {
    let (upstream, base, _id, dir, schema) = setup(super::Backend::Sqlite, None).await;
    let (retry, _) = first_round(&base).await;
    upstream.expire_access_tokens();
    upstream.set_token_fault(latchkey_testkit::TokenFault::OAuthError {
        status: 400,
        error: "invalid_grant".into(),
    });

    // A client that can be sent to a sign-in link.
    let capable = json!({"elicitation": {"form": {}, "url": {}}});
    let started = std::time::Instant::now();
    let v = stateless_call(
        &base,
        BEARER,
        "ask",
        elicitation("Your name?"),
        capable,
        retry,
    )
    .await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "{took:?}: {v}");
    // What a call refused with 401 gets: the user is sent to connect the server again.
    let connect = &v["result"]["inputRequests"]["connect"]["params"];
    assert_eq!(v["result"]["resultType"], "input_required", "{v}");
    assert_eq!(connect["mode"], "url", "{v}");
    assert!(
        connect["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("Connect Relay"),
        "{v}"
    );
    assert!(upstream.relayed_answers().is_empty());
    super::cleanup(dir, schema).await;
}
