//! `/v1/auth/*`: people sign in to the web UI (issue 19), over the relying party in
//! [`crate::oidc`].
//!
//! * `GET /v1/auth/config` (open): the mode, whether sign-in exists, and what
//!   `latchkey login` needs.
//! * `GET /v1/auth/login` (open): to the provider, with the login cookie.
//! * `GET /v1/auth/callback` (open): back from the provider; a page that starts the
//!   session and moves on.
//! * `GET /v1/auth/session` (guarded): who is signed in and the session's CSRF token.
//! * `POST /v1/auth/logout` (guarded, CSRF-checked): ends the session on every instance.
//!
//! The pages are Latchkey's own (no upstream text, every value escaped) with a CSP that
//! allows only the app's stylesheet and icon.

use axum::Json;
use axum::extract::{Query, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use latchkey_guard::session::{self, SESSION_COOKIE};
use latchkey_guard::{AuthSource, Principal};
use serde::Deserialize;
use serde_json::json;

use crate::error::ApiError;
use crate::oidc::{self as signin, LOGIN_COOKIE, LOGIN_TTL_SECS, SignInError};
use crate::state::AppState;

/// The pages' CSP: no script at all; the app's stylesheet and icon.
const PAGE_CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// `GET /v1/auth/config`.
pub async fn config(State(s): State<AppState>) -> Json<serde_json::Value> {
    let local = s.guard.authenticator().is_local();
    Json(json!({
        "mode": if local { "local" } else { "jwt" },
        "sign_in": s.signin.is_some(),
        "cli": s.signin.as_ref().and_then(|si| si.cli()),
    }))
}

/// The query of `GET /v1/auth/login`.
#[derive(Debug, Deserialize)]
pub struct LoginQuery {
    return_to: Option<String>,
}

/// `GET /v1/auth/login`: to the provider, or a page saying why not.
pub async fn login(State(s): State<AppState>, Query(q): Query<LoginQuery>) -> Response {
    let Some(si) = s.signin.clone() else {
        return page(
            StatusCode::NOT_FOUND,
            "Sign-in is not set up",
            "This Latchkey has no sign-in provider ([auth.login] in its configuration).",
            None,
        );
    };
    let return_to = signin::safe_return_to(q.return_to.as_deref());
    match si.begin(&return_to).await {
        Ok((url, cookie)) => {
            let mut resp = StatusCode::FOUND.into_response();
            let h = resp.headers_mut();
            if let Ok(v) = HeaderValue::from_str(&url) {
                h.insert(header::LOCATION, v);
            }
            h.append(
                header::SET_COOKIE,
                cookie_header(
                    LOGIN_COOKIE,
                    cookie.expose(),
                    signin::CALLBACK_PATH,
                    "Lax",
                    LOGIN_TTL_SECS,
                    si.insecure_cookies(),
                ),
            );
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            resp
        }
        Err(e) => failure(&e),
    }
}

/// `GET /v1/auth/callback`.
pub async fn callback(
    State(s): State<AppState>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let Some(si) = s.signin.clone() else {
        return page(
            StatusCode::NOT_FOUND,
            "Sign-in is not set up",
            "This Latchkey has no sign-in provider.",
            None,
        );
    };
    let params = latchkey_oauth::authorize::CallbackParams::from_query(q.as_deref().unwrap_or(""));
    let result = si
        .complete(session::cookie(&headers, LOGIN_COOKIE), &params)
        .await;
    let insecure = si.insecure_cookies();
    // The login cookie is spent whatever happened.
    let clear_login = cookie_header(LOGIN_COOKIE, "", signin::CALLBACK_PATH, "Lax", 0, insecure);
    let mut resp = match result {
        Ok(done) => {
            tracing::info!(
                event = "session.started",
                tenant = done.principal.tenant.as_str(),
                subject = done.principal.subject.as_str()
            );
            audit(&s, &done.principal, "session.started").await;
            let lifetime = i64::try_from(si.config().session_lifetime).unwrap_or(i64::MAX);
            let mut r = page(
                StatusCode::OK,
                "Signed in",
                "You are signed in. Taking you to Latchkey…",
                Some(&done.return_to),
            );
            r.headers_mut().append(
                header::SET_COOKIE,
                cookie_header(
                    SESSION_COOKIE,
                    done.session_id.expose(),
                    "/",
                    "Strict",
                    lifetime,
                    insecure,
                ),
            );
            r
        }
        Err(e) => {
            tracing::info!(event = "session.refused", reason = %e);
            failure(&e)
        }
    };
    resp.headers_mut().append(header::SET_COOKIE, clear_login);
    resp
}

/// `GET /v1/auth/session`: the caller, and for a browser session its CSRF token.
pub async fn current(
    axum::Extension(p): axum::Extension<Principal>,
    headers: HeaderMap,
) -> Json<serde_json::Value> {
    let csrf = (p.source == AuthSource::Session)
        .then(|| session::session_id(&headers).map(|id| session::csrf_token(id.expose())))
        .flatten();
    Json(json!({
        "tenant": p.tenant.as_str(),
        "subject": p.subject.as_str(),
        "admin": p.is_admin(),
        "source": p.source,
        "csrf_token": csrf,
    }))
}

/// `POST /v1/auth/logout`: ends the caller's browser session (the guard has checked
/// its CSRF token) on every instance, and clears the cookie. A caller without a session
/// has nothing to end: 204 all the same.
pub async fn logout(
    State(s): State<AppState>,
    axum::Extension(p): axum::Extension<Principal>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let insecure = s.signin.as_ref().is_none_or(|si| si.insecure_cookies());
    if p.source == AuthSource::Session
        && let (Some(si), Some(id)) = (s.signin.as_ref(), session::session_id(&headers))
    {
        si.end(id.expose()).await?;
        tracing::info!(
            event = "session.ended",
            tenant = p.tenant.as_str(),
            subject = p.subject.as_str()
        );
        audit(&s, &p, "session.ended").await;
    }
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut().append(
        header::SET_COOKIE,
        cookie_header(SESSION_COOKIE, "", "/", "Strict", 0, insecure),
    );
    Ok(resp)
}

/// Records a session's start or end (who, when; never the session id).
async fn audit(s: &AppState, p: &Principal, action: &str) {
    let e = latchkey_vault::store::AuditEvent {
        tenant: p.tenant.as_str().to_owned(),
        actor: p.subject.as_str().to_owned(),
        action: action.into(),
        server: None,
        subject: Some(p.subject.as_str().to_owned()),
        detail: None,
        at: s.now(),
    };
    if let Err(err) = s.store.audit(&e).await {
        tracing::warn!(event = "audit.failed", action, error = %err);
    }
}

/// A `Set-Cookie` value: `HttpOnly` always, `Secure` unless Latchkey is served over
/// plain http on loopback.
fn cookie_header(
    name: &str,
    value: &str,
    path: &str,
    same_site: &str,
    max_age: i64,
    insecure: bool,
) -> HeaderValue {
    let secure = if insecure { "" } else { "; Secure" };
    HeaderValue::from_str(&format!(
        "{name}={value}; Path={path}; HttpOnly; SameSite={same_site}; Max-Age={max_age}{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("latchkey_invalid=; Max-Age=0"))
}

/// The page for a sign-in that did not complete.
fn failure(e: &SignInError) -> Response {
    let status = match e {
        SignInError::ProviderDown { .. } => StatusCode::SERVICE_UNAVAILABLE,
        SignInError::Store | SignInError::Busy => StatusCode::SERVICE_UNAVAILABLE,
        SignInError::Account(_) => StatusCode::FORBIDDEN,
        _ => StatusCode::BAD_REQUEST,
    };
    let title = match e {
        SignInError::ProviderDown { .. } => "Sign-in is unavailable",
        _ => "Not signed in",
    };
    page(status, title, &e.to_string(), None)
}

/// HTML-escapes text for an element or a quoted attribute.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// One of Latchkey's own pages. `next`: a same-origin path to move on to (a `refresh`
/// from this page is a same-site navigation, so the `SameSite=Strict` session cookie
/// goes with it, which a redirect chain started by the provider would not carry).
fn page(status: StatusCode, title: &str, text: &str, next: Option<&str>) -> Response {
    let (refresh, link) = match next {
        Some(n) => (
            format!(
                "<meta http-equiv=\"refresh\" content=\"0;url={}\">",
                escape(n)
            ),
            format!("<p><a href=\"{}\">Continue</a></p>", escape(n)),
        ),
        None => (
            String::new(),
            "<p><a href=\"/v1/auth/login\">Sign in again</a> · <a href=\"/\">Latchkey</a></p>"
                .to_owned(),
        ),
    };
    let tone = if status.is_success() {
        "connected"
    } else {
        "error"
    };
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Latchkey</title>{refresh}\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <link rel=\"icon\" href=\"/ui/icon.svg\" type=\"image/svg+xml\">\
         <link rel=\"stylesheet\" href=\"/ui/app.css\"></head><body class=\"callback\">\
         <header class=\"top\"><h1><img src=\"/ui/icon.svg\" alt=\"\" width=\"28\" height=\"28\"> Latchkey</h1></header>\
         <main><section class=\"panel\"><h2>{}</h2>\
         <p role=\"status\" class=\"status status-{tone}\">{}</p>{link}</section></main></body></html>",
        escape(title),
        escape(text)
    );
    let mut resp = (status, html).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(PAGE_CSP),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_http_only_and_secure_off_loopback() {
        let c = cookie_header("a", "b", "/", "Strict", 60, false);
        assert_eq!(
            c.to_str().unwrap(),
            "a=b; Path=/; HttpOnly; SameSite=Strict; Max-Age=60; Secure"
        );
        let c = cookie_header("a", "b", "/x", "Lax", 0, true);
        assert_eq!(
            c.to_str().unwrap(),
            "a=b; Path=/x; HttpOnly; SameSite=Lax; Max-Age=0"
        );
    }

    #[test]
    fn page_text_is_escaped() {
        assert_eq!(
            escape("<a href=\"x\">'&"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;"
        );
    }
}
