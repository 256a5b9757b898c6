//! Browser sessions (issue 19): a person signed in through the organisation's OpenID
//! provider holds an opaque random id in an `HttpOnly` cookie; the store keeps only its
//! SHA-256.
//!
//! A session is a credential a browser sends by itself, so every state-changing request
//! made with one must also carry the session's CSRF token in [`CSRF_HEADER`]. The token
//! is derived from the session id (a hash with its own domain label), so it needs no
//! storage and cannot be computed without the cookie, which scripts on other origins
//! never see. `Authorization` wins over the cookie: a request with a bearer token or an
//! API key is judged by that alone.

use std::fmt;

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderMap;
use latchkey_core::Secret;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::credential::MAX_TOKEN_LEN;
use crate::error::{GuardError, InvalidReason, UnavailableReason};
use crate::principal::Principal;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "latchkey_session";

/// The header carrying the CSRF token on state-changing requests made with a session.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// Random bytes in a session id.
const ID_BYTES: usize = 32;

/// A fresh session id (or login id): 32 random bytes, base64url.
pub fn new_session_id() -> Secret {
    let mut bytes = [0u8; ID_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    Secret::new(URL_SAFE_NO_PAD.encode(bytes))
}

/// The SHA-256 of a session id: what the store keeps and looks up.
pub fn session_hash(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

/// The CSRF token of the session `id`.
pub fn csrf_token(id: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"latchkey csrf token v1\0");
    h.update(id.as_bytes());
    URL_SAFE_NO_PAD.encode(h.finalize())
}

/// Whether `presented` is the CSRF token of session `id` (constant time).
pub fn csrf_matches(id: &str, presented: &str) -> bool {
    let want = csrf_token(id);
    want.len() == presented.len() && bool::from(want.as_bytes().ct_eq(presented.as_bytes()))
}

/// The value of cookie `name` in the request's `Cookie` headers. A value that is not
/// visible ASCII, empty or longer than any token we accept counts as absent.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().trim_matches('"'))
        .filter(|v| !v.is_empty() && v.len() <= MAX_TOKEN_LEN)
}

/// The session id a request presents, if any.
pub fn session_id(headers: &HeaderMap) -> Option<Secret> {
    cookie(headers, SESSION_COOKIE).map(Secret::new)
}

/// A store failure: the detail is for the logs, never for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionStoreError(pub String);

impl fmt::Display for SessionStoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "session store: {}", self.0)
    }
}

/// Where sessions live. `lookup` returns the principal of a live session (not ended,
/// not idle too long) and records its use; `None` for anything else.
#[async_trait]
pub trait SessionStore: Send + Sync + fmt::Debug {
    /// The principal of the session whose id hashes to `hash`, if it is live.
    async fn lookup(&self, hash: &[u8; 32]) -> Result<Option<Principal>, SessionStoreError>;
}

/// Authenticates a session id against `store`: an unknown or ended session is
/// `invalid_token`, a store failure a 503.
pub async fn authenticate(store: &dyn SessionStore, id: &str) -> Result<Principal, GuardError> {
    match store.lookup(&session_hash(id)).await {
        Ok(Some(p)) => Ok(p),
        Ok(None) => Err(InvalidReason::UnknownSession.into()),
        Err(e) => {
            tracing::warn!(event = "guard.session_store_failed", error = %e);
            Err(GuardError::Unavailable(UnavailableReason::Store))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_csrf_token_is_bound_to_its_session() {
        let a = new_session_id();
        let b = new_session_id();
        assert_ne!(a.expose(), b.expose());
        let t = csrf_token(a.expose());
        assert!(csrf_matches(a.expose(), &t));
        assert!(!csrf_matches(b.expose(), &t));
        assert!(!csrf_matches(a.expose(), ""));
        assert!(!t.contains(a.expose()));
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(
            http::header::COOKIE,
            "a=1; latchkey_session=abc ; b=2".parse().unwrap(),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&h, "latchkey"), None);
        let mut h = HeaderMap::new();
        h.append(http::header::COOKIE, "x=1".parse().unwrap());
        h.append(http::header::COOKIE, "latchkey_session=z".parse().unwrap());
        assert_eq!(
            session_id(&h).map(|s| s.expose().to_owned()),
            Some("z".into())
        );
        let mut h = HeaderMap::new();
        h.append(http::header::COOKIE, "latchkey_session=".parse().unwrap());
        assert!(session_id(&h).is_none());
    }
}
