//! RFC 7009 token revocation.

use latchkey_core::{Secret, UnixTime};
use latchkey_egress::{Egress, EgressRequest, TOKEN_BODY_LIMIT, UrlSource};

use crate::client_auth::ClientCredentials;
use crate::error::OAuthError;

/// `token_type_hint` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenTypeHint {
    /// A refresh token (revoking it usually revokes its access tokens too).
    RefreshToken,
    /// An access token.
    AccessToken,
}

/// Revokes `token` at `endpoint`. A 200 is success, whatever the body (RFC 7009 §2.2:
/// an unknown token is also 200). Anything else is an error the caller may log and
/// ignore (revocation before purge is best-effort, R-STORE-16).
pub async fn revoke(
    egress: &Egress,
    endpoint: &str,
    issuer: &str,
    token: &Secret,
    hint: TokenTypeHint,
    client: &ClientCredentials,
    now: UnixTime,
) -> Result<(), OAuthError> {
    let mut form = vec![
        ("token", token.clone()),
        (
            "token_type_hint",
            Secret::new(match hint {
                TokenTypeHint::RefreshToken => "refresh_token",
                TokenTypeHint::AccessToken => "access_token",
            }),
        ),
    ];
    let mut headers = http::HeaderMap::new();
    client.apply(&mut form, &mut headers, issuer, now)?;
    let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.expose())).collect();
    let mut req = EgressRequest::post_form(endpoint, UrlSource::Remote, &pairs, TOKEN_BODY_LIMIT);
    req.timeout = Some(std::time::Duration::from_secs(5));
    for (n, v) in headers.iter() {
        req = req.header(n.clone(), v.clone());
    }
    let resp = egress.send(req).await?;
    if resp.status == http::StatusCode::OK {
        Ok(())
    } else {
        Err(OAuthError::Revocation(resp.status.as_u16()))
    }
}
