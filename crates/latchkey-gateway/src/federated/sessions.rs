//! The HTTP side of `/mcp` around rmcp's transport: the request lifecycle log
//! (R-OBS-4) and the binding of each MCP session to the principal that created it.
//!
//! rmcp keeps sessions by id only. Here each new `Mcp-Session-Id` is bound to the
//! `(tenant, subject)` of the request that created it, and a later request (POST, the
//! GET stream, DELETE) carrying that id with another principal's credential gets the
//! same 404 as an unknown session: no session is usable, or even confirmed to exist,
//! across users.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, Method, StatusCode, header};
use latchkey_guard::Principal;
use rmcp::transport::streamable_http_server::session::SessionManager;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;

/// `Mcp-Session-Id`.
const SESSION_HEADER: &str = "mcp-session-id";
/// `X-Request-Id`.
const REQUEST_ID_HEADER: &str = "x-request-id";
/// Bindings kept before the first sweep of closed sessions.
const FIRST_SWEEP: usize = 64;

/// The request id of the lifecycle log, shared with the inner middleware.
#[derive(Debug, Clone)]
struct RequestId(String);

/// Set on the response once the guard let the request through: served, or refused
/// here for this reason.
#[derive(Debug, Clone, Copy)]
struct Authenticated(Option<&'static str>);

/// Who owns a session.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Owner {
    tenant: String,
    subject: String,
}

impl Owner {
    fn of(p: &Principal) -> Self {
        Self {
            tenant: p.tenant.as_str().to_owned(),
            subject: p.subject.as_str().to_owned(),
        }
    }
}

#[derive(Debug, Default)]
struct Table {
    owners: HashMap<String, Owner>,
    sweep_at: usize,
}

/// Session id → owner, swept of sessions rmcp has closed (idle timeout, DELETE, end of
/// the client) whenever the table has doubled since the last sweep.
#[derive(Debug)]
pub(crate) struct Sessions {
    table: Mutex<Table>,
    manager: Arc<LocalSessionManager>,
}

impl Sessions {
    pub(crate) fn new(manager: Arc<LocalSessionManager>) -> Self {
        Self {
            table: Mutex::new(Table {
                owners: HashMap::new(),
                sweep_at: FIRST_SWEEP,
            }),
            manager,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn owner(&self, id: &str) -> Option<Owner> {
        self.lock().owners.get(id).cloned()
    }

    async fn bind(&self, id: String, owner: Owner) {
        let due = {
            let mut t = self.lock();
            t.owners.insert(id, owner);
            (t.owners.len() >= t.sweep_at).then(|| t.owners.keys().cloned().collect::<Vec<_>>())
        };
        let Some(ids) = due else { return };
        let mut closed = Vec::new();
        for id in ids {
            if !self
                .manager
                .has_session(&Arc::from(id.as_str()))
                .await
                .unwrap_or(true)
            {
                closed.push(id);
            }
        }
        let mut t = self.lock();
        for id in &closed {
            t.owners.remove(id);
        }
        t.sweep_at = (t.owners.len() * 2).max(FIRST_SWEEP);
    }

    fn unbind(&self, id: &str) {
        self.lock().owners.remove(id);
    }
}

/// The request's `X-Request-Id` when it is short visible ASCII, or a new id.
fn request_id(req: &Request) -> String {
    req.headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(latchkey_vault::store::new_id)
}

/// A header value for the log when it is a short token (`Mcp-Method` on the
/// 2026-07-28 wire), else nothing.
fn short_header<'a>(req: &'a Request, name: &str) -> &'a str {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 64 && v.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or("")
}

/// Why the guard refused, from what the caller sent and the status (the guard has
/// logged the details as `guard.refused`).
fn rejection(scheme: Option<&str>, status: StatusCode) -> &'static str {
    match (status, scheme) {
        (StatusCode::UNAUTHORIZED, None) => "missing_authorization",
        (StatusCode::UNAUTHORIZED, Some(s)) if s.eq_ignore_ascii_case("bearer") => {
            "invalid_oauth_bearer"
        }
        (StatusCode::UNAUTHORIZED, Some(s)) if s.eq_ignore_ascii_case("token") => "invalid_api_key",
        (StatusCode::UNAUTHORIZED, Some(_)) => "unsupported_authorization_scheme",
        (StatusCode::FORBIDDEN, _) => "forbidden",
        (StatusCode::SERVICE_UNAVAILABLE, _) => "verifier_unavailable",
        _ => "refused",
    }
}

/// How a request the guard accepted ended, by status (the body may still be
/// streaming: an SSE response is "complete" once its head is sent).
fn completion(status: StatusCode) -> &'static str {
    match status.as_u16() {
        200 => "ok",
        202 => "accepted",
        s if (200..300).contains(&s) => "ok",
        400 => "bad_request",
        404 => "session_not_found",
        405 => "method_not_allowed",
        406 => "not_acceptable",
        413 => "payload_too_large",
        415 => "unsupported_media_type",
        s if s >= 500 => "internal_error",
        _ => "client_error",
    }
}

/// Outermost middleware: `mcp.request.start`, then `mcp.request.complete` or (when the
/// guard refused) `mcp.request.rejected`. Ids and names only, never a credential.
pub(crate) async fn lifecycle(mut req: Request, next: Next) -> Response {
    let id = request_id(&req);
    let method = req.method().clone();
    let scheme = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(' ').next().unwrap_or("").to_owned());
    tracing::info!(
        event = "mcp.request.start",
        request_id = %id,
        http_method = %method,
        mcp_method = short_header(&req, "mcp-method"),
        has_session = req.headers().contains_key(SESSION_HEADER),
    );
    req.extensions_mut().insert(RequestId(id.clone()));
    let mut resp = next.run(req).await;
    let status = resp.status();
    match resp.extensions().get::<Authenticated>() {
        Some(Authenticated(None)) => tracing::info!(
            event = "mcp.request.complete",
            request_id = %id,
            status = status.as_u16(),
            reason = completion(status),
        ),
        Some(Authenticated(Some(reason))) => tracing::warn!(
            event = "mcp.request.rejected",
            request_id = %id,
            status = status.as_u16(),
            reason = *reason,
        ),
        None => tracing::info!(
            event = "mcp.request.rejected",
            request_id = %id,
            status = status.as_u16(),
            reason = rejection(scheme.as_deref(), status),
        ),
    }
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    resp
}

/// Inner middleware (after the guard): `mcp.request.auth`, then the session binding.
pub(crate) async fn bind(
    State(sessions): State<Arc<Sessions>>,
    req: Request,
    next: Next,
) -> Response {
    let id = req
        .extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default();
    let Some(p) = req.extensions().get::<Principal>().cloned() else {
        // The guard runs first and always sets one; fail closed if it did not.
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let auth_source = serde_json::to_value(p.source)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    tracing::info!(
        event = "mcp.request.auth",
        request_id = %id,
        auth_source = %auth_source,
        tenant = p.tenant.as_str(),
    );
    let owner = Owner::of(&p);
    let session = req
        .headers()
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if let Some(sid) = &session
        && sessions.owner(sid).is_some_and(|o| o != owner)
    {
        // The same answer as for an unknown session; logged as a rejection.
        let mut resp = (StatusCode::NOT_FOUND, "Not Found: Session not found").into_response();
        resp.extensions_mut()
            .insert(Authenticated(Some("session_owner_mismatch")));
        return resp;
    }
    let is_delete = req.method() == Method::DELETE;
    let mut resp = next.run(req).await;
    match &session {
        None => {
            if let Some(new) = resp
                .headers()
                .get(SESSION_HEADER)
                .and_then(|v| v.to_str().ok())
            {
                sessions.bind(new.to_owned(), owner).await;
            }
        }
        Some(sid) if is_delete && resp.status().is_success() => sessions.unbind(sid),
        Some(_) => {}
    }
    resp.extensions_mut().insert(Authenticated(None));
    resp
}
