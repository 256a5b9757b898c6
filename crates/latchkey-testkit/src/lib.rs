//! A scripted OAuth authorization server and MCP resource server, served over real HTTP
//! on loopback, for Latchkey's integration tests.
//!
//! The authorization server issues rotating refresh tokens with reuse detection (a
//! reused refresh token revokes its whole family, as RFC 9700 §4.14 recommends), checks
//! PKCE S256, can demand DPoP nonces, can redirect its token endpoint (to test that
//! nobody follows), and records every request so tests assert on what was sent.
//!
//! Its token endpoint can be switched into fault modes at runtime ([`TokenFault`]); it
//! counts token requests, grants served per grant type and refresh-token reuse
//! detections. The MCP resource at `/mcp` ([`mcp`]) answers `initialize`, `ping`,
//! `tools/list` and `tools/call` (`echo`, `add`) for tokens the server issued and still
//! considers valid, and has its own fault modes ([`McpFault`]).
//!
//! Test code: panics on impossible states are acceptable here, but none are needed.
#![forbid(unsafe_code)]

pub mod faults;
pub mod idp;
pub mod logs;
pub mod mcp;
pub mod netcut;
pub mod pg;
mod relaying;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use faults::Armed;
pub use faults::{McpFault, TokenFault};

/// How the scripted authorization server behaves.
#[derive(Debug, Clone)]
pub struct AsConfig {
    /// Issue a new refresh token on every refresh.
    pub rotate_refresh_tokens: bool,
    /// Require this DPoP nonce on token requests that carry a DPoP proof.
    pub dpop_nonce: Option<String>,
    /// Answer every token request with a 302 to this URL.
    pub token_redirect_to: Option<String>,
    /// Advertise and send RFC 9207 `iss`.
    pub iss_supported: bool,
    /// `expires_in` of access tokens.
    pub access_ttl: u64,
    /// Advertise a registration endpoint.
    pub registration: bool,
    /// `token_endpoint_auth_methods_supported`.
    pub auth_methods: Vec<String>,
    /// Scopes (space-separated) the resource server demands: sent in its challenges,
    /// and a valid token lacking any of them gets a 403 `insufficient_scope`.
    /// Changeable at runtime with [`ScriptedServer::set_required_scope`].
    pub required_scope: Option<String>,
    /// Advertise `code_challenge_methods_supported: ["S256"]`.
    pub advertise_pkce: bool,
    /// Issue a refresh token with the code grant (an AS that does not, for a client
    /// that did not get `offline_access`, leaves a connection that cannot be renewed).
    pub issue_refresh_tokens: bool,
}

impl Default for AsConfig {
    fn default() -> Self {
        Self {
            rotate_refresh_tokens: true,
            dpop_nonce: None,
            token_redirect_to: None,
            iss_supported: true,
            access_ttl: 3600,
            registration: true,
            auth_methods: vec![
                "client_secret_basic".into(),
                "client_secret_post".into(),
                "none".into(),
            ],
            required_scope: None,
            advertise_pkce: true,
            issue_refresh_tokens: true,
        }
    }
}

/// An error the authorization endpoint answers with instead of approving (RFC 6749
/// §4.1.2.1): the browser is redirected back with `error`, `error_description`,
/// `state` and (when `iss` is supported) `iss`, and no code is issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizeError {
    /// The `error` code, e.g. `access_denied`.
    pub error: String,
    /// The `error_description` (untrusted text as far as a client is concerned).
    pub description: Option<String>,
}

/// One request the server received: path, headers (lower-case names) and form/JSON body.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Path.
    pub path: String,
    /// Headers.
    pub headers: HashMap<String, String>,
    /// Form fields or JSON body fields.
    pub body: HashMap<String, String>,
}

/// An access token the server issued.
#[derive(Debug)]
struct AccessToken {
    scope: String,
    /// The refresh-token family it was issued with, if any.
    family: Option<u64>,
    issued: Instant,
    /// Revoked through `/revoke`.
    revoked: bool,
    /// Expired early by [`ScriptedServer::expire_access_tokens`].
    expired: bool,
}

/// What the server thinks of a presented access token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TokenStatus {
    Unknown,
    Expired,
    Revoked,
    Valid { scope: String },
}

#[derive(Debug, Default)]
struct AsState {
    requests: Vec<Recorded>,
    codes: HashMap<String, (String, String)>, // code -> (code_challenge, scope)
    refresh: HashMap<String, (u64, bool)>,    // refresh token -> (family, still current)
    family_scope: HashMap<u64, String>,       // family -> scope granted at its start
    revoked_families: Vec<u64>,
    access: HashMap<String, AccessToken>,
    issued_access: Vec<String>,
    revocations: Vec<String>,
    next: u64,
    token_fault: Armed<TokenFault>,
    grants: HashMap<String, usize>,
    reuse_detections: usize,
    required_scope: Option<String>,
    mcp_fault: Armed<McpFault>,
    mcp_requests: usize,
    last_mcp_authorization: Option<String>,
    mcp_sse: bool,
    sessions: HashSet<String>,
    next_session: u64,
    authorize_error: Option<AuthorizeError>,
    metadata_status: Option<u16>,
    /// Requests are not recorded (see [`ScriptedServer::set_recording`]).
    recording_off: bool,
    /// Client ids handed out by `/register` since the last
    /// [`ScriptedServer::forget_clients`].
    registered_clients: Vec<String>,
    /// Client ids the server no longer knows: its token endpoint answers
    /// `invalid_client` to them.
    forgotten_clients: HashSet<String>,
    /// How many times it forgot its clients (a registration's id names it).
    client_generation: u64,
    /// Static-header mode ([`ScriptedServer::require_header`]): the header's name
    /// (lower case) and the values it accepts in place of a Bearer token.
    required_header: Option<(String, Vec<String>)>,
    /// Prompts, resources and completions are offered, their texts naming this label
    /// ([`ScriptedServer::offer_primitives`]).
    primitives: Option<String>,
}

impl AsState {
    fn insert_access(&mut self, at: String, scope: String, family: Option<u64>) {
        self.access.insert(
            at.clone(),
            AccessToken {
                scope,
                family,
                issued: Instant::now(),
                revoked: false,
                expired: false,
            },
        );
        self.issued_access.push(at);
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Shared {
    cfg: AsConfig,
    base: String,
    state: Arc<Mutex<AsState>>,
    /// The relaying tools' state ([`relaying`]).
    relaying: Arc<relaying::Relaying>,
    /// Messages for the open standalone GET streams ([`ScriptedServer::push`]); `None`
    /// ends them ([`ScriptedServer::close_streams`]).
    pushes: tokio::sync::broadcast::Sender<Option<Value>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, AsState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `token` is an access token this server issued and still honours.
    pub(crate) fn access_status(&self, token: &str) -> TokenStatus {
        let st = self.lock();
        let Some(t) = st.access.get(token) else {
            return TokenStatus::Unknown;
        };
        let family_revoked = t.family.is_some_and(|f| st.revoked_families.contains(&f));
        if t.revoked || family_revoked {
            return TokenStatus::Revoked;
        }
        if t.expired || t.issued.elapsed() >= Duration::from_secs(self.cfg.access_ttl) {
            return TokenStatus::Expired;
        }
        TokenStatus::Valid {
            scope: t.scope.clone(),
        }
    }
}

/// A running scripted server (authorization server and MCP resource on one origin).
#[derive(Debug)]
pub struct ScriptedServer {
    /// `http://localhost:<port>`.
    pub base: String,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ScriptedServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ScriptedServer {
    /// Starts a server on an ephemeral loopback port.
    pub async fn start(cfg: AsConfig) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let base = format!("http://localhost:{}", listener.local_addr()?.port());
        let state = AsState {
            required_scope: cfg.required_scope.clone(),
            ..AsState::default()
        };
        let shared = Shared {
            cfg,
            base: base.clone(),
            state: Arc::new(Mutex::new(state)),
            relaying: Arc::default(),
            pushes: tokio::sync::broadcast::channel(64).0,
        };
        let app = Router::new()
            .route("/.well-known/oauth-authorization-server", get(metadata))
            .route("/.well-known/oauth-protected-resource/mcp", get(prm))
            .route("/authorize", get(authorize))
            .route("/token", post(token))
            .route("/register", post(register))
            .route("/revoke", post(revoke))
            .route("/mcp", post(mcp::handle).get(mcp::stream))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { base, shared, task })
    }

    /// The MCP endpoint.
    pub fn mcp_url(&self) -> String {
        format!("{}/mcp", self.base)
    }

    /// Every JSON-RPC response a client POSTed to `/mcp` (answers to the requests of
    /// the `ask` tool, [`relaying`]), in order.
    pub fn relayed_answers(&self) -> Vec<Value> {
        lock_vec(&self.shared.relaying.answers)
    }

    /// Makes `tools/list` ask the client `method` (a request of the server's on the
    /// listing's SSE answer) and wait up to 20 s for the answer before listing; `None`
    /// lists at once again. The answer is kept with [`ScriptedServer::relayed_answers`].
    pub fn ask_during_tools_list(&self, method: Option<&str>) {
        relaying::set_ask_in_list(&self.shared, method);
    }

    /// The params of every `notifications/cancelled` a client POSTed to `/mcp`.
    pub fn cancellations(&self) -> Vec<Value> {
        lock_vec(&self.shared.relaying.cancellations)
    }

    /// `{id, progressToken}` of each call of a relaying tool (`null`: no token).
    pub fn relaying_calls(&self) -> Vec<Value> {
        lock_vec(&self.shared.relaying.calls)
    }

    /// Answers the authorization server metadata endpoint with this status (and no
    /// document) instead of the metadata; `None` restores it. For a broken discovery
    /// chain: the protected resource metadata still names this server.
    pub fn set_as_metadata_status(&self, status: Option<u16>) {
        self.shared.lock().metadata_status = status;
    }

    /// Records requests (the default) or stops recording them, for long runs whose
    /// request log would otherwise grow without bound (a soak). Counters such as
    /// [`Self::grants_served`], [`Self::mcp_requests`] and [`Self::reuse_detections`]
    /// keep counting; [`Self::requests`] and [`Self::token_requests`] see only what was
    /// recorded.
    pub fn set_recording(&self, on: bool) {
        self.shared.lock().recording_off = !on;
    }

    /// Every request to `path`, in order.
    pub fn requests(&self, path: &str) -> Vec<Recorded> {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    /// Tokens revoked through `/revoke`.
    pub fn revocations(&self) -> Vec<String> {
        self.shared.lock().revocations.clone()
    }

    /// Mints a refresh token directly (as if deposited from elsewhere).
    pub fn mint_refresh_token(&self) -> String {
        let mut s = self.shared.lock();
        s.next += 1;
        let family = s.next;
        let rt = format!("rt-{family}-0");
        s.refresh.insert(rt.clone(), (family, true));
        rt
    }

    /// Mints an access token with `scope` directly (as if issued by a grant); it
    /// expires after `access_ttl` like any other.
    pub fn mint_access_token(&self, scope: &str) -> String {
        let mut s = self.shared.lock();
        s.next += 1;
        let at = format!("at-{}", s.next);
        s.insert_access(at.clone(), scope.to_owned(), None);
        at
    }

    /// Every refresh token known to the server (minted or issued), in no order.
    pub fn issued_refresh_tokens(&self) -> Vec<String> {
        self.shared.lock().refresh.keys().cloned().collect()
    }

    /// Every access token issued (by grants or [`Self::mint_access_token`]), in order.
    pub fn issued_access_tokens(&self) -> Vec<String> {
        self.shared.lock().issued_access.clone()
    }

    /// Treats every access token issued so far as expired (new ones are unaffected).
    pub fn expire_access_tokens(&self) {
        for t in self.shared.lock().access.values_mut() {
            t.expired = true;
        }
    }

    /// Arms a token-endpoint fault for every subsequent `/token` request until replaced;
    /// [`TokenFault::None`] restores normal behaviour.
    pub fn set_token_fault(&self, fault: TokenFault) {
        self.shared.lock().token_fault = Armed::new(fault, None);
    }

    /// Arms a token-endpoint fault for the next `times` `/token` requests only.
    pub fn set_token_fault_for(&self, fault: TokenFault, times: usize) {
        self.shared.lock().token_fault = Armed::new(fault, Some(times));
    }

    /// How many requests reached `/token` (whatever they were answered).
    pub fn token_requests(&self) -> usize {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|r| r.path == "/token")
            .count()
    }

    /// Successful token grants so far, by `grant_type`.
    pub fn grants_served(&self) -> HashMap<String, usize> {
        self.shared.lock().grants.clone()
    }

    /// Successful token grants of one `grant_type` (`"authorization_code"`,
    /// `"refresh_token"`, `"client_credentials"`).
    pub fn grants_served_for(&self, grant_type: &str) -> usize {
        self.shared
            .lock()
            .grants
            .get(grant_type)
            .copied()
            .unwrap_or(0)
    }

    /// How many times a rotated-out refresh token was presented again, which revoked
    /// its whole family (and the access tokens issued with it).
    pub fn reuse_detections(&self) -> usize {
        self.shared.lock().reuse_detections
    }

    /// Arms an MCP fault for every subsequent `/mcp` request until replaced, except
    /// [`McpFault::Unauthorized`]`(n)`, which applies to the next `n` requests only;
    /// [`McpFault::None`] restores normal behaviour.
    pub fn set_mcp_fault(&self, fault: McpFault) {
        let times = match fault {
            McpFault::Unauthorized(n) => Some(n),
            _ => None,
        };
        self.shared.lock().mcp_fault = Armed::new(fault, times);
    }

    /// Arms an MCP fault for the next `times` `/mcp` requests only (for
    /// [`McpFault::Unauthorized`] this count wins over the variant's own).
    pub fn set_mcp_fault_for(&self, fault: McpFault, times: usize) {
        self.shared.lock().mcp_fault = Armed::new(fault, Some(times));
    }

    /// Replaces the scope the MCP resource demands (see [`AsConfig::required_scope`]).
    pub fn set_required_scope(&self, scope: Option<String>) {
        self.shared.lock().required_scope = scope;
    }

    /// Forgets every client registered so far, as an authorization server restarted
    /// with in-memory storage does: its token endpoint answers 401 `invalid_client` to
    /// them, and `/register` hands out new client ids.
    pub fn forget_clients(&self) {
        let mut st = self.shared.lock();
        let ids = std::mem::take(&mut st.registered_clients);
        st.forgotten_clients.extend(ids);
        st.client_generation += 1;
    }

    /// Makes the authorization endpoint refuse every subsequent request with `error`
    /// instead of approving it (`None`: approve again, the default).
    pub fn set_authorize_error(&self, error: Option<AuthorizeError>) {
        self.shared.lock().authorize_error = error;
    }

    /// Answers MCP requests as a one-event `text/event-stream` instead of JSON.
    pub fn set_mcp_sse(&self, sse: bool) {
        self.shared.lock().mcp_sse = sse;
    }

    /// Forgets every MCP session, so requests carrying an old `Mcp-Session-Id` get a 404.
    pub fn expire_mcp_sessions(&self) {
        self.shared.lock().sessions.clear();
    }

    /// The `Mcp-Session-Id`s handed out by `initialize` and not expired.
    pub fn mcp_sessions(&self) -> Vec<String> {
        let mut v: Vec<String> = self.shared.lock().sessions.iter().cloned().collect();
        v.sort();
        v
    }

    /// How many requests reached `/mcp` (whatever they were answered).
    pub fn mcp_requests(&self) -> usize {
        self.shared.lock().mcp_requests
    }

    /// The `Authorization` header of the last `/mcp` request (`None` if it had none,
    /// or if no request came yet).
    pub fn last_mcp_authorization(&self) -> Option<String> {
        self.shared.lock().last_mcp_authorization.clone()
    }

    /// Makes the MCP resource offer prompts, resources and completions too (`None`: tools
    /// only, the default): `initialize` advertises them; `prompts/list` has `greet` (one
    /// required argument `name`), `prompts/get` greets `name` from `label`;
    /// `resources/list` has `file:///notes.txt`, `resources/templates/list` has
    /// `file:///docs/{name}`, and `resources/read` answers both with a text naming `label`
    /// (anything else: `-32002`); `completion/complete` offers `alice`, `albert`, `bob`
    /// for the prompt's argument and `readme`, `roadmap` for the template's, those
    /// starting with the value typed, each with `@label` appended. It declares
    /// `logging` (`logging/setLevel` answers `{}`) and resource subscriptions
    /// (`resources/subscribe` and `resources/unsubscribe` answer `{}` for
    /// `file:///notes.txt`, `-32002` for anything else); the level and the URI are
    /// recorded. It declares `listChanged` for tools, prompts and resources (what it
    /// sends on its GET stream is what [`ScriptedServer::push`] is given). The unlisted
    /// prompt `ask` and resource `ask:///name` ask a form elicitation before answering
    /// (see the `relaying` module).
    pub fn offer_primitives(&self, label: Option<&str>) {
        self.shared.lock().primitives = label.map(str::to_owned);
    }

    /// Sends `message` (a JSON-RPC notification) on every standalone GET stream open
    /// now (a server offering primitives answers `GET /mcp` of a session it knows with an
    /// event stream; others 405); how many streams it went to.
    pub fn push(&self, message: Value) -> usize {
        self.shared.pushes.send(Some(message)).unwrap_or(0)
    }

    /// Ends every standalone GET stream open now, as a server that drops its streams
    /// (a restart, a proxy's idle timeout) does; how many it ended. The sessions stay
    /// known, so a client may open a new stream.
    pub fn close_streams(&self) -> usize {
        self.shared.pushes.send(None).unwrap_or(0)
    }

    /// How many standalone GET streams are open now.
    pub fn open_streams(&self) -> usize {
        self.shared.pushes.receiver_count()
    }

    /// Turns the MCP resource into a static-header (API key) server: every `/mcp`
    /// request must carry the header `name` with one of `values` (no Bearer token is
    /// looked at); a missing or wrong value gets a 401 without a Bearer challenge, as
    /// API-key servers answer. `None` turns the mode off.
    pub fn require_header(&self, header: Option<(&str, &[&str])>) {
        self.shared.lock().required_header = header.map(|(name, values)| {
            (
                name.to_ascii_lowercase(),
                values.iter().map(|v| (*v).to_owned()).collect(),
            )
        });
    }
}

fn lock_vec(m: &Mutex<Vec<Value>>) -> Vec<Value> {
    m.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

pub(crate) fn record(s: &Shared, path: &str, headers: &HeaderMap, body: HashMap<String, String>) {
    if s.lock().recording_off {
        return;
    }
    let headers = headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                v.to_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    s.lock().requests.push(Recorded {
        path: path.into(),
        headers,
        body,
    });
}

async fn metadata(State(s): State<Shared>, headers: HeaderMap) -> Response {
    record(
        &s,
        "/.well-known/oauth-authorization-server",
        &headers,
        HashMap::new(),
    );
    if let Some(status) = s.lock().metadata_status {
        return StatusCode::from_u16(status)
            .unwrap_or(StatusCode::NOT_FOUND)
            .into_response();
    }
    let b = &s.base;
    let mut m = json!({
        "issuer": b,
        "authorization_endpoint": format!("{b}/authorize"),
        "token_endpoint": format!("{b}/token"),
        "revocation_endpoint": format!("{b}/revoke"),
        "response_types_supported": ["code"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": s.cfg.auth_methods,
        "authorization_response_iss_parameter_supported": s.cfg.iss_supported,
        "scopes_supported": ["mcp:read", "mcp:write", "offline_access"],
    });
    if !s.cfg.advertise_pkce
        && let Some(o) = m.as_object_mut()
    {
        o.remove("code_challenge_methods_supported");
    }
    if s.cfg.registration {
        m["registration_endpoint"] = format!("{b}/register").into();
    }
    if s.cfg.dpop_nonce.is_some() {
        m["dpop_signing_alg_values_supported"] = json!(["ES256"]);
    }
    axum::Json(m).into_response()
}

async fn prm(State(s): State<Shared>, headers: HeaderMap) -> Response {
    record(
        &s,
        "/.well-known/oauth-protected-resource/mcp",
        &headers,
        HashMap::new(),
    );
    axum::Json(json!({"resource": format!("{}/mcp", s.base), "authorization_servers": [s.base]}))
        .into_response()
}

async fn authorize(
    State(s): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    record(&s, "/authorize", &headers, q.clone());
    let refusal = s.lock().authorize_error.clone();
    if let Some(refusal) = refusal {
        let Some(mut redirect) = q.get("redirect_uri").and_then(|r| url::Url::parse(r).ok()) else {
            return (StatusCode::BAD_REQUEST, "redirect_uri").into_response();
        };
        {
            let mut qp = redirect.query_pairs_mut();
            qp.append_pair("error", &refusal.error);
            if let Some(d) = &refusal.description {
                qp.append_pair("error_description", d);
            }
            if let Some(st) = q.get("state") {
                qp.append_pair("state", st);
            }
            if s.cfg.iss_supported {
                qp.append_pair("iss", &s.base);
            }
        }
        return (
            StatusCode::FOUND,
            [(header::LOCATION, redirect.to_string())],
        )
            .into_response();
    }
    let code = {
        let mut st = s.lock();
        st.next += 1;
        let code = format!("code-{}", st.next);
        st.codes.insert(
            code.clone(),
            (
                q.get("code_challenge").cloned().unwrap_or_default(),
                q.get("scope").cloned().unwrap_or_default(),
            ),
        );
        code
    };
    let Some(redirect) = q.get("redirect_uri").and_then(|r| url::Url::parse(r).ok()) else {
        return (StatusCode::BAD_REQUEST, "redirect_uri").into_response();
    };
    let mut redirect = redirect;
    {
        let mut qp = redirect.query_pairs_mut();
        qp.append_pair("code", &code);
        if let Some(st) = q.get("state") {
            qp.append_pair("state", st);
        }
        if s.cfg.iss_supported {
            qp.append_pair("iss", &s.base);
        }
    }
    (
        StatusCode::FOUND,
        [(header::LOCATION, redirect.to_string())],
    )
        .into_response()
}

fn oauth_error(status: StatusCode, code: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": code, "error_description": format!("scripted {code}")})),
    )
        .into_response()
}

fn issue(
    st: &mut AsState,
    cfg: &AsConfig,
    scope: &str,
    family: Option<u64>,
    token_type: &str,
) -> Value {
    st.next += 1;
    let n = st.next;
    let at = format!("at-{n}");
    let mut body =
        json!({"access_token": at, "token_type": token_type, "expires_in": cfg.access_ttl});
    if !scope.is_empty() {
        body["scope"] = scope.into();
    }
    let family = family.unwrap_or(n);
    st.insert_access(at, scope.to_owned(), Some(family));
    st.family_scope
        .entry(family)
        .or_insert_with(|| scope.to_owned());
    let rt = format!("rt-{family}-{n}");
    st.refresh.insert(rt.clone(), (family, true));
    body["refresh_token"] = rt.into();
    body
}

fn served(st: &mut AsState, grant_type: &str, body: Value) -> Response {
    *st.grants.entry(grant_type.to_owned()).or_default() += 1;
    axum::Json(body).into_response()
}

async fn token(
    State(s): State<Shared>,
    headers: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    record(&s, "/token", &headers, f.clone());
    let fault = s.lock().token_fault.take();
    // The grant is served (a refresh token rotated) before the wait: a client that goes
    // away meanwhile never learns the new tokens.
    let late = match fault {
        TokenFault::SlowAnswer(d) => Some(d),
        _ => None,
    };
    let r = token_served(&s, headers, f, fault).await;
    if let Some(d) = late {
        tokio::time::sleep(d).await;
    }
    r
}

async fn token_served(
    s: &Shared,
    headers: HeaderMap,
    f: HashMap<String, String>,
    fault: TokenFault,
) -> Response {
    if let TokenFault::Slow(d) = fault {
        tokio::time::sleep(d).await;
    }
    if let Some(r) = faults::token_fault_response(&fault) {
        return r;
    }
    if let Some(to) = &s.cfg.token_redirect_to {
        return (StatusCode::FOUND, [(header::LOCATION, to.clone())]).into_response();
    }
    let dpop = headers
        .get("dpop")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if let (Some(nonce), Some(proof)) = (&s.cfg.dpop_nonce, &dpop) {
        let claims = proof
            .split('.')
            .nth(1)
            .and_then(|p| URL_SAFE_NO_PAD.decode(p).ok())
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .unwrap_or(Value::Null);
        if claims.get("nonce").and_then(Value::as_str) != Some(nonce.as_str()) {
            let mut r = oauth_error(StatusCode::BAD_REQUEST, "use_dpop_nonce");
            if let Ok(v) = HeaderValue::from_str(nonce) {
                r.headers_mut().insert("dpop-nonce", v);
            }
            return r;
        }
    }
    let token_type = if dpop.is_some() { "DPoP" } else { "Bearer" };
    let cfg = s.cfg.clone();
    let mut st = s.lock();
    if client_id(&headers, &f).is_some_and(|id| st.forgotten_clients.contains(&id)) {
        return faults::token_fault_response(&TokenFault::OAuthError {
            status: 401,
            error: "invalid_client".into(),
        })
        .unwrap_or_else(|| oauth_error(StatusCode::UNAUTHORIZED, "invalid_client"));
    }
    match f.get("grant_type").map(String::as_str) {
        Some("authorization_code") => {
            let Some((challenge, scope)) = f.get("code").and_then(|c| st.codes.remove(c)) else {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
            };
            let verifier = f.get("code_verifier").cloned().unwrap_or_default();
            if URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())) != challenge {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
            }
            let mut body = issue(&mut st, &cfg, &scope, None, token_type);
            if !cfg.issue_refresh_tokens
                && let Some(m) = body.as_object_mut()
            {
                m.remove("refresh_token");
            }
            served(&mut st, "authorization_code", body)
        }
        Some("refresh_token") => {
            let rt = f.get("refresh_token").cloned().unwrap_or_default();
            let Some((family, current)) = st.refresh.get(&rt).copied() else {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
            };
            if st.revoked_families.contains(&family) {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
            }
            if !current {
                // Reuse of a rotated-out token: revoke the whole family.
                st.revoked_families.push(family);
                st.reuse_detections += 1;
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
            }
            let scope = f.get("scope").cloned().unwrap_or_default();
            // An omitted scope means the scope originally granted (RFC 6749 §6); the
            // response still echoes only what was asked for, as before.
            let granted = match f.get("scope") {
                Some(sc) => sc.clone(),
                None => st.family_scope.get(&family).cloned().unwrap_or_default(),
            };
            if !cfg.rotate_refresh_tokens {
                st.next += 1;
                let at = format!("at-{}", st.next);
                st.insert_access(at.clone(), granted, Some(family));
                let body = json!({"access_token": at, "token_type": token_type, "expires_in": cfg.access_ttl});
                return served(&mut st, "refresh_token", body);
            }
            st.refresh.insert(rt, (family, false));
            let body = issue(&mut st, &cfg, &scope, Some(family), token_type);
            if let Some(at) = body.get("access_token").and_then(Value::as_str)
                && let Some(t) = st.access.get_mut(at)
            {
                t.scope = granted;
            }
            served(&mut st, "refresh_token", body)
        }
        Some("client_credentials") => {
            let scope = f.get("scope").cloned().unwrap_or_default();
            let mut body = issue(&mut st, &cfg, &scope, None, token_type);
            if let Some(m) = body.as_object_mut() {
                m.remove("refresh_token");
            }
            served(&mut st, "client_credentials", body)
        }
        _ => oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type"),
    }
}

async fn register(
    State(s): State<Shared>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    let fields = body
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.to_string())).collect())
        .unwrap_or_default();
    record(&s, "/register", &headers, fields);
    let method = body
        .get("token_endpoint_auth_method")
        .and_then(Value::as_str)
        .unwrap_or("client_secret_basic");
    let client_id = {
        let mut st = s.lock();
        let id = match st.client_generation {
            0 => "dcr-client".to_owned(),
            n => format!("dcr-client-{n}"),
        };
        st.registered_clients.push(id.clone());
        id
    };
    let mut resp = json!({"client_id": client_id, "token_endpoint_auth_method": method});
    if method != "none" {
        resp["client_secret"] = "dcr-secret".into();
    }
    (StatusCode::CREATED, axum::Json(resp)).into_response()
}

async fn revoke(
    State(s): State<Shared>,
    headers: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    record(&s, "/revoke", &headers, f.clone());
    if let Some(t) = f.get("token") {
        let mut st = s.lock();
        st.revocations.push(t.clone());
        if let Some((family, _)) = st.refresh.get(t).copied() {
            st.revoked_families.push(family);
        }
        if let Some(at) = st.access.get_mut(t) {
            at.revoked = true;
        }
    }
    StatusCode::OK.into_response()
}

/// The client a token request authenticates as: HTTP Basic, else the `client_id` field.
fn client_id(headers: &HeaderMap, f: &HashMap<String, String>) -> Option<String> {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|v| STANDARD.decode(v).ok())
        .and_then(|raw| String::from_utf8(raw).ok())
        .and_then(|raw| raw.split_once(':').map(|(id, _)| id.to_owned()));
    basic.or_else(|| f.get("client_id").cloned())
}

/// `Authorization: Basic` decoded to `(client_id, secret)`.
pub fn basic_credentials(r: &Recorded) -> Option<(String, String)> {
    let v = r.headers.get("authorization")?.strip_prefix("Basic ")?;
    let raw = String::from_utf8(STANDARD.decode(v).ok()?).ok()?;
    let (id, secret) = raw.split_once(':')?;
    Some((id.to_owned(), secret.to_owned()))
}
