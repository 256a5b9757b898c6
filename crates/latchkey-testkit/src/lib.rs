//! A scripted OAuth authorization server and MCP resource server, served over real HTTP
//! on loopback, for Latchkey's integration tests.
//!
//! The authorization server issues rotating refresh tokens with reuse detection (a
//! reused refresh token revokes its whole family, as RFC 9700 §4.14 recommends), checks
//! PKCE S256, can demand DPoP nonces, can redirect its token endpoint (to test that
//! nobody follows), and records every request so tests assert on what was sent.
//!
//! Test code: panics on impossible states are acceptable here, but none are needed.
#![forbid(unsafe_code)]

pub mod idp;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

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
    /// Scopes the resource server demands (sent in its challenge).
    pub required_scope: Option<String>,
    /// Advertise `code_challenge_methods_supported: ["S256"]`.
    pub advertise_pkce: bool,
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
        }
    }
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

#[derive(Debug, Default)]
struct AsState {
    requests: Vec<Recorded>,
    codes: HashMap<String, (String, String)>, // code -> (code_challenge, scope)
    refresh: HashMap<String, (u64, bool)>,    // refresh token -> (family, still current)
    revoked_families: Vec<u64>,
    access: HashMap<String, String>, // access token -> scope
    revocations: Vec<String>,
    next: u64,
}

#[derive(Debug, Clone)]
struct Shared {
    cfg: AsConfig,
    base: String,
    state: Arc<Mutex<AsState>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, AsState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
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
        let shared = Shared {
            cfg,
            base: base.clone(),
            state: Arc::new(Mutex::new(AsState::default())),
        };
        let app = Router::new()
            .route("/.well-known/oauth-authorization-server", get(metadata))
            .route("/.well-known/oauth-protected-resource/mcp", get(prm))
            .route("/authorize", get(authorize))
            .route("/token", post(token))
            .route("/register", post(register))
            .route("/revoke", post(revoke))
            .route("/mcp", post(mcp))
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
}

fn record(s: &Shared, path: &str, headers: &HeaderMap, body: HashMap<String, String>) {
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
    st.access.insert(at.clone(), scope.to_owned());
    let mut body =
        json!({"access_token": at, "token_type": token_type, "expires_in": cfg.access_ttl});
    if !scope.is_empty() {
        body["scope"] = scope.into();
    }
    let family = family.unwrap_or(n);
    let rt = format!("rt-{family}-{n}");
    st.refresh.insert(rt.clone(), (family, true));
    body["refresh_token"] = rt.into();
    body
}

async fn token(
    State(s): State<Shared>,
    headers: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    record(&s, "/token", &headers, f.clone());
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
    match f.get("grant_type").map(String::as_str) {
        Some("authorization_code") => {
            let Some((challenge, scope)) = f.get("code").and_then(|c| st.codes.remove(c)) else {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
            };
            let verifier = f.get("code_verifier").cloned().unwrap_or_default();
            if URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())) != challenge {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
            }
            axum::Json(issue(&mut st, &cfg, &scope, None, token_type)).into_response()
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
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
            }
            let scope = f.get("scope").cloned().unwrap_or_default();
            if !cfg.rotate_refresh_tokens {
                st.next += 1;
                let at = format!("at-{}", st.next);
                st.access.insert(at.clone(), scope);
                return axum::Json(json!({"access_token": at, "token_type": token_type, "expires_in": cfg.access_ttl}))
                    .into_response();
            }
            st.refresh.insert(rt, (family, false));
            axum::Json(issue(&mut st, &cfg, &scope, Some(family), token_type)).into_response()
        }
        Some("client_credentials") => {
            let scope = f.get("scope").cloned().unwrap_or_default();
            let mut body = issue(&mut st, &cfg, &scope, None, token_type);
            if let Some(m) = body.as_object_mut() {
                m.remove("refresh_token");
            }
            axum::Json(body).into_response()
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
    let mut resp = json!({"client_id": "dcr-client", "token_endpoint_auth_method": method});
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
    }
    StatusCode::OK.into_response()
}

/// The MCP resource: 401 with a challenge unless a token this server issued is presented.
async fn mcp(State(s): State<Shared>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let msg: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let method = msg
        .get("method")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    record(
        &s,
        "/mcp",
        &headers,
        HashMap::from([("method".to_owned(), method.clone())]),
    );
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let token = auth
        .split_once(' ')
        .map(|(_, t)| t.to_owned())
        .unwrap_or_default();
    let known = s.lock().access.contains_key(&token);
    if !known {
        let mut challenge = format!(
            r#"Bearer error="invalid_token", resource_metadata="{}/.well-known/oauth-protected-resource/mcp""#,
            s.base
        );
        if let Some(sc) = &s.cfg.required_scope {
            challenge.push_str(&format!(r#", scope="{sc}""#));
        }
        let mut r = (StatusCode::UNAUTHORIZED, "unauthorized").into_response();
        if let Ok(v) = HeaderValue::from_str(&challenge) {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        return r;
    }
    let id = msg.get("id").cloned().unwrap_or(Value::Null);
    let result = match method.as_str() {
        "initialize" => {
            json!({"protocolVersion": "2025-11-25", "capabilities": {"tools": {}}, "serverInfo": {"name": "scripted", "version": "1"}})
        }
        "tools/list" => json!({"tools": [{"name": "echo", "inputSchema": {"type": "object"}}]}),
        "tools/call" => json!({"content": [{"type": "text", "text": "ok"}]}),
        _ if id.is_null() => return StatusCode::ACCEPTED.into_response(),
        _ => json!({}),
    };
    axum::Json(json!({"jsonrpc": "2.0", "id": id, "result": result})).into_response()
}

/// `Authorization: Basic` decoded to `(client_id, secret)`.
pub fn basic_credentials(r: &Recorded) -> Option<(String, String)> {
    let v = r.headers.get("authorization")?.strip_prefix("Basic ")?;
    let raw = String::from_utf8(STANDARD.decode(v).ok()?).ok()?;
    let (id, secret) = raw.split_once(':')?;
    Some((id.to_owned(), secret.to_owned()))
}
