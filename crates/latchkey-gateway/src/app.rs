//! The axum application: routes, and the layers every answer passes through.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use latchkey_guard::require_principal;
use serde_json::json;

use crate::error::ApiError;
use crate::state::AppState;

/// The router: unauthenticated probes, then everything under `/v1` behind the guard.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/v1/whoami", get(whoami))
        .route("/v1/auth/session", get(crate::signin::current))
        .route("/v1/auth/logout", post(crate::signin::logout))
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
        .route(
            "/v1/servers/{id}/headers",
            axum::routing::put(crate::headers::put).delete(crate::headers::clear),
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
        // Inside the guard's layer: the principal, for the request log line.
        .route_layer(axum::middleware::from_fn(crate::telemetry::note_principal))
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
                state.ops_access.clone(),
                crate::ops::gate,
            )),
        )
        .route(
            "/v1/openapi.json",
            get(openapi).route_layer(axum::middleware::from_fn_with_state(
                state.ops_access.clone(),
                crate::ops::gate,
            )),
        )
        .route(crate::flows::CALLBACK_PATH, get(crate::flows::callback))
        // Sign-in for people (issue 19): open, since they come before a session.
        .route("/v1/auth/config", get(crate::signin::config))
        .route("/v1/auth/login", get(crate::signin::login))
        .route(crate::oidc::CALLBACK_PATH, get(crate::signin::callback))
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
    // `/mcp/{server}`, the hot path, is one service with the same checks inline rather
    // than a handler under the layers below (issue 18: `crate::proxy::Route` says why);
    // merged after the layers so they do not wrap it a second time.
    let hot = Router::new().route_service("/mcp/{server}", crate::proxy::Route::new(state.clone()));
    let mut app = app.with_state(state);
    if let Some(prm) = prm {
        app = app.merge(prm);
    }
    hot.merge(
        app.fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .layer(axum::middleware::map_response(harden))
            .layer(axum::middleware::from_fn(crate::telemetry::count)),
    )
}

/// The policy every answer gets unless its route set its own ([`crate::rules`]).
pub use crate::rules::SANDBOX_CSP;

async fn harden(mut resp: Response) -> Response {
    crate::rules::harden_headers(resp.headers_mut());
    resp
}

/// A state-changing request to the API or the MCP proxy must be `application/json`: a
/// page elsewhere can send a cross-site `text/plain` or form POST without asking the
/// browser first, but not a JSON one (defence in depth beside the Origin check). A
/// `DELETE` without a body says nothing and needs nothing.
async fn require_json(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Result<Response, ApiError> {
    crate::rules::json_required(req.method(), req.headers())?;
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
