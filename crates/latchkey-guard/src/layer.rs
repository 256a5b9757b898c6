//! The thin axum integration: a middleware that checks `Host`/`Origin`, authenticates
//! and puts the [`Principal`] into the request extensions, and the PRM endpoint.
//!
//! ```text
//! let app = Router::new()
//!     .route("/mcp", post(handler))
//!     .layer(axum::middleware::from_fn_with_state(guard.clone(), require_principal))
//!     .merge(prm_router(guard));
//! // in a handler: `Extension(principal): Extension<Principal>`
//! ```

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::any;

use crate::authenticator::Authenticator;
use crate::challenge::{self, ChallengeParams};
use crate::error::GuardError;
use crate::origin::{self, HostOriginPolicy};
use crate::prm::{self, PrmConfig, ResourceResolver};
use crate::session;

/// Everything around authentication proper.
#[derive(Debug, Clone)]
pub struct GuardConfig {
    /// `Host`/`Origin` allow-lists.
    pub hosts: HostOriginPolicy,
    /// The one resource resolver (PRM `resource`, challenge `resource_metadata`).
    pub resolver: ResourceResolver,
    /// `scope` advertised in 401 challenges, when configured.
    pub challenge_scope: Option<String>,
    /// Static parts of the PRM document.
    pub prm: PrmConfig,
}

#[derive(Debug)]
struct Inner {
    auth: Authenticator,
    cfg: GuardConfig,
}

/// The inbound guard. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Guard {
    inner: Arc<Inner>,
}

/// The `Host` of a request: the header, or the URI authority (HTTP/2).
fn request_host<'a>(headers: &'a HeaderMap, uri: &'a http::Uri) -> Option<&'a str> {
    headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
}

impl Guard {
    /// A guard.
    pub fn new(auth: Authenticator, cfg: GuardConfig) -> Self {
        Self {
            inner: Arc::new(Inner { auth, cfg }),
        }
    }

    /// The authenticator.
    pub fn authenticator(&self) -> &Authenticator {
        &self.inner.auth
    }

    /// The settings.
    pub fn config(&self) -> &GuardConfig {
        &self.inner.cfg
    }

    /// Host/Origin check, then authentication.
    pub async fn check(
        &self,
        host: Option<&str>,
        headers: &HeaderMap,
    ) -> Result<crate::Principal, GuardError> {
        let origin = headers
            .get(header::ORIGIN)
            .map(|v| v.to_str().unwrap_or("\u{0}"));
        origin::check_host_origin(&self.inner.cfg.hosts, host, origin)?;
        self.inner.auth.authenticate(headers).await
    }

    /// [`Self::check`], then the session's CSRF token for a state-changing `method`: all
    /// that [`require_principal`] asks of a request, for a service that runs outside the
    /// middleware (the gateway's `/mcp/{server}` hot path).
    pub async fn admit(
        &self,
        host: Option<&str>,
        method: &Method,
        headers: &HeaderMap,
    ) -> Result<crate::Principal, GuardError> {
        let p = self.check(host, headers).await?;
        csrf_check(&p, method, headers)?;
        Ok(p)
    }

    /// The HTTP answer to `err` for a request whose `Host` is `host`.
    pub fn refusal(&self, err: &GuardError, host: Option<&str>) -> Response {
        let resolved = self.inner.cfg.resolver.resolve(host);
        let params = ChallengeParams {
            resource_metadata: &resolved.metadata_url,
            scope: self.inner.cfg.challenge_scope.as_deref(),
        };
        challenge::error_response(err, params)
            .map(axum::body::Body::from)
            .into_response()
    }
}

/// Middleware: refuses the request (R-RS-1, R-RS-10, R-RS-15) or runs it with the
/// [`crate::Principal`] in its extensions.
pub async fn require_principal(
    State(guard): State<Guard>,
    mut req: Request,
    next: Next,
) -> Response {
    let host = request_host(req.headers(), req.uri()).map(str::to_owned);
    let checked = guard
        .admit(host.as_deref(), req.method(), req.headers())
        .await;
    match checked {
        Ok(principal) => {
            req.extensions_mut().insert(principal);
            next.run(req).await
        }
        Err(e) => {
            tracing::info!(event = "guard.refused", reason = %e, class = ?e.class());
            guard.refusal(&e, host.as_deref())
        }
    }
}

/// A request authenticated by the session cookie that may change state (any method but
/// GET, HEAD and OPTIONS) must carry the session's CSRF token: the browser sends the
/// cookie by itself, the token only a page of Latchkey's own origin can read.
fn csrf_check(
    principal: &crate::Principal,
    method: &Method,
    headers: &HeaderMap,
) -> Result<(), GuardError> {
    if principal.source != crate::AuthSource::Session
        || matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
    {
        return Ok(());
    }
    let presented = headers
        .get(session::CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    match session::session_id(headers) {
        Some(id) if session::csrf_matches(id.expose(), presented) => Ok(()),
        _ => Err(GuardError::Csrf),
    }
}

fn cors(resp: &mut Response) {
    let h = resp.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("*"),
    );
}

/// The PRM endpoint (R-RS-13): no authentication, CORS, `OPTIONS` → 200, `GET` → the
/// document, any other method → 405; no authorization server configured → 500.
pub async fn serve_prm(State(guard): State<Guard>, req: Request) -> Response {
    let mut resp = match *req.method() {
        Method::OPTIONS => StatusCode::OK.into_response(),
        Method::GET | Method::HEAD => {
            let host = request_host(req.headers(), req.uri());
            let resolved = guard.inner.cfg.resolver.resolve(host);
            match prm::document(&resolved, &guard.inner.cfg.prm) {
                Ok(doc) => axum::Json(doc).into_response(),
                Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
            }
        }
        _ => {
            let mut r = StatusCode::METHOD_NOT_ALLOWED.into_response();
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, OPTIONS"));
            r
        }
    };
    cors(&mut resp);
    resp
}

/// A router serving the PRM at the root and path-inserted well-known paths.
pub fn prm_router(guard: Guard) -> Router {
    let mut router = Router::new();
    for path in guard.inner.cfg.resolver.served_paths() {
        if !path.contains('?') {
            router = router.route(&path, any(serve_prm));
        }
    }
    router.with_state(guard)
}
