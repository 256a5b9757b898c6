//! The credential a request presents (R-RS-2, A22).
//!
//! `Authorization: Bearer <t>` is always an OAuth access token (JWT-shaped → local
//! verification, otherwise introspection); `Authorization: Token <t>` is always a
//! Latchkey API key. Schemes are case-insensitive, surrounding whitespace is trimmed and
//! an empty token counts as missing.

use http::HeaderMap;
use latchkey_core::Secret;

use crate::error::{GuardError, InvalidReason};

/// Longest token accepted (bytes). Longer values are refused before any verifier sees
/// them, so nobody can make Latchkey post megabytes to the introspection endpoint.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// A presented credential. `Debug` shows the scheme only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// `Bearer`: an OAuth access token.
    Bearer(Secret),
    /// `Token`: a Latchkey API key.
    ApiKey(Secret),
    /// The browser session cookie's id (see [`crate::session`]).
    Session(Secret),
}

impl Credential {
    /// The token text.
    pub fn secret(&self) -> &Secret {
        match self {
            Credential::Bearer(s) | Credential::ApiKey(s) | Credential::Session(s) => s,
        }
    }
}

/// Parses one `Authorization` value. `Ok(None)` means "no usable credential": absent,
/// empty token, or a scheme other than `Bearer` and `Token`.
pub fn parse_authorization(value: &str) -> Result<Option<Credential>, GuardError> {
    let value = value.trim_matches(is_ws);
    let (scheme, rest) = match value.find(is_ws) {
        Some(i) => value.split_at(i),
        None => (value, ""),
    };
    let token = rest.trim_matches(is_ws);
    let bearer = scheme.eq_ignore_ascii_case("bearer");
    if !bearer && !scheme.eq_ignore_ascii_case("token") {
        return Ok(None);
    }
    if token.is_empty() {
        return Ok(None);
    }
    if token.len() > MAX_TOKEN_LEN || token.contains(is_ws) {
        return Err(InvalidReason::Malformed.into());
    }
    let secret = Secret::new(token);
    Ok(Some(if bearer {
        Credential::Bearer(secret)
    } else {
        Credential::ApiKey(secret)
    }))
}

/// The credential of a request. A header that is not visible ASCII counts as missing;
/// two `Authorization` headers are refused as malformed.
pub fn from_headers(headers: &HeaderMap) -> Result<Option<Credential>, GuardError> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(InvalidReason::Malformed.into());
    }
    match first.to_str() {
        Ok(v) => parse_authorization(v),
        Err(_) => Ok(None),
    }
}

/// Whether `token` has the JWS compact shape: three non-empty base64url segments.
pub fn looks_like_jwt(token: &str) -> bool {
    let mut n = 0;
    for seg in token.split('.') {
        n += 1;
        if n > 3 || seg.is_empty() || !seg.bytes().all(is_b64url) {
            return false;
        }
    }
    n == 3
}

fn is_ws(c: char) -> bool {
    c == ' ' || c == '\t'
}

fn is_b64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: &str) -> Option<Credential> {
        parse_authorization(v).unwrap()
    }

    #[test]
    fn schemes_are_case_insensitive_and_trimmed() {
        assert_eq!(
            parse("  bEaReR \t abc.def  "),
            Some(Credential::Bearer(Secret::new("abc.def")))
        );
        assert_eq!(
            parse("TOKEN lk_123"),
            Some(Credential::ApiKey(Secret::new("lk_123")))
        );
    }

    #[test]
    fn empty_or_unknown_counts_as_missing() {
        assert_eq!(parse("Bearer"), None);
        assert_eq!(parse("Bearer    "), None);
        assert_eq!(parse(""), None);
        assert_eq!(parse("Basic dXNlcjpwdw=="), None);
        assert_eq!(parse("Bearerabc"), None);
    }

    #[test]
    fn inner_whitespace_and_huge_tokens_are_malformed() {
        assert_eq!(
            parse_authorization("Bearer a b"),
            Err(GuardError::Invalid(InvalidReason::Malformed))
        );
        let huge = format!("Bearer {}", "a".repeat(MAX_TOKEN_LEN + 1));
        assert!(parse_authorization(&huge).is_err());
    }

    #[test]
    fn two_authorization_headers_are_refused() {
        let mut h = HeaderMap::new();
        h.append(http::header::AUTHORIZATION, "Bearer a".parse().unwrap());
        h.append(http::header::AUTHORIZATION, "Bearer b".parse().unwrap());
        assert!(from_headers(&h).is_err());
        assert_eq!(from_headers(&HeaderMap::new()).unwrap(), None);
    }

    #[test]
    fn jwt_shape() {
        assert!(looks_like_jwt("aGVhZA.Ym9keQ.c2ln"));
        assert!(!looks_like_jwt("aGVhZA.Ym9keQ."));
        assert!(!looks_like_jwt("opaque-token"));
        assert!(!looks_like_jwt("a.b.c.d.e"));
        assert!(!looks_like_jwt("a.b+c.d"));
    }

    #[test]
    fn debug_hides_the_token() {
        let c = parse("Bearer very-secret-token").unwrap();
        assert!(!format!("{c:?}").contains("very-secret"));
    }
}
