//! The rules every route applies, shared by the router's layers (`app`) and the
//! `/mcp/{server}` service that runs outside them (`proxy::Route`, issue 18): the
//! hardening headers on every answer and the JSON body of a state-changing request. A
//! building block, so neither of the two imports the other for them.

use crate::error::ApiError;

/// The policy every answer gets unless its route set its own (the UI and the callback
/// page do): never sniffed, and if a browser renders it anyway, a sandbox with nothing
/// allowed, so nothing on Latchkey's origin runs script it did not write (issue 15).
pub const SANDBOX_CSP: &str = "sandbox; default-src 'none'";

/// Sets them: for the application's outer layer (`app::harden`) and for the
/// `/mcp/{server}` service outside the layers (`proxy::Route`).
pub(crate) fn harden_headers(h: &mut http::HeaderMap) {
    h.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        http::HeaderValue::from_static("nosniff"),
    );
    if !h.contains_key(http::header::CONTENT_SECURITY_POLICY) {
        h.insert(
            http::header::CONTENT_SECURITY_POLICY,
            http::HeaderValue::from_static(SANDBOX_CSP),
        );
    }
}

/// Whether `value` (a `Content-Type`) is `application/json`, parameters aside.
pub(crate) fn is_json(value: Option<&http::HeaderValue>) -> bool {
    value
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

/// A state-changing request to the API or the MCP proxy must be `application/json`
/// (`app::require_json` and `proxy::Route` apply it; `app::require_json` says why).
pub(crate) fn json_required(
    method: &http::Method,
    headers: &http::HeaderMap,
) -> Result<(), ApiError> {
    use http::{Method, header};
    let has_body = |h: &http::HeaderMap| {
        h.contains_key(header::TRANSFER_ENCODING)
            || h.get(header::CONTENT_LENGTH)
                .is_some_and(|v| v.as_bytes() != b"0")
    };
    let needs_json = match *method {
        // (No route takes PUT: it stays the typed 405.)
        Method::POST | Method::PATCH => true,
        Method::DELETE => has_body(headers),
        _ => false,
    };
    if needs_json && !is_json(headers.get(header::CONTENT_TYPE)) {
        return Err(ApiError::UnsupportedMediaType);
    }
    Ok(())
}
