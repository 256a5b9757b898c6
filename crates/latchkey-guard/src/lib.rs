//! Inbound authentication for Latchkey's own endpoints: the resource-server side
//! (R-RS-1..R-RS-15, R-API-4, R-API-11, A22, A25).
//!
//! Domain first, transport thin, time as a parameter:
//!
//! * [`credential`] reads `Authorization` (`Bearer` = OAuth, `Token` = API key).
//! * [`jwt`] + [`jwks`] verify JWTs locally; [`introspection`] verifies opaque tokens;
//!   [`api_key`] checks Latchkey API keys; [`session`] browser sessions (cookie and
//!   CSRF token); [`claims`] turns verified claims into a
//!   [`Principal`]; [`authenticator`] puts these in order.
//! * [`error`] classifies every refusal; [`challenge`] turns one into an HTTP answer.
//! * [`prm`] builds the RFC 9728 document from the one resource resolver; [`origin`]
//!   checks `Host` and `Origin`.
//! * [`layer`] is the axum middleware and PRM route.
//!
//! Invariants: no token, key or secret appears in a log, an error, a `Debug` output or
//! a response body; a verifier outage is a 503, never a 401 or a 500; `issuer` and
//! `resource` are compared and served as the strings configured.
#![forbid(unsafe_code)]

pub mod api_key;
pub mod authenticator;
pub mod challenge;
pub mod claims;
pub mod credential;
pub mod error;
pub mod introspection;
pub mod jwks;
pub mod jwt;
pub mod layer;
pub mod origin;
pub mod principal;
pub mod prm;
pub mod session;

pub use api_key::{
    ApiKeyHash, ApiKeyStore, ApiKeyStoreError, InMemoryApiKeyStore, MintedApiKey, mint_api_key,
};
pub use authenticator::{Authenticator, TokenAuthenticator};
pub use claims::ClaimMapping;
pub use credential::Credential;
pub use error::{ConfigError, GuardError, InvalidReason, UnavailableReason};
pub use introspection::{IntrospectionAuth, IntrospectionConfig, Introspector};
pub use jwks::{JwksCache, JwksOptions};
pub use jwt::{JwtConfig, JwtKeys, JwtVerifier};
pub use layer::{Guard, GuardConfig, prm_router, require_principal};
pub use origin::HostOriginPolicy;
pub use principal::{AuthSource, Principal, Role, SubjectId, TenantId};
pub use prm::{PrmConfig, ResourceConfig, ResourceResolver};
pub use session::{SessionStore, SessionStoreError};
