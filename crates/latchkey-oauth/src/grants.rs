//! Token requests: authorization code, refresh (rotation-aware), client credentials,
//! RFC 8693 token exchange and RFC 7523 jwt-bearer, optionally DPoP-bound with the
//! RFC 9449 §8 nonce retry. Responses are parsed defensively (R-REFRESH-8, R-REFRESH-9).

use latchkey_core::{Secret, UnixTime};
use latchkey_egress::{Egress, EgressRequest, TOKEN_BODY_LIMIT, UrlSource};

use crate::client_auth::ClientCredentials;
use crate::dpop::{DPOP_HEADER, DPOP_NONCE_HEADER, DpopKey};
use crate::error::OAuthError;
use crate::json;

/// `grant_type` of RFC 8693 token exchange.
pub const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// `grant_type` of RFC 7523 §2.1 (JWT as an authorization grant).
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// A grant.
#[derive(Debug, Clone)]
pub enum Grant {
    /// RFC 6749 §4.1.3 with PKCE.
    AuthorizationCode {
        /// The code from the callback.
        code: Secret,
        /// The same redirect URI as the authorization request.
        redirect_uri: String,
        /// The PKCE verifier.
        code_verifier: Secret,
    },
    /// RFC 6749 §6.
    RefreshToken {
        /// The current refresh token.
        refresh_token: Secret,
    },
    /// RFC 6749 §4.4.
    ClientCredentials,
    /// RFC 8693.
    TokenExchange {
        /// The token being exchanged.
        subject_token: Secret,
        /// Its type URN.
        subject_token_type: String,
        /// The wanted token type URN.
        requested_token_type: Option<String>,
        /// `audience`.
        audience: Option<String>,
    },
    /// RFC 7523 §2.1.
    JwtBearer {
        /// The assertion.
        assertion: Secret,
    },
}

impl Grant {
    fn grant_type(&self) -> &'static str {
        match self {
            Grant::AuthorizationCode { .. } => "authorization_code",
            Grant::RefreshToken { .. } => "refresh_token",
            Grant::ClientCredentials => "client_credentials",
            Grant::TokenExchange { .. } => TOKEN_EXCHANGE_GRANT,
            Grant::JwtBearer { .. } => JWT_BEARER_GRANT,
        }
    }

    fn push(&self, form: &mut Vec<(&'static str, Secret)>) {
        form.push(("grant_type", Secret::new(self.grant_type())));
        match self {
            Grant::AuthorizationCode {
                code,
                redirect_uri,
                code_verifier,
            } => {
                form.push(("code", code.clone()));
                form.push(("redirect_uri", Secret::new(redirect_uri.clone())));
                form.push(("code_verifier", code_verifier.clone()));
            }
            Grant::RefreshToken { refresh_token } => {
                form.push(("refresh_token", refresh_token.clone()))
            }
            Grant::ClientCredentials => {}
            Grant::TokenExchange {
                subject_token,
                subject_token_type,
                requested_token_type,
                audience,
            } => {
                if let Some(t) = requested_token_type {
                    form.push(("requested_token_type", Secret::new(t.clone())));
                }
                if let Some(a) = audience {
                    form.push(("audience", Secret::new(a.clone())));
                }
                form.push(("subject_token", subject_token.clone()));
                form.push((
                    "subject_token_type",
                    Secret::new(subject_token_type.clone()),
                ));
            }
            Grant::JwtBearer { assertion } => form.push(("assertion", assertion.clone())),
        }
    }
}

/// A token request.
#[derive(Debug, Clone)]
pub struct TokenRequest<'a> {
    /// The token endpoint.
    pub token_endpoint: &'a str,
    /// Where the endpoint URL came from (egress policy).
    pub source: UrlSource,
    /// The AS issuer (the audience of client assertions).
    pub issuer: &'a str,
    /// The grant.
    pub grant: Grant,
    /// How the client authenticates; `None` sends no client authentication at all.
    pub client: Option<&'a ClientCredentials>,
    /// RFC 8707 `resource`, verbatim.
    pub resource: Option<&'a str>,
    /// `scope`.
    pub scope: Option<&'a str>,
    /// A DPoP key, to bind the token.
    pub dpop: Option<&'a DpopKey>,
    /// A DPoP nonce already known for this AS.
    pub dpop_nonce: Option<String>,
    /// The current time (assertions and proofs).
    pub now: UnixTime,
}

/// A successful token response.
#[derive(Debug, Clone)]
pub struct TokenResponse {
    /// The access token (non-empty).
    pub access_token: Secret,
    /// `token_type` (`Bearer` when absent).
    pub token_type: String,
    /// `expires_in` seconds, when given as a number or a digit string.
    pub expires_in: Option<u64>,
    /// A refresh token, when issued.
    pub refresh_token: Option<Secret>,
    /// The granted scope, when reported.
    pub scope: Option<String>,
    /// RFC 8693 `issued_token_type`.
    pub issued_token_type: Option<String>,
    /// The last DPoP nonce the AS sent, to reuse on the next request.
    pub dpop_nonce: Option<String>,
}

impl TokenResponse {
    /// Whether the token is DPoP-bound (`token_type` = `DPoP`, case-insensitive).
    pub fn is_dpop(&self) -> bool {
        self.token_type.eq_ignore_ascii_case("dpop")
    }
}

/// The result of a refresh grant.
#[derive(Debug, Clone)]
pub struct Refreshed {
    /// The new tokens.
    pub tokens: TokenResponse,
    /// True when the AS rotated the refresh token (a new, different one was issued).
    pub rotated: bool,
}

/// Sends a token request, retrying once with a fresh proof when the AS demands a DPoP
/// nonce. Every other failure is returned as is; nothing is retried blindly.
pub async fn request_token(
    egress: &Egress,
    req: TokenRequest<'_>,
) -> Result<TokenResponse, OAuthError> {
    let mut nonce = req.dpop_nonce.clone();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let mut form: Vec<(&'static str, Secret)> = Vec::new();
        req.grant.push(&mut form);
        if let Some(s) = req.scope {
            form.push(("scope", Secret::new(s)));
        }
        if let Some(r) = req.resource {
            form.push(("resource", Secret::new(r)));
        }
        let mut headers = http::HeaderMap::new();
        if let Some(c) = req.client {
            c.apply(&mut form, &mut headers, req.issuer, req.now)?;
        }
        if let Some(k) = req.dpop {
            let proof = k.proof("POST", req.token_endpoint, nonce.as_deref(), None, req.now)?;
            if let Ok(v) = http::HeaderValue::from_str(&proof) {
                headers.insert(DPOP_HEADER, v);
            }
        }
        let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.expose())).collect();
        let mut r =
            EgressRequest::post_form(req.token_endpoint, req.source, &pairs, TOKEN_BODY_LIMIT)
                .header(
                    http::header::ACCEPT,
                    http::HeaderValue::from_static("application/json"),
                );
        for (name, value) in headers.iter() {
            r = r.header(name.clone(), value.clone());
        }
        let resp = egress.send(r).await?;
        let new_nonce = resp.header_str(DPOP_NONCE_HEADER).map(str::to_owned);
        if resp.status.is_success() {
            let mut tokens = parse_token_response(&resp.body)?;
            tokens.dpop_nonce = new_nonce.or(nonce);
            return Ok(tokens);
        }
        let err = parse_error(resp.status.as_u16(), &resp.body);
        if req.dpop.is_some()
            && attempts == 1
            && err.oauth_error_code() == Some("use_dpop_nonce")
            && new_nonce.is_some()
        {
            nonce = new_nonce;
            continue;
        }
        tracing::debug!(event = "mcpoauth.token_error", status = resp.status.as_u16(), error = ?err.oauth_error_code());
        return Err(err);
    }
}

/// A refresh grant that reports whether the refresh token rotated (R-REFRESH-10: when
/// the AS sends none, the caller keeps the old one).
pub async fn refresh(egress: &Egress, req: TokenRequest<'_>) -> Result<Refreshed, OAuthError> {
    let old = match &req.grant {
        Grant::RefreshToken { refresh_token } => refresh_token.clone(),
        _ => {
            return Err(OAuthError::Key(
                "refresh() needs a refresh_token grant".into(),
            ));
        }
    };
    let tokens = request_token(egress, req).await?;
    let rotated = tokens
        .refresh_token
        .as_ref()
        .is_some_and(|n| n.expose() != old.expose());
    Ok(Refreshed { tokens, rotated })
}

/// Parses a 2xx token response body (R-REFRESH-8, R-REFRESH-9).
pub fn parse_token_response(body: &[u8]) -> Result<TokenResponse, OAuthError> {
    if !json::is_object(body) {
        return Err(OAuthError::InvalidTokenResponse(
            "the body is not a JSON object".into(),
        ));
    }
    let m = json::object(body);
    let access_token = json::string(&m, "access_token")
        .ok_or_else(|| OAuthError::InvalidTokenResponse("no access_token".into()))?;
    Ok(TokenResponse {
        access_token: Secret::new(access_token),
        token_type: json::string(&m, "token_type").unwrap_or_else(|| "Bearer".into()),
        expires_in: json::seconds(&m, "expires_in"),
        refresh_token: json::string(&m, "refresh_token").map(Secret::new),
        scope: json::string(&m, "scope"),
        issued_token_type: json::string(&m, "issued_token_type"),
        dpop_nonce: None,
    })
}

/// Turns a non-2xx token response into a typed error; only string fields are used.
pub fn parse_error(status: u16, body: &[u8]) -> OAuthError {
    let m = json::object(body);
    OAuthError::TokenEndpoint {
        status,
        error: json::string(&m, "error"),
        description: json::string(&m, "error_description"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use latchkey_core::Remedy;

    #[test]
    fn defensive_success_parsing() {
        for bad in [
            &b"null"[..],
            b"3",
            b"[]",
            b"<html>",
            b"{}",
            br#"{"access_token":""}"#,
            br#"{"access_token":5}"#,
        ] {
            assert!(matches!(
                parse_token_response(bad),
                Err(OAuthError::InvalidTokenResponse(_))
            ));
        }
        let t = parse_token_response(
            br#"{"access_token":"a","expires_in":"3600","refresh_token":"r","token_type":"DPoP"}"#,
        )
        .unwrap();
        assert_eq!(t.expires_in, Some(3600));
        assert!(t.is_dpop());
        assert_eq!(t.refresh_token.unwrap().expose(), "r");
        let t =
            parse_token_response(br#"{"access_token":"a","expires_in":"soon","refresh_token":7}"#)
                .unwrap();
        assert_eq!(t.expires_in, None);
        assert!(t.refresh_token.is_none());
        assert_eq!(t.token_type, "Bearer");
    }

    #[test]
    fn error_parsing_uses_strings_only() {
        let e = parse_error(
            400,
            br#"{"error":"invalid_grant","error_description":{"x":1}}"#,
        );
        assert_eq!(e.oauth_error_code(), Some("invalid_grant"));
        assert_eq!(e.remedy(), Remedy::Reconsent);
        let e = parse_error(502, b"null");
        assert_eq!(e.oauth_error_code(), None);
        assert_eq!(e.remedy(), Remedy::Retry);
    }
}
