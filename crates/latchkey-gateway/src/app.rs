//! The axum application: shared state and routes.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use latchkey_guard::{Guard, require_principal};
use latchkey_vault::{Keyring, Store};
use serde_json::json;

use crate::error::ApiError;

/// What every handler shares: one reference-counted [`Shared`], so the clone each
/// extractor and middleware makes per request is one counter increment (it was a
/// copy of every field, the public URL's `String` included: 3 % of the proxy's CPU).
#[derive(Debug, Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl From<Shared> for AppState {
    fn from(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl AppState {
    /// The fields, to replace some before serving (tests swap clients and services);
    /// copies them first if the state is already shared.
    pub fn shared_mut(&mut self) -> &mut Shared {
        Arc::make_mut(&mut self.0)
    }
}

/// The fields of [`AppState`].
#[derive(Debug, Clone)]
pub struct Shared {
    /// The credential store.
    pub store: Arc<dyn Store>,
    /// The keyring.
    pub keyring: Arc<Keyring>,
    /// Inbound authentication.
    pub guard: Guard,
    /// The only road out (probes, discovery, token requests).
    pub egress: latchkey_egress::Egress,
    /// The clock.
    pub clock: Arc<dyn latchkey_core::Clock>,
    /// OAuth discovery with its 5-minute cache, shared by every request.
    pub discoverer: Arc<latchkey_oauth::discovery::Discoverer>,
    /// The public base URL (callbacks), without a trailing `/`.
    pub public_url: String,
    /// What `/readyz` remembers of the key ids the stored values need.
    pub key_use: Arc<KeyUse>,
    /// Events for `/v1/events`.
    pub events: crate::events::Events,
    /// Access tokens: cache, single-flight refresh, eviction.
    pub tokens: Arc<latchkey_broker::token_service::TokenService>,
    /// Server rows for the call paths, briefly.
    pub servers: Arc<crate::server_cache::ServerCache>,
    /// The Prometheus recorder's handle, for `/metrics`.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// This instance's name among several on one database ([`crate::cluster`]).
    pub instance: Arc<str>,
    /// Upstream MCP sessions kept between tool calls ([`crate::upstream_sessions`]).
    pub upstream: Arc<crate::upstream_sessions::UpstreamSessions>,
    /// Open event and MCP GET streams per principal ([`crate::limits`]).
    pub streams: Arc<crate::limits::StreamSlots>,
    /// API key lifetimes.
    pub api_key_ttls: crate::config::ApiKeyTtls,
    /// Who may read `/metrics` and the OpenAPI document ([`crate::ops`]).
    pub ops_access: crate::ops::OpsAccess,
}

impl AppState {
    /// The caller's tenant's server `id`, or 404: the tenant check every handler makes
    /// before reading, writing or revoking anything of a server (R-API-11).
    pub async fn server(
        &self,
        p: &latchkey_guard::Principal,
        id: &str,
    ) -> Result<latchkey_vault::store::ServerRow, ApiError> {
        self.store
            .get_server(p.tenant.as_str(), id)
            .await?
            .ok_or(ApiError::NotFound)
    }

    /// [`AppState::server`] for the call paths (proxy, federated endpoint, tool calls):
    /// served from memory for up to [`crate::server_cache::TTL`]. Never for a
    /// read-modify-write: those read the row itself.
    pub async fn server_for_call(
        &self,
        p: &latchkey_guard::Principal,
        id: &str,
    ) -> Result<Arc<latchkey_vault::store::ServerRow>, ApiError> {
        let now = self.clock.now();
        if let Some(row) = self.servers.get(p.tenant.as_str(), id, now) {
            return Ok(row);
        }
        // Stale-if-unavailable: while the database is away, the last row read keeps the
        // call paths (and so the cached tokens) working. Changes made meanwhile by others
        // could not have been committed either if the database is down for everyone,
        // and every row is dropped as soon as the change channel listens again.
        let stale = || {
            self.servers.get_stale(
                p.tenant.as_str(),
                id,
                now,
                crate::server_cache::STALE_IF_UNAVAILABLE,
            )
        };
        if self.servers.recently_unavailable(now)
            && let Some(row) = stale()
        {
            return Ok(row);
        }
        let epoch = self.servers.epoch();
        let row = match self.server(p, id).await {
            Ok(row) => Arc::new(row),
            Err(ApiError::Unavailable) => {
                self.servers.mark_unavailable(now);
                tracing::warn!(event = "store.unavailable", server_id = %id, "serving the last known server row");
                return stale().ok_or(ApiError::Unavailable);
            }
            Err(e) => return Err(e),
        };
        self.servers.put(row.clone(), epoch, now);
        Ok(row)
    }

    /// Applies `c` here and tells the other instances ([`crate::cluster::announce`]).
    pub async fn announce(&self, c: crate::cluster::Change) {
        crate::cluster::announce(self, c).await;
    }

    /// Forgets the cached row of a server this instance changed or deleted.
    pub fn server_changed(&self, tenant: &str, id: &str) {
        self.servers.invalidate(tenant, id);
    }

    /// The current time, Unix seconds.
    pub fn now(&self) -> i64 {
        i64::try_from(self.clock.now().as_secs()).unwrap_or(i64::MAX)
    }
}

/// The router: unauthenticated probes, then everything under `/v1` behind the guard.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/v1/whoami", get(whoami))
        .route(
            "/v1/servers",
            get(crate::servers::list).post(crate::servers::create),
        )
        .route(
            "/v1/servers/{id}",
            get(crate::servers::get)
                .patch(crate::servers::update)
                .delete(crate::servers::delete),
        )
        .route("/v1/servers/{id}/tools", get(crate::tools::list))
        .route(
            "/v1/servers/{id}/tools/{name}/call",
            post(crate::tools::invoke),
        )
        // Long-lived streams: a cap per principal (the guard has run: route layers
        // added below wrap these).
        .route(
            "/v1/events",
            get(crate::events::stream).layer(axum::middleware::from_fn_with_state(
                state.streams.clone(),
                crate::limits::one_stream,
            )),
        )
        .route(
            "/mcp/{server}",
            axum::routing::any(crate::proxy::forward).layer(axum::middleware::from_fn_with_state(
                state.streams.clone(),
                crate::limits::one_stream,
            )),
        )
        .route("/v1/oauth/start", post(crate::flows::start))
        .route("/v1/oauth/status/{server_id}", get(crate::flows::status))
        .route("/v1/credentials", post(crate::credentials::deposit))
        .route(
            "/v1/credentials/{server_id}",
            delete(crate::credentials::delete),
        )
        .route(
            "/v1/api-keys",
            get(crate::api_keys::list).post(crate::api_keys::create),
        )
        .route("/v1/api-keys/{id}", delete(crate::api_keys::delete))
        .layer(axum::extract::DefaultBodyLimit::max(
            crate::fields::BODY_LIMIT,
        ))
        .route_layer(axum::middleware::from_fn(require_json))
        .route_layer(axum::middleware::from_fn_with_state(
            state.guard.clone(),
            require_principal,
        ));
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route(
            "/metrics",
            get(crate::telemetry::render).route_layer(axum::middleware::from_fn_with_state(
                state.clone(),
                crate::ops::gate,
            )),
        )
        .route(
            "/v1/openapi.json",
            get(openapi).route_layer(axum::middleware::from_fn_with_state(
                state.clone(),
                crate::ops::gate,
            )),
        )
        .route(crate::flows::CALLBACK_PATH, get(crate::flows::callback))
        .route(
            "/v1/oauth/callback/{issuer_key}",
            get(crate::flows::callback_keyed),
        )
        .merge(crate::ui::routes())
        .merge(crate::federated::routes(&state))
        .merge(api);
    // RFC 9728 metadata for the MCP endpoints, where there is an authorization server to
    // name (in local mode nothing is asked of a caller, so there is nothing to discover).
    let prm = (!state.guard.config().prm.authorization_servers.is_empty())
        .then(|| latchkey_guard::prm_router(state.guard.clone()));
    let mut app = app.with_state(state);
    if let Some(prm) = prm {
        app = app.merge(prm);
    }
    app.fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::map_response(harden))
        .layer(axum::middleware::from_fn(crate::telemetry::count))
}

/// The policy every answer gets unless its route set its own (the UI and the callback
/// page do): never sniffed, and if a browser renders it anyway, a sandbox with nothing
/// allowed, so nothing on Latchkey's origin runs script it did not write (issue 15).
pub const SANDBOX_CSP: &str = "sandbox; default-src 'none'";

async fn harden(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        axum::http::header::X_CONTENT_TYPE_OPTIONS,
        axum::http::HeaderValue::from_static("nosniff"),
    );
    if !h.contains_key(axum::http::header::CONTENT_SECURITY_POLICY) {
        h.insert(
            axum::http::header::CONTENT_SECURITY_POLICY,
            axum::http::HeaderValue::from_static(SANDBOX_CSP),
        );
    }
    resp
}

/// Whether `value` (a `Content-Type`) is `application/json`, parameters aside.
pub(crate) fn is_json(value: Option<&axum::http::HeaderValue>) -> bool {
    value
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

/// A state-changing request to the API or the MCP proxy must be `application/json`: a
/// page elsewhere can send a cross-site `text/plain` or form POST without asking the
/// browser first, but not a JSON one (defence in depth beside the Origin check). A
/// `DELETE` without a body says nothing and needs nothing.
async fn require_json(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Result<Response, ApiError> {
    use axum::http::{Method, header};
    let has_body = |h: &axum::http::HeaderMap| {
        h.contains_key(header::TRANSFER_ENCODING)
            || h.get(header::CONTENT_LENGTH)
                .is_some_and(|v| v.as_bytes() != b"0")
    };
    let needs_json = match *req.method() {
        // (No route takes PUT: it stays the typed 405.)
        Method::POST | Method::PATCH => true,
        Method::DELETE => has_body(req.headers()),
        _ => false,
    };
    if needs_json && !is_json(req.headers().get(header::CONTENT_TYPE)) {
        return Err(ApiError::UnsupportedMediaType);
    }
    Ok(next.run(req).await)
}

/// Liveness: the process answers.
async fn healthz() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

/// Readiness: the database answers. The encryption key is reported, not required: a
/// broker that stores no OAuth secret works without one (R-STORE-4).
async fn readyz(State(s): State<AppState>) -> Response {
    let db = s.store.ping().await;
    let mut key = match s.keyring.check() {
        Ok(()) => "ok",
        Err(latchkey_vault::KeyringError::EncryptionKeyMissing) => "missing",
        Err(_) => "invalid",
    };
    // Stored values no configured key opens (a lost or replaced key): not ready.
    let unopenable = match db {
        Ok(()) => s.key_use.unopenable(&s).await,
        Err(_) => Vec::new(),
    };
    if !unopenable.is_empty() {
        key = "unopenable";
    }
    let ready = db.is_ok() && unopenable.is_empty();
    let mut checks =
        json!({"database": if db.is_ok() { "ok" } else { "unavailable" }, "encryption_key": key});
    if !unopenable.is_empty() {
        checks["missing_key_ids"] = json!(unopenable);
    }
    let body = json!({
        "status": if ready { "ready" } else { "unready" },
        "checks": checks,
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// The key ids the stored envelopes carry that no configured key has, for `/readyz`:
/// one scan of the sealed columns, remembered for [`KeyUse::TTL_SECS`].
#[derive(Debug, Default)]
pub struct KeyUse(std::sync::Mutex<Option<(u64, Vec<u8>)>>);

impl KeyUse {
    /// How long a scan's answer is reused.
    pub const TTL_SECS: u64 = 30;

    async fn unopenable(&self, s: &Shared) -> Vec<u8> {
        let now = s.clock.now().as_secs();
        if let Ok(g) = self.0.lock()
            && let Some((at, ids)) = g.as_ref()
            && now.saturating_sub(*at) < Self::TTL_SECS
        {
            return ids.clone();
        }
        let Ok(in_use) = s.store.key_ids_in_use().await else {
            return Vec::new();
        };
        let configured = s.keyring.key_ids().unwrap_or_default();
        let missing: Vec<u8> = in_use
            .into_iter()
            .filter(|id| !configured.contains(id))
            .collect();
        if let Ok(mut g) = self.0.lock() {
            *g = Some((now, missing.clone()));
        }
        missing
    }
}

/// Who the caller is, as Latchkey sees it.
async fn whoami(
    axum::Extension(p): axum::Extension<latchkey_guard::Principal>,
) -> Json<serde_json::Value> {
    Json(json!({
        "tenant": p.tenant.as_str(),
        "subject": p.subject.as_str(),
        "admin": p.is_admin(),
        "scopes": p.scopes,
    }))
}

/// The API's OpenAPI 3.1 document (hand-written; a test checks it against the routes).
pub const OPENAPI: &str = include_str!("../api/openapi.json");

async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError::NotFound
}

/// A known route with another method: the typed 405 (axum adds `Allow`).
async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
