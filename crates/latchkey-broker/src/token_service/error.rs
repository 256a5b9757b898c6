//! Token service failures, classified with latchkey-core's [`ErrorClass`] and
//! [`Remedy`]. Messages carry ids, status codes and OAuth error codes; never a token,
//! refresh token or client secret.

use latchkey_core::{ErrorClass, Remedy};
use latchkey_oauth::OAuthError;
use latchkey_vault::{KeyringError, StoreError};

/// Why the user has to consent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReauthReason {
    /// The AS refused the refresh token (after the R-REFRESH-5 recovery).
    InvalidGrant,
    /// The AS refused the client credentials (e.g. an expired secret).
    InvalidClient,
    /// The client may not use the refresh grant.
    UnauthorizedClient,
    /// A stored value does not decrypt although a key is configured (R-STORE-6); the
    /// row is left untouched and is replaced by the next deposit or consent.
    Undecryptable,
}

impl ReauthReason {
    /// A stable name (`invalid_grant`, `invalid_client`, `unauthorized_client`,
    /// `undecryptable`).
    pub fn as_str(self) -> &'static str {
        match self {
            ReauthReason::InvalidGrant => "invalid_grant",
            ReauthReason::InvalidClient => "invalid_client",
            ReauthReason::UnauthorizedClient => "unauthorized_client",
            ReauthReason::Undecryptable => "undecryptable",
        }
    }

    /// The reason named by [`ReauthReason::as_str`] (a stored `needs_consent`); an
    /// unknown name reads as `invalid_grant`, the credential being dead either way.
    pub fn parse(s: &str) -> Self {
        match s {
            "invalid_client" => ReauthReason::InvalidClient,
            "unauthorized_client" => ReauthReason::UnauthorizedClient,
            "undecryptable" => ReauthReason::Undecryptable,
            _ => ReauthReason::InvalidGrant,
        }
    }
}

/// Why no access token could be supplied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No credential for the slot, or its access token expired and there is no refresh
    /// token (R-REFRESH-12): the user must connect.
    #[error("not connected: no usable credential for this slot")]
    NotConnected,
    /// The stored credential cannot be used any more; the user must consent again.
    #[error("re-authorization required ({})", .0.as_str())]
    ReauthRequired(ReauthReason),
    /// No encryption key is configured: terminal until an operator supplies one
    /// (R-STORE-5, HTTP 503).
    #[error("encryption key missing")]
    EncryptionKeyMissing,
    /// The authorization server failed or answered unusably (5xx, timeout, malformed
    /// token response, unexpected error code).
    #[error("token endpoint failed: {detail}")]
    Upstream {
        /// Whether the same call may succeed later.
        retryable: bool,
        /// What happened (status, OAuth error code, transport failure); no secret.
        detail: String,
    },
    /// A refresh grant for the slot is still awaited (the authorization server is slow):
    /// this caller's wait ran out, the grant goes on in the background and its tokens
    /// are kept whenever they arrive. Retry shortly.
    #[error("a refresh of this slot's token is still in flight; retry shortly")]
    RefreshPending,
    /// The stored credential or the key configuration cannot work as configured (an
    /// unknown auth method, `private_key_jwt` without a key, an invalid key set).
    #[error("misconfigured: {0}")]
    Misconfigured(String),
    /// The database failed; a retry may help.
    #[error("credential store unavailable: {0}")]
    Store(String),
}

impl TokenError {
    /// What would fix it.
    pub fn remedy(&self) -> Remedy {
        match self {
            TokenError::NotConnected | TokenError::ReauthRequired(_) => Remedy::Reconsent,
            TokenError::EncryptionKeyMissing | TokenError::Misconfigured(_) => Remedy::Reconfigure,
            TokenError::Upstream { retryable, .. } => {
                if *retryable {
                    Remedy::Retry
                } else {
                    Remedy::Reconfigure
                }
            }
            TokenError::Store(_) | TokenError::RefreshPending => Remedy::Retry,
        }
    }

    /// Which party failed.
    pub fn class(&self) -> ErrorClass {
        match self {
            TokenError::NotConnected => ErrorClass::Caller,
            TokenError::ReauthRequired(ReauthReason::Undecryptable) => ErrorClass::Internal,
            TokenError::ReauthRequired(_)
            | TokenError::Upstream { .. }
            | TokenError::RefreshPending => ErrorClass::AuthorizationServer,
            TokenError::EncryptionKeyMissing | TokenError::Misconfigured(_) => {
                ErrorClass::Configuration
            }
            TokenError::Store(_) => ErrorClass::Internal,
        }
    }

    /// A stable snake_case name for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            TokenError::NotConnected => "not_connected",
            TokenError::ReauthRequired(_) => "reauth_required",
            TokenError::EncryptionKeyMissing => "encryption_key_missing",
            TokenError::Upstream { .. } => "upstream",
            TokenError::Misconfigured(_) => "misconfigured",
            TokenError::Store(_) => "store",
            TokenError::RefreshPending => "refresh_pending",
        }
    }
}

impl From<KeyringError> for TokenError {
    fn from(e: KeyringError) -> Self {
        match e {
            KeyringError::EncryptionKeyMissing => TokenError::EncryptionKeyMissing,
            KeyringError::Undecryptable => TokenError::ReauthRequired(ReauthReason::Undecryptable),
            KeyringError::InvalidKeyConfig(m) => {
                TokenError::Misconfigured(format!("encryption keys: {m}"))
            }
        }
    }
}

impl From<StoreError> for TokenError {
    fn from(e: StoreError) -> Self {
        TokenError::Store(e.to_string())
    }
}

impl From<OAuthError> for TokenError {
    /// R-REFRESH-7: `invalid_grant`, `invalid_client` and `unauthorized_client` mean
    /// re-consent; every other token-endpoint answer and transport failure is upstream.
    fn from(e: OAuthError) -> Self {
        match e.oauth_error_code() {
            Some("invalid_grant") => return TokenError::ReauthRequired(ReauthReason::InvalidGrant),
            Some("invalid_client") => {
                return TokenError::ReauthRequired(ReauthReason::InvalidClient);
            }
            Some("unauthorized_client") => {
                return TokenError::ReauthRequired(ReauthReason::UnauthorizedClient);
            }
            _ => {}
        }
        match &e {
            OAuthError::Key(m) => TokenError::Misconfigured(m.clone()),
            _ => TokenError::Upstream {
                retryable: e.remedy().is_retryable(),
                detail: e.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let e = |code: &str, status| {
            TokenError::from(OAuthError::TokenEndpoint {
                status,
                error: Some(code.into()),
                description: None,
            })
        };
        assert_eq!(
            e("invalid_grant", 400),
            TokenError::ReauthRequired(ReauthReason::InvalidGrant)
        );
        assert_eq!(e("invalid_client", 401).remedy(), Remedy::Reconsent);
        assert_eq!(e("unauthorized_client", 400).remedy(), Remedy::Reconsent);
        assert_eq!(e("temporarily_unavailable", 503).remedy(), Remedy::Retry);
        assert_eq!(e("invalid_scope", 400).remedy(), Remedy::Reconfigure);
        assert_eq!(
            TokenError::from(OAuthError::InvalidTokenResponse("no access_token".into())).remedy(),
            Remedy::Retry
        );
        assert_eq!(
            TokenError::from(KeyringError::EncryptionKeyMissing).remedy(),
            Remedy::Reconfigure
        );
        assert_eq!(
            TokenError::from(KeyringError::Undecryptable).remedy(),
            Remedy::Reconsent
        );
        assert_eq!(TokenError::Store("x".into()).class(), ErrorClass::Internal);
    }
}
