//! The client side of MCP's streamable HTTP transport, one request at a time, through
//! `latchkey_egress`.
//!
//! rmcp supplies the message types (`Implementation`, `ClientCapabilities`, the
//! `_meta` client context, protocol versions) and sse-stream the SSE framing. The
//! exchange itself is written here because an OAuth client must see every HTTP status
//! and `WWW-Authenticate` header and re-send the *same* JSON-RPC request with new
//! credentials after a 401 or 403 — rmcp's transport worker treats those as terminal
//! and owns the connection, and would bypass the SSRF-guarded egress client.
//!
//! Two wires are spoken:
//! * 2025-11-25 (and earlier): `initialize`, then `notifications/initialized`, then
//!   requests carrying `Mcp-Session-Id` and `MCP-Protocol-Version`.
//! * 2026-07-28: stateless; no `initialize`; every request carries the client context
//!   in `params._meta` plus the `MCP-Protocol-Version`, `Mcp-Method` and `Mcp-Name`
//!   headers (SEP-2243, SEP-2575).
#![forbid(unsafe_code)]

pub mod envelope;
mod relaying;

pub use relaying::{METHOD_NOT_FOUND, NoRelay, NoRenew, Relay, Renew, SseFramer, method_not_found};

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use latchkey_egress::{Egress, EgressError, EgressRequest, UrlSource};
use rmcp::model::{ClientCapabilities, Implementation, ProtocolVersion, RequestMetaObject};
use serde_json::{Value, json};

/// The largest MCP response body read into memory.
pub const MCP_BODY_LIMIT: usize = 8 * 1024 * 1024;

/// JSON-RPC error code of the 2026-07-28 revision for "unsupported protocol version";
/// its `data.supported` lists what the server speaks (SEP-2575).
pub const UNSUPPORTED_VERSION: i64 = -32022;

/// `Mcp-Session-Id`.
pub const SESSION_HEADER: &str = "mcp-session-id";
/// `MCP-Protocol-Version`.
pub const PROTOCOL_VERSION_HEADER: &str = "mcp-protocol-version";
/// `Mcp-Method` (SEP-2243).
pub const METHOD_HEADER: &str = "mcp-method";
/// `Mcp-Name` (SEP-2243).
pub const NAME_HEADER: &str = "mcp-name";

/// Failures below the JSON-RPC layer.
#[derive(Debug, thiserror::Error)]
pub enum McpError {
    /// The request could not be sent or its response read.
    #[error(transparent)]
    Egress(#[from] EgressError),
    /// The response was not a usable MCP message.
    #[error("MCP protocol error: {0}")]
    Protocol(String),
    /// The caller's request was cancelled ([`Relay::cancelled`]); the server was told.
    #[error("the request was cancelled")]
    Cancelled,
    /// The server refused with 401 an answer POSTed back during the request, and the
    /// renewed headers too (or none could be had, [`Renew`]): it will not get its
    /// answer, so the request was given up rather than left to time out.
    #[error("the server refused an answer to its request (HTTP 401)")]
    Unauthorized,
}

/// One HTTP exchange: status, headers and, for a request, the JSON-RPC response.
#[derive(Debug)]
pub struct Exchange {
    /// HTTP status.
    pub status: StatusCode,
    /// Response headers (`WWW-Authenticate`, `Mcp-Session-Id`, `DPoP-Nonce` …).
    pub headers: HeaderMap,
    /// The JSON-RPC response whose `id` matches the request, if one came back.
    pub response: Option<Value>,
}

impl Exchange {
    /// Every `WWW-Authenticate` value, as bytes.
    pub fn www_authenticate(&self) -> Vec<&[u8]> {
        self.headers
            .get_all(http::header::WWW_AUTHENTICATE)
            .iter()
            .map(HeaderValue::as_bytes)
            .collect()
    }

    /// The `result` of the response, or a protocol error carrying the JSON-RPC error.
    pub fn into_result(self) -> Result<Value, McpError> {
        let Some(mut r) = self.response else {
            return Err(McpError::Protocol(format!(
                "HTTP {} without a JSON-RPC response",
                self.status.as_u16()
            )));
        };
        if let Some(e) = r.get("error") {
            return Err(McpError::Protocol(format!("JSON-RPC error {e}")));
        }
        Ok(r.get_mut("result").map(Value::take).unwrap_or(Value::Null))
    }
}

/// An MCP client session against one server URL.
#[derive(Debug)]
pub struct McpClient {
    egress: Egress,
    url: String,
    source: UrlSource,
    version: ProtocolVersion,
    session_id: Option<String>,
    negotiated: Option<String>,
    next_id: i64,
    client_info: Implementation,
    capabilities: ClientCapabilities,
    /// Input schemas from `tools/list`, for SEP-2243 `Mcp-Param-*` headers.
    tool_schemas: std::collections::HashMap<String, Value>,
}

impl McpClient {
    /// A client for `url` speaking `version` (`2025-11-25`, `2026-07-28`, …).
    pub fn new(
        egress: Egress,
        url: impl Into<String>,
        source: UrlSource,
        version: ProtocolVersion,
    ) -> Self {
        Self {
            egress,
            url: url.into(),
            source,
            version,
            session_id: None,
            negotiated: None,
            next_id: 0,
            client_info: Implementation::new("latchkey", env!("CARGO_PKG_VERSION")),
            capabilities: ClientCapabilities::default(),
            tool_schemas: std::collections::HashMap::new(),
        }
    }

    /// Declares `capabilities` (in `initialize` on 2025-11-25, in each request's `_meta`
    /// on 2026-07-28); none by default.
    pub fn declare(&mut self, capabilities: ClientCapabilities) {
        self.capabilities = capabilities;
    }

    /// The server URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether this wire has no `initialize` (2026-07-28 and later).
    pub fn is_stateless(&self) -> bool {
        !self.version.has_initialize()
    }

    /// The session id the server assigned, if any.
    pub fn session_id(&self) -> Option<&str> {
        self.session_id.as_deref()
    }

    /// The protocol version `initialize` negotiated, if any.
    pub fn negotiated(&self) -> Option<&str> {
        self.negotiated.as_deref()
    }

    /// Continues a session opened earlier (by another client value): its id and the
    /// version it negotiated. The caller must have kept them from
    /// [`McpClient::session_id`] and [`McpClient::negotiated`] after `initialize`.
    pub fn resume(&mut self, session_id: Option<String>, negotiated: Option<String>) {
        self.session_id = session_id;
        self.negotiated = negotiated;
    }

    /// Numbers this client's requests from `first` on: clients sharing one upstream
    /// session must never have two requests with one id in flight.
    pub fn number_from(&mut self, first: i64) {
        self.next_id = first.saturating_sub(1);
    }

    /// Forgets the session (after a 404 "session expired", or to start again).
    pub fn reset_session(&mut self) {
        self.session_id = None;
        self.negotiated = None;
    }

    /// Builds a request body with a fresh id. On the stateless wire the client context
    /// goes into `params._meta`.
    pub fn request(&mut self, method: &str, params: Option<Value>) -> Value {
        self.next_id += 1;
        let mut params = params.unwrap_or_else(|| json!({}));
        if self.is_stateless() {
            let meta = RequestMetaObject::with_client_context(
                self.version.clone(),
                self.client_info.clone(),
                self.capabilities.clone(),
            );
            if let (Some(obj), Ok(meta)) = (params.as_object_mut(), serde_json::to_value(meta)) {
                match obj.get_mut("_meta").and_then(Value::as_object_mut) {
                    Some(existing) => {
                        if let Value::Object(m) = meta {
                            existing.extend(m);
                        }
                    }
                    None => {
                        obj.insert("_meta".into(), meta);
                    }
                }
            }
        }
        json!({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params})
    }

    /// Remembers the tools' input schemas from a `tools/list` result, so later
    /// `tools/call` requests mirror annotated arguments into headers.
    pub fn remember_tools(&mut self, list_result: &Value) {
        for t in list_result
            .get("tools")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let (Some(name), Some(schema)) =
                (t.get("name").and_then(Value::as_str), t.get("inputSchema"))
            {
                self.tool_schemas.insert(name.to_owned(), schema.clone());
            }
        }
    }

    /// SEP-2322 multi-round-trip requests: when `result` is an `input_required` result,
    /// the request to send next — the same method and params with a fresh id, the
    /// `inputResponses` produced by `answer(method, params)` for each input request, and
    /// `requestState` echoed byte for byte when (and only when) the server sent one.
    /// `None` for any other result (an absent `resultType` means complete).
    pub fn input_required_retry(
        &mut self,
        request: &Value,
        result: &Value,
        answer: impl Fn(&str, &Value) -> Value,
    ) -> Option<Value> {
        if result.get("resultType").and_then(Value::as_str) != Some("input_required") {
            return None;
        }
        request.get("method")?.as_str()?;
        let mut params = request.get("params").cloned().unwrap_or_else(|| json!({}));
        let obj = params.as_object_mut()?;
        let responses: serde_json::Map<String, Value> = result
            .get("inputRequests")
            .and_then(Value::as_object)
            .map(|reqs| {
                reqs.iter()
                    .map(|(key, r)| {
                        let m = r.get("method").and_then(Value::as_str).unwrap_or_default();
                        (
                            key.clone(),
                            answer(m, r.get("params").unwrap_or(&Value::Null)),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        obj.insert("inputResponses".into(), Value::Object(responses));
        match result.get("requestState") {
            Some(state) => obj.insert("requestState".into(), state.clone()),
            None => obj.remove("requestState"),
        };
        self.next_id += 1;
        let mut retry = request.clone();
        retry["id"] = json!(self.next_id);
        retry["params"] = params;
        Some(retry)
    }

    /// The protocol version in use.
    pub fn version(&self) -> &ProtocolVersion {
        &self.version
    }

    /// After an "unsupported protocol version" error: switches to the newest version both
    /// sides speak on the stateless wire and re-stamps `message` for it. Returns false
    /// when there is none, so the caller stops instead of retrying forever.
    pub fn renegotiate(&mut self, exchange: &Exchange, message: &mut Value) -> bool {
        let Some(err) = exchange.response.as_ref().and_then(|r| r.get("error")) else {
            return false;
        };
        if err.get("code").and_then(Value::as_i64) != Some(UNSUPPORTED_VERSION) {
            return false;
        }
        let supported: Vec<&str> = err
            .pointer("/data/supported")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let Some(pick) = ProtocolVersion::KNOWN_VERSIONS
            .iter()
            .rev()
            .find(|v| !v.has_initialize() && supported.contains(&v.as_str()))
        else {
            return false;
        };
        self.version = pick.clone();
        if let Some(meta) = message
            .pointer_mut("/params/_meta")
            .and_then(Value::as_object_mut)
        {
            meta.insert(
                "io.modelcontextprotocol/protocolVersion".into(),
                Value::String(pick.to_string()),
            );
        }
        true
    }

    /// The `initialize` request of the 2025-11-25 wire.
    pub fn initialize_request(&mut self) -> Value {
        let params = json!({
            "protocolVersion": self.version.to_string(),
            "capabilities": self.capabilities,
            "clientInfo": self.client_info,
        });
        self.request("initialize", Some(params))
    }

    /// Records what an `initialize` response negotiated (session id, version).
    pub fn accept_initialize(&mut self, exchange: &Exchange) {
        if let Some(s) = exchange
            .headers
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
        {
            self.session_id = Some(s.to_owned());
        }
        if let Some(v) = exchange
            .response
            .as_ref()
            .and_then(|r| r.pointer("/result/protocolVersion"))
            .and_then(Value::as_str)
        {
            self.negotiated = Some(v.to_owned());
        }
    }

    /// `notifications/initialized`.
    pub fn initialized_notification(&self) -> Value {
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"})
    }

    /// Sends one JSON-RPC message with the given extra headers (credentials) and reads
    /// the response: JSON, or an SSE stream scanned for the response with the same id.
    pub async fn send(&self, message: &Value, extra: &HeaderMap) -> Result<Exchange, McpError> {
        let resp = req_send(&self.egress, self.post(message, extra)).await?;
        let id = message.get("id").cloned();
        let response = match id {
            Some(id) if resp.status.is_success() || resp.status.is_client_error() => {
                find_response(&resp.headers, &resp.body, &id).await
            }
            _ => None,
        };
        Ok(Exchange {
            status: resp.status,
            headers: resp.headers,
            response,
        })
    }

    /// The POST carrying `message`, with the wire's headers and `extra`.
    fn post(&self, message: &Value, extra: &HeaderMap) -> EgressRequest {
        let mut req = EgressRequest::post_json(&self.url, self.source, message, MCP_BODY_LIMIT)
            .header(
                http::header::ACCEPT,
                HeaderValue::from_static("application/json, text/event-stream"),
            );
        for (name, value) in self.wire_headers(message) {
            req = req.header(name, value);
        }
        for (name, value) in extra {
            req = req.header(name.clone(), value.clone());
        }
        req
    }

    fn wire_headers(&self, message: &Value) -> Vec<(HeaderName, HeaderValue)> {
        let mut out = Vec::new();
        let mut push = |name: &'static str, value: &str| {
            if let Ok(v) = HeaderValue::from_str(value) {
                out.push((HeaderName::from_static(name), v));
            }
        };
        let method = message
            .get("method")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if self.is_stateless() {
            push(PROTOCOL_VERSION_HEADER, &self.version.to_string());
            push(METHOD_HEADER, method);
            if let Some(name) = mcp_name(method, message.get("params")) {
                push(NAME_HEADER, &name);
            }
            if method == "tools/call" {
                out.extend(self.param_headers(message.get("params")));
            }
        } else {
            if let Some(s) = &self.session_id {
                push(SESSION_HEADER, s);
            }
            if method != "initialize"
                && let Some(v) = &self.negotiated
            {
                push(PROTOCOL_VERSION_HEADER, v);
            }
        }
        out
    }
}

impl McpClient {
    /// SEP-2243: each top-level argument whose schema property carries
    /// `x-mcp-header: Name` is mirrored as `Mcp-Param-Name`. Only primitives are sent;
    /// `null` and absent arguments are omitted; values that are not safe header text
    /// (non-ASCII, control characters, leading or trailing whitespace) are sent as
    /// `=?base64?…?=`.
    fn param_headers(&self, params: Option<&Value>) -> Vec<(HeaderName, HeaderValue)> {
        let mut out = Vec::new();
        let Some(params) = params else { return out };
        let (Some(tool), Some(args)) = (
            params.get("name").and_then(Value::as_str),
            params.get("arguments"),
        ) else {
            return out;
        };
        let Some(props) = self
            .tool_schemas
            .get(tool)
            .and_then(|s| s.get("properties"))
            .and_then(Value::as_object)
        else {
            return out;
        };
        for (prop, schema) in props {
            let Some(header) = schema.get("x-mcp-header").and_then(Value::as_str) else {
                continue;
            };
            let text = match args.get(prop) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Bool(b)) => b.to_string(),
                Some(Value::Number(n)) => n.to_string(),
                _ => continue,
            };
            let Ok(name) = HeaderName::from_bytes(format!("mcp-param-{header}").as_bytes()) else {
                continue;
            };
            if let Ok(v) = HeaderValue::from_str(&header_text(&text)) {
                out.push((name, v));
            }
        }
        out
    }
}

/// A value as header text: as is when it is plain visible ASCII without surrounding
/// whitespace, otherwise the SEP-2243 `=?base64?…?=` form.
pub fn header_text(value: &str) -> String {
    use base64::Engine;
    let plain = value.bytes().all(|b| (0x20..0x7f).contains(&b)) && value.trim() == value;
    if plain && !(value.starts_with("=?base64?") && value.ends_with("?=")) {
        value.to_owned()
    } else {
        format!(
            "=?base64?{}?=",
            base64::engine::general_purpose::STANDARD.encode(value.as_bytes())
        )
    }
}

async fn req_send(
    egress: &Egress,
    req: EgressRequest,
) -> Result<latchkey_egress::EgressResponse, McpError> {
    Ok(egress.send(req).await?)
}

/// `Mcp-Name` for methods that name a target (SEP-2243): `params.name` for tools and
/// prompts, `params.uri` for resources. Values that are not plain header text are left out.
pub fn mcp_name(method: &str, params: Option<&Value>) -> Option<String> {
    let key = match method {
        "tools/call" | "prompts/get" => "name",
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => "uri",
        _ => return None,
    };
    let v = params?.get(key)?.as_str()?;
    v.bytes()
        .all(|b| (0x20..0x7f).contains(&b))
        .then(|| v.to_owned())
}

async fn find_response(headers: &HeaderMap, body: &Bytes, id: &Value) -> Option<Value> {
    let is_sse = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.trim_start()
                .to_ascii_lowercase()
                .starts_with("text/event-stream")
        });
    if !is_sse {
        return serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| envelope::response_with_id(v, id));
    }
    for msg in sse_messages(body.clone()).await {
        if let Some(v) = envelope::response_with_id(msg, id) {
            return Some(v);
        }
    }
    None
}

/// The JSON messages of an SSE body (events with JSON `data`), in order.
pub async fn sse_messages(body: Bytes) -> Vec<Value> {
    let stream = futures_util::stream::iter([Ok::<Bytes, std::io::Error>(body)]);
    let mut sse = sse_stream::SseStream::from_bytes_stream(stream);
    let mut out = Vec::new();
    while let Some(item) = sse.next().await {
        let Ok(ev) = item else { break };
        if let Some(data) = ev.data.as_deref()
            && let Ok(v) = serde_json::from_str::<Value>(data)
        {
            out.push(v);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stateless_client() -> McpClient {
        let egress =
            latchkey_egress::Egress::new(latchkey_egress::EgressConfig::default()).unwrap();
        McpClient::new(
            egress,
            "https://mcp.example/mcp",
            UrlSource::Operator,
            ProtocolVersion::V_2026_07_28,
        )
    }

    #[tokio::test]
    async fn sse_body_is_scanned_for_the_matching_response() {
        let body = Bytes::from_static(
            b"event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\n\n\
              id: 7\nevent: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":2,\"result\":{\"tools\":[]}}\n\n",
        );
        let mut h = HeaderMap::new();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        let r = find_response(&h, &body, &json!(2)).await.unwrap();
        assert_eq!(r["result"]["tools"], json!([]));
        assert!(find_response(&h, &body, &json!(3)).await.is_none());
    }

    #[test]
    fn header_text_encoding() {
        assert_eq!(header_text("us-west1"), "us-west1");
        assert_eq!(header_text("us west 1"), "us west 1");
        assert_eq!(header_text(""), "");
        assert_eq!(header_text(" padded "), "=?base64?IHBhZGRlZCA=?=");
        assert_eq!(
            header_text("Hello, 世界"),
            "=?base64?SGVsbG8sIOS4lueVjA==?="
        );
        assert_eq!(header_text("a\tb"), "=?base64?YQli?=");
        assert_eq!(header_text("=?base64?x?="), "=?base64?PT9iYXNlNjQ/eD89?=");
    }

    #[test]
    fn annotated_arguments_become_param_headers() {
        let mut c = stateless_client();
        c.remember_tools(
            &json!({"tools": [{"name": "t", "inputSchema": {"type": "object", "properties": {
                "region": {"type": "string", "x-mcp-header": "Region"},
                "n": {"type": "integer", "x-mcp-header": "Priority"},
                "v": {"type": "boolean", "x-mcp-header": "Verbose"},
                "plain": {"type": "string"}
            }}}]}),
        );
        let msg = c.request("tools/call", Some(json!({"name": "t", "arguments": {"region": "eu", "n": 42, "v": null, "plain": "x"}})));
        let h: HeaderMap = c.wire_headers(&msg).into_iter().collect();
        assert_eq!(h["mcp-param-region"], "eu");
        assert_eq!(h["mcp-param-priority"], "42");
        assert!(h.get("mcp-param-verbose").is_none(), "null is omitted");
        assert_eq!(h["mcp-method"], "tools/call");
        assert_eq!(h["mcp-name"], "t");
        assert_eq!(h["mcp-protocol-version"], "2026-07-28");
        assert_eq!(
            msg["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"],
            "2026-07-28"
        );
    }

    #[test]
    fn renegotiation_follows_the_servers_supported_list() {
        let mut c = stateless_client();
        let mut msg = c.request("tools/list", None);
        let ex = |data: Value| Exchange {
            status: StatusCode::BAD_REQUEST,
            headers: HeaderMap::new(),
            response: Some(
                json!({"jsonrpc": "2.0", "id": 1, "error": {"code": UNSUPPORTED_VERSION, "message": "x", "data": data}}),
            ),
        };
        assert!(c.renegotiate(&ex(json!({"supported": ["2026-07-28"]})), &mut msg));
        assert_eq!(c.version().as_str(), "2026-07-28");
        assert!(
            !c.renegotiate(&ex(json!({"supported": ["1999-01-01"]})), &mut msg),
            "nothing in common"
        );
        assert!(!c.renegotiate(&ex(json!({})), &mut msg));
        let other = Exchange {
            status: StatusCode::BAD_REQUEST,
            headers: HeaderMap::new(),
            response: None,
        };
        assert!(!c.renegotiate(&other, &mut msg));
    }

    #[test]
    fn input_required_results_produce_a_retry_with_state_echoed() {
        let mut c = stateless_client();
        let req = c.request("tools/call", Some(json!({"name": "t", "arguments": {}})));
        let decline = |_: &str, _: &Value| json!({"action": "decline"});
        let state = "{\"nonce\":\"n\",\"originalId\":1}";
        let result = json!({"resultType": "input_required", "requestState": state,
            "inputRequests": {"confirm": {"method": "elicitation/create", "params": {"message": "ok?"}}}});
        let retry = c.input_required_retry(&req, &result, decline).unwrap();
        assert_ne!(retry["id"], req["id"]);
        assert_eq!(retry["params"]["requestState"], state);
        assert_eq!(
            retry["params"]["inputResponses"]["confirm"]["action"],
            "decline"
        );
        assert_eq!(retry["params"]["name"], "t");
        // no requestState from the server: none in the retry
        let result = json!({"resultType": "input_required", "inputRequests": {}});
        let retry2 = c.input_required_retry(&retry, &result, decline).unwrap();
        assert!(retry2["params"].get("requestState").is_none());
        // complete, or no resultType at all: nothing to retry
        assert!(
            c.input_required_retry(&req, &json!({"content": []}), decline)
                .is_none()
        );
        assert!(
            c.input_required_retry(&req, &json!({"resultType": "complete"}), decline)
                .is_none()
        );
    }

    #[test]
    fn mcp_name_rules() {
        assert_eq!(
            mcp_name("tools/call", Some(&json!({"name":"test-tool"}))),
            Some("test-tool".into())
        );
        assert_eq!(
            mcp_name("resources/read", Some(&json!({"uri":"file:///a"}))),
            Some("file:///a".into())
        );
        assert_eq!(mcp_name("tools/list", Some(&json!({}))), None);
        assert_eq!(
            mcp_name("tools/call", Some(&json!({"name":"bad\nname"}))),
            None
        );
    }
}
