//! Why a request was refused, classified (pingora style). No variant carries token
//! material: reasons are closed enums, so neither `Debug` nor `Display` can leak a token.

use latchkey_core::{ErrorClass, Remedy};

/// Why a presented credential is not valid (answered 401 `invalid_token`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidReason {
    /// Not a well-formed credential (bad base64url or JSON, whitespace, too long, an
    /// `Authorization` header given twice).
    #[error("malformed credential")]
    Malformed,
    /// The JWT's `alg` is not accepted in this mode (`none`, HS256 under JWKS, ...).
    #[error("algorithm not accepted")]
    Algorithm,
    /// The JWT names critical header extensions, which are not supported.
    #[error("unsupported critical header")]
    CriticalHeader,
    /// The JWT has no `kid` and JWKS mode requires one.
    #[error("missing kid")]
    MissingKid,
    /// No key with the JWT's `kid`, even after a refetch.
    #[error("unknown kid")]
    UnknownKid,
    /// The key with that `kid` does not fit the JWT's algorithm.
    #[error("key does not match the algorithm")]
    KeyMismatch,
    /// The signature does not verify.
    #[error("bad signature")]
    Signature,
    /// `exp` missing, not numeric, or in the past (after leeway).
    #[error("expired")]
    Expired,
    /// `nbf` in the future (after leeway), or not numeric.
    #[error("not yet valid")]
    NotYetValid,
    /// `iss` is not exactly the configured issuer.
    #[error("issuer mismatch")]
    Issuer,
    /// `aud` does not name this resource.
    #[error("audience mismatch")]
    Audience,
    /// The subject claim is missing or empty.
    #[error("missing subject")]
    Subject,
    /// The tenant claim is missing or empty and no default tenant is configured.
    #[error("missing tenant")]
    Tenant,
    /// The introspection endpoint answered `active: false`.
    #[error("token inactive")]
    Inactive,
    /// No verifier is configured for this kind of credential.
    #[error("no verifier for this credential")]
    NoVerifier,
    /// An API key that is not known (or not shaped like one).
    #[error("unknown API key")]
    UnknownApiKey,
    /// A session cookie naming no live session (unknown, signed out, ended or idle).
    #[error("unknown or ended session")]
    UnknownSession,
}

/// Why the credential could not be checked (answered 503, never 401: a 401 would make
/// clients discard tokens that may be perfectly good, R-RS-7, R-RS-14).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UnavailableReason {
    /// The JWKS could not be fetched or parsed.
    #[error("JWKS unavailable")]
    Jwks,
    /// The introspection endpoint failed (network, timeout, 5xx, 429, malformed answer).
    #[error("introspection unavailable")]
    Introspection,
    /// The introspection endpoint refused Latchkey's own client authentication.
    #[error("introspection refused Latchkey's client credentials")]
    IntrospectionAuth,
    /// The API-key store failed.
    #[error("API key store unavailable")]
    ApiKeyStore,
    /// The session store failed.
    #[error("session store unavailable")]
    Store,
}

/// Why a request was refused before reaching a handler.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    /// No usable `Authorization` header (401 without an `error` parameter, R-RS-1).
    #[error("authentication required")]
    Missing,
    /// The credential was checked and refused (401 `invalid_token`, R-RS-10).
    #[error("invalid credential: {0}")]
    Invalid(InvalidReason),
    /// Valid credential, but scopes missing (403 `insufficient_scope`).
    #[error("insufficient scope")]
    InsufficientScope {
        /// Every scope the endpoint requires.
        required: Vec<String>,
    },
    /// The verifier could not be reached or answered nonsense (503).
    #[error("verifier unavailable: {0}")]
    Unavailable(UnavailableReason),
    /// `Host` or `Origin` not allowed (403, R-RS-15).
    #[error("invalid Host/Origin header")]
    BadHostOrOrigin,
    /// A state-changing request made with a session cookie without the session's CSRF
    /// token (403).
    #[error("missing or wrong CSRF token")]
    Csrf,
}

impl GuardError {
    /// Which party failed.
    pub fn class(&self) -> ErrorClass {
        match self {
            GuardError::Unavailable(UnavailableReason::IntrospectionAuth) => {
                ErrorClass::Configuration
            }
            GuardError::Unavailable(UnavailableReason::ApiKeyStore | UnavailableReason::Store) => {
                ErrorClass::Internal
            }
            GuardError::Unavailable(_) => ErrorClass::AuthorizationServer,
            _ => ErrorClass::Caller,
        }
    }

    /// What would make the request succeed.
    pub fn remedy(&self) -> Remedy {
        match self {
            GuardError::Unavailable(UnavailableReason::IntrospectionAuth) => Remedy::Reconfigure,
            GuardError::Unavailable(_) => Remedy::Retry,
            GuardError::InsufficientScope { .. } => Remedy::ScopeUpgrade,
            _ => Remedy::FixRequest,
        }
    }
}

impl From<InvalidReason> for GuardError {
    fn from(r: InvalidReason) -> Self {
        GuardError::Invalid(r)
    }
}

impl From<UnavailableReason> for GuardError {
    fn from(r: UnavailableReason) -> Self {
        GuardError::Unavailable(r)
    }
}

/// A configuration the guard cannot run with (found at start-up, not per request).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A required setting is empty.
    #[error("{0} must not be empty")]
    Empty(&'static str),
    /// The HS256 shared secret is shorter than 32 bytes.
    #[error("the HS256 shared secret must be at least 32 bytes")]
    WeakSecret,
    /// An algorithm that cannot be used in this mode.
    #[error("algorithm {0} is not allowed with a JWKS (only RS256, ES256, EdDSA)")]
    Algorithm(String),
}
