//! Typed OAuth client errors, each classified by who failed and what fixes it.
//! Messages carry identifiers and untrusted text from the peer at most; never a secret.

use latchkey_core::{ErrorClass, Remedy};
use latchkey_egress::EgressError;

/// Anything that can go wrong on the client side of OAuth for MCP.
#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    /// The outbound request was refused by the egress guard or failed in transport.
    #[error("egress: {0}")]
    Egress(#[from] EgressError),
    /// No protected-resource or authorization-server metadata could be used.
    #[error("OAuth discovery failed: {0}")]
    Discovery(String),
    /// PRM `resource` does not identify the MCP server (RFC 9728 §3.3).
    #[error("protected resource metadata names resource {resource:?}, which is not {server_url:?}")]
    ResourceMismatch {
        /// The `resource` the metadata claimed.
        resource: String,
        /// The server URL it was fetched for.
        server_url: String,
    },
    /// AS metadata `issuer` differs from the identifier it was looked up by (RFC 8414 §3.3).
    #[error("authorization server metadata issuer {actual:?} does not match {expected:?}")]
    IssuerMismatch {
        /// The identifier the metadata URL was built from.
        expected: String,
        /// The `issuer` in the document.
        actual: String,
    },
    /// The AS does not advertise PKCE S256 (`code_challenge_methods_supported`).
    #[error("the authorization server does not advertise PKCE S256")]
    PkceNotSupported,
    /// The AS lacks an endpoint the operation needs.
    #[error("the authorization server metadata has no {0}")]
    MissingEndpoint(&'static str),
    /// No way to obtain a client id: nothing pre-registered, no CIMD, no DCR endpoint.
    #[error("no client_id: DCR not supported and no client credentials configured")]
    NoClient,
    /// Dynamic client registration failed (transport, a 5xx, an unreadable answer).
    #[error("Dynamic Client Registration failed: {0}")]
    Registration(String),
    /// The authorization server refused the registration (RFC 7591 §3.2.2): a
    /// configuration problem, not one a retry fixes.
    #[error("the authorization server refused the client registration: {error}{}", description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    RegistrationRefused {
        /// The `error` code (`invalid_client_metadata`, `invalid_redirect_uri` …) or
        /// `HTTP <status>` when the body had none.
        error: String,
        /// `error_description`, made printable and capped ([`crate::json::printable`]).
        description: Option<String>,
    },
    /// The token endpoint answered with an OAuth error or an unexpected status.
    #[error("token endpoint answered {status}{}", error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default())]
    TokenEndpoint {
        /// HTTP status.
        status: u16,
        /// The `error` code, if the body had a string one.
        error: Option<String>,
        /// The `error_description`, untrusted text.
        description: Option<String>,
    },
    /// A 2xx token response that is not usable (R-REFRESH-8).
    #[error("invalid token response: {0}")]
    InvalidTokenResponse(String),
    /// The authorization response failed a check (state, iss, error).
    #[error("authorization response rejected: {0}")]
    Callback(#[from] CallbackError),
    /// The authorization driver (browser, headless agent) could not complete consent.
    #[error("authorization could not be completed: {0}")]
    Consent(String),
    /// Step-up authorization kept failing; the attempt limit was reached.
    #[error("scope step-up gave up after {0} authorization attempts")]
    StepUpExhausted(u32),
    /// A key or JWT could not be built (configuration).
    #[error("key or JWT error: {0}")]
    Key(String),
    /// A revocation endpoint refused the request.
    #[error("revocation failed with status {0}")]
    Revocation(u16),
}

/// Why an authorization response (the redirect back to us) was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallbackError {
    /// `state` missing or not the one we sent.
    #[error("invalid_state")]
    InvalidState,
    /// RFC 9207: `iss` present and not the expected issuer (no normalisation).
    #[error("iss mismatch")]
    IssuerMismatch,
    /// RFC 9207: the AS advertises `iss` but the response has none.
    #[error("iss missing")]
    IssuerMissing,
    /// The AS returned an error (after the `iss` check passed).
    #[error("provider error {error}")]
    Provider {
        /// The `error` code.
        error: String,
        /// `error_description`, untrusted text.
        description: Option<String>,
    },
    /// Neither a code nor an error.
    #[error("missing code")]
    MissingCode,
}

impl OAuthError {
    /// The OAuth `error` code of a token-endpoint failure, if any.
    pub fn oauth_error_code(&self) -> Option<&str> {
        match self {
            OAuthError::TokenEndpoint { error, .. } => error.as_deref(),
            _ => None,
        }
    }

    /// Which party failed.
    pub fn class(&self) -> ErrorClass {
        match self {
            OAuthError::Egress(e) if e.is_retryable() => ErrorClass::AuthorizationServer,
            OAuthError::Egress(_) => ErrorClass::Configuration,
            OAuthError::Key(_) | OAuthError::NoClient => ErrorClass::Configuration,
            OAuthError::Consent(_) => ErrorClass::Caller,
            _ => ErrorClass::AuthorizationServer,
        }
    }

    /// What would fix it (R-REFRESH-7, R-REG-9).
    pub fn remedy(&self) -> Remedy {
        match self {
            OAuthError::Egress(e) if e.is_retryable() => Remedy::Retry,
            OAuthError::Egress(_) => Remedy::Reconfigure,
            OAuthError::TokenEndpoint { status, error, .. } => match error.as_deref() {
                Some("invalid_grant" | "invalid_client" | "unauthorized_client") => {
                    Remedy::Reconsent
                }
                Some("invalid_scope") => Remedy::Reconfigure,
                _ if *status >= 500 || *status == 429 => Remedy::Retry,
                _ => Remedy::Retry,
            },
            OAuthError::InvalidTokenResponse(_) => Remedy::Retry,
            OAuthError::Callback(_) | OAuthError::Consent(_) => Remedy::Reconsent,
            OAuthError::StepUpExhausted(_) => Remedy::ScopeUpgrade,
            OAuthError::Revocation(s) if *s >= 500 => Remedy::Retry,
            OAuthError::Revocation(_) => Remedy::Reconfigure,
            OAuthError::Discovery(_) | OAuthError::Registration(_) => Remedy::Retry,
            OAuthError::RegistrationRefused { .. } => Remedy::Reconfigure,
            OAuthError::ResourceMismatch { .. }
            | OAuthError::IssuerMismatch { .. }
            | OAuthError::PkceNotSupported
            | OAuthError::MissingEndpoint(_)
            | OAuthError::NoClient
            | OAuthError::Key(_) => Remedy::Reconfigure,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_errors_are_classified_per_r_refresh_7() {
        let e = |code: &str, status| OAuthError::TokenEndpoint {
            status,
            error: Some(code.into()),
            description: None,
        };
        assert_eq!(e("invalid_grant", 400).remedy(), Remedy::Reconsent);
        assert_eq!(e("invalid_client", 401).remedy(), Remedy::Reconsent);
        assert_eq!(e("unauthorized_client", 400).remedy(), Remedy::Reconsent);
        assert_eq!(e("temporarily_unavailable", 503).remedy(), Remedy::Retry);
        assert_eq!(e("something_new", 400).remedy(), Remedy::Retry);
        assert_eq!(e("invalid_scope", 400).remedy(), Remedy::Reconfigure);
        assert_eq!(
            OAuthError::Egress(EgressError::Redirect {
                status: 302,
                location: None
            })
            .remedy(),
            Remedy::Reconfigure
        );
        assert_eq!(
            OAuthError::Egress(EgressError::Timeout).remedy(),
            Remedy::Retry
        );
    }
}
