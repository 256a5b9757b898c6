//! Refusals as HTTP answers (RFC 6750 §3, RFC 9728 §5.1, R-RS-1, R-RS-10, R-RS-14,
//! R-RS-15). One pure function; bodies are fixed texts that never echo the credential.
//!
//! | refusal | status | `WWW-Authenticate` |
//! |---|---|---|
//! | missing | 401 | `Bearer resource_metadata="…"[, scope="…"]` |
//! | invalid | 401 | `Bearer error="invalid_token", resource_metadata="…"[, scope="…"]` |
//! | insufficient scope | 403 | `Bearer error="insufficient_scope", scope="<required>", resource_metadata="…"` |
//! | verifier unavailable | 503 | none (a challenge would make clients drop good tokens) |
//! | bad Host/Origin | 403 | none |

use http::{HeaderValue, Response, StatusCode, header};
use serde_json::json;

use crate::error::{GuardError, InvalidReason};

/// Seconds a client should wait after a 503.
pub const RETRY_AFTER_SECS: u32 = 5;

/// What every challenge carries.
#[derive(Debug, Clone, Copy)]
pub struct ChallengeParams<'a> {
    /// The PRM document URL (from the one resolver, R-RS-14).
    pub resource_metadata: &'a str,
    /// Scopes to advertise in 401 challenges (space separated), when configured.
    pub scope: Option<&'a str>,
}

/// `value` as an RFC 9110 quoted-string: `"` and `\` escaped, control characters
/// dropped.
fn quoted(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The `WWW-Authenticate` value for `err`, or `None` when it gets no challenge.
pub fn www_authenticate(err: &GuardError, p: ChallengeParams<'_>) -> Option<String> {
    let mut params: Vec<(&str, String)> = Vec::new();
    let scope = match err {
        GuardError::Missing => p.scope.map(str::to_owned),
        GuardError::Invalid(_) => {
            params.push(("error", quoted("invalid_token")));
            p.scope.map(str::to_owned)
        }
        GuardError::InsufficientScope { required } => {
            params.push(("error", quoted("insufficient_scope")));
            Some(required.join(" "))
        }
        GuardError::Unavailable(_) | GuardError::BadHostOrOrigin | GuardError::Csrf => return None,
    };
    if let Some(s) = scope.filter(|s| !s.is_empty()) {
        params.push(("scope", quoted(&s)));
    }
    params.push(("resource_metadata", quoted(p.resource_metadata)));
    let joined: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
    Some(format!("Bearer {}", joined.join(", ")))
}

/// Status and fixed body of `err`.
fn status_and_body(err: &GuardError) -> (StatusCode, serde_json::Value) {
    match err {
        GuardError::Missing => (
            StatusCode::UNAUTHORIZED,
            json!({"error": "unauthorized", "error_description": "Authentication required"}),
        ),
        GuardError::Invalid(InvalidReason::UnknownApiKey) => (
            StatusCode::UNAUTHORIZED,
            json!({"error": "invalid_token", "error_description": "Invalid API key"}),
        ),
        GuardError::Invalid(InvalidReason::UnknownSession) => (
            StatusCode::UNAUTHORIZED,
            json!({"error": "invalid_token", "error_description": "Your session has ended: sign in again"}),
        ),
        GuardError::Invalid(_) => (
            StatusCode::UNAUTHORIZED,
            json!({"error": "invalid_token", "error_description": "Invalid OAuth bearer token"}),
        ),
        GuardError::InsufficientScope { required } => (
            StatusCode::FORBIDDEN,
            json!({
                "error": "insufficient_scope",
                "error_description": "Insufficient scope",
                "scope": required.join(" "),
            }),
        ),
        GuardError::Unavailable(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({
                "error": "temporarily_unavailable",
                "error_description": "Authentication is temporarily unavailable",
            }),
        ),
        GuardError::BadHostOrOrigin => (
            StatusCode::FORBIDDEN,
            json!({"error": "forbidden", "error_description": "Invalid Host/Origin header"}),
        ),
        GuardError::Csrf => (
            StatusCode::FORBIDDEN,
            json!({"error": "forbidden", "error_description": "A request made with a session cookie needs the session's X-CSRF-Token header"}),
        ),
    }
}

/// The whole HTTP answer to `err`: status, `WWW-Authenticate` when due, `Retry-After`
/// on 503, `Cache-Control: no-store`, and a generic JSON body.
pub fn error_response(err: &GuardError, p: ChallengeParams<'_>) -> Response<String> {
    let (status, body) = status_and_body(err);
    let mut resp = Response::new(body.to_string());
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(v) = www_authenticate(err, p).and_then(|c| HeaderValue::from_str(&c).ok()) {
        h.insert(header::WWW_AUTHENTICATE, v);
    }
    if status == StatusCode::SERVICE_UNAVAILABLE {
        h.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::UnavailableReason;

    const PRM: &str = "https://lk.example/.well-known/oauth-protected-resource/mcp";

    fn p(scope: Option<&str>) -> ChallengeParams<'_> {
        ChallengeParams {
            resource_metadata: PRM,
            scope,
        }
    }

    #[test]
    fn missing_has_no_error_param() {
        assert_eq!(
            www_authenticate(&GuardError::Missing, p(None)).unwrap(),
            format!(r#"Bearer resource_metadata="{PRM}""#)
        );
        assert_eq!(
            www_authenticate(&GuardError::Missing, p(Some("mcp"))).unwrap(),
            format!(r#"Bearer scope="mcp", resource_metadata="{PRM}""#)
        );
    }

    #[test]
    fn invalid_and_insufficient_scope() {
        let inv = GuardError::Invalid(InvalidReason::Signature);
        assert_eq!(
            www_authenticate(&inv, p(None)).unwrap(),
            format!(r#"Bearer error="invalid_token", resource_metadata="{PRM}""#)
        );
        let sc = GuardError::InsufficientScope {
            required: vec!["mcp".into(), "admin".into()],
        };
        assert_eq!(
            www_authenticate(&sc, p(Some("ignored"))).unwrap(),
            format!(
                r#"Bearer error="insufficient_scope", scope="mcp admin", resource_metadata="{PRM}""#
            )
        );
        let r = error_response(&sc, p(None));
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
    }

    #[test]
    fn unavailable_and_host_have_no_challenge() {
        let r = error_response(&GuardError::Unavailable(UnavailableReason::Jwks), p(None));
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(r.headers().get(header::WWW_AUTHENTICATE).is_none());
        assert_eq!(r.headers()[header::RETRY_AFTER], "5");
        let r = error_response(&GuardError::BadHostOrOrigin, p(None));
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert!(r.headers().get(header::WWW_AUTHENTICATE).is_none());
        assert!(r.body().contains("Invalid Host/Origin header"));
    }

    #[test]
    fn quoting_escapes() {
        assert_eq!(quoted("a\"b\\c\r\n"), r#""a\"b\\c""#);
    }
}
