//! Who may read the operator's documents: `/metrics` and `/v1/openapi.json`.
//!
//! In local mode they are served to anyone who reaches the loopback listener. In jwt
//! mode they are served only when configured (`[metrics] token`), to a caller
//! presenting `Authorization: Bearer <token>`, compared in constant time; otherwise,
//! and to anyone else, they do not exist (404).

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use latchkey_core::Secret;
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// Access to the operator's documents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpsAccess {
    /// Served to anyone (local mode: loopback only, one user).
    Open,
    /// Served to a caller with this Bearer token.
    Token(Secret),
    /// Not served (jwt mode without a metrics token).
    Closed,
}

impl OpsAccess {
    /// The access the configuration asks for.
    pub fn from_config(cfg: &crate::Config) -> Self {
        match (&cfg.auth, &cfg.metrics_token) {
            (_, Some(t)) => Self::Token(t.clone()),
            (crate::AuthConfig::Local { .. }, None) => Self::Open,
            (_, None) => Self::Closed,
        }
    }

    /// Whether a request with this `Authorization` header value may read them.
    pub fn allows(&self, authorization: Option<&[u8]>) -> bool {
        match self {
            Self::Open => true,
            Self::Closed => false,
            Self::Token(want) => authorization
                .and_then(|v| {
                    let (scheme, rest) = v.split_at_checked(7)?;
                    scheme.eq_ignore_ascii_case(b"bearer ").then_some(rest)
                })
                .is_some_and(|got| {
                    let got = got.trim_ascii();
                    // `ct_eq` on slices of different lengths is false without
                    // comparing, which leaks only the length.
                    bool::from(got.ct_eq(want.expose().as_bytes()))
                }),
        }
    }
}

/// Middleware for the operator's routes: 404 unless [`OpsAccess::allows`] the caller.
pub async fn gate(
    State(access): State<OpsAccess>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let auth = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    if !access.allows(auth) {
        return Err(ApiError::NotFound);
    }
    Ok(next.run(req).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_token_opens_it() {
        let t = OpsAccess::Token(Secret::new("metrics-token-0123456789"));
        assert!(t.allows(Some(b"Bearer metrics-token-0123456789")));
        assert!(t.allows(Some(b"bearer  metrics-token-0123456789 ")));
        for bad in [
            None,
            Some(&b"Bearer metrics-token-012345678"[..]),
            Some(b"Bearer metrics-token-01234567890"),
            Some(b"Token metrics-token-0123456789"),
            Some(b"metrics-token-0123456789"),
            Some(b"Bearer "),
            Some(b""),
        ] {
            assert!(!t.allows(bad), "{bad:?}");
        }
        assert!(OpsAccess::Open.allows(None));
        assert!(!OpsAccess::Closed.allows(Some(b"Bearer x")));
    }
}
