//! The HTTP side of managed OAuth flows (R-API-5, R-API-6, R-API-7): `POST
//! /v1/oauth/start`, the browser callback and its page, status. The rules are
//! [`crate::service::flows`].

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use latchkey_guard::Principal;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::fields::{Body, Fields};
use crate::state::AppState;

pub use crate::service::flows::{CALLBACK_PATH, issuer_key, redirect_uri};
use crate::service::flows::{Outcome, Started, begin};

/// `POST /v1/oauth/start` `{server_id, user_id?, force?}`. `force` starts a flow even
/// when the slot holds a credential (reconnect after `needs_oauth_reauth` or for a scope
/// upgrade); the stored credential keeps serving until the new one replaces it.
pub async fn start(
    State(s): State<AppState>,
    axum::Extension(p): axum::Extension<Principal>,
    Body(body): Body,
) -> Result<Json<Value>, ApiError> {
    let mut f = Fields::parse(&body, &["server_id", "user_id", "force"])?;
    let server_id = f.string("server_id", true, 255);
    let user = f.string("user_id", false, 255);
    let force = f.boolean("force").unwrap_or(false);
    f.finish()?;
    let Some(server_id) = server_id else {
        return Err(ApiError::BadRequest(Vec::new()));
    };
    let server = s.server(&p, &server_id).await?;
    if server.auth_type != "oauth" {
        return Err(ApiError::BadRequest(vec![crate::error::FieldError {
            field: "server_id".into(),
            message: format!("the server's auth type is {}, not oauth", server.auth_type),
        }]));
    }
    let slot = crate::service::acting_slot(&p, &server, user)?;
    Ok(Json(match begin(&s, &p, &server, slot, force).await? {
        Started::AlreadyAuthorized => json!({"status": "already_authorized"}),
        Started::Completed { client_id, issuer } => {
            json!({"status": "completed", "client_id": client_id, "issuer": issuer})
        }
        Started::Redirect {
            authorization_url,
            client_id,
            issuer,
        } => json!({
            "status": "redirect",
            "authorization_url": authorization_url,
            "client_id": client_id,
            "issuer": issuer,
        }),
    }))
}

/// `GET /v1/oauth/callback`: unauthenticated (the browser carries no credential of
/// ours); the single-use state is the binding (Ambiguity A17). Always an HTML page.
pub async fn callback(State(s): State<AppState>, RawQuery(q): RawQuery) -> Response {
    let arrived = format!("{}{CALLBACK_PATH}", s.public_url);
    page(crate::service::flows::complete(&s, q.as_deref(), &arrived).await)
}

/// `GET /v1/oauth/callback/{issuer_key}`: the callback of an authorization server that
/// does not send `iss` ([`redirect_uri`]).
pub async fn callback_keyed(
    State(s): State<AppState>,
    Path(key): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    let arrived = format!("{}{CALLBACK_PATH}/{key}", s.public_url);
    page(crate::service::flows::complete(&s, q.as_deref(), &arrived).await)
}

/// The callback page's only script: reads the result from the JSON element and posts
/// it on the `mcp-oauth` BroadcastChannel and to the opener at Latchkey's own origin
/// (never `*`), then closes the window after about a second (R-UI-2). Constant, so
/// the CSP allows exactly it by hash.
const CALLBACK_SCRIPT: &str = "(function(){var m=JSON.parse(document.getElementById('latchkey-result').textContent);\
try{new BroadcastChannel('mcp-oauth').postMessage(m);}catch(e){}\
if(window.opener){try{window.opener.postMessage(m,window.location.origin);}catch(e){}}\
setTimeout(function(){window.close();},1000);})();";

/// The callback page's CSP: no source at all but the one script, by its hash, and the
/// app's stylesheet and icon from this origin (styled like the app, issue 17).
fn callback_csp() -> HeaderValue {
    static CSP: std::sync::OnceLock<HeaderValue> = std::sync::OnceLock::new();
    CSP.get_or_init(|| {
        use sha2::Digest;
        let hash = base64(&sha2::Sha256::digest(CALLBACK_SCRIPT.as_bytes()));
        HeaderValue::from_str(&format!(
            "default-src 'none'; script-src 'sha256-{hash}'; style-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        ))
        .unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'"))
    })
    .clone()
}

/// Standard base64 with padding (RFC 4648 §4), for the CSP hash.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// What the callback page says for a reason (R-UI-6): fixed texts only, never
/// anything from the request.
fn reason_text(reason: &str) -> &'static str {
    match reason {
        "connected" => "Connected. You can close this window.",
        "provider_error" => "The authorization server refused the connection.",
        "missing_code_or_state" | "missing_state" => {
            "The authorization server's answer was incomplete. Please try again."
        }
        "invalid_state" => "Authorization expired. Please try again.",
        "server_gone" => "The server was removed while you were authorizing it.",
        "insecure_url" => "MCP OAuth requires https.",
        "issuer_mismatch" => {
            "The answer did not come from the expected authorization server. Please try again."
        }
        "invalid_callback" => "The authorization server's answer was malformed. Please try again.",
        "encryption_key_missing" => {
            "Latchkey has no encryption key configured. Contact your administrator."
        }
        "discovery_failed" => {
            "The server's OAuth metadata could not be read. Please try again later."
        }
        "client_changed" => {
            "The server's OAuth client changed while you were authorizing. Please try again."
        }
        "exchange_failed" => {
            "The authorization code could not be exchanged for a token. Please try again."
        }
        "client_unknown" => {
            "The authorization server no longer knows Latchkey's registration; connect again and Latchkey registers afresh."
        }
        _ => "Something went wrong while connecting. Please try again.",
    }
}

/// The callback page (R-SEC-11, R-UI-2): no untrusted text in markup (the payload is
/// JSON in a non-executable script element with `<`, `>` and `&` escaped), a CSP that
/// allows only its one constant script (and the app's own stylesheet and icon under
/// `/ui/`, so it looks like the app), and the result
/// `{type:"mcp-oauth", ok, serverId?, reason, error?}` posted only to Latchkey's own
/// origin and its BroadcastChannel.
fn page(o: Outcome) -> Response {
    let payload = json!({
        "type": "mcp-oauth",
        "ok": o.ok,
        "reason": o.reason,
        "serverId": o.server_id,
        "error": o.detail,
    })
    .to_string()
    .replace('<', "\\u003c")
    .replace('>', "\\u003e")
    .replace('&', "\\u0026");
    let headline = reason_text(o.reason);
    let (title, tone, close) = if o.ok {
        ("Connected", "connected", "")
    } else {
        (
            "Not connected",
            "error",
            "<p class=\"muted\">You can close this window and try again from Latchkey.</p>",
        )
    };
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Latchkey</title>\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <link rel=\"icon\" href=\"/ui/icon.svg\" type=\"image/svg+xml\">\
         <link rel=\"stylesheet\" href=\"/ui/app.css\"></head><body class=\"callback\">\
         <header class=\"top\"><h1><img src=\"/ui/icon.svg\" alt=\"\" width=\"28\" height=\"28\"> Latchkey</h1></header>\
         <main><section class=\"panel\"><h2>{title}</h2>\
         <p role=\"status\" class=\"status status-{tone}\">{headline}</p>{close}</section></main>\
         <script type=\"application/json\" id=\"latchkey-result\">{payload}</script>\
         <script>{CALLBACK_SCRIPT}</script></body></html>"
    );
    let mut resp = (o.status, html).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CONTENT_SECURITY_POLICY, callback_csp());
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

/// `GET /v1/oauth/status/{server_id}` (R-API-7): never token material.
pub async fn status(
    State(s): State<AppState>,
    axum::Extension(p): axum::Extension<Principal>,
    Path(server_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let server = s.server(&p, &server_id).await?;
    if let Some(headers) = crate::service::headers::status(&s, &p, &server).await? {
        // A static-header server: its names, set or not in the caller's slot.
        return Ok(Json(json!({"has_token": false, "headers": headers})));
    }
    let slot = crate::service::own_slot(&p, &server)?;
    let now_s = s.now();
    Ok(Json(match s.store.get_credential(&slot).await? {
        None => json!({"has_token": false}),
        Some(c) => json!({
            "has_token": true,
            "client_id": c.client_id,
            "issuer": c.issuer,
            // Timestamps in RFC 3339 (R-API-7).
            "expires_at": c.access_expires_at.map(rfc3339),
            "expired": c.access_expires_at.is_some_and(|e| e <= now_s),
            "refreshable": c.refresh_token.is_some(),
            // A disconnect revokes the tokens only at the revocation endpoint recorded
            // with them; without one they are only forgotten here.
            "revocable": c.revocation_endpoint.is_some(),
            // The authorization server refused the credential: connect again.
            "needs_consent": c.needs_consent,
            "updated_at": rfc3339(c.updated_at),
            "scopes": c.scopes,
        }),
    }))
}

/// Unix seconds from the store as RFC 3339.
fn rfc3339(secs: i64) -> String {
    latchkey_core::UnixTime::from_secs(u64::try_from(secs).unwrap_or(0)).to_rfc3339()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), want);
        }
    }

    #[test]
    fn the_page_runs_only_its_hashed_script() {
        let resp = page(Outcome::fail(
            axum::http::StatusCode::OK,
            "provider_error",
            None,
        ));
        let csp = resp.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        use sha2::Digest;
        let hash = base64(&sha2::Sha256::digest(CALLBACK_SCRIPT.as_bytes()));
        assert!(
            csp.contains(&format!("script-src 'sha256-{hash}'")),
            "{csp}"
        );
        assert_eq!(hash.len(), 44);
    }
}
