//! From credential to principal (R-RS-2, R-RS-8, R-RS-10, A22).
//!
//! * `Bearer` is always OAuth: a JWT-shaped token is verified locally first; if that
//!   refuses it or cannot run, and introspection is configured, introspection decides.
//!   An opaque bearer token never reaches the API-key path.
//! * `Token` is always an API key and never reaches an OAuth verifier.
//! * With no `Authorization`, the session cookie (when sessions are configured).
//! * Required scopes are checked last (403 `insufficient_scope`).
//! * [`Authenticator::Local`] is the loopback single-user mode: no credential needed.

use std::fmt;
use std::sync::Arc;

use http::HeaderMap;
use latchkey_core::{Clock, UnixTime};

use crate::api_key::{self, ApiKeyStore};
use crate::credential::{self, Credential};
use crate::error::{GuardError, InvalidReason};
use crate::introspection::Introspector;
use crate::jwt::JwtVerifier;
use crate::principal::{AuthSource, Principal, Role, SubjectId, TenantId};
use crate::session::{self, SessionStore};

/// Verifiers for credential-bearing requests. Any of them may be absent; a credential
/// with no verifier for its kind is invalid.
pub struct TokenAuthenticator {
    /// Local JWT verification.
    pub jwt: Option<JwtVerifier>,
    /// RFC 7662 introspection.
    pub introspection: Option<Introspector>,
    /// API keys (`Token` scheme).
    pub api_keys: Option<Arc<dyn ApiKeyStore>>,
    /// Browser sessions (the session cookie, only when no `Authorization` is sent).
    pub sessions: Option<Arc<dyn SessionStore>>,
    /// Scopes every request must carry (e.g. `["mcp"]`); empty for none.
    pub required_scopes: Vec<String>,
    /// The clock for `exp`/`nbf` and the caches.
    pub clock: Arc<dyn Clock>,
}

impl fmt::Debug for TokenAuthenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenAuthenticator")
            .field("jwt", &self.jwt)
            .field("introspection", &self.introspection)
            .field("api_keys", &self.api_keys)
            .field("sessions", &self.sessions)
            .field("required_scopes", &self.required_scopes)
            .finish_non_exhaustive()
    }
}

impl TokenAuthenticator {
    /// No verifiers, no required scopes.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            jwt: None,
            introspection: None,
            api_keys: None,
            sessions: None,
            required_scopes: Vec::new(),
            clock,
        }
    }

    /// Authenticates `credential` at `now`.
    pub async fn authenticate_at(
        &self,
        credential: Option<&Credential>,
        now: UnixTime,
    ) -> Result<Principal, GuardError> {
        let principal = match credential {
            None => return Err(GuardError::Missing),
            Some(Credential::Bearer(t)) => self.bearer(t.expose(), now).await?,
            Some(Credential::ApiKey(k)) => match &self.api_keys {
                Some(store) => api_key::authenticate(store.as_ref(), k.expose()).await?,
                None => return Err(InvalidReason::NoVerifier.into()),
            },
            Some(Credential::Session(id)) => match &self.sessions {
                Some(store) => session::authenticate(store.as_ref(), id.expose()).await?,
                None => return Err(InvalidReason::NoVerifier.into()),
            },
        };
        if principal.missing_scopes(&self.required_scopes).is_empty() {
            Ok(principal)
        } else {
            Err(GuardError::InsufficientScope {
                required: self.required_scopes.clone(),
            })
        }
    }

    async fn bearer(&self, token: &str, now: UnixTime) -> Result<Principal, GuardError> {
        let mut local = None;
        if let Some(jwt) = &self.jwt
            && credential::looks_like_jwt(token)
        {
            match jwt.verify(token, now).await {
                Ok(p) => return Ok(p),
                Err(e) => {
                    tracing::debug!(event = "guard.jwt.refused", reason = %e);
                    local = Some(e);
                }
            }
        }
        match &self.introspection {
            Some(i) => i.verify(token, now).await.inspect_err(|e| {
                tracing::debug!(event = "guard.introspection.refused", reason = %e);
            }),
            None => Err(local.unwrap_or(GuardError::Invalid(InvalidReason::NoVerifier))),
        }
    }
}

/// How requests are authenticated.
#[derive(Debug)]
pub enum Authenticator {
    /// Loopback single-user mode: every request is this principal, no credential
    /// needed (any credential sent is ignored). Scopes are not checked.
    Local(Principal),
    /// Credentials are required and verified.
    Tokens(Box<TokenAuthenticator>),
}

impl Authenticator {
    /// Local mode for `tenant`/`subject`, who administers everything.
    pub fn local(tenant: TenantId, subject: SubjectId) -> Self {
        Authenticator::Local(
            Principal::new(tenant, subject, AuthSource::Local).with_role(Role::Admin),
        )
    }

    /// Verifying mode.
    pub fn tokens(t: TokenAuthenticator) -> Self {
        Authenticator::Tokens(Box::new(t))
    }

    /// Whether this is local single-user mode.
    pub fn is_local(&self) -> bool {
        matches!(self, Authenticator::Local(_))
    }

    /// Authenticates a request from its headers, reading the injected clock.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, GuardError> {
        match self {
            Authenticator::Local(p) => Ok(p.clone()),
            Authenticator::Tokens(t) => {
                let mut credential = credential::from_headers(headers)?;
                // The cookie counts only when no `Authorization` is sent, and only
                // where sessions exist.
                if credential.is_none() && t.sessions.is_some() {
                    credential = session::session_id(headers).map(Credential::Session);
                }
                t.authenticate_at(credential.as_ref(), t.clock.now()).await
            }
        }
    }

    /// Authenticates an already-parsed credential at `now`.
    pub async fn authenticate_at(
        &self,
        credential: Option<&Credential>,
        now: UnixTime,
    ) -> Result<Principal, GuardError> {
        match self {
            Authenticator::Local(p) => Ok(p.clone()),
            Authenticator::Tokens(t) => t.authenticate_at(credential, now).await,
        }
    }
}
